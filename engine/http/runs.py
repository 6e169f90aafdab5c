"""Inferlet runs over HTTP: start, list, look at, cancel, and follow them on a WebSocket.

The runs themselves are ``engine/sandbox``'s ``RunManager``; these handlers
only admit the caller, check the body and look runs up *as the caller's
tenant*: another tenant's run id is a 404 exactly like one that never
existed (GET, DELETE and the WebSocket alike).

``WS api/runs/{id}/events`` is authenticated like every other endpoint (an
``Authorization: token|Bearer`` header on the upgrade request; no token in
the URL), by the same ``ServiceHandler`` code, and refused with the same JSON
errors. It sends the run's past events (from ``?since=N``, an event number),
then live ones, one JSON text frame each, and closes after the final
``status`` event, which it always sends, even when ``since`` is past the end. Text frames from the
client are JSON values delivered to the run (its ``receive()``); a message
the run cannot take is answered with an ``{"type": "error", "error": {...}}``
frame and the socket stays open. Events reach the IOLoop from the run's own
thread through ``IOLoop.add_callback``: that thread never waits on a client.

Runs that are no longer live (ended long ago, or cut off by an engine that
stopped) come from the store's run history: GET answers them, DELETE answers
them as they are (an ended run has nothing to cancel), and the WebSocket sends
their final ``status`` event and closes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
from datetime import datetime

from tornado import websocket
from tornado.ioloop import IOLoop

from ..errors import BadRequest, EngineUnavailable, NotFound, PotluckError
from ..protocol import DONE_STATES
from .base import APIHandler, ServiceHandler, check_fields

log = logging.getLogger("potluck.engine")

CANCEL_WAIT = 5.0       # seconds DELETE waits for the run to stop before answering 202
MAX_SINCE_DIGITS = 9    # ?since= is an event number; a run makes far fewer than 10**9 events
MAX_WS_MESSAGE = 256 << 10  # a frame from the client; a run takes at most 64 KiB of JSON anyway


def check_since(text: str) -> int:
    """``?since=`` as an event number: ASCII digits only (``"²".isdigit()`` is true; ``int("²")`` fails)."""
    if not re.fullmatch(rf"[0-9]{{1,{MAX_SINCE_DIGITS}}}", text):
        raise BadRequest(f"since must be an event number from 0 to {10 ** MAX_SINCE_DIGITS - 1} "
                         f"(ASCII digits), got {text[:40]!r}", code="invalid_type", param="since")
    return int(text)


def parse_message(text: str):
    """A client's frame as one strict JSON value (NaN, Infinity and 1e999 refused, never dropped later)."""
    def no_constant(name):
        raise ValueError(f"{name} is not valid JSON")

    def finite(num: str) -> float:
        value = float(num)
        if not math.isfinite(value):
            raise ValueError(f"the number {num[:40]} is out of range")
        return value
    try:
        return json.loads(text, parse_constant=no_constant, parse_float=finite)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"a message to a run is one JSON value: {' '.join(str(e).split())[:200]}",
                         code="invalid_json") from None


def run_manager(service):
    """The service's ``RunManager``, or 503 when the sandbox could not be loaded."""
    runs = getattr(service, "runs", None)
    if runs is None:
        why = getattr(service, "runs_error", None) or "the inferlet sandbox is not loaded"
        raise EngineUnavailable(f"inferlet runs are not available on this engine: {why}",
                                code="runs_unavailable")
    return runs


def is_final(ev: dict) -> bool:
    return ev.get("type") == "status" and ev.get("state") in DONE_STATES


async def wait_ended(run, timeout: float) -> bool:
    """Wait on the IOLoop (no thread) until ``run`` has ended; False after ``timeout`` seconds."""
    if run.done:
        return True
    loop = IOLoop.current()
    ended = asyncio.Event()

    def on_event(ev):       # the run's thread: only schedule
        if is_final(ev):
            loop.add_callback(ended.set)
    unsubscribe = run.subscribe(on_event, since=len(run.events))     # only what comes next
    try:
        if run.done:
            return True
        await asyncio.wait_for(ended.wait(), timeout)
        return True
    except asyncio.TimeoutError:
        return run.done
    finally:
        unsubscribe()


def run_source(body: dict) -> str | bytes:
    """The body's ``source`` (text) or ``component`` (base64, decoded): exactly one of them."""
    if ("source" in body) == ("component" in body):
        raise BadRequest("a run needs exactly one of 'source' (Python text) or 'component' "
                         "(a prebuilt component, base64)", code="missing_parameter", param="source")
    if "source" in body:
        return body["source"]
    try:
        return base64.b64decode(body["component"], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("component must be the component's bytes in base64", code="invalid_component",
                         param="component") from None


class RunsHandler(APIHandler):
    """``GET api/runs``: my runs, newest first. ``POST api/runs``: start one."""

    async def get(self) -> None:
        runs = run_manager(self.service)
        self.write_json({"runs": await self.blocking(runs.records, self.identity.tenant)})

    async def post(self) -> None:
        runs = run_manager(self.service)
        body = check_fields(self.json_body(), {"source": "string", "component": "string", "args": "object"},
                            nullable=False, where="a run")
        source = run_source(body)
        args = body.get("args", {})
        ident, engine = self.identity, self.engine

        def start():
            engine.tenant(ident.tenant, ident.groups, ident.is_admin)     # the quota, from the identity
            return runs.start(ident.tenant, source, args)
        run = await self.blocking(start)
        self.set_header("Location", f"{self.request.path.rstrip('/')}/{run.id}")
        self.write_json(run.to_json(), status=201)


class RunHandler(APIHandler):
    """``GET api/runs/{id}``: one of my runs. ``DELETE``: cancel it."""

    async def get(self, run_id: str) -> None:
        runs = run_manager(self.service)
        self.write_json(await self.blocking(runs.record, self.identity.tenant, run_id))

    async def delete(self, run_id: str) -> None:
        await cancel_and_answer(self, self.identity.tenant, run_id)


async def cancel_and_answer(handler: APIHandler, tenant: str, run_id: str) -> None:
    """Cancel the run; 200 with its JSON once it has ended, 202 if it is still stopping.

    A run only in the history has ended already: 200 with its record.
    """
    runs = run_manager(handler.service)
    try:
        run = runs.get(tenant, run_id)
    except NotFound:
        handler.write_json(await handler.blocking(runs.record, tenant, run_id))
        return
    await handler.blocking(run.cancel)
    ended = await wait_ended(run, CANCEL_WAIT)
    handler.write_json(run.to_json(), status=200 if ended else 202)


class AdminRunsHandler(APIHandler):
    """``GET api/admin/runs``: every tenant's runs (admins)."""

    admin_only = True

    async def get(self) -> None:
        runs = run_manager(self.service)
        self.write_json({"runs": await self.blocking(runs.records, None), "stats": runs.stats()})


class AdminRunHandler(APIHandler):
    """``GET/DELETE api/admin/runs/{tenant}/{id}``: look at or cancel anyone's run (admins)."""

    admin_only = True

    async def get(self, tenant: str, run_id: str) -> None:
        self.write_json(await self.blocking(run_manager(self.service).record, tenant, run_id))

    async def delete(self, tenant: str, run_id: str) -> None:
        log.info("admin %s cancels run %s of %s", self.identity.tenant, run_id, tenant)
        await cancel_and_answer(self, tenant, run_id)


class RunEventsHandler(ServiceHandler, websocket.WebSocketHandler):
    """``WS api/runs/{id}/events``: the run's events out, messages to the run in."""

    run = None
    past: dict | None = None      # a run only in the history: its record
    _since = 0
    _unsubscribe = None
    _closing = False

    @property
    def max_message_size(self) -> int:
        return MAX_WS_MESSAGE      # a bigger frame closes the socket (1009) before it is parsed

    def check_origin(self, origin: str) -> bool:
        # Credentials come only from the Authorization header, which a browser page cannot set on
        # a WebSocket: a cross-site page cannot act as anyone, so the origin proves nothing here.
        return True

    async def get(self, run_id: str, *args, **kwargs) -> None:
        try:
            ident = await self.authenticate()
            runs = run_manager(self.service)
            try:
                self.run = runs.get(ident.tenant, run_id)
            except NotFound:
                self.past = await self.blocking(runs.record, ident.tenant, run_id)
            self._since = check_since(self.get_query_argument("since", "0"))
        except PotluckError as e:
            self.answer_error(e)        # before the upgrade: a plain JSON answer, like every endpoint's
            return
        await super().get(run_id, *args, **kwargs)

    def open(self, run_id: str) -> None:
        if self.past is not None:
            # Its events are gone with the engine that ran it: the final word only.
            p = self.past
            when = datetime.fromisoformat(p["finished"]).timestamp() if p.get("finished") else None
            ev = {"seq": max(p.get("events") or 0, self._since), "time": when, "type": "status",
                  "state": p["state"]}
            if p.get("error"):
                ev["error"] = p["error"]
            IOLoop.current().add_callback(self._send_event, ev)
            return
        loop = IOLoop.current()

        def on_event(ev: dict) -> None:     # the run's thread (or this one, replaying): only schedule
            loop.add_callback(self._send_event, ev)
        self._unsubscribe = self.run.subscribe(on_event, since=self._since)

    def _send_event(self, ev: dict) -> None:
        if self._closing or self.ws_connection is None:
            return
        try:
            self.write_message(json.dumps(ev, allow_nan=False))
        except websocket.WebSocketClosedError:
            return
        if is_final(ev):
            self._closing = True
            self.close(1000, "the run has ended")

    async def on_message(self, message) -> None:
        try:
            if isinstance(message, bytes):
                try:
                    message = message.decode("utf-8")
                except UnicodeDecodeError:
                    raise BadRequest("a message to a run is JSON text (UTF-8)", code="invalid_json") from None
            value = parse_message(message)
            if self.run is None:        # only in the history: it ended before this engine started
                raise BadRequest(f"run {self.past['id']} has ended ({self.past['state']}); it takes no more "
                                 "messages", code="run_ended")
            self.run.send(value)
        except PotluckError as e:
            self._reply_error(e)

    def _reply_error(self, e: PotluckError) -> None:
        try:
            self.write_message(json.dumps({"type": "error", **e.to_json()}))
        except websocket.WebSocketClosedError:
            pass

    def on_close(self) -> None:
        self._closing = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

default_handlers = [
    (r"api/runs", RunsHandler),
    (r"api/runs/([^/]+)", RunHandler),
    (r"api/runs/([^/]+)/events", RunEventsHandler),
    (r"api/admin/runs", AdminRunsHandler),
    (r"api/admin/runs/([^/]+)/([^/]+)", AdminRunHandler),
]
