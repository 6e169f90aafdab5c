"""Standalone-mode API tokens (when the engine runs without a JupyterHub to vouch for users).

This module owns issuing, resolving, listing and revoking tokens. A token is shown once, when
created; only its sha256 is stored, so a copy of the database grants nothing.

What it must never do: store or log a token itself, or compare tokens as strings.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select

from .db import Database
from .tables import TokenRecord, iso, utcnow

# resolve_token writes last_used at most this often: a token is checked on every request,
# and a write per request would serialise all requests on the database.
_LAST_USED_EVERY = timedelta(minutes=1)


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiTokens(Database):
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
            now = utcnow()
            if rec.last_used is None or now - rec.last_used >= _LAST_USED_EVERY:
                rec.last_used = now
            return rec.name, rec.is_admin

    def list_tokens(self) -> list[dict[str, Any]]:
        q = select(TokenRecord).order_by(TokenRecord.name, TokenRecord.id)
        with self._session.begin() as s:
            return [
                {"name": r.name, "is_admin": r.is_admin, "created_at": iso(r.created_at),
                 "last_used": iso(r.last_used)}
                for r in s.scalars(q)
            ]

    def revoke_tokens(self, name: str) -> int:
        """Remove every token of that name; how many were removed."""
        with self._session.begin() as s:
            return s.execute(delete(TokenRecord).where(TokenRecord.name == name)).rowcount
