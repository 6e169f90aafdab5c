"""Prefix-cache isolation: another tenant's cached pages are never reused, on every path into the pool.

``test_generation.py`` pins it for ``generate``; these pin it for ``forward`` into
contexts (the path inferlets and re-opened saved contexts take) and for the pool
itself. ``benchmarks/bench_isolation.py`` measures the same property by timing.
"""

from __future__ import annotations

import torch

from potluck.engine.pages import KvPool

PREFIX = list(range(700, 748))          # 3 full pages of 16


def test_forward_into_a_context_reuses_only_my_own_cached_prefix(engine):
    def fill(tenant, tokens):
        """Forward ``tokens`` into a new context; how many prompt tokens came from the cache."""
        hits0 = engine.status()["stats"]["prefix_hit_tokens"]
        ctx = engine.create_context(tenant)
        engine.forward(tenant, ctx, tokens, None).result(timeout=60)
        assert engine.context_tokens(tenant, ctx) == tokens
        return engine.status()["stats"]["prefix_hit_tokens"] - hits0

    assert fill("alice", PREFIX + [1, 2, 3]) == 0
    # Bob sends Alice's prefix with his own suffix: nothing of hers is attached, he computes it all.
    assert fill("bob", PREFIX + [4, 5, 6]) == 0
    assert engine.pool.held_by("bob") == 4
    # Alice's own repeat with another suffix reuses her three full pages.
    assert fill("alice", PREFIX + [7, 8, 9]) == 48
    # And Bob's own second send now hits his own pages, never hers.
    assert fill("bob", PREFIX + [10, 11]) == 48
    bob_pages = {id(p) for s in engine.contexts.open["bob"].values() for p in s.ctx.pages}
    alice_pages = {id(p) for s in engine.contexts.open["alice"].values() for p in s.ctx.pages}
    assert not bob_pages & alice_pages


def test_pool_lookup_is_keyed_by_tenant_even_for_identical_tokens():
    pool = KvPool(num_layers=1, num_slots=16, page_size=4, kv_heads=1, head_dim=2,
                  dtype=torch.float32, device="cpu")
    tokens = list(range(20, 33))             # 3 full pages + 1
    a = pool.new_context(1, "alice")
    pool.prepare_write(a, len(tokens), set())
    pool.commit(a, tokens)
    pool.drop(a)                             # ref 0: kept in the cache for reuse
    b = pool.new_context(2, "bob")
    assert pool.reuse_prefix(b, tokens) == 0 and b.pages == [] and pool.prefix_hits == 0
    a2 = pool.new_context(3, "alice")
    assert pool.reuse_prefix(a2, tokens) == 12 and pool.prefix_hits == 3
    assert all(p.owner == "alice" for p in a2.pages)
