"""The engines of a hub: which are alive, in which pool, under what load.

Every engine of a hub shares one database; each keeps one row in ``engines`` (its name is the
key: ``potluck-<pool>-<index>``, stable across restarts). An engine registers when it starts,
writes a heartbeat every few seconds (with a small load summary: queue depth, KV pages used and
total, requests active), and marks itself stopped when it stops cleanly. An engine is *live*
when it has not stopped and its last heartbeat is at most ``stale_seconds`` old, so one that
crashed drops out after ``stale_seconds`` and one that stopped cleanly at once.

Time: engines may run on different hosts, whose clocks need not agree. Heartbeats are therefore
stamped, and compared, with the *database's* clock (``now()``: one clock for the whole hub),
never the engine's own. Every method takes ``now`` only so the tests can drive the clock.

What it must never do: decide who serves whom (``placement.py`` does, from ``live_engines``), or
be called on a request's path (the placement thread calls it and caches what it read).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .db import Database
from .tables import EngineRow


def _db_now(s: Session, now: datetime | None) -> datetime:
    """``now`` if given (tests), else the database's clock, as aware UTC."""
    if now is None:
        now = s.scalar(select(func.now()))      # SQLite: CURRENT_TIMESTAMP, naive UTC; PostgreSQL: aware
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)


def _alive(row: EngineRow, now: datetime, stale_seconds: float) -> bool:
    return row.stopped_at is None and row.heartbeat_at >= now - timedelta(seconds=stale_seconds)


class EngineRows(Database):
    def register_engine(self, name: str, pool: str, accelerator: str = "", *, now: datetime | None = None) -> bool:
        """This engine starts: its row (re)made live. True if a live row by that name was there already
        (another engine with the same name, or this one restarted within ``stale_seconds``)."""
        def work(s: Session) -> bool:
            t = _db_now(s, now)
            row = s.get(EngineRow, name)
            was_live = row is not None and row.stopped_at is None
            if row is None:
                row = EngineRow(name=name)
                s.add(row)
            row.pool, row.accelerator, row.load = pool, accelerator, None
            row.started_at = row.heartbeat_at = t
            row.stopped_at = None
            s.flush()
            return was_live
        return self._write(work)

    def engine_heartbeat(self, name: str, load: dict[str, Any] | None = None, *,
                         now: datetime | None = None) -> None:
        """This engine is alive (its row's ``heartbeat_at`` is now), under ``load``."""
        with self._session.begin() as s:
            t = _db_now(s, now)
            s.execute(update(EngineRow).where(EngineRow.name == name).values(heartbeat_at=t, load=load))

    def mark_engine_stopped(self, name: str, *, now: datetime | None = None) -> None:
        """This engine stopped cleanly: not live from now on (its tenants move at once)."""
        with self._session.begin() as s:
            t = _db_now(s, now)
            s.execute(update(EngineRow).where(EngineRow.name == name).values(stopped_at=t))

    def live_engines(self, pool: str, stale_seconds: float, *, now: datetime | None = None) -> list[str]:
        """The names of the pool's live engines, sorted."""
        return sorted(e["name"] for e in self.list_engines(stale_seconds, now=now)
                      if e["alive"] and e["pool"] == pool)

    def list_engines(self, stale_seconds: float, *, now: datetime | None = None) -> list[dict[str, Any]]:
        """Every engine that ever registered, by pool and name, with ``alive`` judged by the database's clock."""
        with self._session.begin() as s:
            t = _db_now(s, now)
            rows = s.scalars(select(EngineRow).order_by(EngineRow.pool, EngineRow.name)).all()
            return [{
                "name": r.name, "pool": r.pool, "accelerator": r.accelerator,
                "alive": _alive(r, t, stale_seconds),
                "started_at": r.started_at.isoformat(), "heartbeat_at": r.heartbeat_at.isoformat(),
                "heartbeat_age_seconds": round(max(0.0, (t - r.heartbeat_at).total_seconds()), 3),
                "stopped_at": r.stopped_at.isoformat() if r.stopped_at is not None else None,
                "load": dict(r.load) if r.load else None,
            } for r in rows]
