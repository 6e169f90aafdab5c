"""Quotas: resolution with provenance, enforcement naming the limit, persistence of overrides."""

from __future__ import annotations

import pytest

from tiny_engine import make_engine
from potluck.engine.errors import BadRequest, QuotaExceeded, RequestTooLarge
from potluck.engine.store import Store, UsageLedger
from potluck.engine.tenants import Quota, resolve_quota, validate_quota_fields


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
