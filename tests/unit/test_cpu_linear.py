"""The CPU's small-batch linear layout: the same products as F.linear, chosen by measurement."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from potluck.engine import cpu_linear


def _model(bias: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(64, 64, bias=bias) for _ in range(3)])


def test_weight_first_layout_gives_the_products_of_f_linear_for_every_row_count():
    for bias in (False, True):
        layer = _model(bias)[0]
        for shape in [(1, 1, 64), (1, 2, 64), (3, 64), (1, 8, 64), (2, 4, 64), (1, 9, 64), (1, 300, 64), (0, 64)]:
            x = torch.randn(*shape)
            got = cpu_linear._weight_first(layer, x)
            want = F.linear(x, layer.weight, layer.bias)
            assert got.shape == want.shape and got.is_contiguous()
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for x in (torch.randn(64), torch.randn(64, 5).t()):        # one vector; rows not contiguous
            torch.testing.assert_close(cpu_linear._weight_first(layer, x), F.linear(x, layer.weight, layer.bias),
                                       rtol=1e-5, atol=1e-5)


def test_choose_installs_the_faster_layout_and_undoes_it_when_slower(monkeypatch):
    model = _model(True)
    timings = {"F.linear": 2.0, "weight_first": 1.0}

    def fake_time(layers, rows, forward):
        return timings["weight_first" if forward is cpu_linear._weight_first else "F.linear"]
    monkeypatch.setattr(cpu_linear, "_time_layout", fake_time)
    x = torch.randn(1, 64)
    assert cpu_linear.choose(model) is True
    assert all("forward" in m.__dict__ for m in model)
    torch.testing.assert_close(model(x), F.linear(F.linear(F.linear(x, model[0].weight, model[0].bias),
                                                           model[1].weight, model[1].bias),
                                                  model[2].weight, model[2].bias), rtol=1e-5, atol=1e-5)
    timings["weight_first"] = 1.9          # within MIN_GAIN: not worth it
    assert cpu_linear.choose(model) is False
    assert not any("forward" in m.__dict__ for m in model)


def test_choose_leaves_a_model_without_linear_layers_alone():
    assert cpu_linear.choose(torch.nn.Sequential(torch.nn.ReLU())) is False


def test_decode_rows_are_grouped_by_context_length_only_where_padding_would_cost():
    from potluck.engine.model_runner import PAD_SPLIT_KEYS, decode_groups
    assert decode_groups([]) == []
    # Like lengths (a decode flood): one call.
    assert decode_groups([60, 220, 140, 90]) == [[1, 2, 3, 0]]
    # A short chat beside a flood's long contexts: its own call.
    assert decode_groups([37, 940, 930, 945]) == [[3, 1, 2], [0]]
    # Under half, but within PAD_SPLIT_KEYS of the longest: padding is cheaper than another call.
    assert decode_groups([10, PAD_SPLIT_KEYS]) == [[1, 0]]
    for lengths in ([5, 900, 300, 2000, 1990, 40, 700], [1] * 8, list(range(1, 3000, 97))):
        groups = decode_groups(lengths)
        assert sorted(i for grp in groups for i in grp) == list(range(len(lengths)))
        for grp in groups:
            top = lengths[grp[0]]
            assert all(lengths[i] <= top and (2 * lengths[i] >= top or top - lengths[i] < PAD_SPLIT_KEYS)
                       for i in grp)
