"""Admin endpoints: every tenant's usage and quota, per-user quota overrides, usage over time.

Admins only (403 for everyone else), checked at admission. An override is a
partial quota that replaces the previous override of that user (fields not in
it come from the defaults and the user's groups); it is stored, so it
survives a restart, and audited with the admin's name. The reports and the
overrides are the engine's (``Engine.admin_tenants``, ``set_user_override``);
the usage history is the ledger's (``UsageLedger.history``, every engine's),
summed per Hub group over its members as the Hub lists them (those the engine
has seen when the Hub cannot say). This module checks names and
times and shapes the answers. Admins' view of runs is in ``runs.py``.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from ..errors import BadRequest, NotFound
from ..hubgroups import kv_pool_warnings
from ..store import NAME_CHARS, USAGE_FIELDS
from ..store.tables import utcnow
from ..store.usage import HOUR_WINDOW, RESOLUTIONS, bucket_of, sum_history
from .base import APIHandler

# What `GET api/admin/usage` shows without `since`: the last hour of minutes, the last week of hours.
DEFAULT_SPAN = {"minute": timedelta(hours=1), "hour": timedelta(days=7)}


def _check_user(name: str) -> str:
    if not name or len(name) > NAME_CHARS:
        raise BadRequest(f"a user name is 1 to {NAME_CHARS} characters", code="invalid_name", param="name")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        # NUL would reach the database (PostgreSQL refuses it with a 500); no Hub name has these.
        raise BadRequest("a user name has no control characters", code="invalid_name", param="name")
    return name


class TenantsHandler(APIHandler):
    """``GET api/admin/tenants``: every tenant live or known to the store, with usage and override."""

    admin_only = True

    async def get(self) -> None:
        tenants = await self.blocking(self.engine.admin_tenants)
        # Each Hub group's quota in effect, its read error (the last good quota applies) and warnings;
        # every quota an admin set whose kv_pages the KV pool makes moot.
        groups = self.service.authenticator.group_report()
        warnings = kv_pool_warnings(self.engine.pool.num_slots, default=self.engine.config.default_quota,
                                    groups={g: r["quota"] for g, r in groups.items()},
                                    overrides={t["name"]: t["override"] for t in tenants if t.get("override")})
        self.write_json({"tenants": tenants, "groups": groups, "warnings": warnings})


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


def _check_time(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        # An offset can push a time at the calendar's edge out of it (0001-01-01T00:00+01:00).
        return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise BadRequest(f"{name} must be an ISO 8601 time such as 2026-01-31T12:00:00Z, got {text[:40]!r}",
                         code="invalid_time", param=name) from None


def _hours(span: timedelta) -> str:
    return f"{span.total_seconds() / 3600:g} h"


class UsageHistoryHandler(APIHandler):
    """``GET api/admin/usage?resolution=minute|hour&since=ISO&until=ISO``: usage over time, per user and group.

    Each series lists only the buckets with usage (oldest first), as rows of ``columns``.
    A group's series is the sum of its members' (as the Hub lists them, cached like the group's
    quota; while the Hub cannot say, the members the engine has seen in identities since it
    started); its ``quota`` and ``error`` are the group's ``potluck`` property as the engine last
    read it from the Hub (none standalone).
    """

    admin_only = True

    async def get(self) -> None:
        resolution = self.get_query_argument("resolution", "minute")
        if resolution not in RESOLUTIONS:
            raise BadRequest(f"resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution[:40]!r}",
                             code="invalid_parameter", param="resolution")
        now = utcnow()
        since = _check_time("since", self.get_query_argument("since", None)) or now - DEFAULT_SPAN[resolution]
        until = _check_time("until", self.get_query_argument("until", None))
        if until is not None and until < since:
            raise BadRequest("until is before since", code="invalid_time", param="until")
        reach = self.service.ledger.minute_retention if resolution == "minute" else HOUR_WINDOW
        # One bucket of slack: a client asking for exactly the window a moment ago is not refused.
        if since < now - reach - timedelta(seconds=RESOLUTIONS[resolution]):
            raise BadRequest(f"since is {_hours(now - since)} ago; the {resolution} history reaches back "
                             f"{_hours(reach)}" + ("; ask for resolution=hour" if resolution == "minute" else ""),
                             code="invalid_time", param="since")
        history = await self.blocking(self.service.ledger.history, resolution, since, until)
        reports = await self.blocking(self.engine.tenant_reports)
        members: dict[str, list[str]] = {}
        for r in reports:
            for g in r.get("groups") or ():
                if not g.startswith("scope:"):     # a custom scope's quota, not a Hub group
                    members.setdefault(g, []).append(r["name"])
        # Each group's quota in effect, read error and warnings, as the Hub authenticator last read them.
        book = self.service.authenticator.group_report()
        names = sorted(set(members) | set(book))
        listed = await asyncio.gather(*(self.service.authenticator.group_members(g) for g in names))
        groups = {}
        for g, hub_members in zip(names, listed):
            seen = book.get(g) or {}
            who = sorted(hub_members if hub_members is not None else members.get(g, []))
            groups[g] = {"members": who, "quota": seen.get("quota"),
                         "error": seen.get("error"), "warnings": seen.get("warnings") or [],
                         "series": _rows(sum_history(history, who))}
        self.write_json({
            "resolution": resolution,
            "bucket_seconds": RESOLUTIONS[resolution],
            "since": bucket_of(since, resolution).isoformat(),
            "until": (until or now).isoformat(),
            "columns": ["start", *USAGE_FIELDS],
            "users": {name: _rows(buckets) for name, buckets in sorted(history.items())},
            "groups": groups,
        })


def _rows(buckets: dict) -> list[list]:
    return [[t.isoformat(), *(round(a[f], 3) if f == "page_seconds" else a[f] for f in USAGE_FIELDS)]
            for t, a in buckets.items()]


default_handlers = [
    (r"api/admin/tenants", TenantsHandler),
    (r"api/admin/quotas/users/([^/]+)", QuotaOverrideHandler),
    (r"api/admin/usage", UsageHistoryHandler),
]
