"""Each Hub group's last good ``potluck`` quota, so an unreadable value never loosens a limit.

The Hub owns group quotas (its admin page edits them); the engine only reads them. When an
admin then types a value the engine cannot read, the engine keeps applying that group's last
quota it *could* read: this module is where that quota is kept, so it survives an engine restart
(a restart while the value is still broken must not fall back to the defaults either).

What it must never do: parse or validate quota fields (``engine/hubgroups.py`` does), or decide
which value is in effect; here a group's quota is a plain dict, written only when it changes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from .db import Database
from .tables import GroupQuotaRow, utcnow


class GroupQuotas(Database):
    def get_group_quota(self, group: str) -> dict[str, Any] | None:
        """The group's last good quota fields, or None if none was ever read."""
        with self._session.begin() as s:
            row = s.get(GroupQuotaRow, group)
            return dict(row.fields) if row is not None else None

    def set_group_quota(self, group: str, fields: dict[str, Any]) -> None:
        """Remember ``fields`` as the group's last good quota (replacing the previous one)."""
        fields = dict(fields)

        def work(s) -> None:
            row = s.get(GroupQuotaRow, group)
            if row is None:
                s.add(GroupQuotaRow(group=group, fields=fields))
            else:
                row.fields, row.updated_at = fields, utcnow()

        self._write(work)

    def list_group_quotas(self) -> dict[str, dict[str, Any]]:
        with self._session.begin() as s:
            rows = s.scalars(select(GroupQuotaRow).order_by(GroupQuotaRow.group))
            return {r.group: dict(r.fields) for r in rows}
