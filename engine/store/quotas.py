"""Per-user quota overrides set through the admin API.

This module owns the ``quota_overrides`` rows: an override is a whole set of Quota fields that
replaces (never merges with) the previous one, and every change is audited in the same
transaction, so the audit log can never miss or invent an override.

What it must never do: validate quota fields or resolve a user's quota (``quota.py`` does
both); here an override is a plain dict.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import Database
from .tables import AuditEntry, QuotaOverride, utcnow


class QuotaOverrides(Database):
    def get_override(self, user: str) -> dict[str, Any] | None:
        with self._session.begin() as s:
            row = s.get(QuotaOverride, user)
            return dict(row.fields) if row is not None else None

    def set_override(self, user: str, fields: dict[str, Any], actor: str) -> None:
        """Replace the user's override (not merge); audited in the same transaction."""
        if not isinstance(fields, dict):
            raise TypeError("quota override fields must be a dict")
        fields = dict(fields)

        def work(s: Session) -> None:
            row = s.get(QuotaOverride, user)
            if row is None:
                s.add(QuotaOverride(user=user, fields=fields, updated_by=actor))
            else:
                row.fields, row.updated_at, row.updated_by = fields, utcnow(), actor
            s.add(AuditEntry(actor=actor, action="quota.set", target=user, detail=fields))

        self._write(work)

    def delete_override(self, user: str, actor: str) -> bool:
        with self._session.begin() as s:
            row = s.get(QuotaOverride, user)
            if row is None:
                return False
            s.delete(row)
            s.add(AuditEntry(actor=actor, action="quota.delete", target=user, detail=dict(row.fields)))
            return True

    def list_overrides(self) -> dict[str, dict[str, Any]]:
        with self._session.begin() as s:
            rows = s.scalars(select(QuotaOverride).order_by(QuotaOverride.user))
            return {r.user: dict(r.fields) for r in rows}
