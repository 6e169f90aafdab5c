"""The admin dashboard as a web page at the service's base URL (``/services/potluck/`` under a Hub).

The page is the lab extension's dashboard (``labextension/src/dashboard.ts``) bundled on its own
(``potluck-dashboard.js`` and ``.css``, built by ``jlpm build:prod`` next to the lab extension's
files); it calls this engine's admin API from the browser with a token in the header, like any
client. Who may open it:

- under a Hub, hub admins and holders of ``custom:potluck:admin``: the browser logs in with the
  Hub's OAuth (this service's client; the callback is ``oauth_callback``), the engine checks the
  resulting token exactly as it checks API tokens (``Authenticator.identify``) and hands it to
  the page, so the page acts with the admin's own rights: on this engine's API, and on the Hub's
  (group quotas), as far as the service's ``oauth_client_allowed_scopes`` let the token carry
  them. Anyone else gets a one-line 403;
- standalone (no Hub, no login to redirect to), the page asks for an engine admin token and
  keeps it in the browser tab; the API refuses non-admins as it always does.

What it must never do: serve the page to a signed-in non-admin, put a token in a URL, or let the
page be cached or framed.
"""

from __future__ import annotations

import html
import json
import logging
import sys
from pathlib import Path

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from tornado import web

from ..errors import PotluckError
from .base import ServiceHandler

log = logging.getLogger("potluck.engine")

ASSETS = ("potluck-dashboard.js", "potluck-dashboard.css")
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
NOT_BUILT = ("the dashboard's script is not built: run `jlpm build:prod` in labextension/ "
             "(or install a jupyter-potluck wheel, which carries it)")


def asset_dirs() -> list[Path]:
    """Where the bundle may be: the source tree's build output, then installed lab extensions."""
    dirs = []
    try:
        import potluck.jupyter_ext
        dirs.append(Path(potluck.jupyter_ext.__file__).parent / "labextension" / "static")
    except ImportError:
        pass
    dirs.append(Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "jupyter-potluck" / "static")
    try:
        from jupyter_core.paths import jupyter_path
        dirs += [Path(d) / "jupyter-potluck" / "static" for d in jupyter_path("labextensions")]
    except ImportError:
        pass
    return dirs


def find_asset(name: str) -> Path | None:
    for d in asset_dirs():
        if (d / name).is_file():
            return d / name
    return None


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Potluck admin dashboard</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{base}dashboard/potluck-dashboard.css">
</head>
<body>
<div id="potluck-dashboard"></div>
<script id="potluck-dashboard-config" type="application/json">{config}</script>
<script src="{base}dashboard/potluck-dashboard.js"></script>
</body>
</html>
"""


def _hub_oauth(handler: web.RequestHandler):
    """This application's ``HubOAuth`` (one per app; the Hub's OAuth client is this service's)."""
    settings = handler.application.settings
    oauth = settings.get("potluck_hub_oauth")
    if oauth is None:
        from jupyterhub.services.auth import HubOAuth
        hub = handler.settings["service"].authenticator.hub_auth
        oauth = settings["potluck_hub_oauth"] = HubOAuth(api_url=hub.api_url, api_token=hub.api_token,
                                                         cache_max_age=hub.cache_max_age)
    return oauth


def _under_hub(handler: web.RequestHandler) -> bool:
    return hasattr(handler.settings["service"].authenticator, "hub_auth")


class _PageHandler(ServiceHandler):
    """Plain-text one-line errors (a person reads them), never cached, never framed."""

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy", CSP)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, PotluckError):
            status, message = exc.status, exc.message
        elif isinstance(exc, web.HTTPError) and (status_code < 500 or status_code == 503):
            status, message = status_code, exc.log_message or "not found"
        else:
            status, message = 500, "internal error in the engine service; the log has the details"
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status}: " + " ".join(str(message).split()) + "\n")


class _HubOAuth:
    """``hub_auth`` for jupyterhub's OAuth mixins: this application's ``HubOAuth``."""

    @property
    def hub_auth(self):
        return _hub_oauth(self)


class DashboardPage(_HubOAuth, HubOAuthenticated, _PageHandler):
    """``GET /``: the page; under a Hub only for engine admins, after the Hub's OAuth login."""

    async def get(self) -> None:
        token = hub_admin = hub_api = None
        if _under_hub(self):
            user = await self.hub_auth.get_user(self, sync=False)
            if not user:
                self.redirect(self.get_login_url())     # the Hub's OAuth, back to this page
                return
            token = self.hub_auth.get_token(self)
            # The same check as every API call: the page is the admin's only if the API would be.
            identity = await self.service.authenticator.identify(token) if token else None
            if identity is None or not identity.is_admin:
                name = identity.tenant if identity is not None else user.get("name", "?")
                raise web.HTTPError(403, f"the Potluck dashboard is for engine admins (hub admins or holders "
                                         f"of custom:potluck:admin); {name} is not one")
            # The Hub as the browser reaches it: where group quotas are edited, by the admin's own token.
            hub = self.hub_auth.hub_host + self.hub_auth.hub_prefix
            hub_admin, hub_api = hub + "admin", hub + "api"
            if self.hub_auth.hub_host:
                self.set_header("Content-Security-Policy", CSP.replace("default-src 'self'",
                                                                       f"default-src 'self' {self.hub_auth.hub_host}"))
        if find_asset(ASSETS[0]) is None:
            raise web.HTTPError(503, NOT_BUILT)
        base = self.settings["potluck_base_url"]
        config = {"base_url": base, "token": token, "hub_admin_url": hub_admin, "hub_api_url": hub_api}
        # Inside a <script> element "</" must not appear: escape it in the JSON's strings.
        blob = json.dumps(config).replace("</", "<\\/")
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(PAGE.format(base=html.escape(base), config=blob))


class OAuthCallback(_HubOAuth, HubOAuthCallbackHandler):
    """``GET oauth_callback``: the end of the Hub's OAuth login (jupyterhub's own handler)."""

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")

    async def get(self) -> None:
        if not _under_hub(self):
            raise web.HTTPError(404, "no Hub login on a standalone engine")
        await super().get()


class DashboardAsset(_PageHandler):
    """``GET dashboard/potluck-dashboard.{js,css}``: the bundle (public: it is code, no data)."""

    async def get(self, name: str) -> None:
        if name not in ASSETS:
            raise web.HTTPError(404, f"no such file: {name}")
        path = find_asset(name)
        if path is None:
            raise web.HTTPError(404, NOT_BUILT)
        body = path.read_bytes()      # ~25 KB, read per page load: a rebuild shows without a restart
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        self.set_header("Content-Type", f"{kind}; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(body)


default_handlers = [
    (r"", DashboardPage),
    (r"oauth_callback", OAuthCallback),
    (r"dashboard/(potluck-dashboard\.(?:js|css))", DashboardAsset),
]
