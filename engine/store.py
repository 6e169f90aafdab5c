"""Durable state of the engine: everything that must survive a restart.

The store owns, in one SQL database (``db_url``, SQLite by default, PostgreSQL for large hubs):

- per-user quota overrides set through the admin API,
- the usage ledger (per tenant and hour: prefill and decode tokens, page-seconds, fuel, requests),
- the audit log of submissions and admin actions,
- each tenant's key-value store,
- standalone-mode API tokens (only their sha256 is kept),
- saved contexts as token lists, so they can be re-filled after a restart,
- the history of inferlet runs (state, times, error, usage summary; never source or output),
  written when a run is created and at each change of state, so a run cut off by a crash is
  found again at the next start and marked failed.

What it must never do: touch tensors or KV pages, or be called per token from the batch loop.
The loop only calls :meth:`UsageLedger.record`, an in-memory add under a lock; a background
thread writes the sums out every few seconds.

Every tenant-scoped method takes the tenant name and filters by it, so no method can return
another tenant's rows. Every public method runs in its own short transaction, so a ``Store``
may be shared by many threads. Timestamps are stored as naive UTC and handed back as aware UTC;
list-style methods return JSON-ready dicts (timestamps as ISO 8601 strings).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sys
import threading
from array import array
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    TypeDecorator,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)

KV_MAX_KEY_CHARS = 256
KV_MAX_VALUE_BYTES = 1 << 20  # 1 MiB
NAME_CHARS = 255  # JupyterHub user names fit in 255 characters

# The five amounts of the usage ledger, in one place so Store and UsageLedger agree.
USAGE_FIELDS = ("prefill_tokens", "decode_tokens", "page_seconds", "fuel", "requests")

# resolve_token writes last_used at most this often: a token is checked on every request,
# and a write per request would serialise all requests on the database.
_LAST_USED_EVERY = timedelta(minutes=1)

T = TypeVar("T")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _hour_of(t: datetime) -> datetime:
    """The UTC hour a time falls in (naive times are taken as UTC)."""
    t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    return t.replace(minute=0, second=0, microsecond=0)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _zero_usage() -> dict[str, Any]:
    return {"prefill_tokens": 0, "decode_tokens": 0, "page_seconds": 0.0, "fuel": 0, "requests": 0}


def _check_key(what: str, key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{what} must be a non-empty string")
    if len(key) > KV_MAX_KEY_CHARS:
        raise ValueError(f"{what} is {len(key)} characters; the limit is {KV_MAX_KEY_CHARS}")


class UTCDateTime(TypeDecorator[datetime]):
    """Naive UTC in the database, aware UTC in Python.

    SQLite keeps no time zone, so storing naive UTC everywhere makes SQLite and PostgreSQL
    behave the same and keeps comparisons in SQL correct.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=timezone.utc) if value is not None else None


# --------------------------------------------------------------------------- tables


class Base(DeclarativeBase):
    pass


class QuotaOverride(Base):
    __tablename__ = "quota_overrides"

    user: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_utcnow)
    updated_by: Mapped[str] = mapped_column(String(NAME_CHARS))


class UsageRow(Base):
    __tablename__ = "usage"

    tenant: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    # BigInteger: fuel (wasm instructions) passes 2**31 within an hour.
    prefill_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    decode_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    page_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    fuel: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, default=_utcnow)
    actor: Mapped[str] = mapped_column(String(NAME_CHARS), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(1024), default="")
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class KvEntry(Base):
    __tablename__ = "kv"

    tenant: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    key: Mapped[str] = mapped_column(String(KV_MAX_KEY_CHARS), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class TokenRecord(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_CHARS), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_utcnow)
    last_used: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SavedContextRow(Base):
    __tablename__ = "saved_contexts"

    tenant: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    name: Mapped[str] = mapped_column(String(KV_MAX_KEY_CHARS), primary_key=True)
    tokens: Mapped[bytes] = mapped_column(LargeBinary)  # little-endian int32, see _pack_tokens
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_utcnow)


class RunRecord(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(NAME_CHARS), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="python")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    events: Mapped[int] = mapped_column(Integer, default=0)


# Run states that are not final: a run left in one of them at start was cut off by a crash.
RUN_LIVE_STATES = ("queued", "running")


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _pack_tokens(tokens: list[int]) -> bytes:
    try:
        packed = array("i", tokens)
    except OverflowError as e:
        raise ValueError("token ids must fit in a signed 32-bit integer") from e
    if sys.byteorder == "big":  # the stored format is little-endian on every host
        packed.byteswap()
    return packed.tobytes()


def _unpack_tokens(blob: bytes) -> list[int]:
    packed = array("i")
    packed.frombytes(blob)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tolist()


# array('i') is the C int; the stored format needs it to be 4 bytes.
assert array("i").itemsize == 4, "saved contexts need a 4-byte C int"


# --------------------------------------------------------------------------- store


class Store:
    """The engine's database. One per engine; share it between threads."""

    def __init__(self, db_url: str, *, kv_max_value_bytes: int = KV_MAX_VALUE_BYTES) -> None:
        self.kv_max_value_bytes = kv_max_value_bytes
        url = make_url(db_url)
        kwargs: dict[str, Any] = {}
        is_sqlite = url.get_backend_name() == "sqlite"
        if is_sqlite:
            # Sessions are short and may run on any thread; SQLite's own check would refuse that.
            kwargs["connect_args"] = {"check_same_thread": False}
            if url.database in (None, "", ":memory:"):
                # An in-memory database exists per connection: share the one connection.
                kwargs["poolclass"] = StaticPool
            elif not url.database.startswith("file:"):
                # A fresh data dir should just work rather than fail with "unable to open".
                Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._engine = create_engine(url, **kwargs)
        if is_sqlite:
            event.listen(self._engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self._engine)
        self._session = sessionmaker(self._engine, expire_on_commit=False)

    def close(self) -> None:
        self._engine.dispose()

    def _write(self, work: Callable[[Session], T]) -> T:
        """Run a read-then-write transaction, once more if a concurrent insert beat us.

        Select-then-insert is portable but racy: two writers may both see no row and both
        insert. The loser gets IntegrityError; on the retry it sees the winner's row.
        """
        try:
            with self._session.begin() as s:
                return work(s)
        except IntegrityError:
            with self._session.begin() as s:
                return work(s)

    # ---- quota overrides

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
                row.fields, row.updated_at, row.updated_by = fields, _utcnow(), actor
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

    # ---- usage ledger

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
        hour = _hour_of(hour)
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
        return self._usage(since, tenant).get(tenant, _zero_usage())

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
            q = q.where(UsageRow.hour >= _hour_of(since))
        with self._session.begin() as s:
            return {
                name: {f: float(v) if f == "page_seconds" else int(v) for f, v in zip(USAGE_FIELDS, values)}
                for name, *values in s.execute(q)
            }

    # ---- audit log

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
                {"id": e.id, "ts": _iso(e.ts), "actor": e.actor, "action": e.action,
                 "target": e.target, "detail": e.detail}
                for e in s.scalars(q)
            ]

    # ---- per-tenant key-value store

    def kv_get(self, tenant: str, key: str) -> bytes | None:
        with self._session.begin() as s:
            row = s.get(KvEntry, (tenant, key))
            return bytes(row.value) if row is not None else None

    def kv_put(self, tenant: str, key: str, value: bytes) -> None:
        _check_key("key", key)
        value = bytes(value)
        if len(value) > self.kv_max_value_bytes:
            raise ValueError(f"value is {len(value)} bytes; the limit is {self.kv_max_value_bytes} bytes")

        def work(s: Session) -> None:
            row = s.get(KvEntry, (tenant, key))
            if row is None:
                s.add(KvEntry(tenant=tenant, key=key, value=value))
            else:
                row.value = value

        self._write(work)

    def kv_delete(self, tenant: str, key: str) -> bool:
        with self._session.begin() as s:
            result = s.execute(delete(KvEntry).where(KvEntry.tenant == tenant, KvEntry.key == key))
            return result.rowcount > 0

    def kv_keys(self, tenant: str, prefix: str = "") -> list[str]:
        q = select(KvEntry.key).where(KvEntry.tenant == tenant).order_by(KvEntry.key)
        if prefix:
            # autoescape: a user's "%" or "_" is a character, not a wildcard.
            q = q.where(KvEntry.key.startswith(prefix, autoescape=True))
        with self._session.begin() as s:
            return list(s.scalars(q))

    # ---- standalone API tokens

    def create_token(self, name: str, is_admin: bool = False) -> str:
        """A fresh token, shown once: only its sha256 is stored."""
        if not isinstance(name, str) or not name:
            raise ValueError("token name must be a non-empty string")
        token = secrets.token_hex(32)
        with self._session.begin() as s:
            s.add(TokenRecord(name=name, token_hash=_hash_token(token), is_admin=is_admin))
        return token

    def resolve_token(self, token: str) -> tuple[str, bool] | None:
        """(name, is_admin) for a valid token, else None."""
        if not isinstance(token, str) or not token:
            return None
        # Looking up the hash, not the token, means no timing leak from a string compare.
        with self._session.begin() as s:
            rec = s.scalar(select(TokenRecord).where(TokenRecord.token_hash == _hash_token(token)))
            if rec is None:
                return None
            now = _utcnow()
            if rec.last_used is None or now - rec.last_used >= _LAST_USED_EVERY:
                rec.last_used = now
            return rec.name, rec.is_admin

    def list_tokens(self) -> list[dict[str, Any]]:
        q = select(TokenRecord).order_by(TokenRecord.name, TokenRecord.id)
        with self._session.begin() as s:
            return [
                {"name": r.name, "is_admin": r.is_admin, "created_at": _iso(r.created_at),
                 "last_used": _iso(r.last_used)}
                for r in s.scalars(q)
            ]

    def revoke_tokens(self, name: str) -> int:
        """Remove every token of that name; how many were removed."""
        with self._session.begin() as s:
            return s.execute(delete(TokenRecord).where(TokenRecord.name == name)).rowcount

    # ---- saved contexts

    def save_context(self, tenant: str, name: str, tokens: list[int]) -> None:
        """Store (or replace) a saved context's token ids."""
        _check_key("context name", name)
        blob = _pack_tokens(tokens)

        def work(s: Session) -> None:
            row = s.get(SavedContextRow, (tenant, name))
            if row is None:
                s.add(SavedContextRow(tenant=tenant, name=name, tokens=blob))
            else:
                row.tokens, row.created_at = blob, _utcnow()

        self._write(work)

    def load_context(self, tenant: str, name: str) -> list[int] | None:
        with self._session.begin() as s:
            row = s.get(SavedContextRow, (tenant, name))
            return _unpack_tokens(row.tokens) if row is not None else None

    def delete_context(self, tenant: str, name: str) -> bool:
        with self._session.begin() as s:
            result = s.execute(
                delete(SavedContextRow).where(SavedContextRow.tenant == tenant, SavedContextRow.name == name)
            )
            return result.rowcount > 0

    def list_contexts(self, tenant: str) -> list[dict[str, Any]]:
        # Count from the blob's length in SQL, so listing does not load every token list.
        q = (
            select(SavedContextRow.name, func.length(SavedContextRow.tokens), SavedContextRow.created_at)
            .where(SavedContextRow.tenant == tenant)
            .order_by(SavedContextRow.name)
        )
        with self._session.begin() as s:
            return [
                {"name": name, "n_tokens": int(n_bytes) // 4, "created_at": _iso(created)}
                for name, n_bytes, created in s.execute(q)
            ]


    # ---- run history

    def save_run(self, run: dict[str, Any]) -> None:
        """Insert or update a run from its JSON (``Run.to_json``: id, owner, state, times as ISO)."""
        values = {
            "tenant": run["owner"], "state": run["state"], "kind": run.get("kind") or "python",
            "created_at": _parse_iso(run.get("created")) or _utcnow(),
            "started_at": _parse_iso(run.get("started")), "finished_at": _parse_iso(run.get("finished")),
            "error": (run.get("error") or None) and str(run["error"])[:2048],
            "usage": dict(run.get("usage") or {}), "events": int(run.get("events") or 0),
        }

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

    def fail_unfinished_runs(self, error: str) -> int:
        """Mark every run still queued or running as failed with ``error`` (at engine start)."""
        now = _utcnow()
        with self._session.begin() as s:
            rows = list(s.scalars(select(RunRecord).where(RunRecord.state.in_(RUN_LIVE_STATES))))
            for row in rows:
                row.state, row.error, row.finished_at = "failed", error[:2048], now
            return len(rows)


def _parse_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _run_json(row: RunRecord) -> dict[str, Any]:
    return {"id": row.id, "owner": row.tenant, "state": row.state, "error": row.error,
            "created": _iso(row.created_at), "started": _iso(row.started_at), "finished": _iso(row.finished_at),
            "usage": dict(row.usage or {}), "events": row.events, "kind": row.kind}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (the HTTP API) never wait for the ledger's writer, nor it for them.
    cursor.execute("PRAGMA journal_mode=WAL")
    # SQLite leaves foreign keys off unless asked, per connection.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# --------------------------------------------------------------------------- ledger


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

    def __init__(self, store: Store, flush_interval: float = 5.0, min_gap: float = 0.25) -> None:
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
        key = (tenant, _hour_of(_utcnow()))
        with self._lock:
            u = self._pending.get(key)
            if u is None:
                u = self._pending[key] = _zero_usage()
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
                u = self._pending.setdefault(key, _zero_usage())
                for f in USAGE_FIELDS:
                    u[f] += amounts[f]

    def totals(self, tenant: str, since: datetime | None = None) -> dict[str, Any]:
        """Persisted + pending usage of one tenant (since the hour ``since`` falls in)."""
        return self._merged(since, tenant).get(tenant, _zero_usage())

    def totals_all(self, since: datetime | None = None) -> dict[str, dict[str, Any]]:
        """Persisted + pending usage of every tenant."""
        return self._merged(since, None)

    def _merged(self, since: datetime | None, only: str | None) -> dict[str, dict[str, Any]]:
        first_hour = _hour_of(since) if since is not None else None
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
                    u = out.setdefault(tenant, _zero_usage())
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
