"""``GET /api/status`` and ``GET /api/spec.yaml``: about the service itself.

Both answer without a token: status is the readiness probe, the spec is
public documentation. What status tells anyone but an admin reveals no single
tenant: with one other tenant active, exact free pages, queue depth or
running generations would be that tenant's KV footprint and activity (and
the cumulative ``stats``, its prompt lengths and prefix-cache hits). So a
caller who is not an engine admin (no token, a bad one, or a plain tenant's)
gets the engine's description as it is and its load rounded down to the
``granularity`` the answer states (``coarse``); swap counters and ``stats``
are for admins only, who see everything exactly.
"""

from __future__ import annotations

from importlib import resources

from ..errors import PotluckError
from .base import APIHandler

# Load shown to non-admins is floored to these steps: one tenant's requests or prompt cannot move it.
COARSE_REQUESTS = 8         # queue_depth, running_generations
COARSE_TENANTS = 4          # active_tenants
COARSE_POOL_PARTS = 8       # KV pages in steps of 1/8 of the pool
ADMIN_ONLY = ("stats",)
ADMIN_ONLY_KV = ("pages_on_host", "swaps_out", "swaps_in")


def _floor(n, step: int):
    return n // step * step if isinstance(n, int) else n


def coarse(status: dict) -> dict:
    """The status as a non-admin sees it: load floored to steps no single tenant can move."""
    out = {k: v for k, v in status.items() if k not in ADMIN_ONLY}
    kv = dict(out.get("kv") or {})
    page_step = max(1, int(kv.get("total_pages") or 0) // COARSE_POOL_PARTS)
    for k in ADMIN_ONLY_KV:
        kv.pop(k, None)
    for k in ("free_pages", "used_pages"):
        if k in kv:
            kv[k] = _floor(kv[k], page_step)
    if kv:
        out["kv"] = kv
    for k in ("queue_depth", "running_generations"):
        if k in out:
            out[k] = _floor(out[k], COARSE_REQUESTS)
    if "active_tenants" in out:
        out["active_tenants"] = _floor(out["active_tenants"], COARSE_TENANTS)
    out["coarse"] = True
    out["granularity"] = {"kv_pages": page_step, "requests": COARSE_REQUESTS, "tenants": COARSE_TENANTS}
    return out


class StatusHandler(APIHandler):
    """``GET api/status``: the readiness probe."""

    public = True

    async def get(self) -> None:
        status = await self.blocking(self.engine.status)
        status["uptime_seconds"] = round(self.service.uptime(), 3)
        status["kv"]["memory_bytes"] = self.engine.pool.memory_bytes      # sized at start, never changes
        if self.service.placement is not None:      # which engine this is: no tenant's data
            status["engine"] = self.service.placement.describe()
        if await self._caller_is_admin():
            status["coarse"] = False
        else:
            status = coarse(status)
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
