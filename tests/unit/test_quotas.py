"""Quotas: resolution with provenance, enforcement naming the limit, persistence of overrides."""

from __future__ import annotations

import pytest

from tiny_engine import make_engine
from potluck.engine.errors import BadRequest, QuotaExceeded, RequestTooLarge
from potluck.engine.store import Store, UsageLedger
from potluck.engine.quota import Quota, resolve_quota, validate_quota_fields


def test_groups_combine_by_the_most_generous_value_and_override_wins():
    q, src = resolve_quota(Quota(), {"students": {"tokens_per_minute": 1000, "weight": 1.0, "models": ["a"]},
                                     "research": {"tokens_per_minute": 5000, "weight": 2.0, "models": ["b"]},
                                     "ta": {"tokens_per_minute": None}},
                           {"weight": 0.5})
    assert q.tokens_per_minute is None and src["tokens_per_minute"] == "group:ta"   # None: unlimited
    assert q.weight == 0.5 and src["weight"] == "user"
    assert set(q.models) == {"a", "b"}
    assert src["kv_pages"] == "default"


def test_invalid_quota_fields_are_refused_by_name():
    for bad, name in (({"weight": 0}, "weight"), ({"kv_pages": -1}, "kv_pages"),
                      ({"priority": "urgent"}, "priority"), ({"bogus": 1}, "bogus"),
                      ({"tokens_per_minute": "lots"}, "tokens_per_minute")):
        with pytest.raises(BadRequest) as e:
            validate_quota_fields(bad)
        assert name in e.value.message


def test_max_tokens_per_request_is_a_413_naming_the_limit(engine):
    engine.set_user_override("alice", {"max_tokens_per_request": 8}, actor="root")
    with pytest.raises(RequestTooLarge) as e:
        engine.generate("alice", tokens=[1, 2, 3], max_tokens=9)
    assert e.value.status == 413 and e.value.limit == "max_tokens_per_request" and "8" in e.value.message
    assert engine.generate("alice", tokens=[1, 2, 3], max_tokens=8).result().tokens


def test_tokens_per_minute_refuses_with_429_and_other_tenants_go_on(engine):
    engine.set_user_override("alice", {"tokens_per_minute": 30}, actor="root")
    engine.generate("alice", tokens=list(range(10, 30)), max_tokens=8, ignore_eos=True).result()
    with pytest.raises(QuotaExceeded) as e:
        engine.generate("alice", tokens=list(range(10, 30)), max_tokens=8)
    assert e.value.status == 429 and e.value.limit == "tokens_per_minute"
    assert engine.generate("bob", tokens=list(range(10, 30)), max_tokens=8).result().tokens


def test_concurrent_request_limit(engine):
    engine.set_user_override("alice", {"max_concurrent_requests": 1}, actor="root")
    first = engine.generate("alice", tokens=[4, 5, 6], max_tokens=200, ignore_eos=True)
    with pytest.raises(QuotaExceeded) as e:
        engine.generate("alice", tokens=[4, 5, 6], max_tokens=2)
    assert e.value.limit == "max_concurrent_requests"
    first.cancel()
    first.result(timeout=30)
    assert engine.generate("alice", tokens=[4, 5, 6], max_tokens=2).result().tokens


def test_model_outside_my_tier_is_refused(engine):
    engine.set_user_override("alice", {"models": ["some-big-model"]}, actor="root")
    with pytest.raises(QuotaExceeded) as e:
        engine.generate("alice", tokens=[1, 2], max_tokens=2)
    assert e.value.limit == "models" and e.value.status == 403


def test_overrides_usage_and_saved_contexts_survive_an_engine_restart(tmp_path, tokenizer, tiny_weights):
    url = f"sqlite:///{tmp_path}/potluck.sqlite"
    store = Store(url)
    ledger = UsageLedger(store)
    eng = make_engine(tokenizer, tiny_weights, kv_pages=64, store=store, ledger=ledger)
    with eng:
        eng.set_user_override("alice", {"tokens_per_day": 10_000, "weight": 3.0}, actor="admin")
        eng.generate("alice", tokens=list(range(40, 60)), max_tokens=5, ignore_eos=True).result()
        ctx = eng.create_context("alice")
        eng.forward("alice", ctx, [7, 8, 9, 10], None).result()
        eng.save_context("alice", ctx, "chat-1")
    ledger.close()
    store.close()

    store = Store(url)
    ledger = UsageLedger(store)
    eng = make_engine(tokenizer, tiny_weights, kv_pages=64, store=store, ledger=ledger)
    with eng:
        report = eng.tenant_report(eng.tenant("alice").name)
        assert report["quota"]["tokens_per_day"] == 10_000 and report["quota_source"]["weight"] == "user"
        assert report["usage"]["tokens_today"] == 29   # 20 prompt + 5 generated + 4 filled, from the ledger
        opened = eng.open_context("alice", "chat-1")           # re-filled from its saved tokens
        assert eng.context_tokens("alice", opened) == [7, 8, 9, 10]
    assert ledger.totals("alice")["decode_tokens"] == 5
    assert [e["action"] for e in store.audit_log()][:1] == ["quota.set"]
    ledger.close()
    store.close()


def test_reopening_a_saved_context_over_quota_after_restart_leaks_nothing(tmp_path, tokenizer, tiny_weights):
    url = f"sqlite:///{tmp_path}/potluck.sqlite"
    store = Store(url)
    with make_engine(tokenizer, tiny_weights, kv_pages=64, store=store) as eng:
        ctx = eng.create_context("alice")
        eng.forward("alice", ctx, list(range(100, 160)), None).result()    # 4 pages
        eng.save_context("alice", ctx, "long")
        eng.set_user_override("alice", {"kv_pages": 2}, actor="admin")
    with make_engine(tokenizer, tiny_weights, kv_pages=64, store=store) as eng:
        with pytest.raises(QuotaExceeded) as e:
            eng.open_context("alice", "long")            # re-filled from its tokens: over kv_pages
        assert e.value.limit == "kv_pages"
        report = eng.tenant_report("alice")
        assert report["kv_pages"] == 0 and report["open_contexts"] == 0
        eng.delete_user_override("alice", actor="admin")
        opened = eng.open_context("alice", "long")
        assert eng.context_tokens("alice", opened) == list(range(100, 160))
    store.close()


def test_quota_values_past_their_maximum_are_refused_naming_the_field_and_the_maximum():
    from potluck.engine.quota import QUOTA_MAX
    for bad, name in (({"fuel_per_run": 2**70}, "fuel_per_run"), ({"kv_pages": 10**30}, "kv_pages"),
                      ({"memory_mb_per_run": 1 << 20}, "memory_mb_per_run"), ({"weight": 1e30}, "weight"),
                      ({"max_run_seconds": 1e300}, "max_run_seconds"), ({"kv_store_bytes": 1 << 50}, "kv_store_bytes")):
        with pytest.raises(BadRequest) as e:
            validate_quota_fields(bad, where="override")
        msg = e.value.message
        assert name in msg and "at most" in msg and "\n" not in msg, msg
        assert e.value.to_json()["error"]["maximum"] == QUOTA_MAX[name]
    # The largest value is still accepted, and every numeric field has a maximum.
    assert validate_quota_fields({"fuel_per_run": QUOTA_MAX["fuel_per_run"]})
    assert set(QUOTA_MAX) == {n for n, v in Quota().to_json().items() if n not in ("priority", "models", "pool")}


def test_new_storage_quota_fields_have_defaults_and_are_validated_like_the_others():
    q = Quota()
    assert q.run_output_bytes and q.run_history_bytes and q.kv_store_bytes and q.saved_contexts
    for name in ("run_output_bytes", "run_history_bytes", "kv_store_bytes", "saved_contexts"):
        with pytest.raises(BadRequest):
            validate_quota_fields({name: -1})
        assert validate_quota_fields({name: None}) == {name: None}


def test_tokens_per_minute_holds_across_concurrent_requests(engine):
    # Checked at the start only, four requests admitted at once used 88 tokens of a limit of 60.
    engine.set_user_override("alice", {"tokens_per_minute": 60}, actor="root")
    gens, refused = [], 0
    for _ in range(4):
        try:
            gens.append(engine.generate("alice", tokens=list(range(10, 20)), max_tokens=40, ignore_eos=True))
        except QuotaExceeded as e:
            assert e.limit == "tokens_per_minute"
            refused += 1
    for g in gens:
        g.result(timeout=60)
    used = engine.tenant_report("alice")["usage"]["tokens_last_minute"]
    assert used <= 60 and refused >= 1, (used, refused)


def test_a_request_larger_than_the_rate_room_is_cut_to_it_and_ends_with_length(engine):
    engine.set_user_override("alice", {"tokens_per_minute": 30}, actor="root")
    r = engine.generate("alice", tokens=list(range(10, 20)), max_tokens=100, ignore_eos=True).result(timeout=60)
    assert r.finish_reason == "length" and 1 <= len(r.tokens) <= 20, (r.finish_reason, len(r.tokens))
    assert engine.tenant_report("alice")["usage"]["tokens_last_minute"] <= 30
    # Nothing is left promised once it ended: the room is what the window says.
    t = engine.known_tenant("alice")
    assert engine.loop.call(t.reserved) == 0
