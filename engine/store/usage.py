"""Usage accounting: the usage rows per hour and per minute, and the ledger that fills them off the hot path.

This module owns both halves of one concern, because they share the five amounts
(``USAGE_FIELDS``) and the buckets and must never disagree about either:

- ``UsageRows``: per tenant and UTC hour (``usage``: the accounting record, kept) and per tenant
  and UTC minute (``usage_minutes``: the recent history, pruned after ``MINUTE_RETENTION``),
  prefill and decode tokens, page-seconds, fuel and requests, both added in one transaction
  with ``col = col + n`` in SQL so concurrent writers never overwrite each other;
- ``UsageLedger``: what the batch loop calls (``record``, an in-memory add under a lock), and a
  daemon thread that writes the sums out every few seconds and prunes old minutes;
- the usage history (``UsageLedger.history``) that the admin dashboard plots, at minute
  resolution (the last ``MINUTE_RETENTION``) or hour resolution (the last ``HOUR_WINDOW``).

What it must never do: write to the database from ``record`` (the loop calls it per step), or
let a reader see a batch twice or not at all while it is being flushed.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from .db import Database
from .tables import UsageMinuteRow, UsageRow, utcnow

log = logging.getLogger(__name__)

# The five amounts of the usage ledger, in one place so UsageRows and UsageLedger agree.
USAGE_FIELDS = ("prefill_tokens", "decode_tokens", "page_seconds", "fuel", "requests")


# The history's resolutions and their bucket lengths in seconds.
RESOLUTIONS = {"minute": 60, "hour": 3600}
# Minute rows older than this are deleted (48 h x 60 = 2880 rows per active tenant at most).
MINUTE_RETENTION = timedelta(hours=48)
# How far back the hour history reaches. The hour rows themselves are the accounting record
# (totals across restarts, tokens_per_day) and are kept: one row per active tenant and hour.
HOUR_WINDOW = timedelta(days=90)
PRUNE_EVERY = 600.0     # seconds between prunes of old minute rows (by the flush thread)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def hour_of(t: datetime) -> datetime:
    """The UTC hour a time falls in (naive times are taken as UTC)."""
    return _utc(t).replace(minute=0, second=0, microsecond=0)


def minute_of(t: datetime) -> datetime:
    """The UTC minute a time falls in (naive times are taken as UTC)."""
    return _utc(t).replace(second=0, microsecond=0)


def bucket_of(t: datetime, resolution: str) -> datetime:
    return hour_of(t) if resolution == "hour" else minute_of(t)


def zero_usage() -> dict[str, Any]:
    return {"prefill_tokens": 0, "decode_tokens": 0, "page_seconds": 0.0, "fuel": 0, "requests": 0}


class UsageRows(Database):
    def add_usage(
        self,
        tenant: str,
        at: datetime,
        *,
        prefill_tokens: int = 0,
        decode_tokens: int = 0,
        page_seconds: float = 0.0,
        fuel: int = 0,
        requests: int = 0,
    ) -> None:
        """Add amounts to the tenant's rows for the hour and the minute ``at`` falls in (one transaction)."""
        amounts = {
            "prefill_tokens": prefill_tokens,
            "decode_tokens": decode_tokens,
            "page_seconds": page_seconds,
            "fuel": fuel,
            "requests": requests,
        }

        def work(s: Session) -> None:
            _add_to(s, UsageRow, UsageRow.hour, "hour", tenant, hour_of(at), amounts)
            _add_to(s, UsageMinuteRow, UsageMinuteRow.minute, "minute", tenant, minute_of(at), amounts)

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


    def usage_history(self, resolution: str, since: datetime,
                      until: datetime | None = None) -> dict[str, dict[datetime, dict[str, Any]]]:
        """Every tenant's amounts per bucket (``minute`` or ``hour``) from the bucket ``since`` falls in."""
        table, col = (UsageRow, UsageRow.hour) if resolution == "hour" else (UsageMinuteRow, UsageMinuteRow.minute)
        q = select(table.tenant, col, *(getattr(table, f) for f in USAGE_FIELDS)).where(
            col >= bucket_of(since, resolution))
        if until is not None:
            q = q.where(col <= until)
        out: dict[str, dict[datetime, dict[str, Any]]] = {}
        with self._session.begin() as s:
            for tenant, bucket, *values in s.execute(q.order_by(col)):
                out.setdefault(tenant, {})[bucket] = _amounts(values)
        return out

    def prune_minutes(self, before: datetime) -> int:
        """Delete minute rows older than ``before``; how many went."""
        with self._session.begin() as s:
            return s.execute(delete(UsageMinuteRow).where(UsageMinuteRow.minute < before)).rowcount or 0


def _amounts(values: Iterable[Any]) -> dict[str, Any]:
    return {f: float(v or 0) if f == "page_seconds" else int(v or 0) for f, v in zip(USAGE_FIELDS, values)}


def _add_to(s: Session, table: type, col: Any, col_name: str, tenant: str, bucket: datetime,
            amounts: dict[str, Any]) -> None:
    """Add to a bucket's row, creating it if needed, in one statement (``col = col + n`` in SQL).

    Every engine of a hub flushes into the same rows: an upsert (INSERT ... ON CONFLICT DO UPDATE,
    on PostgreSQL and SQLite) neither loses an engine's amounts nor fails on the primary key when
    two engines create the same tenant's minute at once.
    """
    insert = _UPSERT.get(s.get_bind().dialect.name)
    if insert is not None:
        stmt = insert(table).values(tenant=tenant, **{col_name: bucket}, **amounts)
        s.execute(stmt.on_conflict_do_update(
            index_elements=["tenant", col_name],
            set_={f: getattr(table, f) + getattr(stmt.excluded, f) for f in amounts}))
        return
    # Other databases: select, then insert or add (a concurrent insert is retried by _write).
    pk = (table.tenant == tenant) & (col == bucket)
    if s.scalar(select(table.tenant).where(pk)) is None:
        s.add(table(tenant=tenant, **{col_name: bucket}, **amounts))
        s.flush()
    else:
        s.execute(update(table).where(pk).values(**{f: getattr(table, f) + n for f, n in amounts.items()}))


_UPSERT = {"postgresql": postgresql_insert, "sqlite": sqlite_insert}


def sum_history(history: dict[str, dict[datetime, dict[str, Any]]],
                tenants: Iterable[str]) -> dict[datetime, dict[str, Any]]:
    """The buckets of several tenants added together (a group's usage over time)."""
    out: dict[datetime, dict[str, Any]] = {}
    for name in tenants:
        for bucket, amounts in history.get(name, {}).items():
            u = out.setdefault(bucket, zero_usage())
            for f in USAGE_FIELDS:
                u[f] += amounts[f]
    return dict(sorted(out.items()))


class UsageLedger:
    """Usage accounting that is cheap on the hot path and durable within seconds.

    ``record`` adds into an in-memory dict keyed by (tenant, UTC minute); a daemon thread writes
    the sums to the store every ``flush_interval`` seconds, and soon (within ``min_gap``
    seconds) after ``flush_soon``, which the engine calls when a request or run ends. Readers
    get persisted + pending, so a quota check sees usage the moment it is recorded. Every
    reader goes to the database (nothing is cached), so with several engines on one database
    each sees the others' usage as of their last flush: a finished request's within about
    ``min_gap``, work still in progress within ``flush_interval``.

    What a crash (SIGKILL, power loss) can lose is what is pending: the tokens and page-seconds
    of work still in progress since the last flush (at most ``flush_interval`` seconds of it),
    and the usage of work that ended in the last ``min_gap`` seconds. A clean stop loses nothing.
    """

    def __init__(self, store: UsageRows, flush_interval: float = 5.0, min_gap: float = 0.25,
                 minute_retention: timedelta = MINUTE_RETENTION) -> None:
        self._store = store
        self._flush_interval = flush_interval
        self._min_gap = min_gap
        self.minute_retention = minute_retention
        self._pruned_at = 0.0     # time.monotonic() of the last prune; 0: prune at the first flush
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
        key = (tenant, minute_of(utcnow()))
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
            for i, ((tenant, minute), amounts) in enumerate(items):
                try:
                    self._store.add_usage(tenant, minute, **amounts)
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
                for (tenant, minute), amounts in self._pending.items():
                    if only is not None and tenant != only:
                        continue
                    if first_hour is not None and hour_of(minute) < first_hour:
                        continue
                    u = out.setdefault(tenant, zero_usage())
                    for f in USAGE_FIELDS:
                        u[f] += amounts[f]
        return out

    def history(self, resolution: str, since: datetime,
                until: datetime | None = None) -> dict[str, dict[datetime, dict[str, Any]]]:
        """Persisted + pending usage per tenant and bucket (``minute`` or ``hour``), oldest first."""
        first = bucket_of(since, resolution)
        with self._flush_lock:
            out = self._store.usage_history(resolution, since, until)
            with self._lock:
                pending = [(key, dict(amounts)) for key, amounts in self._pending.items()]
        for (tenant, minute), amounts in pending:
            bucket = bucket_of(minute, resolution)
            if bucket < first or (until is not None and bucket > until):
                continue
            u = out.setdefault(tenant, {}).setdefault(bucket, zero_usage())
            for f in USAGE_FIELDS:
                u[f] += amounts[f]
        return {tenant: dict(sorted(b.items())) for tenant, b in out.items()}

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
            self._prune()
            # At most one write per min_gap however many requests end: the database is not
            # written per request under load, and kicks in the gap are served by one flush.
            self._stop.wait(min(self._min_gap, self._flush_interval))

    def _prune(self) -> None:
        now = time.monotonic()
        if self._pruned_at and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        try:
            gone = self._store.prune_minutes(utcnow() - self.minute_retention)
        except Exception:
            log.exception("pruning old usage minutes failed; trying again in %.0f s", PRUNE_EVERY)
            return
        if gone:
            log.debug("pruned %d usage minute rows older than %s", gone, self.minute_retention)

    def close(self) -> None:
        """Stop the flush thread and write what is pending one last time."""
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not self.flush():
            log.error("usage not persisted at close: %r", self._pending)
