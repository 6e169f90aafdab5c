"""``GET /api/me``: the caller's tenant, groups, effective quota (and where each value came from), usage.

The report is the engine's (``Engine.me``: live counters since this engine
started, the ledger's totals that survive restarts, and any override), plus
``route``: the pool and engine that serve the caller now. Every engine of a
hub answers it for every tenant (clients ask it "where am I served?"), so it
is no tenant endpoint behind the door (``service.ANY_ENGINE``).
"""

from __future__ import annotations

from .base import APIHandler


class MeHandler(APIHandler):
    """``GET api/me``."""

    async def get(self) -> None:
        t = await self.tenant()
        report = await self.blocking(self.engine.me, t.name)
        placement = self.service.placement
        if placement is not None:
            report["route"] = placement.route(t.name, self.identity.groups).to_json()
        self.write_json(report)


default_handlers = [
    (r"api/me", MeHandler),
]
