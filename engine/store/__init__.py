"""Durable state of the engine: everything that must survive a restart.

The store owns, in one SQL database (``db_url``, SQLite by default, PostgreSQL for large hubs),
one module per concern:

- ``quotas``: per-user quota overrides set through the admin API,
- ``groups``: each Hub group's last good ``potluck`` quota (kept when the Hub's value is unreadable),
- ``usage``: the usage rows (per tenant and hour: prefill and decode tokens, page-seconds,
  fuel, requests) and the ``UsageLedger`` that fills them off the hot path,
- ``audit``: the audit log of submissions and admin actions,
- ``keyvalue``: each tenant's key-value store,
- ``tokens``: standalone-mode API tokens (only their sha256 is kept),
- ``contexts``: saved contexts as token lists, so they can be re-filled after a restart,
- ``runs``: the history of inferlet runs (state, times, error, usage summary; never source or
  output), so a run cut off by a crash is found again at the next start and marked failed,
- ``engines``: every engine of the hub, its pool, heartbeat and load (which are alive).

``tables`` holds every table (the schema in one file) and ``db`` opens the database. Each
concern is a ``Database`` subclass holding only its own methods; ``Store`` is all of them on one
connection, so callers keep one object and the method names they always had, while a reader
finds "where are API tokens kept" in one short file.

What it must never do: touch tensors or KV-cache pages, or be called per token from the batch
loop. The loop only calls :meth:`UsageLedger.record`, an in-memory add under a lock; a
background thread writes the sums out every few seconds.

Every tenant-scoped method takes the tenant name and filters by it, so no method can return
another tenant's rows. Every public method runs in its own short transaction, so a ``Store``
may be shared by many threads. Timestamps are stored as naive UTC and handed back as aware UTC;
list-style methods return JSON-ready dicts (timestamps as ISO 8601 strings).
"""

from __future__ import annotations

from .audit import AuditLog
from .contexts import SavedContexts
from .db import Database, StoreError
from .engines import EngineRows
from .groups import GroupQuotas
from .keyvalue import MAX_VALUE_BYTES, TenantValues
from .quotas import QuotaOverrides
from .runs import RunHistory
from .tables import (
    MAX_KEY_CHARS,
    NAME_CHARS,
    AuditEntry,
    Base,
    GroupQuotaRow,
    KeyValueRow,
    QuotaOverride,
    RunRecord,
    SavedContextRow,
    TokenRecord,
    UsageRow,
    UTCDateTime,
)
from .tokens import ApiTokens
from .usage import USAGE_FIELDS, UsageLedger, UsageRows

__all__ = [
    "Store", "StoreError", "UsageLedger", "Database", "USAGE_FIELDS", "NAME_CHARS", "MAX_KEY_CHARS",
    "MAX_VALUE_BYTES",
    "Base", "UTCDateTime", "QuotaOverride", "UsageRow", "AuditEntry", "KeyValueRow", "TokenRecord",
    "SavedContextRow", "RunRecord", "GroupQuotaRow",
]


class Store(QuotaOverrides, GroupQuotas, UsageRows, AuditLog, TenantValues, ApiTokens, SavedContexts, RunHistory,
            EngineRows):
    """The engine's database. One per engine; share it between threads."""

    def __init__(self, db_url: str, *, kv_max_value_bytes: int = MAX_VALUE_BYTES) -> None:
        self.kv_max_value_bytes = kv_max_value_bytes
        super().__init__(db_url)
