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
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from traitlets import Bool, Float, Unicode
from traitlets.config import LoggingConfigurable

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

    def export_for_kernels(self) -> tuple[str, str]:
        """Put the engine's URL (and a configured token) in the environment kernels inherit."""
        url, how = self.find_engine()
        os.environ["POTLUCK_URL"] = url
        if self.token:
            os.environ["POTLUCK_TOKEN"] = self.token
        token = self.find_token()
        if self.openai_env and token:
            base = url + "v1"
            mine = os.environ.get("OPENAI_BASE_URL") in (None, "", base)
            # A user's own OpenAI key (no base URL, or another one) is left alone: never send it here.
            if mine and os.environ.get("OPENAI_API_KEY") in (None, "", token):
                os.environ["OPENAI_BASE_URL"] = base
                os.environ["OPENAI_API_KEY"] = token
        return url, how
