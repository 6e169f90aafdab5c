"""``GET /api/me``: the caller's tenant, groups, effective quota (and where each value came from), usage.

The report is the engine's (``Engine.me``: live counters since this engine
started, the ledger's totals that survive restarts, and any override).
"""

from __future__ import annotations

from .base import APIHandler


class MeHandler(APIHandler):
    """``GET api/me``."""

    async def get(self) -> None:
        t = await self.tenant()
        self.write_json(await self.blocking(self.engine.me, t.name))


default_handlers = [
    (r"api/me", MeHandler),
]
