"""Saved contexts as token lists, so they can be re-filled after a restart.

This module owns the ``saved_contexts`` rows and their on-disk format: the token ids as
little-endian int32, the same bytes on every host, counted in SQL from the blob's length so
listing never loads a token list.

What it must never do: hold KV pages or re-fill a context (``engine/contexts.py`` does); only
the token ids are kept, never the cache computed from them.
"""

from __future__ import annotations

import sys
from array import array
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from ..errors import QuotaExceeded
from .db import Database
from .locks import lock_tenant
from .tables import SavedContextRow, check_key, iso, utcnow

# array('i') is the C int; the stored format needs it to be 4 bytes.
assert array("i").itemsize == 4, "saved contexts need a 4-byte C int"


def pack_tokens(tokens: list[int]) -> bytes:
    try:
        packed = array("i", tokens)
    except OverflowError as e:
        raise ValueError("token ids must fit in a signed 32-bit integer") from e
    if sys.byteorder == "big":  # the stored format is little-endian on every host
        packed.byteswap()
    return packed.tobytes()


def unpack_tokens(blob: bytes) -> list[int]:
    packed = array("i")
    packed.frombytes(blob)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tolist()


def too_many_saved(n: int, limit: int) -> QuotaExceeded:
    return QuotaExceeded("saved_contexts", limit,
                         f"you have {n} saved contexts, your saved_contexts limit; "
                         "delete one first (or save under a name you already use)")


class SavedContexts(Database):
    def save_context(self, tenant: str, name: str, tokens: list[int], limit: int | None = None) -> None:
        """Store (or replace) a saved context's token ids; with ``limit``, refuse a new name past it.

        The count and the insert are one transaction, serialised per tenant across every engine
        of the hub (``lock_tenant``), so concurrent saves cannot pass the limit together.
        """
        check_key("context name", name)
        blob = pack_tokens(tokens)

        def work(s: Session) -> None:
            lock_tenant(s, "saved_contexts", tenant)
            row = s.get(SavedContextRow, (tenant, name))
            if row is None and limit is not None:
                n = s.scalar(select(func.count()).where(SavedContextRow.tenant == tenant))
                if n >= limit:
                    raise too_many_saved(n, limit)
            if row is None:
                s.add(SavedContextRow(tenant=tenant, name=name, tokens=blob))
            else:
                row.tokens, row.created_at = blob, utcnow()

        self._write(work)

    def load_context(self, tenant: str, name: str) -> list[int] | None:
        with self._session.begin() as s:
            row = s.get(SavedContextRow, (tenant, name))
            return unpack_tokens(row.tokens) if row is not None else None

    def delete_context(self, tenant: str, name: str) -> bool:
        with self._session.begin() as s:
            result = s.execute(
                delete(SavedContextRow).where(SavedContextRow.tenant == tenant, SavedContextRow.name == name)
            )
            return result.rowcount > 0

    def count_contexts(self, tenant: str | None = None) -> dict[str, int]:
        """How many saved contexts each tenant has (one tenant's, or everyone's for the admin view)."""
        q = select(SavedContextRow.tenant, func.count()).group_by(SavedContextRow.tenant)
        if tenant is not None:
            q = q.where(SavedContextRow.tenant == tenant)
        with self._session.begin() as s:
            return {name: int(n) for name, n in s.execute(q)}

    def list_contexts(self, tenant: str) -> list[dict[str, Any]]:
        # Count from the blob's length in SQL, so listing does not load every token list.
        q = (
            select(SavedContextRow.name, func.length(SavedContextRow.tokens), SavedContextRow.created_at)
            .where(SavedContextRow.tenant == tenant)
            .order_by(SavedContextRow.name)
        )
        with self._session.begin() as s:
            return [
                {"name": name, "n_tokens": int(n_bytes) // 4, "created_at": iso(created)}
                for name, n_bytes, created in s.execute(q)
            ]
