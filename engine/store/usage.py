"""Usage accounting: the hourly usage rows, and the ledger that fills them off the hot path.

This module owns both halves of one concern, because they share the five amounts
(``USAGE_FIELDS``) and the hour buckets and must never disagree about either:

- ``UsageRows``: per tenant and UTC hour, prefill and decode tokens, page-seconds, fuel and
  requests, added with ``col = col + n`` in SQL so concurrent writers never overwrite each other;
- ``UsageLedger``: what the batch loop calls (``record``, an in-memory add under a lock), and a
  daemon thread that writes the sums out every few seconds.

What it must never do: write to the database from ``record`` (the loop calls it per step), or
let a reader see a batch twice or not at all while it is being flushed.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .db import Database
from .tables import UsageRow, utcnow

log = logging.getLogger(__name__)

# The five amounts of the usage ledger, in one place so UsageRows and UsageLedger agree.
USAGE_FIELDS = ("prefill_tokens", "decode_tokens", "page_seconds", "fuel", "requests")


def hour_of(t: datetime) -> datetime:
    """The UTC hour a time falls in (naive times are taken as UTC)."""
    t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    return t.replace(minute=0, second=0, microsecond=0)


def zero_usage() -> dict[str, Any]:
    return {"prefill_tokens": 0, "decode_tokens": 0, "page_seconds": 0.0, "fuel": 0, "requests": 0}


class UsageRows(Database):
    def add_usage(
        self,
        tenant: str,
        hour: datetime,
        *,
        prefill_tokens: int = 0,
        decode_tokens: int = 0,
        page_seconds: float = 0.0,
        fuel: int = 0,
        requests: int = 0,
    ) -> None:
        """Add amounts to the tenant's row for that hour (``hour`` is truncated to the hour)."""
        hour = hour_of(hour)
        amounts = {
            "prefill_tokens": prefill_tokens,
            "decode_tokens": decode_tokens,
            "page_seconds": page_seconds,
            "fuel": fuel,
            "requests": requests,
        }

        def work(s: Session) -> None:
            pk = (UsageRow.tenant == tenant) & (UsageRow.hour == hour)
            if s.scalar(select(UsageRow.tenant).where(pk)) is None:
                s.add(UsageRow(tenant=tenant, hour=hour, **amounts))
            else:
                # col = col + n in SQL, so a concurrent writer's increment is never overwritten.
                adds = {f: getattr(UsageRow, f) + n for f, n in amounts.items()}
                s.execute(update(UsageRow).where(pk).values(**adds))

        self._write(work)

    def usage_totals(self, tenant: str, since: datetime | None = None) -> dict[str, Any]:
        """Sums for one tenant; ``since`` counts from the start of the hour it falls in."""
        return self._usage(since, tenant).get(tenant, zero_usage())

    def usage_all(self, since: datetime | None = None) -> dict[str, dict[str, Any]]:
        return self._usage(since, None)

    def _usage(self, since: datetime | None, tenant: str | None) -> dict[str, dict[str, Any]]:
        sums = [func.coalesce(func.sum(getattr(UsageRow, f)), 0) for f in USAGE_FIELDS]
        q = select(UsageRow.tenant, *sums).group_by(UsageRow.tenant)
        if tenant is not None:
            q = q.where(UsageRow.tenant == tenant)
        if since is not None:
            # Buckets are whole hours; including the one `since` falls in errs on the side of
            # counting too much, which is the safe side for a quota.
            q = q.where(UsageRow.hour >= hour_of(since))
        with self._session.begin() as s:
            return {
                name: {f: float(v) if f == "page_seconds" else int(v) for f, v in zip(USAGE_FIELDS, values)}
                for name, *values in s.execute(q)
            }


class UsageLedger:
    """Usage accounting that is cheap on the hot path and durable within seconds.

    ``record`` adds into an in-memory dict keyed by (tenant, UTC hour); a daemon thread writes
    the sums to the store every ``flush_interval`` seconds, and soon (within ``min_gap``
    seconds) after ``flush_soon``, which the engine calls when a request or run ends. Readers
    get persisted + pending, so a quota check sees usage the moment it is recorded.

    What a crash (SIGKILL, power loss) can lose is what is pending: the tokens and page-seconds
    of work still in progress since the last flush (at most ``flush_interval`` seconds of it),
    and the usage of work that ended in the last ``min_gap`` seconds. A clean stop loses nothing.
    """

    def __init__(self, store: UsageRows, flush_interval: float = 5.0, min_gap: float = 0.25) -> None:
        self._store = store
        self._flush_interval = flush_interval
        self._min_gap = min_gap
        self._kick = threading.Event()    # flush_soon: wake the flush thread before its interval
        self._pending: dict[tuple[str, datetime], dict[str, Any]] = {}
        self._lock = threading.Lock()  # guards _pending; held only for dict adds
        # One flush at a time, and readers wait for it: while a batch is being written it is in
        # neither _pending nor (fully) the database, and a reader would miss or double-count it.
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(
        self,
        tenant: str,
        *,
        prefill_tokens: int = 0,
        decode_tokens: int = 0,
        page_seconds: float = 0.0,
        fuel: int = 0,
        requests: int = 0,
    ) -> None:
        key = (tenant, hour_of(utcnow()))
        with self._lock:
            u = self._pending.get(key)
            if u is None:
                u = self._pending[key] = zero_usage()
            u["prefill_tokens"] += prefill_tokens
            u["decode_tokens"] += decode_tokens
            u["page_seconds"] += page_seconds
            u["fuel"] += fuel
            u["requests"] += requests

    def flush_soon(self) -> None:
        """Ask for a flush within ``min_gap`` seconds (cheap: sets an event; many calls, one write)."""
        self._kick.set()

    def flush(self) -> bool:
        """Write pending usage to the store. On failure keep what was not written; False."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            items = list(batch.items())
            for i, ((tenant, hour), amounts) in enumerate(items):
                try:
                    self._store.add_usage(tenant, hour, **amounts)
                except Exception:
                    log.exception("usage flush failed; keeping %d rows for the next flush", len(items) - i)
                    self._requeue(items[i:])
                    return False
            return True

    def _requeue(self, items: list[tuple[tuple[str, datetime], dict[str, Any]]]) -> None:
        # Add back rather than assign: record() may have added to the same keys meanwhile.
        with self._lock:
            for key, amounts in items:
                u = self._pending.setdefault(key, zero_usage())
                for f in USAGE_FIELDS:
                    u[f] += amounts[f]

    def totals(self, tenant: str, since: datetime | None = None) -> dict[str, Any]:
        """Persisted + pending usage of one tenant (since the hour ``since`` falls in)."""
        return self._merged(since, tenant).get(tenant, zero_usage())

    def totals_all(self, since: datetime | None = None) -> dict[str, dict[str, Any]]:
        """Persisted + pending usage of every tenant."""
        return self._merged(since, None)

    def _merged(self, since: datetime | None, only: str | None) -> dict[str, dict[str, Any]]:
        first_hour = hour_of(since) if since is not None else None
        with self._flush_lock:
            if only is None:
                out = self._store.usage_all(since)
            else:
                out = {only: self._store.usage_totals(only, since)}
            with self._lock:
                for (tenant, hour), amounts in self._pending.items():
                    if only is not None and tenant != only:
                        continue
                    if first_hour is not None and hour < first_hour:
                        continue
                    u = out.setdefault(tenant, zero_usage())
                    for f in USAGE_FIELDS:
                        u[f] += amounts[f]
        return out

    def tokens_since(self, tenant: str, since: datetime) -> int:
        """Prefill + decode tokens since a time (for tokens_per_day)."""
        t = self.totals(tenant, since)
        return int(t["prefill_tokens"] + t["decode_tokens"])

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="potluck-usage-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._kick.wait(self._flush_interval)
            if self._stop.is_set():
                return
            self._kick.clear()
            self.flush()  # logs and keeps the amounts on failure; the thread must not die
            # At most one write per min_gap however many requests end: the database is not
            # written per request under load, and kicks in the gap are served by one flush.
            self._stop.wait(min(self._min_gap, self._flush_interval))

    def close(self) -> None:
        """Stop the flush thread and write what is pending one last time."""
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not self.flush():
            log.error("usage not persisted at close: %r", self._pending)
