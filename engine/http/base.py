"""What every handler shares: who is calling, the body, errors as JSON.

``ServiceHandler`` is the base of every handler, the runs WebSocket included:
the service, authentication, work off the IOLoop, and errors. Every error
leaves as ``{"error": {"code", "message", ...}}`` with its status, from
``PotluckError`` as the engine raised it; nothing else invents a second error
format.

``APIHandler`` adds admission and the body. A request is admitted in
``prepare``: its credential resolves to an ``Identity`` (or 401, or 403 on
admin handlers) unless the handler is marked ``public``. A refusal is answered
only once the body has been read: answering while the client is still sending
makes the server close a socket with unread data, which resets the connection
under the client before it reads the answer. So ``prepare`` records the
refusal and every handler method (wrapped in ``__init_subclass__``, so none
can forget) raises it before running. The body is streamed in and capped at
``max_body_size``: past the cap it is read and thrown away, then refused with
413.

Handlers never block the IOLoop: engine calls that wait on the batch loop, the
database or a tokenizer go through ``blocking``, onto the request threads
(``fairpool.FairPool``) in the caller's lane: its tenant's once it is known,
its credential's while the token is being checked. Each request's first
blocking call is its door: a tenant whose calls in flight plus running
generations reach its ``max_concurrent_requests`` gets the 429 there, before
it takes a thread. This module imports nothing that imports it back (the
``Service`` type only for type checking).

On an engine of a pool, the door comes first: as soon as the caller is known
(``authenticate``), a tenant endpoint on an engine that does not serve the
caller is refused with 421 ``wrong_engine`` naming the engine and pool that do
(``placement.Placement.admit``: the cached view, no database, no thread, nothing
reserved). Answered by any engine: public handlers (status), admin-only ones,
and those the service lists as ``potluck_any_engine`` (``/api/me``, ``/metrics``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from tornado import web

from ..auth import Identity
from ..errors import BadRequest, Forbidden, NotFound, PotluckError, QuotaExceeded
from .fairpool import LANE, SERVICE_LANE, Lane, admission_lane, tenant_lane

if TYPE_CHECKING:
    from ..engine import Engine
    from ..service import Service

JSON_TYPE = "application/json; charset=utf-8"

# A "\udXXX" escape in the raw text: only then is the parsed body walked for lone surrogates.
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")

# JSON types by the names the OpenAPI document uses.
_KINDS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}
_ARTICLE = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
            "array": "an array", "object": "an object"}


def json_type(value: Any) -> str:
    for kind in ("boolean", "integer", "number", "string", "array", "object"):
        if _KINDS[kind](value):
            return kind
    return "null"


def check_fields(body: dict, spec: dict[str, str | tuple[str, ...]], *, required: tuple[str, ...] = (),
                 nullable: bool = True, where: str = "the request") -> dict:
    """Check a body's top-level fields against ``spec`` (field -> JSON type(s)).

    Unknown fields are refused (a typo must not silently fall back to a default).
    With ``nullable`` (the OpenAI endpoints: clients send ``null`` for "not set")
    ``null`` means "not given"; without it ``null`` is a wrong type. Returns the
    given, non-null fields. Values inside a field (ranges, list items) are the
    engine's to check.
    """
    for name in body:
        if name not in spec:
            raise BadRequest(f"unknown parameter {name!r} in {where}; known: {', '.join(spec)}",
                             code="unknown_parameter", param=name)
    out = {}
    for name, kinds in spec.items():
        value = body.get(name)
        if value is None and name in body and not nullable:
            raise BadRequest(f"{name} must not be null (leave it out for the default)", code="invalid_type",
                             param=name)
        if value is None:
            if name in required:
                raise BadRequest(f"{where} needs {name!r}", code="missing_parameter", param=name)
            continue
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        if not any(_KINDS[k](value) for k in kinds):
            raise BadRequest(f"{name} must be {' or '.join(_ARTICLE[k] for k in kinds)}, got {json_type(value)}",
                             code="invalid_type", param=name)
        out[name] = value
    return out


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    return False


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float | int:
    # JSON Schema counts 8.0 as an integer, and some clients send it so: take it as 8.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return int(value) if value.is_integer() else value


_METHODS = ("get", "post", "put", "delete", "patch")


def _admitted(method):
    """Run a handler method only for an admitted request (else raise its refusal)."""
    @functools.wraps(method)
    async def run(self: "APIHandler", *args, **kwargs):
        if self._refusal is not None:
            raise self._refusal
        return await method(self, *args, **kwargs)
    run.admitted = True
    return run


class ServiceHandler(web.RequestHandler):
    """Base of every handler, HTTP or WebSocket: the service, the caller, errors as JSON."""

    identity: Identity | None = None
    _through_door = False

    @property
    def service(self) -> "Service":
        return self.settings["service"]

    @property
    def engine(self) -> "Engine":
        return self.service.engine

    async def authenticate(self) -> Identity:
        """The caller's identity from the request's credential, or ``Unauthorized``.

        Checking the token runs in the credential's admission lane (the authenticator
        submits to the pool with the current context's ``LANE``); afterwards this request's
        work, ``blocking`` or submitted by anything else it calls, runs in its tenant's lane.
        """
        turn = LANE.set(admission_lane(self.request.headers.get("Authorization", "")))
        try:
            identity = await self.service.authenticator.authenticate(self.request)
        finally:
            LANE.reset(turn)
        self.identity = identity
        LANE.set(tenant_lane(identity.tenant))     # this request's task only (asyncio copies contexts)
        self._door(identity)
        return identity

    def _door(self, identity: Identity) -> None:
        """``WrongEngine`` (421) when another engine of the hub serves this tenant (see the module's docstring)."""
        placement = self.service.placement
        if (placement is None or getattr(self, "public", False) or getattr(self, "admin_only", False)
                or isinstance(self, self.settings.get("potluck_any_engine", ()))):
            return
        placement.admit(identity.tenant, identity.groups)

    def lane(self) -> Lane:
        """Whose turn this request's blocking work waits for: its tenant's, or before that its credential's."""
        if self.identity is not None:
            return tenant_lane(self.identity.tenant)
        return admission_lane(self.request.headers.get("Authorization", ""))

    async def blocking(self, fn, *args):
        """Run ``fn(*args)`` (it may wait on the batch loop, the database, a tokenizer) on a request thread.

        The call waits its lane's turn, so another tenant's flood never holds it up by more
        than one call per busy lane. The request's first call is its door (see ``_admit``).
        """
        lane = self.lane()
        if not self._through_door:
            self._through_door = True
            if self.identity is not None:
                self._admit(self.identity.tenant, lane)
        pool = self.service.executor
        return await asyncio.wrap_future(pool.submit_to(lane, fn, *args, gone=self._client_gone))

    def _admit(self, tenant: str, lane: Lane) -> None:
        """429 at the door, before taking a thread, when the tenant's work in flight is at its limit.

        Counted: its blocking calls queued or running (``pending``) and its running
        generations (the engine counts those). Only the first call of a request is checked,
        so a request once admitted is never refused half done.
        """
        # A tenant not yet resolved has no quota yet (its first call resolves it) and is still
        # held to its share of the threads.
        t = self.engine.known_tenant(tenant)
        limit = t.quota.max_concurrent_requests if t is not None else None
        if limit is None:
            return
        waiting, generating = self.service.executor.pending(lane), t.active_requests
        if waiting + generating >= limit:
            raise QuotaExceeded("max_concurrent_requests", limit,
                                f"you already have {waiting + generating} requests in flight ({generating} "
                                f"generating, {waiting} waiting for the engine), your max_concurrent_requests "
                                f"limit {limit}; wait for one to finish")

    def _client_gone(self) -> bool:
        # Called on a request thread just before the call starts: a plain read of the
        # stream's closed flag (tornado notices a closed connection when it next reads or writes).
        stream = getattr(self.request.connection, "stream", None)
        return stream is not None and stream.closed()

    def release(self, fn, *args) -> None:
        """Run cleanup that frees engine resources (cancelling a generation) on the service's own lane.

        Never in the tenant's lane: a cancel must not wait behind the very flood it would relieve.
        """
        self.service.executor.submit_to(SERVICE_LANE, fn, *args)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, PotluckError):
            self.answer_error(exc)
            return
        if isinstance(exc, web.HTTPError) and status_code < 500:
            status = status_code
            reason = exc.log_message or HTTPStatus(status_code).phrase
            code = {404: "not_found", 405: "method_not_allowed"}.get(status_code, "bad_request")
            if status_code == 405:
                self.set_header("Allow", ", ".join(self.allowed_methods()))
                reason = f"{self.request.method} is not allowed here; allowed: {', '.join(self.allowed_methods())}"
            body = {"error": {"code": code, "message": reason}}
        else:
            status = 500 if status_code < 400 else status_code
            body = {"error": {"code": "internal_error",
                              "message": "internal error in the engine service; the log has the details"}}
        self._finish_json_error(status, body)

    def answer_error(self, err: PotluckError) -> None:
        """Answer with ``err``: its status and JSON body (and the Bearer challenge on 401)."""
        if err.status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="potluck"')
        if err.status == 429:
            # Clients (the openai SDK, LiteLLM) wait this long before retrying.
            self.set_header("Retry-After", str(getattr(err, "retry_after", None) or 1))
        self._finish_json_error(err.status, err.to_json())

    def _finish_json_error(self, status: int, body: dict) -> None:
        self.clear_header("Content-Encoding")
        self.set_header("Content-Type", JSON_TYPE)
        self.set_status(status)
        self.finish(json.dumps(body))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, PotluckError) and value.status < 500:
            return          # a user's mistake, answered; not a server problem
        super().log_exception(typ, value, tb)

    def allowed_methods(self) -> list[str]:
        base = web.RequestHandler
        return [m for m in ("GET", "POST", "PUT", "DELETE")
                if getattr(type(self), m.lower()) is not getattr(base, m.lower())]


@web.stream_request_body
class APIHandler(ServiceHandler):
    """Base of every HTTP handler: admission in ``prepare``, JSON in and out."""

    public = False          # True: no credential needed (status, spec)
    admin_only = False      # True: 403 unless the identity is an admin

    _refusal: PotluckError | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in _METHODS:
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "admitted", False):
                setattr(cls, name, _admitted(fn))

    def check_xsrf_cookie(self) -> None:
        # Token-authenticated API: no cookies, so no cross-site request forgery to check.
        pass

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", JSON_TYPE)
        self.set_header("Cache-Control", "no-store")

    # ------------------------------------------------------------ admission
    async def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._received = 0
        limit = self.service.max_body_size
        length = self.request.headers.get("Content-Length")
        self._too_large = False
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise BadRequest("the Content-Length header is not a number", code="invalid_body")
            if declared > self.service.body_discard_limit:
                # Too big to drain: refuse now (the connection closes after the answer).
                raise self._body_error(declared)
            self._too_large = declared > limit
        self.request.connection.set_max_body_size(self.service.body_discard_limit)
        if self.public:
            return
        try:
            self.identity = await self.authenticate()
            if self.admin_only and not self.identity.is_admin:
                raise Forbidden("this endpoint is for admins only")
        except PotluckError as e:
            self._refusal = e       # raised by the handler method, once the body is in

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self.service.max_body_size:
            self._too_large = True
            self._chunks = []
        if not self._too_large:
            self._chunks.append(chunk)

    def _body_error(self, size: int) -> PotluckError:
        limit = self.service.max_body_size
        return PotluckError(f"the request body is {size} bytes; the limit is {limit} bytes",
                            code="body_too_large", status=413, limit="max_body_size", value=limit)

    def json_body(self) -> dict:
        """The body as a JSON object, or a 4xx naming what is wrong with it."""
        if self._too_large:
            raise self._body_error(self._received)
        raw = b"".join(self._chunks)
        if not raw.strip():
            raise BadRequest("the request needs a JSON object body", code="invalid_json")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRequest(f"the body is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})",
                             code="invalid_utf8")
        try:
            body = json.loads(text, parse_constant=_no_constants, parse_float=_parse_float)
        except (ValueError, RecursionError) as e:
            raise BadRequest(f"the body is not valid JSON: {e}", code="invalid_json")
        if not isinstance(body, dict):
            raise BadRequest(f"the body must be a JSON object, got {json_type(body)}", code="invalid_json")
        # A "\ud800" escape parses to a string no tokenizer or database can encode.
        if _SURROGATE.search(text) and _has_lone_surrogate(body):
            raise BadRequest("the body contains an unpaired UTF-16 surrogate (\\ud800-\\udfff escape): "
                             "not a Unicode character", code="invalid_utf8")
        return body

    # ------------------------------------------------------------ helpers
    async def tenant(self):
        """The caller's engine tenant, its quota resolved from the identity."""
        ident = self.identity
        return await self.blocking(self.engine.tenant, ident.tenant, ident.groups, ident.is_admin)

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(obj, allow_nan=False))

    def on_finish(self) -> None:
        self.service.metrics.observe_request(type(self).__name__, self.request.method, self.get_status())


class NotFoundHandler(APIHandler):
    """Anything no route matched: a JSON 404 (before authentication: says nothing about tenants)."""

    public = True

    async def get(self, *args) -> None:
        raise NotFound(f"no such endpoint: {self.request.method} {self.request.path}")

    post = put = delete = patch = get


def finite(x: float) -> float:
    """JSON has no infinity: a log-probability of exactly zero probability is clamped."""
    return x if math.isfinite(x) else -9999.0
