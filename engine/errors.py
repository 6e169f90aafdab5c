"""Errors a Potluck user can meet.

Every error carries an HTTP status and a stable machine-readable ``code``; the
message is one readable line for the user: what happened, which limit, what to
do. The HTTP layer turns them into ``{"error": {"code", "message"}}`` as they
are; nothing else in the engine formats errors for users.
"""

from __future__ import annotations


class PotluckError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None, **details):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details

    def to_json(self) -> dict:
        err = {"code": self.code, "message": self.message}
        err.update(self.details)
        return {"error": err}


class BadRequest(PotluckError):
    """The request itself is wrong (a type, a range, an unknown parameter)."""


class Unauthorized(PotluckError):
    """No valid credentials: the request could not be tied to a tenant."""
    status = 401
    code = "unauthorized"


class Forbidden(PotluckError):
    """Authenticated, but this tenant may not do this (e.g. an admin endpoint)."""
    status = 403
    code = "forbidden"


class NotFound(PotluckError):
    """Does not exist *in the caller's namespace*. Never says whether another tenant has it."""
    status = 404
    code = "not_found"


class QuotaExceeded(PotluckError):
    """A tenant's limit was hit; ``limit`` names the quota field, ``value`` its setting."""
    status = 429
    code = "quota_exceeded"

    retry_after: int | None = None    # seconds until retrying can succeed (the Retry-After header)

    def __init__(self, limit: str, value, message: str, *, status: int = 429):
        super().__init__(message, status=status, limit=limit, value=value)
        self.limit = limit
        self.value = value


class RequestTooLarge(QuotaExceeded):
    """A single request is over a per-request limit, or larger than a rate limit could ever admit
    (413 rather than 429: retrying will not help; the OpenAI door answers 400, as OpenAI does)."""
    code = "request_too_large"

    def __init__(self, limit: str, value, message: str):
        super().__init__(limit, value, message, status=413)


class Cancelled(PotluckError):
    status = 499
    code = "cancelled"


class EngineUnavailable(PotluckError):
    status = 503
    code = "engine_unavailable"
