"""The engine's persistence: what survives a restart, and what stays in its tenant's namespace."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from potluck.engine.store import Store, TokenRecord, UsageLedger

H0 = datetime(2025, 3, 1, 10, 0, tzinfo=timezone.utc)




@pytest.fixture
def store(db_url):
    s = Store(db_url)
    yield s
    s.close()


def reopen(store: Store, db_url: str) -> Store:
    store.close()
    return Store(db_url)


# ---- quota overrides


def test_quota_override_survives_reopen(store, db_url):
    store.set_override("alice", {"weight": 2, "kv_pages": 100}, actor="admin")
    store = reopen(store, db_url)
    try:
        assert store.get_override("alice") == {"weight": 2, "kv_pages": 100}
        assert store.list_overrides() == {"alice": {"weight": 2, "kv_pages": 100}}
    finally:
        store.close()


def test_set_override_replaces_rather_than_merges(store):
    store.set_override("alice", {"weight": 2, "kv_pages": 100}, actor="admin")
    store.set_override("alice", {"max_runs": 3}, actor="admin")
    assert store.get_override("alice") == {"max_runs": 3}


def test_override_of_unknown_user_is_none_and_delete_returns_false(store):
    assert store.get_override("nobody") is None
    assert store.delete_override("nobody", actor="admin") is False


def test_set_and_delete_override_are_audited_newest_first(store):
    store.set_override("alice", {"weight": 2}, actor="root")
    assert store.delete_override("alice", actor="root") is True
    assert store.get_override("alice") is None
    log = store.audit_log()
    assert [(e["actor"], e["action"], e["target"]) for e in log] == [
        ("root", "quota.delete", "alice"),
        ("root", "quota.set", "alice"),
    ]
    assert log[1]["detail"] == {"weight": 2}


def test_audit_log_filters_by_actor_and_limits(store):
    for i in range(5):
        store.audit("alice", "run.submit", target=f"run-{i}", detail={"n": i})
    store.audit("bob", "run.submit", target="run-x")
    mine = store.audit_log(limit=2, actor="alice")
    assert [e["target"] for e in mine] == ["run-4", "run-3"]
    assert all(e["actor"] == "alice" for e in mine)
    assert datetime.fromisoformat(mine[0]["ts"]).tzinfo is not None


# ---- usage ledger in the store


def test_usage_adds_accumulate_across_calls_and_hours_and_survive_reopen(store, db_url):
    store.add_usage("alice", H0, prefill_tokens=10, decode_tokens=5, requests=1)
    store.add_usage("alice", H0 + timedelta(minutes=30), prefill_tokens=1, page_seconds=1.5, fuel=7)
    store.add_usage("alice", H0 + timedelta(hours=1), decode_tokens=100, requests=1)
    store.add_usage("bob", H0, prefill_tokens=999)
    store = reopen(store, db_url)
    try:
        assert store.usage_totals("alice") == {
            "prefill_tokens": 11, "decode_tokens": 105, "page_seconds": 1.5, "fuel": 7, "requests": 2,
        }
        # `since` counts from the start of the hour it falls in.
        later = store.usage_totals("alice", since=H0 + timedelta(hours=1, minutes=20))
        assert later["decode_tokens"] == 100 and later["prefill_tokens"] == 0
        assert set(store.usage_all()) == {"alice", "bob"}
        assert store.usage_all()["bob"]["prefill_tokens"] == 999
    finally:
        store.close()


def test_usage_of_unknown_tenant_is_all_zero(store):
    assert store.usage_totals("nobody") == {
        "prefill_tokens": 0, "decode_tokens": 0, "page_seconds": 0.0, "fuel": 0, "requests": 0,
    }


# ---- UsageLedger


def test_ledger_totals_include_pending_before_flush(store):
    ledger = UsageLedger(store)
    store.add_usage("alice", datetime.now(timezone.utc), prefill_tokens=100)
    ledger.record("alice", prefill_tokens=5, decode_tokens=3, requests=1)
    assert store.usage_totals("alice")["prefill_tokens"] == 100  # not written yet
    assert ledger.totals("alice")["prefill_tokens"] == 105
    assert ledger.tokens_since("alice", datetime.now(timezone.utc) - timedelta(days=1)) == 108
    assert ledger.totals_all()["alice"]["requests"] == 1


def test_ledger_flush_persists_and_does_not_double_count(store):
    ledger = UsageLedger(store)
    ledger.record("alice", decode_tokens=7, fuel=11, page_seconds=0.25)
    assert ledger.flush() is True
    assert store.usage_totals("alice")["decode_tokens"] == 7
    assert ledger.totals("alice") == store.usage_totals("alice")
    assert ledger.flush() is True  # nothing pending: nothing added twice
    assert store.usage_totals("alice")["fuel"] == 11


def test_ledger_close_flushes_and_survives_reopen(store, db_url):
    ledger = UsageLedger(store, flush_interval=3600)
    ledger.start()
    ledger.record("alice", prefill_tokens=42)
    ledger.close()
    store = reopen(store, db_url)
    try:
        assert store.usage_totals("alice")["prefill_tokens"] == 42
    finally:
        store.close()


def test_ledger_background_thread_flushes_on_its_own(store):
    ledger = UsageLedger(store, flush_interval=0.02)
    ledger.start()
    try:
        ledger.record("alice", requests=1)
        for _ in range(200):
            if store.usage_totals("alice")["requests"] == 1:
                break
            threading.Event().wait(0.01)
        assert store.usage_totals("alice")["requests"] == 1
    finally:
        ledger.close()


def test_failed_flush_keeps_the_amounts_for_the_next_flush(store, monkeypatch):
    ledger = UsageLedger(store)
    ledger.record("alice", prefill_tokens=10)
    ledger.record("bob", decode_tokens=20)
    real_add = store.add_usage

    def broken(*args, **kwargs):
        raise RuntimeError("database is down")

    monkeypatch.setattr(store, "add_usage", broken)
    assert ledger.flush() is False
    ledger.record("alice", prefill_tokens=1)  # recorded while the database was down
    assert ledger.totals("alice")["prefill_tokens"] == 11  # still visible to readers

    monkeypatch.setattr(store, "add_usage", real_add)
    assert ledger.flush() is True
    assert store.usage_totals("alice")["prefill_tokens"] == 11
    assert store.usage_totals("bob")["decode_tokens"] == 20


def test_concurrent_record_from_8_threads_sums_exactly(store):
    ledger = UsageLedger(store)
    go = threading.Barrier(8)

    def worker():
        go.wait()
        for _ in range(1000):
            ledger.record("alice", decode_tokens=1, page_seconds=0.5, requests=1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.flush()
    assert store.usage_totals("alice") == {
        "prefill_tokens": 0, "decode_tokens": 8000, "page_seconds": 4000.0, "fuel": 0, "requests": 8000,
    }


def test_concurrent_add_usage_to_a_new_row_loses_nothing(store):
    go = threading.Barrier(4)

    def worker():
        go.wait()
        for _ in range(10):
            store.add_usage("alice", H0, decode_tokens=1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.usage_totals("alice")["decode_tokens"] == 40


# ---- key-value store


def test_kv_is_namespaced_per_tenant(store):
    store.kv_put("alice", "notes/1", b"secret")
    store.kv_put("alice", "notes/2", b"more")
    store.kv_put("bob", "other", b"x")
    assert store.kv_get("alice", "notes/1") == b"secret"
    assert store.kv_get("bob", "notes/1") is None
    assert store.kv_delete("bob", "notes/1") is False
    assert store.kv_keys("alice") == ["notes/1", "notes/2"]
    assert store.kv_keys("bob") == ["other"]
    assert store.kv_get("alice", "notes/1") == b"secret"  # bob's delete touched nothing


def test_kv_put_replaces_and_delete_removes(store):
    store.kv_put("alice", "k", b"1")
    store.kv_put("alice", "k", b"2")
    assert store.kv_get("alice", "k") == b"2"
    assert store.kv_delete("alice", "k") is True
    assert store.kv_get("alice", "k") is None
    assert store.kv_delete("alice", "k") is False


def test_kv_keys_prefix_is_literal_not_a_wildcard(store):
    for key in ("a_1", "ab", "a%", "b"):
        store.kv_put("alice", key, b"")
    assert store.kv_keys("alice", prefix="a_") == ["a_1"]
    assert store.kv_keys("alice", prefix="a%") == ["a%"]
    assert store.kv_keys("alice", prefix="a") == ["a%", "a_1", "ab"]


def test_kv_limits_raise_value_error_naming_the_limit(db_url):
    store = Store(db_url, kv_max_value_bytes=16)
    try:
        with pytest.raises(ValueError, match="256"):
            store.kv_put("alice", "k" * 257, b"")
        with pytest.raises(ValueError, match="non-empty"):
            store.kv_put("alice", "", b"")
        with pytest.raises(ValueError, match="16 bytes"):
            store.kv_put("alice", "k", b"x" * 17)
        store.kv_put("alice", "k" * 256, b"x" * 16)  # exactly at both limits is fine
        assert store.kv_get("alice", "k" * 256) == b"x" * 16
    finally:
        store.close()


def test_kv_value_limit_defaults_to_one_mib(store):
    with pytest.raises(ValueError, match=str(1 << 20)):
        store.kv_put("alice", "big", b"\0" * ((1 << 20) + 1))


# ---- API tokens


def test_token_resolves_to_name_and_admin_flag(store):
    alice = store.create_token("alice")
    root = store.create_token("root", is_admin=True)
    assert len(alice) == 64 and alice != root
    assert store.resolve_token(alice) == ("alice", False)
    assert store.resolve_token(root) == ("root", True)
    assert store.resolve_token("not-a-token") is None
    assert store.resolve_token("") is None


def test_only_the_token_hash_is_stored(store, db_url, tmp_path):
    token = store.create_token("alice")
    with store._session() as s:
        (rec,) = s.scalars(select(TokenRecord))
        assert rec.token_hash != token and token not in rec.token_hash
    listed = store.list_tokens()
    assert listed == [{"name": "alice", "is_admin": False, "created_at": listed[0]["created_at"],
                       "last_used": None}]
    store.close()  # checkpoints the WAL into the main file
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("potluck.sqlite"))
    assert token.encode() not in raw


def test_resolve_updates_last_used(store):
    token = store.create_token("alice")
    assert store.list_tokens()[0]["last_used"] is None
    store.resolve_token(token)
    first = store.list_tokens()[0]["last_used"]
    assert first is not None
    store.resolve_token(token)  # within a minute: not written again
    assert store.list_tokens()[0]["last_used"] == first


def test_revoke_removes_every_token_of_that_name(store):
    t1 = store.create_token("alice")
    t2 = store.create_token("alice")
    bob = store.create_token("bob")
    assert store.revoke_tokens("alice") == 2
    assert store.resolve_token(t1) is None and store.resolve_token(t2) is None
    assert store.resolve_token(bob) == ("bob", False)
    assert store.revoke_tokens("alice") == 0
    assert [t["name"] for t in store.list_tokens()] == ["bob"]


# ---- saved contexts


def test_saved_context_roundtrips_and_survives_reopen(store, db_url):
    tokens = [0, 1, 2, 49151, 2**31 - 1, -1]
    store.save_context("alice", "system-prompt", tokens)
    store = reopen(store, db_url)
    try:
        assert store.load_context("alice", "system-prompt") == tokens
        (info,) = store.list_contexts("alice")
        assert info["name"] == "system-prompt" and info["n_tokens"] == len(tokens)
        assert datetime.fromisoformat(info["created_at"]).tzinfo is not None
    finally:
        store.close()


def test_saved_context_is_stored_as_little_endian_int32(store):
    from potluck.engine.store import SavedContextRow

    store.save_context("alice", "c", [1, 258])
    with store._session() as s:
        assert s.get(SavedContextRow, ("alice", "c")).tokens == b"\x01\0\0\0\x02\x01\0\0"


def test_saved_contexts_are_tenant_scoped(store):
    store.save_context("alice", "ctx", [1, 2, 3])
    assert store.load_context("bob", "ctx") is None
    assert store.list_contexts("bob") == []
    assert store.delete_context("bob", "ctx") is False
    store.save_context("alice", "ctx", [4])  # replaces
    assert store.load_context("alice", "ctx") == [4]
    assert store.delete_context("alice", "ctx") is True
    assert store.load_context("alice", "ctx") is None


def test_saved_context_rejects_ids_outside_int32(store):
    with pytest.raises(ValueError, match="32-bit"):
        store.save_context("alice", "c", [2**31])


# ---- construction


def test_in_memory_sqlite_works_across_threads():
    store = Store("sqlite://")
    try:
        t = threading.Thread(target=store.kv_put, args=("alice", "k", b"v"))
        t.start()
        t.join()
        assert store.kv_get("alice", "k") == b"v"
    finally:
        store.close()


def test_missing_data_dir_is_created(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'new' / 'dir' / 'potluck.sqlite'}")
    try:
        store.audit("admin", "start")
        assert store.audit_log()[0]["action"] == "start"
    finally:
        store.close()


def _run(run_id, owner, state, created="2025-01-01T10:00:00+00:00", **kw):
    return {"id": run_id, "owner": owner, "state": state, "error": None, "created": created, "started": None,
            "finished": None, "usage": {"decode_tokens": 3}, "events": 2, "kind": "python", **kw}


def test_run_history_is_per_tenant_and_newest_first(store):
    store.save_run(_run("r1", "alice", "queued"))
    store.save_run(_run("r1", "alice", "finished", started="2025-01-01T10:00:01+00:00",
                        finished="2025-01-01T10:00:02+00:00"))
    store.save_run(_run("r2", "alice", "running", created="2025-01-01T11:00:00+00:00"))
    store.save_run(_run("r3", "bob", "failed", error="line 1: ValueError: x"))
    assert store.get_run("alice", "r1") == _run("r1", "alice", "finished", started="2025-01-01T10:00:01+00:00",
                                                finished="2025-01-01T10:00:02+00:00")
    assert store.get_run("alice", "r3") is None            # bob's run is not alice's to see
    assert [r["id"] for r in store.list_runs("alice")] == ["r2", "r1"]
    assert [r["id"] for r in store.list_runs(None)] == ["r2", "r1", "r3"]
    assert store.list_runs("alice", limit=1)[0]["id"] == "r2"


def test_runs_left_live_are_marked_failed_at_the_next_start(store, db_url):
    store.save_run(_run("r1", "alice", "running"))
    store.save_run(_run("r2", "alice", "queued"))
    store.save_run(_run("r3", "alice", "finished"))
    store = reopen(store, db_url)
    try:
        assert store.fail_unfinished_runs("the engine stopped") == 2
        states = {r["id"]: (r["state"], r["error"]) for r in store.list_runs("alice")}
        assert states == {"r1": ("failed", "the engine stopped"), "r2": ("failed", "the engine stopped"),
                          "r3": ("finished", None)}
        assert store.get_run("alice", "r1")["finished"] is not None
        assert store.fail_unfinished_runs("again") == 0
    finally:
        store.close()


def test_an_engine_starting_fails_only_its_own_unfinished_runs_and_unnamed_old_ones(store):
    # Two engines of one hub share the history: A restarting must not fail B's live runs.
    store.save_run(_run("a1", "alice", "running"), engine="engine-a")
    store.save_run(_run("b1", "bob", "running"), engine="engine-b")
    store.save_run(_run("b2", "bob", "queued"), engine="engine-b")
    store.save_run(_run("old", "carol", "running"))            # written before engines were recorded
    assert store.fail_unfinished_runs("engine-a restarted", engine="engine-a") == 2
    states = {r["id"]: r["state"] for r in store.list_runs(None)}
    assert states == {"a1": "failed", "old": "failed", "b1": "running", "b2": "queued"}
    assert store.get_run("alice", "a1")["error"] == "engine-a restarted"


def test_runs_of_an_engine_seen_gone_are_failed_by_its_name(store):
    store.save_run(_run("b1", "bob", "running"), engine="engine-b")
    store.save_run(_run("b2", "bob", "finished"), engine="engine-b")
    store.save_run(_run("a1", "alice", "running"), engine="engine-a")
    store.save_run(_run("old", "carol", "running"))
    assert store.fail_engine_runs("engine-b", "engine engine-b stopped") == 1
    assert store.get_run("bob", "b1")["state"] == "failed"
    assert store.get_run("bob", "b1")["error"] == "engine engine-b stopped"
    assert store.get_run("bob", "b2")["state"] == "finished"
    assert store.get_run("alice", "a1")["state"] == "running"
    assert store.get_run("carol", "old")["state"] == "running"   # nobody knows whose: its engine's next start


def test_a_run_keeps_its_engine_when_saved_again_without_one(store):
    store.save_run(_run("b1", "bob", "queued"), engine="engine-b")
    store.save_run(_run("b1", "bob", "running"))
    assert store.fail_unfinished_runs("x", engine="engine-a") == 0
    assert store.fail_engine_runs("engine-b", "engine engine-b stopped") == 1


def test_key_value_puts_are_held_to_a_byte_limit_keys_included(store):
    from potluck.engine.errors import QuotaExceeded
    store.kv_put("alice", "a", b"x" * 60, limit=100)
    with pytest.raises(QuotaExceeded) as e:
        store.kv_put("alice", "b", b"y" * 60, limit=100)
    assert e.value.limit == "kv_store_bytes" and "100" in e.value.message
    store.kv_put("alice", "a", b"z" * 99, limit=100)           # replacing counts the old value out
    assert store.kv_bytes("alice") == 100 and store.kv_bytes("bob") == 0
    store.kv_put("bob", "b", b"y" * 60, limit=100)              # another tenant's room is its own


def test_prune_runs_keeps_the_newest_ended_runs_of_one_tenant(store):
    for i in range(6):
        store.save_run({"id": f"r{i}", "owner": "alice", "state": "running" if i == 0 else "finished",
                        "created": (H0 + timedelta(minutes=i)).isoformat()})
    store.save_run({"id": "b0", "owner": "bob", "state": "finished", "created": H0.isoformat()})
    assert store.prune_runs("alice", 3) == 2
    assert [r["id"] for r in store.list_runs("alice")] == ["r5", "r4", "r3", "r0"]      # a live one stays
    assert [r["id"] for r in store.list_runs("bob")] == ["b0"]


def test_a_corrupt_or_locked_sqlite_file_is_one_line_naming_it(tmp_path):
    import sqlite3

    from potluck.engine.store import StoreError
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 500)
    with pytest.raises(StoreError) as e:
        Store(f"sqlite:///{bad}")
    assert "\n" not in str(e.value) and "bad.sqlite" in str(e.value) and "not a database" in str(e.value)
    locked = tmp_path / "locked.sqlite"
    holder = sqlite3.connect(locked)
    holder.execute("CREATE TABLE t (x)")
    holder.commit()
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError) as e:
            Store(f"sqlite:///{locked}")
        assert "\n" not in str(e.value) and "locked" in str(e.value)
    finally:
        holder.rollback()
        holder.close()
    with pytest.raises(StoreError) as e:
        Store("not a url")
    assert "db_url" in str(e.value)


def test_nul_in_a_key_or_name_is_refused_alike_on_every_database(store):
    with pytest.raises(ValueError) as e:
        store.kv_put("alice", "a\x00b", b"v")
    assert "NUL" in str(e.value)
    with pytest.raises(ValueError):
        store.save_context("alice", "n\x00", [1, 2])
    # A guest's error text with a NUL in it is still recorded (PostgreSQL text cannot hold NUL).
    store.save_run({"id": "r1", "owner": "alice", "state": "failed", "error": "line 1: ValueError: \x00",
                    "created": H0.isoformat()})
    assert store.get_run("alice", "r1")["error"] == "line 1: ValueError: \\x00"
