"""Admin endpoints: every tenant's usage and quota, per-user quota overrides.

Admins only (403 for everyone else), checked at admission. An override is a
partial quota that replaces the previous override of that user (fields not in
it come from the defaults and the user's groups); it is stored, so it
survives a restart, and audited with the admin's name. The reports and the
overrides are the engine's (``Engine.admin_tenants``, ``set_user_override``);
this module only checks names. Admins' view of runs is in ``runs.py``.
"""

from __future__ import annotations

from ..errors import BadRequest, NotFound
from ..store import NAME_CHARS
from .base import APIHandler


def _check_user(name: str) -> str:
    if not name or len(name) > NAME_CHARS:
        raise BadRequest(f"a user name is 1 to {NAME_CHARS} characters", code="invalid_name", param="name")
    return name


class TenantsHandler(APIHandler):
    """``GET api/admin/tenants``: every tenant live or known to the store, with usage and override."""

    admin_only = True

    async def get(self) -> None:
        self.write_json({"tenants": await self.blocking(self.engine.admin_tenants)})


class QuotaOverrideHandler(APIHandler):
    """``GET/PUT/DELETE api/admin/quotas/users/{name}``: one user's quota override."""

    admin_only = True

    async def get(self, name: str) -> None:
        _check_user(name)
        fields = await self.blocking(self.engine.get_user_override, name)
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


default_handlers = [
    (r"api/admin/tenants", TenantsHandler),
    (r"api/admin/quotas/users/([^/]+)", QuotaOverrideHandler),
]
