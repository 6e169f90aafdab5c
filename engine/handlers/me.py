"""``GET /api/me``: the caller's tenant, groups, effective quota (and where each value came from), usage."""

from __future__ import annotations

from .base import APIHandler


class MeHandler(APIHandler):
    async def get(self) -> None:
        t = await self.tenant()
        report = await self.blocking(self.engine.tenant_report, t.name)
        ledger = self.service.ledger
        # Live counters are since this engine started; the ledger's totals survive restarts.
        report["usage_total"] = await self.blocking(ledger.totals, t.name)
        report["override"] = await self.blocking(self.service.store.get_override, t.name)
        self.write_json(report)
