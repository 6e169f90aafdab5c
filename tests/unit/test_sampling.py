"""Device sampling: every knob does what it says, and bad values are refused by name."""

from __future__ import annotations

import pytest
import torch

from potluck.engine.errors import BadRequest
from potluck.engine.sampling import Sampler, sample

V = 50


def logits_rows(n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, V, generator=g) * 3


def draw(logits, s, n=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [sample(logits, [s], [gen])[0].token for _ in range(n)]


def test_greedy_is_argmax_and_reports_its_logprob():
    lg = logits_rows(3)
    out = sample(lg, [Sampler()] * 3, [None] * 3)
    assert [o.token for o in out] == lg.argmax(-1).tolist()
    for o, row in zip(out, lg):
        assert o.logprob == pytest.approx(torch.log_softmax(row, -1)[o.token].item(), abs=1e-6)


def test_top_k_one_and_tiny_top_p_both_reduce_to_greedy():
    lg = logits_rows()
    best = int(lg.argmax())
    assert set(draw(lg, Sampler(temperature=1.5, top_k=1), 50)) == {best}
    assert set(draw(lg, Sampler(temperature=1.5, top_p=1e-6), 50)) == {best}


def test_top_k_limits_samples_to_the_k_most_likely():
    lg = logits_rows()
    allowed = set(torch.topk(lg[0], 5).indices.tolist())
    seen = set(draw(lg, Sampler(temperature=2.0, top_k=5)))
    assert seen <= allowed and len(seen) > 1


def test_min_p_drops_tokens_below_the_floor():
    lg = logits_rows()
    p = torch.softmax(lg[0], -1)
    allowed = set(torch.nonzero(p >= 0.2 * p.max()).flatten().tolist())
    assert set(draw(lg, Sampler(temperature=1.0, min_p=0.2))) <= allowed


def test_temperature_sampling_follows_the_distribution():
    lg = torch.tensor([[0.0, 1.0, 2.0] + [-30.0] * (V - 3)])
    toks = draw(lg, Sampler(temperature=1.0), 3000)
    p = torch.softmax(lg[0], -1)
    for t in (0, 1, 2):
        assert toks.count(t) / 3000 == pytest.approx(p[t].item(), abs=0.04)


def test_allowed_mask_and_logit_bias_steer_the_choice():
    lg = logits_rows()
    assert set(draw(lg, Sampler(temperature=1.0, allowed=(3, 7)), 100)) <= {3, 7}
    assert sample(lg, [Sampler(allowed=(11,))], [None])[0].token == 11
    assert sample(lg, [Sampler(logit_bias={17: 100.0})], [None])[0].token == 17


def test_same_seed_same_tokens_and_top_logprobs_are_a_distribution():
    lg = logits_rows(1)
    a = draw(lg, Sampler(temperature=1.0), 20, seed=5)
    b = draw(lg, Sampler(temperature=1.0), 20, seed=5)
    assert a == b
    out = sample(lg, [Sampler(top_logprobs=5)], [None])[0]
    assert len(out.top) == 5 and out.top[0][0] == out.token
    assert all(x[1] >= y[1] for x, y in zip(out.top, out.top[1:]))


def test_mixed_rows_each_use_their_own_sampler():
    lg = logits_rows(3)
    out = sample(lg, [Sampler(), Sampler(allowed=(4,)), Sampler(temperature=1.0, top_k=1)], [None] * 3)
    assert out[0].token == int(lg[0].argmax())
    assert out[1].token == 4
    assert out[2].token == int(lg[2].argmax())


@pytest.mark.parametrize("kwargs, name", [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": -3}, "top_k"),
    ({"min_p": 1.5}, "min_p"), ({"seed": -1}, "seed"), ({"top_logprobs": 99}, "top_logprobs"),
    ({"logit_bias": {V + 5: 1.0}}, "logit_bias"), ({"logit_bias": {1: 1000.0}}, "logit_bias"),
    ({"allowed": ()}, "allowed"), ({"allowed": (V,)}, "allowed"),
])
def test_bad_sampling_values_are_refused_naming_the_parameter(kwargs, name):
    with pytest.raises(BadRequest) as e:
        Sampler(**kwargs).validate(V)
    assert name in e.value.message
