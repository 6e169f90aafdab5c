"""One tenant's quota-checked writes, serialised across every engine that shares the database.

A quota counted in SQL (``kv_store_bytes``, ``saved_contexts``) is checked and written in one
transaction; two engines doing that at once for the same tenant could each count the other's
row as absent and pass the limit together. ``lock_tenant`` takes a PostgreSQL advisory lock
held until the transaction ends, keyed by the concern and the tenant, so such transactions of
one tenant run one after the other, hub-wide; other tenants never wait. On SQLite it takes no lock: several engines share a
PostgreSQL database, and within one engine the callers serialise these writes themselves.

What it must never do: lock anything but the calling transaction's own key, or outlive it.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.orm import Session


def lock_key(concern: str, tenant: str) -> int:
    """A signed 64-bit key (what ``pg_advisory_xact_lock`` takes) for one concern of one tenant."""
    digest = hashlib.blake2b(f"potluck\x00{concern}\x00{tenant}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_tenant(s: Session, concern: str, tenant: str) -> None:
    """Wait for, then hold until this transaction ends, the hub-wide lock of ``concern`` for ``tenant``."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(concern, tenant)})
