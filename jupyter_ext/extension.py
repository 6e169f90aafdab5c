"""Where the engine is, and how this server's kernels reach it as this user.

Loaded in every Jupyter server (single-user under a Hub, or a plain
``jupyter lab``). At load it finds the engine and exports ``POTLUCK_URL``
(and ``POTLUCK_TOKEN`` when a token is configured) into the server's
environment, which every kernel it starts inherits; under a Hub the kernel
also inherits ``JUPYTERHUB_API_TOKEN``, the server's token, which the engine
accepts as this user. So that every OpenAI client works with no arguments
(``openai.OpenAI()``, LangChain, LiteLLM, jupyter-ai), it also exports
``OPENAI_BASE_URL`` (the engine's ``/v1``) and ``OPENAI_API_KEY`` (the same
token the kernels use), unless the user's environment already names another
OpenAI endpoint or key. It never hands the token to the browser: the lab
frontend goes through ``handlers.py`` on the same origin.

With several engines (``$POTLUCK_POOLS``, set by ``potluck.hub_config`` with
``pools=``) it asks the engines which one serves this user (their pool, then
the engine rendezvous hashing picks in it) and points kernels there; when that
engine stops answering, ``reroute`` finds the next one, says so in one line
(the server log, the lab's ``config``), and points newly started kernels at it.
"""

from __future__ import annotations

import os
import threading
import time
from urllib.parse import urlparse

from traitlets import Bool, Float, Unicode
from traitlets.config import LoggingConfigurable

from potluck.engine.pools import EngineRouter, NoEngine, PoolMap, http_probe
from potluck.engine.protocol import SERVICE_NAME

STANDALONE_URL = "http://127.0.0.1:8765/"


class PotluckExtension(LoggingConfigurable):
    """Settings of the Potluck server extension (``c.PotluckExtension.*`` in jupyter_server_config.py)."""

    engine_url = Unicode(
        "",
        help="""The engine's URL, e.g. http://gpu-host:8765/ or http://hub:8765/services/potluck/.
        Default: $POTLUCK_URL (set by potluck.hub_config under a Hub); else, under a Hub, the
        service's URL through the Hub's proxy; else http://127.0.0.1:8765/ (a standalone engine).""",
    ).tag(config=True)

    token = Unicode(
        "",
        help="""The token to call the engine with. Default: $POTLUCK_TOKEN, else $JUPYTERHUB_API_TOKEN
        (under a Hub: this server's token, which the engine accepts as this server's user).""",
    ).tag(config=True)

    service_name = Unicode(SERVICE_NAME, help="The engine's service name in the Hub.").tag(config=True)

    request_timeout = Float(120.0, help="Seconds to wait for the engine on a proxied request.").tag(config=True)

    openai_env = Bool(
        True,
        help="""Export OPENAI_BASE_URL (the engine's /v1) and OPENAI_API_KEY (this server's token) to
        kernels, so openai.OpenAI() with no arguments reaches the engine as this user. Skipped when
        the environment already sets either one to something else (a user's own OpenAI key).""",
    ).tag(config=True)

    def find_engine(self) -> tuple[str, str]:
        """``(url, how it was found)``; the URL ends with a slash."""
        if self.engine_url:
            return self.engine_url.rstrip("/") + "/", "PotluckExtension.engine_url"
        if self.router is not None:
            mine = self.router.pools.engine_at(os.environ.get("POTLUCK_URL", ""))
            if mine is not None:          # this server found it already (e.g. for jupyter-ai)
                self.router.engine, self.router.pool = mine, self.router.pools.pool_of(mine)
            wait, self.router.wait = self.router.wait, 0.0   # one pass: never hold up the server's start
            try:
                return self.router.url(), f"pool {self.router.pool!r}, engine {self.router.engine}"
            except NoEngine as e:
                first = self.router.pools.first_contacts(self.router.tenant)[0]
                self.notice = str(e)
                return self.router.pools.url(first), f"the pool map ({e})"
            finally:
                self.router.wait = wait
        if os.environ.get("POTLUCK_URL"):
            return os.environ["POTLUCK_URL"].rstrip("/") + "/", "$POTLUCK_URL"
        if os.environ.get("JUPYTERHUB_API_TOKEN"):
            base = (os.environ.get("JUPYTERHUB_BASE_URL") or "/").rstrip("/")
            public = os.environ.get("JUPYTERHUB_PUBLIC_HUB_URL") or os.environ.get("JUPYTERHUB_PUBLIC_URL")
            origin = "http://127.0.0.1:8000"        # the Hub's default proxy address
            if public:
                u = urlparse(public)
                origin = f"{u.scheme}://{u.netloc}"
            return f"{origin}{base}/services/{self.service_name}/", "the Hub's proxy"
        return STANDALONE_URL, "the standalone default"

    def find_token(self) -> str:
        return self.token or os.environ.get("POTLUCK_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN") or ""

    # ------------------------------------------------------------ pools
    @property
    def router(self) -> EngineRouter | None:
        """This user's router over the hub's pools, or None with one engine."""
        if not hasattr(self, "_router"):
            self._router = None
            self.notice = ""
            try:
                pools = PoolMap.from_env()
            except ValueError as e:       # the server must start: say it, and route as with one engine
                self.log.error("Potluck: %s; ask your hub admin", e)
                pools = None
            if pools is not None and not self.engine_url:
                import requests
                session = requests.Session()
                if self.find_token():
                    session.headers["Authorization"] = f"token {self.find_token()}"
                self._router = EngineRouter(pools, os.environ.get("JUPYTERHUB_USER", ""), http_probe(session),
                                            notice=self._moved, wait=10.0)
            self._route_lock = threading.Lock()
            self._no_engine_until = 0.0
        return self._router

    def _moved(self, line: str) -> None:
        self.notice = line
        self.log.warning("%s", line)

    def reroute(self, failed_url: str, engine: str | None = None) -> str | None:
        """The engine at ``failed_url`` did not answer (or answered 421 naming ``engine``): the URL
        to use now, or None when there is nowhere else to go. Blocking: call it off the IOLoop."""
        router = self.router
        if router is None:
            return None
        with self._route_lock:
            if router.engine is not None and router.pools.url(router.engine) != failed_url:
                return router.pools.url(router.engine)       # another request moved us already
            if time.monotonic() < self._no_engine_until:
                return None         # a search just found nothing: don't queue every lab poll behind another
            try:
                if engine is not None and router.pools.pool_of(engine) is not None:
                    router.follow(engine)
                else:
                    router.failed("connection refused")
            except NoEngine as e:
                self._moved(str(e))
                self._no_engine_until = time.monotonic() + 5.0
                return None
            url = router.pools.url(router.engine)
            self.point_kernels_at(url)
            return url

    # ------------------------------------------------------------ kernels
    def export_for_kernels(self) -> tuple[str, str]:
        """Put the engine's URL (and a configured token) in the environment kernels inherit."""
        url, how = self.find_engine()
        self.how = how
        if self.token:
            os.environ["POTLUCK_TOKEN"] = self.token
        self.point_kernels_at(url)
        return url, how

    def point_kernels_at(self, url: str) -> None:
        """Kernels started from now on reach the engine at ``url`` (Potluck's client and OpenAI's)."""
        old = os.environ.get("POTLUCK_URL")
        self.url = url
        os.environ["POTLUCK_URL"] = url
        token = self.find_token()
        if self.openai_env and token:
            base = url + "v1"
            ours = (None, "", base) + ((old + "v1",) if old else ())
            # A user's own OpenAI key (no base URL, or another one) is left alone: never send it here.
            if os.environ.get("OPENAI_BASE_URL") in ours and os.environ.get("OPENAI_API_KEY") in (None, "", token):
                os.environ["OPENAI_BASE_URL"] = base
                os.environ["OPENAI_API_KEY"] = token
