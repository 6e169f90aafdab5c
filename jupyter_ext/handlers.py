"""Same-origin endpoints for the lab frontend: the engine's API, called with this server's token.

Under ``<server base>/potluck/api/``: ``status``, ``me``, ``contexts[/NAME]``,
``runs[/ID]`` (``DELETE`` cancels), ``runs/ID/events`` (WebSocket),
``admin/tenants``, ``admin/quotas/users/NAME``, ``admin/usage``, ``admin/engines`` (usage over
time; its query string is passed on), ``admin/runs`` and
``admin/runs/TENANT/ID`` (``DELETE`` cancels anyone's run); and ``config``
(where the engine is, never the token). Each requires the server's own login (its cookie or
token, and XSRF for browsers), then forwards to the engine as this server's
user: the browser never holds an engine credential and needs no CORS. The
engine's answer (status and JSON body, errors included) passes through
unchanged; an engine that cannot be reached is a 502 that says where it was
looked for. With several engines, a request the engine never received (it
did not answer) or refused as another's (421) is sent once more to the
engine that serves this user now (``PotluckExtension.reroute``).
"""

from __future__ import annotations

import json
import socket

from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.utils import url_path_join
from tornado import web, websocket
from tornado.ioloop import IOLoop
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from potluck.engine.pools import MISDIRECTED, WRONG_ENGINE

from .extension import PotluckExtension

# (route under potluck/api/, engine path template, methods)
PROXIED = [
    (r"status", "api/status", ("GET",)),
    (r"me", "api/me", ("GET",)),
    (r"contexts", "api/contexts", ("GET",)),
    (r"contexts/([^/]+)", "api/contexts/{}", ("GET", "PUT", "DELETE")),
    (r"runs", "api/runs", ("GET", "POST")),
    (r"runs/([^/]+)", "api/runs/{}", ("GET", "DELETE")),
    (r"admin/tenants", "api/admin/tenants", ("GET",)),
    (r"admin/usage", "api/admin/usage", ("GET",)),
    (r"admin/engines", "api/admin/engines", ("GET",)),
    (r"admin/runs", "api/admin/runs", ("GET",)),
    (r"admin/runs/([^/]+)/([^/]+)", "api/admin/runs/{}/{}", ("GET", "DELETE")),
    (r"admin/quotas/users/([^/]+)", "api/admin/quotas/users/{}", ("GET", "PUT", "DELETE")),
]


class EngineProxyHandler(APIHandler):
    """Forward one request to the engine as this server's user."""

    engine_path = ""

    def initialize(self, ext: PotluckExtension):
        self.ext = ext

    async def forward(self, method: str, *args: str) -> None:
        from urllib.parse import parse_qsl, quote, urlencode
        path = self.engine_path.format(*(quote(a, safe="") for a in args))
        # The query goes on (admin/usage's resolution and times), never this server's own ?token=.
        query = [(k, v) for k, v in parse_qsl(self.request.query, keep_blank_values=True) if k != "token"]
        if query:
            path += "?" + urlencode(query)
        token = self.ext.find_token()
        headers = {"Authorization": f"token {token}"} if token else {}
        body = None
        if method in ("POST", "PUT"):
            body = self.request.body or b"{}"
            headers["Content-Type"] = "application/json"
        url = self.ext.url
        r, error = await self._fetch(url + path, method, headers, body)
        moved = None
        # Never received (refused, no such host: not a reset, after which the engine may have
        # acted on it, nor a timeout, which may be a busy engine) or another's: move once.
        if isinstance(error, (ConnectionRefusedError, socket.gaierror)) or _wrong_engine(r) is not None:
            moved = await IOLoop.current().run_in_executor(
                None, self.ext.reroute, url, None if error is not None else _wrong_engine(r))
        if moved is not None and moved != url:
            url = moved
            r, error = await self._fetch(url + path, method, headers, body)
        if error is not None:
            self.set_status(502)
            self.finish(json.dumps({"error": {"code": "engine_unreachable",
                                              "message": f"cannot reach the Potluck engine at {url}: {error}"}}))
            return
        self.set_status(r.code)
        if r.code == 204:
            self.finish()
            return
        self.set_header("Content-Type", r.headers.get("Content-Type", "application/json"))
        self.finish(r.body)

    async def _fetch(self, url, method, headers, body):
        """``(response, None)``, or ``(None, the exception)`` when the engine could not be reached."""
        req = HTTPRequest(url, method=method, headers=headers, body=body,
                          request_timeout=self.ext.request_timeout, allow_nonstandard_methods=True)
        try:
            r = await AsyncHTTPClient().fetch(req, raise_error=False)
        except (OSError, HTTPClientError) as e:
            return None, e
        return (None, r.error) if r.code == 599 else (r, None)

    @web.authenticated
    async def get(self, *args):
        await self.forward("GET", *args)

    @web.authenticated
    async def post(self, *args):
        await self.forward("POST", *args)

    @web.authenticated
    async def put(self, *args):
        await self.forward("PUT", *args)

    @web.authenticated
    async def delete(self, *args):
        await self.forward("DELETE", *args)


def _wrong_engine(r) -> str | None:
    """The engine a 421 names as this user's (several engines), else None."""
    if r is None or r.code != MISDIRECTED:
        return None
    try:
        err = json.loads(r.body)["error"]
        return err["engine"] if err.get("code") == WRONG_ENGINE else None
    except (ValueError, KeyError, TypeError):
        return None


class ConfigHandler(APIHandler):
    """Where this server looks for the engine (for the frontend's "not connected" message)."""

    def initialize(self, ext: PotluckExtension):
        self.ext = ext

    @web.authenticated
    async def get(self):
        router = self.ext.router
        self.finish(json.dumps({"engine_url": self.ext.url, "found_by": self.ext.how,
                                "has_token": bool(self.ext.find_token()),
                                "pool": router.pool if router else None,
                                "engine": router.engine if router else None,
                                "notice": getattr(self.ext, "notice", "")}))


class RunEventsProxyHandler(WebSocketMixin, websocket.WebSocketHandler, JupyterHandler):
    """``WS runs/ID/events``: a run's events from the engine, and messages to the run."""

    def initialize(self, ext: PotluckExtension):
        self.ext = ext
        self.upstream = None

    async def get(self, run_id: str, *args, **kwargs):
        if self.current_user is None:
            raise web.HTTPError(403)
        from urllib.parse import quote
        url = self.ext.url.replace("http", "ws", 1) + f"api/runs/{quote(run_id, safe='')}/events"
        token = self.ext.find_token()
        try:
            self.upstream = await websocket.websocket_connect(
                HTTPRequest(url, headers={"Authorization": f"token {token}"}, request_timeout=30))
        except HTTPClientError as e:
            raise web.HTTPError(e.code if e.code < 599 else 502, f"the engine refused: {e}")
        except OSError as e:
            raise web.HTTPError(502, f"cannot reach the Potluck engine at {self.ext.url}: {e}")
        await super().get(run_id, *args, **kwargs)

    def open(self, run_id: str):
        # Not a coroutine: tornado holds on_message until open returns, and the pump never does.
        IOLoop.current().spawn_callback(self.pump)

    async def pump(self):
        while True:
            msg = await self.upstream.read_message()
            if msg is None:
                self.close()
                return
            try:
                await self.write_message(msg)
            except websocket.WebSocketClosedError:
                return

    async def on_message(self, message):
        if self.upstream is not None:
            await self.upstream.write_message(message)

    def on_close(self):
        if self.upstream is not None:
            self.upstream.close()


def setup_handlers(web_app, ext: PotluckExtension) -> None:
    base = url_path_join(web_app.settings["base_url"], "potluck", "api")
    kw = {"ext": ext}
    handlers = [(url_path_join(base, "config"), ConfigHandler, kw),
                (url_path_join(base, r"runs/([^/]+)/events"), RunEventsProxyHandler, kw)]
    for route, engine_path, methods in PROXIED:
        cls = type(f"Proxy_{engine_path.replace('/', '_').replace('{}', 'x')}", (EngineProxyHandler,),
                   {"engine_path": engine_path,
                    "SUPPORTED_METHODS": tuple(methods)})
        handlers.append((url_path_join(base, route), cls, kw))
    web_app.add_handlers(".*$", handlers)
