"""What the kernel client raises: one readable line each, never an HTTP library's exception.

``PotluckError`` (what happened, which limit, what to do) and ``Interrupted`` (the
kernel's stop button); ``error_from`` reads the engine's JSON error body, and
``connected_then_dropped`` tells an engine that never answered from one that
broke the connection midway (only the first is safe to send elsewhere).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from .client import Completion


class PotluckError(Exception):
    """One readable line: what went wrong, and the limit when a quota was hit."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "error",
                 limit: str | None = None, value: Any = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.limit = limit
        self.value = value

    def __str__(self) -> str:
        if self.limit and self.limit not in self.message:
            return f"{self.message} (limit {self.limit} = {self.value})"
        return self.message


class Interrupted(KeyboardInterrupt):
    """The user interrupted a call: one line; for a generation, ``partial`` holds its text so far."""

    def __init__(self, message: str, partial: "Completion | None" = None):
        super().__init__(message)
        self.message = message
        self.partial = partial

    def __str__(self) -> str:
        return self.message


def error_from(r: requests.Response) -> PotluckError:
    try:
        err = r.json()["error"]
        e = PotluckError(err.get("message") or r.reason, status=r.status_code, code=err.get("code", "error"),
                         limit=err.get("limit"), value=err.get("value"))
        e.engine = err.get("engine")      # a 421's: the engine that serves this tenant
        return e
    except Exception:
        text = " ".join(r.text.split())[:200]
        return PotluckError(f"the engine answered {r.status_code} {r.reason}: {text}", status=r.status_code)


def connected_then_dropped(e: requests.ConnectionError) -> bool:
    """True when the request reached the engine and the connection then broke (vs never connected)."""
    seen, cause = set(), e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        name = type(cause).__name__
        if name in ("NewConnectionError", "ConnectTimeoutError") or isinstance(cause, ConnectionRefusedError):
            return False
        if name in ("RemoteDisconnected", "ProtocolError") or isinstance(cause, (ConnectionResetError,
                                                                                 BrokenPipeError)):
            return True
        cause = cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else (
            cause.__context__ or getattr(cause, "reason", None))
    return False
