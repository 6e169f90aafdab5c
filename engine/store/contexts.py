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

from .db import Database
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


class SavedContexts(Database):
    def save_context(self, tenant: str, name: str, tokens: list[int]) -> None:
        """Store (or replace) a saved context's token ids."""
        check_key("context name", name)
        blob = pack_tokens(tokens)

        def work(s: Session) -> None:
            row = s.get(SavedContextRow, (tenant, name))
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
