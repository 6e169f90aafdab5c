"""The CPU's small-batch linear layout: the same products as F.linear, chosen by measurement."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from potluck.engine import cpu_linear


def _model(bias: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(64, 64, bias=bias) for _ in range(3)])


@pytest.fixture(autouse=True)
def _fresh_plans():
    cpu_linear._plans.clear()
    yield
    cpu_linear._plans.clear()


def _layouts() -> list[cpu_linear.Forward]:
    out = [cpu_linear._dense, cpu_linear._weight_first]
    if cpu_linear._can_prepack(torch.float32):
        out.append(cpu_linear._prepacked)
    return out


def test_every_layout_gives_the_products_of_f_linear_for_every_row_count():
    for bias in (False, True):
        layer = _model(bias)[0]
        cpu_linear._pack(layer)
        for forward in _layouts():
            for shape in [(1, 1, 64), (1, 2, 64), (3, 64), (1, 8, 64), (2, 4, 64), (1, 9, 64), (1, 300, 64), (0, 64)]:
                x = torch.randn(*shape)
                got = forward(layer, x)
                want = F.linear(x, layer.weight, layer.bias)
                assert got.shape == want.shape and got.is_contiguous(), forward
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            for x in (torch.randn(64), torch.randn(64, 5).t()):        # one vector; rows not contiguous
                torch.testing.assert_close(forward(layer, x), F.linear(x, layer.weight, layer.bias),
                                           rtol=1e-5, atol=1e-5)


def _fake_timings(monkeypatch, table: dict[str, dict[int, float]]) -> list[tuple[str, int]]:
    names = {f: n for n, f in cpu_linear.LAYOUTS.items()}
    calls = []

    def fake_time(layers, rows, forward):
        calls.append((names[forward], rows))
        return table[names[forward]][rows]
    monkeypatch.setattr(cpu_linear, "_time_layout", fake_time)
    monkeypatch.setattr(cpu_linear, "_can_prepack", lambda dtype: True)
    return calls


def test_choose_installs_the_fastest_call_per_band_of_rows_and_dispatches_on_each_calls_rows(monkeypatch):
    if not cpu_linear._can_prepack(torch.float32):
        pytest.skip("this PyTorch has no oneDNN linear")
    model = _model(True)
    slow = {1: 2.0, 2: 2.0, 4: 2.0, 16: 2.0, 256: 2.0}
    fast = {1: 1.0, 2: 1.0, 4: 1.0, 16: 1.0, 256: 1.0}
    calls = _fake_timings(monkeypatch, {"F.linear": slow,
                                        "W @ x.T": {**slow, 1: 1.0, 2: 1.0},
                                        "oneDNN prepacked": {**fast, 1: 3.0, 2: 3.0}})
    plan = cpu_linear.choose(model)
    assert plan == {"few": "W @ x.T", "small": "oneDNN prepacked", "large": "oneDNN prepacked"}
    assert all(hasattr(m, "_potluck_packed") for m in model)
    used = []
    # Spy on which band's call each product goes through.
    for m in model:
        m._potluck_plan = tuple((lambda f, n: lambda self, x: (used.append(n), f(self, x))[1])(f, n)
                                for f, n in zip(m._potluck_plan, ("few", "small", "large")))
    for rows, band in ((1, "few"), (2, "few"), (3, "small"), (64, "small"), (65, "large"), (300, "large")):
        used.clear()
        x = torch.randn(1, rows, 64)
        want = x
        for m in model:
            want = F.linear(want, m.weight, m.bias)
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
        assert used == [band] * 3, (rows, used)
    # Measured once a process: a second load of the same shapes installs the same plan without timing.
    measured = len(calls)
    assert cpu_linear.choose(_model(False)) == plan and len(calls) == measured


def test_choose_packs_the_weights_as_they_are_and_a_layer_it_cannot_pack_keeps_f_linear(monkeypatch):
    if not cpu_linear._can_prepack(torch.float32):
        pytest.skip("this PyTorch has no oneDNN linear")
    model = _model(True)
    fast = dict.fromkeys((1, 2, 4, 16, 256), 1.0)
    _fake_timings(monkeypatch, {"F.linear": dict.fromkeys(fast, 2.0), "W @ x.T": dict.fromkeys(fast, 2.0),
                                "oneDNN prepacked": fast})
    x = torch.randn(5, 64)

    def reference():
        y = x
        for m in model:
            y = F.linear(y, m.weight, m.bias)
        return y
    assert set(cpu_linear.choose(model).values()) == {"oneDNN prepacked"}
    with torch.no_grad():
        for m in model:
            m.weight.mul_(2)        # weights changed after load: choose packs them again
    cpu_linear.choose(model)
    torch.testing.assert_close(model(x), reference(), rtol=1e-5, atol=1e-5)

    pack = cpu_linear._pack

    def refuse_the_middle_one(m):
        if m is model[1]:
            raise RuntimeError("oneDNN: unsupported")
        pack(m)
    monkeypatch.setattr(cpu_linear, "_pack", refuse_the_middle_one)
    cpu_linear.choose(model)
    assert model[1]._potluck_plan == (cpu_linear._dense,) * 3 and not hasattr(model[1], "_potluck_packed")
    assert model[0]._potluck_plan == (cpu_linear._prepacked,) * 3
    torch.testing.assert_close(model(x), reference(), rtol=1e-5, atol=1e-5)


def test_no_layer_keeps_a_packed_copy_the_plan_does_not_use(monkeypatch):
    # Timing packs the timed layers; where oneDNN then wins no band, those copies must go (with the
    # default model in float32 they would be ~256 MB held for nothing).
    if not cpu_linear._can_prepack(torch.float32):
        pytest.skip("this PyTorch has no oneDNN linear")
    model = _model(True)
    rows = (1, 2, 4, 16, 256)
    _fake_timings(monkeypatch, {"F.linear": dict.fromkeys(rows, 2.0), "W @ x.T": dict.fromkeys(rows, 1.0),
                                "oneDNN prepacked": dict.fromkeys(rows, 1.5)})
    assert set(cpu_linear.choose(model).values()) == {"W @ x.T"}
    assert all(m._potluck_plan == (cpu_linear._weight_first,) * 3 for m in model)
    assert not any(hasattr(m, "_potluck_packed") for m in model)


def test_choose_keeps_f_linear_within_the_noise_and_drops_the_packed_copies(monkeypatch):
    model = _model(True)
    _fake_timings(monkeypatch, {"F.linear": dict.fromkeys((1, 2, 4, 16, 256), 1.0),
                                "W @ x.T": dict.fromkeys((1, 2, 4, 16, 256), 0.95),
                                "oneDNN prepacked": dict.fromkeys((1, 2, 4, 16, 256), 0.95)})
    assert set(cpu_linear.choose(model).values()) == {"F.linear"}
    assert not any("forward" in m.__dict__ or hasattr(m, "_potluck_packed") for m in model)


def test_choose_leaves_a_model_without_linear_layers_alone():
    assert cpu_linear.choose(torch.nn.Sequential(torch.nn.ReLU())) == {}


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
