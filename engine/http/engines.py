"""``GET /api/admin/engines``: every engine of the hub, as the shared database has them (admins).

Each engine's name, pool, accelerator, whether it is alive (heartbeat within
``engine_stale_seconds`` by the database's clock, not stopped), its last heartbeat and the load
it reported then (queue depth, KV pages used and total, requests active). Any engine answers
for all of them: the list is read from the ``engines`` table (``store/engines.py``), here on a
request thread, never from the placement's cached view (which is for routing).
"""

from __future__ import annotations

from .base import APIHandler


class EnginesHandler(APIHandler):
    """``GET api/admin/engines``."""

    admin_only = True

    async def get(self) -> None:
        placement = self.service.placement
        stale = placement.stale_seconds if placement is not None else 6.0
        engines = await self.blocking(self.service.store.list_engines, stale)
        self.write_json({"engines": engines, "stale_seconds": stale,
                         "this": placement.describe() if placement is not None else None})


default_handlers = [
    (r"api/admin/engines", EnginesHandler),
]
