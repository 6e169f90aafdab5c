"""Opening the store's database, and the one way its concerns run a transaction.

``Database`` owns the SQLAlchemy engine and session factory for one ``db_url`` (SQLite by
default, PostgreSQL for large hubs): SQLite gets a shared connection when in memory, a created
parent folder when on disk, and WAL through ``_sqlite_pragmas``. Every concern of the store
(``quotas``, ``usage``, ...) is a subclass of ``Database`` and reaches the database only through
``_session`` (one short transaction per public method, so a store may be shared by many
threads) and ``_write`` (a read-then-write that survives a concurrent insert).

Opening also migrates (``migrate``, with Alembic as JupyterHub does): a database made before
migrations existed is stamped as the first release's schema and upgraded, a new one is created
whole and stamped with the newest revision, and tables added since are created when missing.
An upgrade keeps every row. Revisions live in ``migrations/versions``.

A database that cannot be opened (a corrupt or locked SQLite file, a PostgreSQL server that
refuses) is one ``StoreError`` line naming the database (password hidden) and the reason, never
a traceback: the command line prints it and exits non-zero.

What it must never do: know any table's rules, or keep a session open between calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from .locks import lock_key
from .tables import Base

T = TypeVar("T")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
FIRST_RELEASE = "0001"        # the revision whose schema databases made before migrations have
FIRST_RELEASE_TABLE = "quota_overrides"     # a table every such database has

# How long a start waits for a SQLite file another process has locked before giving up (seconds).
SQLITE_BUSY_TIMEOUT = 5.0


class StoreError(RuntimeError):
    """The database could not be opened or used: one line for the admin."""


class Database:
    """One SQL database, its tables created on open."""

    def __init__(self, db_url: str) -> None:
        try:
            url = make_url(db_url)
        except ArgumentError:
            raise StoreError(f"db_url {db_url.split('@')[-1]!r} is not a database URL "
                             "(e.g. sqlite:///path/potluck.sqlite or postgresql://user@host/db)") from None
        kwargs: dict[str, Any] = {}
        is_sqlite = url.get_backend_name() == "sqlite"
        if is_sqlite:
            # Sessions are short and may run on any thread; SQLite's own check would refuse that.
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT}
            if url.database in (None, "", ":memory:"):
                # An in-memory database exists per connection: share the one connection.
                kwargs["poolclass"] = StaticPool
            elif not url.database.startswith("file:"):
                # A fresh data dir should just work rather than fail with "unable to open".
                Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        where = url.render_as_string(hide_password=True)
        try:
            self._engine = create_engine(url, **kwargs)
        except (SQLAlchemyError, ImportError) as e:
            raise StoreError(f"cannot use the database {where}: {_one_line(e)}") from None
        if is_sqlite:
            event.listen(self._engine, "connect", _sqlite_pragmas)
        try:
            migrate(self._engine)
        except SQLAlchemyError as e:
            self._engine.dispose()
            raise StoreError(f"cannot open the database {where}: {_one_line(e)}") from None
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


def migrate(engine) -> str:
    """Bring the database's schema to the newest revision, keeping every row; that revision."""
    try:
        from alembic import command
        from alembic.config import Config
        from alembic.migration import MigrationContext
        from alembic.script import ScriptDirectory
    except ImportError:
        raise StoreError("the store needs alembic for its migrations: pip install 'jupyter-potluck[engine]'") from None

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if not (MIGRATIONS / "env.py").exists():
        raise StoreError(f"the store's migrations are missing from this installation ({MIGRATIONS}): "
                         "reinstall jupyter-potluck")
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Engines of a hub start together on one database: the first migrates, the others wait
            # for its commit and find it done (two at once collided on creating the same tables).
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key("migrate", "")})
        cfg.attributes["connection"] = conn
        current = MigrationContext.configure(conn).get_current_revision()
        if current is None and not inspect(conn).has_table(FIRST_RELEASE_TABLE):
            Base.metadata.create_all(conn)          # a new database: created whole, at the newest revision
            command.stamp(cfg, head)
            return head
        if current is None:
            command.stamp(cfg, FIRST_RELEASE)       # made before migrations: the first release's schema
        command.upgrade(cfg, "head")
        Base.metadata.create_all(conn)              # tables added since need no revision
    return head


def _one_line(e: Exception) -> str:
    """The driver's own reason, without SQLAlchemy's SQL echo and links."""
    orig = getattr(e, "orig", None) or e
    text = " ".join(str(orig).split()) or type(orig).__name__
    if "locked" in text:
        text += f" (another process holds it; waited {SQLITE_BUSY_TIMEOUT:g} s)"
    elif "not a database" in text or "malformed" in text:
        text += " (the file is damaged or not a SQLite database: restore a backup or move it away)"
    return text[:300]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (the HTTP API) never wait for the ledger's writer, nor it for them.
    cursor.execute("PRAGMA journal_mode=WAL")
    # SQLite leaves foreign keys off unless asked, per connection.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
