"""The audit log of submissions and admin actions.

This module owns appending to and reading the ``audit_log`` table. Writers that must be audited
atomically with their own change (quota overrides) add an ``AuditEntry`` in their own
transaction instead of calling ``audit``.

What it must never do: update or delete entries; the log only grows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from .db import Database
from .tables import AuditEntry, iso


class AuditLog(Database):
    def audit(self, actor: str, action: str, target: str = "", detail: dict[str, Any] | None = None) -> None:
        with self._session.begin() as s:
            s.add(AuditEntry(actor=actor, action=action, target=target, detail=detail))

    def audit_log(self, limit: int = 100, actor: str | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if actor is not None:
            q = q.where(AuditEntry.actor == actor)
        with self._session.begin() as s:
            return [
                {"id": e.id, "ts": iso(e.ts), "actor": e.actor, "action": e.action,
                 "target": e.target, "detail": e.detail}
                for e in s.scalars(q)
            ]
