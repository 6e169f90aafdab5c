"""Opening the store's database, and the one way its concerns run a transaction.

``Database`` owns the SQLAlchemy engine and session factory for one ``db_url`` (SQLite by
default, PostgreSQL for large hubs): SQLite gets a shared connection when in memory, a created
parent folder when on disk, and WAL through ``_sqlite_pragmas``. Every concern of the store
(``quotas``, ``usage``, ...) is a subclass of ``Database`` and reaches the database only through
``_session`` (one short transaction per public method, so a store may be shared by many
threads) and ``_write`` (a read-then-write that survives a concurrent insert).

What it must never do: know any table's rules, or keep a session open between calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from .tables import Base

T = TypeVar("T")


class Database:
    """One SQL database, its tables created on open."""

    def __init__(self, db_url: str) -> None:
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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (the HTTP API) never wait for the ledger's writer, nor it for them.
    cursor.execute("PRAGMA journal_mode=WAL")
    # SQLite leaves foreign keys off unless asked, per connection.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
