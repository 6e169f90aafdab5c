"""Same-origin endpoints for the lab frontend: the engine's API, called with this server's token.

Under ``<server base>/potluck/api/``: ``status``, ``me``, ``contexts[/NAME]``,
``runs[/ID]`` (``DELETE`` cancels), ``runs/ID/events`` (WebSocket),
``admin/tenants``, ``admin/quotas/users/NAME``, ``admin/usage`` (usage over
time; its query string is passed on), ``admin/runs`` and
``admin/runs/TENANT/ID`` (``DELETE`` cancels anyone's run); and ``config``
(where the engine is, never the token). Each requires the server's own login (its cookie or
token, and XSRF for browsers), then forwards to the engine as this server's
user: the browser never holds an engine credential and needs no CORS. The
engine's answer (status and JSON body, errors included) passes through
unchanged; an engine that cannot be reached is a 502 that says where it was
looked for.
"""

from __future__ import annotations

import json

from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.utils import url_path_join
from tornado import web, websocket
from tornado.ioloop import IOLoop
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

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
    (r"admin/runs", "api/admin/runs", ("GET",)),
    (r"admin/runs/([^/]+)/([^/]+)", "api/admin/runs/{}/{}", ("GET", "DELETE")),
    (r"admin/quotas/users/([^/]+)", "api/admin/quotas/users/{}", ("GET", "PUT", "DELETE")),
]


class EngineProxyHandler(APIHandler):
    """Forward one request to the engine as this server's user."""

    engine_path = ""

    def initialize(self, ext: PotluckExtension, engine_url: str):
        self.ext = ext
        self.engine_url = engine_url

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
        req = HTTPRequest(self.engine_url + path, method=method, headers=headers, body=body,
                          request_timeout=self.ext.request_timeout, allow_nonstandard_methods=True)
        try:
            r = await AsyncHTTPClient().fetch(req, raise_error=False)
        except (OSError, HTTPClientError) as e:
            self.set_status(502)
            self.finish(json.dumps({"error": {"code": "engine_unreachable",
                                              "message": f"cannot reach the Potluck engine at {self.engine_url}: {e}"}}))
            return
        if r.code == 599:
            self.set_status(502)
            self.finish(json.dumps({"error": {"code": "engine_unreachable",
                                              "message": f"cannot reach the Potluck engine at {self.engine_url}: "
                                                         f"{r.error}"}}))
            return
        self.set_status(r.code)
        if r.code == 204:
            self.finish()
            return
        self.set_header("Content-Type", r.headers.get("Content-Type", "application/json"))
        self.finish(r.body)

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


class ConfigHandler(APIHandler):
    """Where this server looks for the engine (for the frontend's "not connected" message)."""

    def initialize(self, ext: PotluckExtension, engine_url: str, how: str):
        self.ext, self.engine_url, self.how = ext, engine_url, how

    @web.authenticated
    async def get(self):
        self.finish(json.dumps({"engine_url": self.engine_url, "found_by": self.how,
                                "has_token": bool(self.ext.find_token())}))


class RunEventsProxyHandler(WebSocketMixin, websocket.WebSocketHandler, JupyterHandler):
    """``WS runs/ID/events``: a run's events from the engine, and messages to the run."""

    def initialize(self, ext: PotluckExtension, engine_url: str):
        self.ext = ext
        self.engine_url = engine_url
        self.upstream = None

    async def get(self, run_id: str, *args, **kwargs):
        if self.current_user is None:
            raise web.HTTPError(403)
        from urllib.parse import quote
        url = self.engine_url.replace("http", "ws", 1) + f"api/runs/{quote(run_id, safe='')}/events"
        token = self.ext.find_token()
        try:
            self.upstream = await websocket.websocket_connect(
                HTTPRequest(url, headers={"Authorization": f"token {token}"}, request_timeout=30))
        except HTTPClientError as e:
            raise web.HTTPError(e.code if e.code < 599 else 502, f"the engine refused: {e}")
        except OSError as e:
            raise web.HTTPError(502, f"cannot reach the Potluck engine at {self.engine_url}: {e}")
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


def setup_handlers(web_app, ext: PotluckExtension, engine_url: str, how: str) -> None:
    base = url_path_join(web_app.settings["base_url"], "potluck", "api")
    kw = {"ext": ext, "engine_url": engine_url}
    handlers = [(url_path_join(base, "config"), ConfigHandler, {**kw, "how": how}),
                (url_path_join(base, r"runs/([^/]+)/events"), RunEventsProxyHandler, kw)]
    for route, engine_path, methods in PROXIED:
        cls = type(f"Proxy_{engine_path.replace('/', '_').replace('{}', 'x')}", (EngineProxyHandler,),
                   {"engine_path": engine_path,
                    "SUPPORTED_METHODS": tuple(methods)})
        handlers.append((url_path_join(base, route), cls, kw))
    web_app.add_handlers(".*$", handlers)
