"""Two engines on one database behave as one hub: what one writes, the other reads, never a stale copy.

Each engine here is a real ``Engine`` (the tiny model) with its own ``Store`` (its own connection
pool) and ``UsageLedger`` on the same database, as two engine processes of a hub are. Every test
runs on SQLite and, when it is installed, on a real PostgreSQL (what a hub of several engines uses).
The same through HTTP with two real engine processes is ``tests/service/test_shared_store.py``.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from tiny_engine import make_engine
from potluck.engine.errors import EngineUnavailable, NotFound, QuotaExceeded
from potluck.engine.store import Store, UsageLedger

M0 = datetime(2026, 3, 1, 10, 7, tzinfo=timezone.utc)




@pytest.fixture
def two(db_url, tokenizer, tiny_weights):
    """Engines ``a`` and ``b`` sharing one database."""
    engines = []
    for _ in range(2):
        store = Store(db_url)
        engines.append(make_engine(tokenizer, tiny_weights, kv_pages=256, store=store,
                                   ledger=UsageLedger(store)).start())
    yield engines
    for e in engines:
        e.stop()
        e.store.close()


def saved(engine, tenant: str, name: str, tokens: list[int]) -> None:
    ctx = engine.create_context(tenant)
    engine.forward(tenant, ctx, tokens, None).result(timeout=60)
    engine.save_context(tenant, ctx, name)
    engine.drop_context(tenant, ctx)


def opened_tokens(engine, tenant: str, name: str) -> list[int]:
    ctx = engine.open_context(tenant, name)
    try:
        return engine.context_tokens(tenant, ctx)
    finally:
        engine.drop_context(tenant, ctx)


# ---- saved contexts


def test_a_context_saved_on_one_engine_opens_on_the_other_and_a_replacement_is_never_stale(two):
    a, b = two
    saved(a, "alice", "notes", list(range(300, 320)))
    assert [r["name"] for r in b.list_saved("alice")] == ["notes"]
    assert opened_tokens(b, "alice", "notes") == list(range(300, 320))     # re-filled from its tokens on b
    saved(a, "alice", "notes", list(range(500, 507)))                       # replaced on a: b holds the old KV
    assert opened_tokens(b, "alice", "notes") == list(range(500, 507))
    assert b.list_saved("alice") == [{"name": "notes", "n_tokens": 7}]
    with pytest.raises(NotFound):
        b.open_context("bob", "notes")                                       # still per-tenant namespaces


def test_a_context_deleted_on_one_engine_is_gone_on_the_other_and_its_pages_freed(two):
    a, b = two
    saved(a, "alice", "draft", list(range(300, 340)))
    assert opened_tokens(a, "alice", "draft") == list(range(300, 340))
    assert a.pool.held_by("alice") > 0                   # a keeps the snapshot's pages
    b.delete_saved("alice", "draft")
    assert a.list_saved("alice") == []
    assert a.pool.held_by("alice") == 0                  # and frees them once it sees it is gone
    with pytest.raises(NotFound):
        a.open_context("alice", "draft")
    with pytest.raises(NotFound):
        a.delete_saved("alice", "draft")                 # deleting it twice is 404 on either engine


def test_the_saved_contexts_limit_counts_the_names_saved_on_every_engine(two):
    a, b = two
    for e in (a, b):
        e.tenant("carol")
    a.set_user_override("carol", {"saved_contexts": 2}, "root")
    saved(a, "carol", "one", [301, 302])
    saved(b, "carol", "two", [303, 304])
    with pytest.raises(QuotaExceeded) as e:
        saved(a, "carol", "three", [305])
    assert (e.value.limit, e.value.value) == ("saved_contexts", 2)
    assert [r["name"] for r in b.list_saved("carol")] == ["one", "two"]       # the refused one is nowhere
    saved(b, "carol", "one", [306, 307, 308])            # replacing a name is always allowed
    b.delete_saved("carol", "two")
    saved(a, "carol", "three", [309])                    # a sees b's delete: room again
    assert b.me("carol")["saved_contexts"] == a.me("carol")["saved_contexts"] == 2


# ---- quota overrides


def test_an_override_set_on_one_engine_applies_on_the_other_at_the_tenants_next_request(two):
    a, b = two
    b.tenant("dave")                                      # b knows dave with the default quota
    a.set_user_override("dave", {"tokens_per_minute": 1234, "weight": 3}, "root")
    t = b.tenant("dave")                                  # dave's next request on b
    assert t.quota.tokens_per_minute == 1234 and t.quota_source["tokens_per_minute"] == "user"
    assert b.scheduler.weights["dave"] == 3              # the scheduler follows the quota on b too
    assert a.delete_user_override("dave", "root")
    assert b.tenant("dave").quota.tokens_per_minute is None


def test_the_admin_view_of_either_engine_shows_the_same_overrides_quotas_and_counts(two):
    a, b = two
    b.tenant("erin")
    saved(b, "erin", "kept", [310, 311])
    a.set_user_override("erin", {"max_runs": 7}, "root")

    def row(engine):
        return next(r for r in engine.admin_tenants() if r["name"] == "erin")
    on_a, on_b = row(a), row(b)
    assert on_a["override"] == on_b["override"] == {"max_runs": 7}
    assert on_b["quota"]["max_runs"] == 7                 # b's live tenant re-resolved, without a request
    assert on_a["saved_contexts"] == on_b["saved_contexts"] == 1


def test_an_unreadable_override_refuses_the_request_rather_than_dropping_it(two, monkeypatch):
    a, b = two
    a.set_user_override("fay", {"tokens_per_minute": 10}, "root")
    b.tenant("fay")

    def broken(name):
        raise OSError("connection refused")
    monkeypatch.setattr(b.store, "get_override", broken)
    with pytest.raises(EngineUnavailable) as e:
        b.tenant("fay")
    assert e.value.status == 503 and "quota override" in str(e.value)
    assert b.known_tenant("fay").quota.tokens_per_minute == 10    # the limit it had stays


def test_a_read_older_than_this_engines_own_change_never_puts_the_old_value_back(two):
    a, _ = two
    a.tenant("gus")
    stale = a.tenants.read_override("gus")                # a request read "no override" ...
    a.set_user_override("gus", {"max_runs": 1}, "root")   # ... then an admin set one here
    t = a.loop.call(a.tenants.resolve, "gus", None, False, stale)
    assert t.quota.max_runs == 1


# ---- usage and the key-value store, written by two engines at once


def test_two_engines_flushing_one_tenants_minute_at_once_lose_nothing(db_url):
    stores = [Store(db_url) for _ in range(2)]
    go = threading.Barrier(4)
    errors = []

    def flusher(store):
        ledger = UsageLedger(store)
        go.wait()
        try:
            for _ in range(25):
                store.add_usage("hal", M0, decode_tokens=1, requests=1)     # same tenant, same minute
                ledger.record("hal", prefill_tokens=2)
                assert ledger.flush()
        except Exception as e:          # a unique-key failure would land here
            errors.append(e)
    threads = [threading.Thread(target=flusher, args=(stores[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        totals = stores[1].usage_totals("hal")
        assert (totals["decode_tokens"], totals["requests"], totals["prefill_tokens"]) == (100, 100, 200)
        minutes = stores[0].usage_history("minute", M0, M0)["hal"]
        assert minutes[M0]["decode_tokens"] == 100
    finally:
        for s in stores:
            s.close()


def test_the_key_value_limit_holds_when_two_engines_put_at_once(db_url):
    stores = [Store(db_url) for _ in range(2)]
    hub_wide = stores[0]._engine.dialect.name == "postgresql"
    if hub_wide:
        for s in stores:        # as two processes: each engine's own in-process lock, only the database's between
            s._kv_put_lock = threading.Lock()
    go = threading.Barrier(8)
    refused = []

    def put(store, i):
        go.wait()
        try:
            store.kv_put("ivy", f"k{i}", b"x" * 98, limit=500)         # 100 bytes each: 5 fit
        except QuotaExceeded:
            refused.append(i)
    threads = [threading.Thread(target=put, args=(stores[i % 2], i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert stores[0].kv_bytes("ivy") <= 500
        if hub_wide:                    # serialised per tenant across engines: exactly 5 fit
            assert len(refused) == 3 and stores[1].kv_bytes("ivy") == 500
    finally:
        for s in stores:
            s.close()
