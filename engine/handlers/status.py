"""``GET /api/status`` and ``GET /api/spec.yaml``: about the service itself.

Both answer without a token: status is the readiness probe (and says nothing
about any tenant beyond a count), the spec is public documentation.
"""

from __future__ import annotations

from importlib import resources

from .base import APIHandler


class StatusHandler(APIHandler):
    public = True

    async def get(self) -> None:
        status = await self.blocking(self.engine.status)
        status["uptime_seconds"] = round(self.service.uptime(), 3)
        self.write_json(status)


class SpecHandler(APIHandler):
    """The OpenAPI 3 document of this API (``engine/openapi.yaml``), as tests check the server against."""

    public = True
    _spec: bytes | None = None

    async def get(self) -> None:
        if SpecHandler._spec is None:
            SpecHandler._spec = resources.files("potluck.engine").joinpath("openapi.yaml").read_bytes()
        self.set_header("Content-Type", "application/yaml; charset=utf-8")
        self.finish(SpecHandler._spec)
