"""Upgrading a database made by the first release (before migrations) keeps every row.

The database is made with a frozen copy of the first release's tables
(``first_release_tables.py``) and filled as that release would have; opening it with today's
``Store`` stamps it, runs the migrations and creates the tables added since. Both on SQLite and
on a real PostgreSQL server.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session

import first_release_tables as old
from potluck.engine.store import Store
from potluck.engine.store.contexts import pack_tokens
from potluck.engine.store.db import FIRST_RELEASE
from potluck.engine.store.tables import Base

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)




def make_first_release_database(url: str) -> None:
    engine = create_engine(url)
    old.Base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        s.add(old.QuotaOverride(user="alice", fields={"tokens_per_minute": 5000}, updated_by="root"))
        s.add(old.UsageRow(tenant="alice", hour=T0, prefill_tokens=120, decode_tokens=30, page_seconds=1.5,
                           fuel=7, requests=3))
        s.add(old.AuditEntry(actor="root", action="quota.set", target="alice", detail={"tokens_per_minute": 5000}))
        s.add(old.KeyValueRow(tenant="alice", key="notes", value=b"kept across the upgrade"))
        s.add(old.TokenRecord(name="alice", token_hash="ab" * 32, is_admin=False))
        s.add(old.SavedContextRow(tenant="alice", name="chat", tokens=pack_tokens([5, 6, 7])))
        s.add(old.RunRecord(id="r1", tenant="alice", state="finished", kind="python", created_at=T0,
                            usage={"fuel": 7}, events=4))
    engine.dispose()


def test_a_first_release_database_is_upgraded_keeping_every_row(db_url):
    make_first_release_database(db_url)
    store = Store(db_url)
    try:
        assert store.get_override("alice") == {"tokens_per_minute": 5000}
        assert store.usage_totals("alice")["prefill_tokens"] == 120
        assert [e["action"] for e in store.audit_log()] == ["quota.set"]
        assert store.kv_get("alice", "notes") == b"kept across the upgrade"
        assert [t["name"] for t in store.list_tokens()] == ["alice"]
        assert store.load_context("alice", "chat") == [5, 6, 7]
        assert store.get_run("alice", "r1")["state"] == "finished"
        # Tables added since the first release exist now, and the database is at the newest revision.
        tables = set(inspect(store._engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        with store._engine.connect() as conn:
            (revision,) = conn.execute(text("SELECT version_num FROM alembic_version")).one()
        assert revision >= FIRST_RELEASE
        store.kv_put("alice", "more", b"new rows work too")
    finally:
        store.close()
    again = Store(db_url)           # a second start changes nothing
    try:
        assert again.kv_get("alice", "notes") == b"kept across the upgrade"
        assert again.kv_get("alice", "more") == b"new rows work too"
    finally:
        again.close()


def test_a_new_database_is_created_whole_at_the_newest_revision(db_url):
    store = Store(db_url)
    try:
        assert set(Base.metadata.tables) <= set(inspect(store._engine).get_table_names())
        with store._engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        store.close()


def test_a_database_at_revision_0002_gets_the_runs_engine_column_and_keeps_its_runs(db_url):
    # The release with pools (0002) had no engine on runs; its unfinished runs are nobody's in particular.
    make_first_release_database(db_url)
    engine = create_engine(db_url)
    with Session(engine) as s, s.begin():
        s.add(old.RunRecord(id="r2", tenant="bob", state="running", kind="python", created_at=T0, events=0))
        s.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        s.execute(text("INSERT INTO alembic_version (version_num) VALUES ('0002')"))
    engine.dispose()
    store = Store(db_url)
    try:
        runs = inspect(store._engine)
        assert "engine" in {c["name"] for c in runs.get_columns("runs")}
        assert "ix_runs_engine" in {i["name"] for i in runs.get_indexes("runs")}
        with store._engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() >= "0003"
        assert store.get_run("alice", "r1")["state"] == "finished"
        store.save_run({"id": "r3", "owner": "bob", "state": "running", "created": T0.isoformat()},
                       engine="potluck-cpu-1")
        # The old unnamed run is failed by the next engine to start; another engine's live run is not.
        assert store.fail_unfinished_runs("restarted", engine="potluck-cpu-0") == 1
        assert store.get_run("bob", "r2")["state"] == "failed"
        assert store.get_run("bob", "r3")["state"] == "running"
    finally:
        store.close()


def test_engines_starting_together_on_a_new_database_migrate_it_once(postgres):
    """Several engines of a hub start at once on one fresh PostgreSQL database: one creates the
    schema, the others wait for it and find it done (they used to collide on the same tables)."""
    import threading
    from potluck.engine.store import Store
    url = postgres.create_database()
    errors, stores = [], []

    def start():
        try:
            stores.append(Store(url))
        except Exception as e:          # noqa: BLE001 (the test reports whatever a start raised)
            errors.append(e)
    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert errors == [] and len(stores) == 4
