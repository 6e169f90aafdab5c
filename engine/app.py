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
This module is the command line only: the engine's own settings are
``config.py``'s ``EngineConfig`` (``PotluckEngine`` inherits them), and
assembling, serving and stopping the service is ``service.py``'s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from urllib.parse import urlparse

from traitlets import Bool, Float, Integer, TraitError, Type, Unicode, default
from traitlets.config import Application, catch_config_error

from . import __version__
from .config import EngineConfig

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

        Default: $POTLUCK_DB_URL (so a password need not be on a command line), else
        sqlite:///<data_dir>/potluck.sqlite. Use PostgreSQL for large hubs, e.g.
        postgresql://potluck@db/potluck; every engine of a hub with pools shares one.
        """,
    ).tag(config=True)

    @default("db_url")
    def _default_db_url(self) -> str:
        if os.environ.get("POTLUCK_DB_URL"):
            return os.environ["POTLUCK_DB_URL"]
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
        from .store import Store, StoreError
        try:
            return Store(self.db_url)
        except StoreError as e:      # a corrupt or locked database: one line, exit non-zero
            self.log.critical("%s", e)
            self.exit(1)

    def start(self) -> None:
        if self.subapp is not None:
            return self.subapp.start()
        self.print_help()
        self.exit(1)


class PotluckEngine(PotluckApp, EngineConfig):
    """Run the engine service: the batch loop on the model, and its HTTP API.

    The engine's settings (model, profile, KV pool, scheduler, default quota, ...) are
    ``EngineConfig``'s traits, inherited: ``c.PotluckEngine.model`` and ``--model`` set them,
    and the app is the ``EngineConfig`` the engine runs with.
    """

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
        "engine-name": "PotluckEngine.engine_name",
        "pool": "PotluckEngine.pool",
        "pools": "PotluckEngine.pools",
        "default-pool": "PotluckEngine.default_pool",
        "accelerator": "PotluckEngine.accelerator",
    }
    flags = {
        "generate-config": ({"PotluckEngine": {"generate_config": True}},
                            "Write a commented config file (at --config, default potluck_config.py) and exit."),
        "no-prometheus-auth": ({"PotluckEngine": {"authenticate_prometheus": False}},
                               "Serve /metrics without a token."),
    }

    @property
    def classes(self):
        from .auth import HubAuthenticator, TokenAuthenticator
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

    # ------------------------------------------------------------ the service
    authenticator_class = Type(
        klass="potluck.engine.auth.Authenticator",
        help="""How a request's token becomes a tenant: TokenAuthenticator checks standalone tokens
        from `potluck token create`; HubAuthenticator asks the JupyterHub (the tenant is the hub user).
        Default: HubAuthenticator when run as a Hub service ($JUPYTERHUB_SERVICE_PREFIX and
        $JUPYTERHUB_API_TOKEN set), else TokenAuthenticator.""",
    ).tag(config=True)

    @default("authenticator_class")
    def _default_authenticator_class(self):
        if running_as_hub_service():
            from .auth import HubAuthenticator
            return HubAuthenticator
        from .auth import TokenAuthenticator
        return TokenAuthenticator

    max_body_size = Integer(
        1 << 20, help="Largest request body in bytes; larger ones get 413.",
    ).tag(config=True)

    request_threads = Integer(
        16, help="Threads for HTTP work that waits on the batch loop or the database.",
    ).tag(config=True)

    request_threads_per_tenant = Integer(
        min=1,
        help="""The most request threads one tenant's blocking work may hold at once (engine calls that
        wait on the batch loop, the database, tokenizing its prompts). A tenant's further calls wait in
        its own queue; free threads go round-robin to the tenants with calls waiting, so a flood from
        one tenant never holds the threads another tenant's request needs. Checking tokens (before the
        tenant is known) is held to one such share too, turn by turn per credential.
        Default: half of request_threads, at least 1 (at most request_threads).""",
    ).tag(config=True)

    @default("request_threads_per_tenant")
    def _default_request_threads_per_tenant(self) -> int:
        return max(1, self.request_threads // 2)

    usage_flush_interval = Float(
        5.0, help="Seconds between writes of the usage ledger to the database.",
    ).tag(config=True)

    authenticate_prometheus = Bool(
        True, help="Require an admin token for /metrics (its labels name tenants).",
    ).tag(config=True)

    generate_config = Bool(
        False, help="Write a commented config file to config_file and exit.",
    ).tag(config=True)

    exit_with_hub = Bool(
        False, help="""Stop when the process that started this engine is gone. potluck.hub_config sets it
        for the engines a Hub starts (managed services): a Hub that was killed would otherwise leave its
        engine holding the port the restarted Hub's engine needs. Off for engines started by systemd,
        Kubernetes or by hand.""",
    ).tag(config=True)

    serve_errors = Bool(
        help="""When the engine cannot start (a missing model, a setting that cannot be read), keep
        listening and answer every request with a 503 that says why (/api/status: "model_error"),
        instead of exiting 1: a JupyterHub exits when a managed service exits while it starts.
        Default: on when run as a Hub service, off standalone.""",
    ).tag(config=True)

    @default("serve_errors")
    def _default_serve_errors(self) -> bool:
        return running_as_hub_service()

    start_error: str | None = None      # a setting that could not be read (then only the error is served)

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.INFO

    # ------------------------------------------------------------ running
    def initialize(self, argv=None) -> None:
        # The whole configuration is read here: a value that cannot be read is one line naming the
        # setting and what it must be (the traits' own checks), never a default nor a later crash.
        try:
            # Unwrapped: traitlets' catch_config_error would log and exit before the Hub case is decided.
            Application.parse_command_line.__wrapped__(self, argv)
            self.load_config()
            self.pool_settings()        # pool, pools and default_pool must agree with each other
        except TraitError as e:
            self.start_error = "bad setting: " + " ".join(str(e).split())
            if not self.serve_errors:
                self.log.critical("%s", self.start_error)
                self.exit(1)

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
        # Importing jupyterhub (and the store's migrations) logs a dozen "setup plugin" lines at info.
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
        sys.exit(asyncio.run(self.serve()))

    async def serve(self) -> int:
        from .service import serve, serve_failure     # the engine, torch and the model: only when serving
        if self.start_error is not None:
            log.critical("the engine could not start: %s", self.start_error)
            return await serve_failure(self, self.start_error)
        from .auth import TokenAuthenticator
        if running_as_hub_service() and self.authenticator_class is TokenAuthenticator:
            log.warning("running as a JupyterHub service, but Hub authentication is not configured: "
                        "only tokens from `potluck token create` are accepted")
        return await serve(self)


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


# What `jupyter-potluck[engine]` adds to the light user-side install (their import names).
ENGINE_MODULES = {"torch", "transformers", "gguf", "accelerate", "safetensors", "numpy", "sqlalchemy",
                  "prometheus_client", "wasmtime", "componentize_py", "jupyterhub"}


def main(argv=None) -> None:
    try:
        PotluckApp.launch_instance(argv)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ENGINE_MODULES:
            raise
        # A light install (a user image): one line that says what to install, not a traceback.
        print(f"potluck: the engine's dependencies are not installed ({e.name} is missing): "
              "pip install 'jupyter-potluck[engine]'", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
