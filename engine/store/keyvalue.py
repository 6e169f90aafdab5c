"""Each tenant's key-value store: small named byte values that inferlets keep between runs.

This is not the model's KV cache (that is pages of attention keys and values, in the engine's
page pool); here a "key" is a tenant's string and a "value" their bytes. The public method names
``kv_get``/``kv_put``/``kv_delete``/``kv_keys`` are kept because the sandbox's host calls of the
same names call them.

Every method takes the tenant and filters by it: no method can read, list or delete another
tenant's values. A put may be held to a tenant's total (``limit``: the quota's ``kv_store_bytes``,
keys and values together, counted in SQL); puts are serialised within the process, and per
tenant across every engine sharing the database (``locks.lock_tenant``), so two concurrent puts
cannot both fit under it. Nothing is cached: every engine of a hub reads the same values.
What it must never do: interpret a value.
"""

from __future__ import annotations

import threading

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from ..errors import QuotaExceeded
from .db import Database
from .locks import lock_tenant
from .tables import KeyValueRow, check_key

MAX_VALUE_BYTES = 1 << 20  # 1 MiB


class TenantValues(Database):
    kv_max_value_bytes: int = MAX_VALUE_BYTES  # the Store sets its own from its settings
    _kv_put_lock = threading.Lock()

    def kv_bytes(self, tenant: str) -> int:
        """Bytes the tenant's keys and values take (what ``kv_store_bytes`` limits)."""
        q = select(func.coalesce(func.sum(func.length(KeyValueRow.key) + func.length(KeyValueRow.value)), 0))
        with self._session.begin() as s:
            return int(s.scalar(q.where(KeyValueRow.tenant == tenant)))

    def kv_get(self, tenant: str, key: str) -> bytes | None:
        with self._session.begin() as s:
            row = s.get(KeyValueRow, (tenant, key))
            return bytes(row.value) if row is not None else None

    def kv_put(self, tenant: str, key: str, value: bytes, limit: int | None = None) -> None:
        """Store a value; with ``limit``, refuse (QuotaExceeded) a put that takes the tenant past it."""
        check_key("key", key)
        value = bytes(value)
        if len(value) > self.kv_max_value_bytes:
            raise ValueError(f"value is {len(value)} bytes; the limit is {self.kv_max_value_bytes} bytes")
        size = len(key.encode("utf-8")) + len(value)

        def work(s: Session) -> None:
            if limit is not None:
                lock_tenant(s, "kv_store_bytes", tenant)
            row = s.get(KeyValueRow, (tenant, key))
            if limit is not None:
                total = s.scalar(select(func.coalesce(func.sum(
                    func.length(KeyValueRow.key) + func.length(KeyValueRow.value)), 0)).where(
                    KeyValueRow.tenant == tenant))
                old = len(key.encode("utf-8")) + len(row.value) if row is not None else 0
                if int(total) - old + size > limit:
                    raise QuotaExceeded("kv_store_bytes", limit,
                                        f"your key-value store would hold {int(total) - old + size} bytes, over your "
                                        f"kv_store_bytes limit {limit}; delete some keys first")
            if row is None:
                s.add(KeyValueRow(tenant=tenant, key=key, value=value))
            else:
                row.value = value

        with self._kv_put_lock:
            self._write(work)

    def kv_delete(self, tenant: str, key: str) -> bool:
        with self._session.begin() as s:
            result = s.execute(delete(KeyValueRow).where(KeyValueRow.tenant == tenant, KeyValueRow.key == key))
            return result.rowcount > 0

    def kv_keys(self, tenant: str, prefix: str = "") -> list[str]:
        q = select(KeyValueRow.key).where(KeyValueRow.tenant == tenant).order_by(KeyValueRow.key)
        if prefix:
            # autoescape: a user's "%" or "_" is a character, not a wildcard.
            q = q.where(KeyValueRow.key.startswith(prefix, autoescape=True))
        with self._session.begin() as s:
            return list(s.scalars(q))
