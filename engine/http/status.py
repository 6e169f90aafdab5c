"""``GET /api/status`` and ``GET /api/spec.yaml``: about the service itself.

Both answer without a token: status is the readiness probe (and says nothing
about any tenant beyond a count), the spec is public documentation. The
engine's cumulative counters (``stats``: prefix-cache hit tokens, prefill and
decode totals) are shown to admins only: with one other tenant active, their
change between two probes would tell that tenant's cache hits and prompt
lengths.
"""

from __future__ import annotations

from importlib import resources

from ..errors import PotluckError
from .base import APIHandler


class StatusHandler(APIHandler):
    """``GET api/status``: the readiness probe."""

    public = True

    async def get(self) -> None:
        status = await self.blocking(self.engine.status)
        status["uptime_seconds"] = round(self.service.uptime(), 3)
        if not await self._caller_is_admin():
            status.pop("stats", None)
        self.write_json(status)

    async def _caller_is_admin(self) -> bool:
        if "Authorization" not in self.request.headers and "token" not in self.request.arguments:
            return False
        try:
            return (await self.authenticate()).is_admin
        except PotluckError:
            return False        # a bad credential on a public probe is just "not an admin"


class SpecHandler(APIHandler):
    """The OpenAPI 3 document of this API (``engine/openapi.yaml``), as tests check the server against."""

    public = True
    _spec: bytes | None = None

    async def get(self) -> None:
        if SpecHandler._spec is None:
            SpecHandler._spec = resources.files("potluck.engine").joinpath("openapi.yaml").read_bytes()
        self.set_header("Content-Type", "application/yaml; charset=utf-8")
        self.finish(SpecHandler._spec)


default_handlers = [
    (r"api/status", StatusHandler),
    (r"api/spec.yaml", SpecHandler),
]
