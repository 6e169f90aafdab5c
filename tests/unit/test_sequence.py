"""``Sequence``: one object per stream, kept across tokens, one path into the scheduler."""

from __future__ import annotations

import pytest

from potluck.engine.errors import PotluckError
from potluck.engine.sampling import Sampler


@pytest.fixture
def added(engine):
    """Every feed the scheduler receives, with whether it was a decode, recorded as it arrives."""
    seen = []
    add = engine.scheduler.add

    def record(seq):
        seen.append((seq, seq.decode, list(seq.tokens)))
        add(seq)
    engine.loop.call(lambda: setattr(engine.scheduler, "add", record))
    return seen


def test_a_generation_keeps_one_sequence_from_prompt_to_last_token(engine, added):
    g = engine.generate("alice", tokens=[5, 6, 7, 8], max_tokens=6, ignore_eos=True)
    res = g.result(timeout=60)
    assert len(res.tokens) == 6
    feeds = [a for a in added if a[0].tenant == "alice"]
    assert len(feeds) == 6                                # the prompt, then each sampled token but the last
    assert len({id(seq) for seq, _, _ in feeds}) == 1     # never a new request object per token
    assert [d for _, d, _ in feeds] == [False] + [True] * 5
    assert [t for _, _, t in feeds[1:]] == [[x] for x in res.tokens[:5]]


def test_an_open_context_keeps_its_sequence_and_knows_a_fed_back_sample_is_a_decode(engine, added):
    ctx = engine.create_context("bob")
    first = engine.forward("bob", ctx, [11, 12, 13], Sampler()).result(timeout=60)
    engine.forward("bob", ctx, [first.token], Sampler()).result(timeout=60)
    engine.forward("bob", ctx, [first.token + 1], Sampler()).result(timeout=60)   # not what was sampled
    feeds = [a for a in added if a[0].tenant == "bob"]
    assert len({id(seq) for seq, _, _ in feeds}) == 1
    assert [d for _, d, _ in feeds] == [False, True, False]


def test_a_cancelled_generation_leaves_the_scheduler_and_frees_its_pages(engine):
    g = engine.generate("carol", tokens=list(range(3, 40)), max_tokens=500, ignore_eos=True)
    g.cancel()
    assert g.result(timeout=60).finish_reason == "cancelled"
    assert engine.loop.call(lambda: [s for s in engine.scheduler.pending() if s.tenant == "carol"]) == []
    assert engine.status()["kv"]["used_pages"] == 0


def test_a_second_forward_on_a_busy_context_is_refused_and_the_first_still_answers(engine):
    ctx = engine.create_context("dave")
    futs = engine.forward_many("dave", [(ctx, list(range(3, 60)), Sampler()), (ctx, [5], Sampler())])
    with pytest.raises(PotluckError) as err:
        futs[1].result(timeout=60)
    assert err.value.code == "context_busy"
    assert futs[0].result(timeout=60).token >= 0
