"""Contexts: fork with copy-on-write, save/open by name, truncate, swap to host, page accounting."""

from __future__ import annotations

import pytest
import torch

from tiny_engine import make_engine
from potluck.engine.errors import NotFound, QuotaExceeded
from potluck.engine.pages import KvPool
from potluck.engine.sampling import Sampler

GREEDY = Sampler()


def continue_greedy(engine, tenant, ctx, first_tokens, n):
    """Feed tokens and then generate n greedy tokens through `forward`; return them."""
    out = []
    s = engine.forward(tenant, ctx, first_tokens, GREEDY).result(timeout=60)
    for _ in range(n):
        out.append(s.token)
        s = engine.forward(tenant, ctx, [s.token], GREEDY).result(timeout=60)
    return out


def test_fork_shares_pages_and_both_branches_continue_like_a_fresh_context(engine):
    prompt = list(range(300, 337))          # 2 full pages + a 5-token tail
    base = engine.create_context("alice")
    engine.forward("alice", base, prompt, None).result()
    held = engine.pool.held_by("alice")
    fork = engine.fork_context("alice", base)
    assert engine.pool.held_by("alice") == held      # nothing copied yet
    a = continue_greedy(engine, "alice", base, [7], 4)
    b = continue_greedy(engine, "alice", fork, [9], 4)
    fresh_a = engine.create_context("alice")
    fresh_b = engine.create_context("alice")
    assert continue_greedy(engine, "alice", fresh_a, prompt + [7], 4) == a
    assert continue_greedy(engine, "alice", fresh_b, prompt + [9], 4) == b
    # Writing into the shared tail page copied it once; full pages stay shared.
    assert engine.context_tokens("alice", base)[:37] == engine.context_tokens("alice", fork)[:37]
    for c in (base, fork, fresh_a, fresh_b):
        engine.drop_context("alice", c)
    assert engine.pool.held_by("alice") == 0
    assert engine.status()["kv"]["used_pages"] == 0


def test_saved_context_opens_as_an_independent_continuation(engine):
    ctx = engine.create_context("alice")
    engine.forward("alice", ctx, list(range(400, 420)), None).result()
    engine.save_context("alice", ctx, "notes")
    engine.forward("alice", ctx, [5, 6, 7], None).result()       # the original goes on
    opened = engine.open_context("alice", "notes")
    assert engine.context_tokens("alice", opened) == list(range(400, 420))
    assert [r["name"] for r in engine.list_saved("alice")] == ["notes"]
    engine.drop_context("alice", ctx)
    engine.drop_context("alice", opened)
    assert engine.pool.held_by("alice") > 0                       # the snapshot keeps its pages
    engine.delete_saved("alice", "notes")
    assert engine.pool.held_by("alice") == 0
    with pytest.raises(NotFound):
        engine.open_context("alice", "notes")


def test_truncate_then_continue_equals_fresh(engine):
    ctx = engine.create_context("alice")
    engine.forward("alice", ctx, list(range(500, 540)), None).result()
    engine.truncate_context("alice", ctx, 21)
    got = continue_greedy(engine, "alice", ctx, [11, 12], 3)
    fresh = engine.create_context("alice")
    assert continue_greedy(engine, "alice", fresh, list(range(500, 521)) + [11, 12], 3) == got


def test_second_tenant_cannot_name_open_fork_or_drop_my_contexts(engine):
    mine = engine.create_context("alice")
    engine.forward("alice", mine, [1, 2, 3, 4], None).result()
    engine.save_context("alice", mine, "secret")
    engine.tenant("bob")
    for call in (lambda: engine.fork_context("bob", mine),
                 lambda: engine.drop_context("bob", mine),
                 lambda: engine.context_tokens("bob", mine),
                 lambda: engine.truncate_context("bob", mine, 1),
                 lambda: engine.forward("bob", mine, [5], GREEDY).result(),
                 lambda: engine.open_context("bob", "secret"),
                 lambda: engine.delete_saved("bob", "secret")):
        with pytest.raises(NotFound) as e:
            call()
        assert "alice" not in e.value.message
    assert engine.list_saved("bob") == []
    # Bob's own context of the same name is a different thing.
    b = engine.create_context("bob")
    engine.forward("bob", b, [9, 9], None).result()
    engine.save_context("bob", b, "secret")
    assert engine.context_tokens("bob", engine.open_context("bob", "secret")) == [9, 9]
    assert engine.context_tokens("alice", engine.open_context("alice", "secret")) == [1, 2, 3, 4]


def test_kv_page_quota_refuses_with_the_limit_named_and_other_tenants_unaffected(engine):
    engine.set_user_override("alice", {"kv_pages": 3}, actor="admin")
    ctx = engine.create_context("alice")
    engine.forward("alice", ctx, list(range(10, 40)), None).result()      # 2 pages
    with pytest.raises(QuotaExceeded) as e:
        engine.forward("alice", ctx, list(range(40, 80)), None).result()
    assert e.value.limit == "kv_pages" and e.value.value == 3 and "kv_pages" in e.value.message
    with pytest.raises(QuotaExceeded):
        engine.generate("alice", tokens=list(range(10, 90)), max_tokens=2).result()
    assert engine.generate("bob", tokens=list(range(10, 90)), max_tokens=2).result().finish_reason == "length"
    # Alice's existing context still works within her quota.
    assert engine.forward("alice", ctx, [5], GREEDY).result() is not None


def test_device_pool_shortage_swaps_to_host_and_output_is_unchanged(tokenizer, tiny_weights):
    prompts = [list(range(1000 + 50 * i, 1040 + 50 * i)) for i in range(6)]   # 3 pages each
    outputs = {}
    for pages in (64, 8):
        eng = make_engine(tokenizer, tiny_weights, kv_pages=pages)
        with eng:
            ctxs = []
            for i, p in enumerate(prompts):
                tenant = "alice" if i < 4 else "bob"
                c = eng.create_context(tenant)
                eng.forward(tenant, c, p, None).result()
                ctxs.append((tenant, c))
            outputs[pages] = [continue_greedy(eng, t, c, [3], 3) for t, c in ctxs]
            st = eng.status()["kv"]
            if pages == 8:
                assert st["swaps_out"] > 0 and st["swaps_in"] > 0
            for t, c in ctxs:
                eng.drop_context(t, c)
            assert eng.status()["kv"]["used_pages"] == 0
            assert eng.status()["kv"]["pages_on_host"] == 0
    assert outputs[8] == outputs[64]


def test_swap_victim_is_the_tenant_furthest_over_its_share():
    pool = KvPool(num_layers=1, num_slots=6, page_size=2, kv_heads=1, head_dim=2,
                  dtype=torch.float32, device="cpu", host_pages=10)
    pinned: set[int] = set()
    hog = pool.new_context(1, "hog")
    pool.prepare_write(hog, 10, pinned)       # 5 pages
    light = pool.new_context(2, "light")
    pool.prepare_write(light, 2, pinned)      # 1 page
    pool.prepare_write(light, 6, {p.id for p in light.pages})   # 3 pages: 2 more, the hog gives them
    assert all(p.slot is not None for p in light.pages)
    assert sum(p.slot is None for p in hog.pages) == 2
    assert pool.tenants["light"].resident == 3


def test_saved_contexts_are_held_to_the_quota_and_replacing_a_name_is_free(engine):
    engine.set_user_override("alice", {"saved_contexts": 2}, actor="root")
    ctx = engine.create_context("alice")
    engine.forward("alice", ctx, [5, 6, 7], None).result()
    engine.save_context("alice", ctx, "one")
    engine.save_context("alice", ctx, "two")
    with pytest.raises(QuotaExceeded) as e:
        engine.save_context("alice", ctx, "three")
    assert e.value.limit == "saved_contexts" and e.value.value == 2
    engine.save_context("alice", ctx, "two")               # a name already kept: replaced
    with pytest.raises(QuotaExceeded):
        engine.fill_saved("alice", "three", tokens=[1, 2])
    engine.delete_saved("alice", "one")
    engine.fill_saved("alice", "three", tokens=[1, 2])
    assert [c["name"] for c in engine.list_saved("alice")] == ["three", "two"]
    engine.save_context("bob", engine.create_context("bob"), "one")     # bob's count is his own
