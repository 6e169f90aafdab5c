"""The store's SQL tables, and how time and names are kept in them.

This module owns the schema: every table class on one ``Base``, the column sizes, and
``UTCDateTime`` (naive UTC in the database, aware UTC in Python). Reading the schema of the
whole store means reading this one file; the logic that reads and writes each table lives in
the concern's own module (``quotas``, ``usage``, ``audit``, ``keyvalue``, ``tokens``,
``contexts``, ``runs``, ``engines``), which keeps each of those short and keeps migrations in one place.

What it must never do: hold queries or rules. Table and column names are the on-disk format of
databases already in use; changing one is a migration, not a rename.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Integer, LargeBinary, String, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAME_CHARS = 255  # JupyterHub user names fit in 255 characters
MAX_KEY_CHARS = 256  # a key of the tenant key-value store, or a saved context's name


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(t: datetime | None) -> str | None:
    """A stored time as list-style methods hand it back (ISO 8601, aware UTC)."""
    return t.isoformat() if t is not None else None


def check_key(what: str, key: str) -> None:
    """Refuse a key or name that is empty or would not fit its column."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"{what} must be a non-empty string")
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(f"{what} is {len(key)} characters; the limit is {MAX_KEY_CHARS}")
    if "\x00" in key:      # PostgreSQL text cannot hold NUL: refused on every database alike
        raise ValueError(f"{what} must not contain a NUL character")


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


class Base(DeclarativeBase):
    pass


class QuotaOverride(Base):
    __tablename__ = "quota_overrides"

    user: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
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
    ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(NAME_CHARS), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(1024), default="")
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class KeyValueRow(Base):
    """One value of a tenant's key-value store (not the model's KV cache)."""

    __tablename__ = "kv"  # the table's name predates the class's: existing databases use it

    tenant: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_KEY_CHARS), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class TokenRecord(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_CHARS), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SavedContextRow(Base):
    __tablename__ = "saved_contexts"

    tenant: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_KEY_CHARS), primary_key=True)
    tokens: Mapped[bytes] = mapped_column(LargeBinary)  # little-endian int32, see contexts.pack_tokens
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


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
    # The engine of the hub that ran it (``EngineConfig.engine_name``); NULL: written before engines
    # recorded it (revision 0003).
    engine: Mapped[str | None] = mapped_column(String(NAME_CHARS), nullable=True, index=True)


class GroupQuotaRow(Base):
    """A Hub group's last ``potluck`` quota the engine could read (see ``groups.py``)."""

    __tablename__ = "group_quotas"

    group: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsageMinuteRow(Base):
    """The amounts of ``UsageRow`` per tenant and UTC minute: the recent usage history (pruned)."""

    __tablename__ = "usage_minutes"

    tenant: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True, index=True)
    prefill_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    decode_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    page_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    fuel: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)


class EngineRow(Base):
    """One engine of the hub (see ``engines.py``): its pool, when it last said it was alive, its load."""

    __tablename__ = "engines"

    name: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    pool: Mapped[str] = mapped_column(String(64), index=True, default="")
    accelerator: Mapped[str] = mapped_column(String(64), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    load: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
