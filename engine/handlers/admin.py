"""Admin endpoints: every tenant's usage and quota, per-user quota overrides.

Admins only (403 for everyone else), checked at admission. An override is a
partial quota that replaces the previous override of that user (fields not in
it come from the defaults and the user's groups); it is stored, so it
survives a restart, and audited with the admin's name.
"""

from __future__ import annotations

from ..errors import BadRequest, NotFound
from ..store import NAME_CHARS
from .base import APIHandler


class TenantsHandler(APIHandler):
    admin_only = True

    async def get(self) -> None:
        svc = self.service

        def collect():
            live = {r["name"]: r for r in svc.engine.tenant_reports()}
            overrides = svc.store.list_overrides()
            totals = svc.ledger.totals_all()
            return live, overrides, totals
        live, overrides, totals = await self.blocking(collect)
        tenants = []
        for name in sorted(set(live) | set(overrides) | set(totals)):
            r = live.get(name) or {"name": name, "groups": None, "is_admin": None, "quota": None,
                                   "quota_source": None, "usage": None, "kv_pages": 0}
            r["live"] = name in live
            r["override"] = overrides.get(name)
            r["usage_total"] = totals.get(name)
            tenants.append(r)
        self.write_json({"tenants": tenants})


def _check_user(name: str) -> str:
    if not name or len(name) > NAME_CHARS:
        raise BadRequest(f"a user name is 1 to {NAME_CHARS} characters", code="invalid_name", param="name")
    return name


class QuotaOverrideHandler(APIHandler):
    admin_only = True

    async def get(self, name: str) -> None:
        _check_user(name)
        fields = await self.blocking(self.service.store.get_override, name)
        if fields is None:
            raise NotFound(f"no quota override for user {name!r}")
        self.write_json({"name": name, "override": fields})

    async def put(self, name: str) -> None:
        _check_user(name)
        body = self.json_body()
        fields = await self.blocking(self.engine.set_user_override, name, body, self.identity.tenant)
        self.write_json({"name": name, "override": fields})

    async def delete(self, name: str) -> None:
        _check_user(name)
        existed = await self.blocking(self.engine.delete_user_override, name, self.identity.tenant)
        if not existed:
            raise NotFound(f"no quota override for user {name!r}")
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()
