"""The history of inferlet runs: state, times, error and usage summary.

A run is written when it is created and at each change of state, so a run cut off by a crash
is found again at the next start (still in one of ``protocol.LIVE_STATES``) and marked failed.
Rows go in and come out in the shape of ``Run.to_json``.

Every engine of a hub shares this history, so each row records the engine that runs it
(``save_run(engine=)``): an engine that starts fails only its own unfinished runs (and rows from
before engines were recorded), never runs still live on another engine; an engine seen gone by the
others has its unfinished runs failed by name (``fail_engine_runs``).

A tenant's history is bounded (``prune_runs``, called as runs end), so starting runs without end
cannot grow the database without end. What it must never do: keep a run's source or output, or
return another tenant's run to a tenant (only ``list_runs(tenant=None)``, for admins, spans tenants).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from ..protocol import FAILED, LIVE_STATES
from .db import Database
from .tables import RunRecord, iso, utcnow


class RunHistory(Database):
    def save_run(self, run: dict[str, Any], engine: str | None = None) -> None:
        """Insert or update a run from its JSON (``Run.to_json``: id, owner, state, times as ISO),
        run by the engine named ``engine`` (None: unnamed, as before engines were recorded)."""
        values = {
            "tenant": run["owner"], "state": run["state"], "kind": run.get("kind") or "python",
            "created_at": _parse_iso(run.get("created")) or utcnow(),
            "started_at": _parse_iso(run.get("started")), "finished_at": _parse_iso(run.get("finished")),
            # A guest's exception text may hold NUL, which PostgreSQL text cannot.
            "error": (run.get("error") or None) and str(run["error"]).replace("\x00", "\\x00")[:2048],
            "usage": dict(run.get("usage") or {}), "events": int(run.get("events") or 0),
        }
        if engine is not None:
            values["engine"] = engine

        def work(s: Session) -> None:
            row = s.get(RunRecord, run["id"])
            if row is None:
                s.add(RunRecord(id=run["id"], **values))
            else:
                for k, v in values.items():
                    setattr(row, k, v)

        self._write(work)

    def get_run(self, tenant: str, run_id: str) -> dict[str, Any] | None:
        """One of ``tenant``'s runs, as ``Run.to_json`` shapes it; None if it is not theirs."""
        with self._session.begin() as s:
            row = s.get(RunRecord, run_id)
            return _run_json(row) if row is not None and row.tenant == tenant else None

    def list_runs(self, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Runs newest first: one tenant's, or (``tenant=None``, for admins) everyone's."""
        q = select(RunRecord).order_by(RunRecord.created_at.desc(), RunRecord.id).limit(limit)
        if tenant is not None:
            q = q.where(RunRecord.tenant == tenant)
        with self._session.begin() as s:
            return [_run_json(r) for r in s.scalars(q)]

    def prune_runs(self, tenant: str, keep: int) -> int:
        """Forget ``tenant``'s ended runs past its newest ``keep`` runs (a tenant's history stays bounded)."""
        with self._session.begin() as s:
            cut = s.scalar(select(RunRecord.created_at).where(RunRecord.tenant == tenant)
                           .order_by(RunRecord.created_at.desc(), RunRecord.id).offset(keep).limit(1))
            if cut is None:
                return 0
            return s.execute(delete(RunRecord).where(RunRecord.tenant == tenant, RunRecord.created_at <= cut,
                                                     RunRecord.state.not_in(LIVE_STATES))).rowcount

    def fail_unfinished_runs(self, error: str, engine: str | None = None) -> int:
        """Mark runs still queued or running as failed with ``error`` (at engine start): those of the
        engine named ``engine`` and those with no engine recorded; every one when ``engine`` is None."""
        return self._fail_live(error, None if engine is None else
                               or_(RunRecord.engine == engine, RunRecord.engine.is_(None)))

    def fail_engine_runs(self, engine: str, error: str) -> int:
        """Mark the runs still queued or running on the engine named ``engine`` as failed with ``error``
        (another engine saw it stop or go stale: nothing will finish them)."""
        return self._fail_live(error, RunRecord.engine == engine)

    def _fail_live(self, error: str, where) -> int:
        now = utcnow()
        q = select(RunRecord).where(RunRecord.state.in_(LIVE_STATES))
        if where is not None:
            q = q.where(where)
        with self._session.begin() as s:
            rows = list(s.scalars(q))
            for row in rows:
                row.state, row.error, row.finished_at = FAILED, error[:2048], now
            return len(rows)

def _parse_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _run_json(row: RunRecord) -> dict[str, Any]:
    return {"id": row.id, "owner": row.tenant, "state": row.state, "error": row.error,
            "created": iso(row.created_at), "started": iso(row.started_at), "finished": iso(row.finished_at),
            "usage": dict(row.usage or {}), "events": row.events, "kind": row.kind}
