"""Matrix products on a CPU: for each size of step, the call that runs it fastest.

A step multiplies its activation rows (one per token) by every weight matrix of the model. How
fast a CPU does that depends less on the arithmetic than on how the product is asked for, and
differently for a decode step's few rows and a prompt chunk's hundreds. Measured with the
PyTorch 2.13 CPU wheel on the 2-core AMD EPYC these benchmarks ran on, over the default model's
linear layers (float32, ms a step):

    rows                          1     2     4     16    64    256
    F.linear (MKL)               35    52    47    49    100   304
    W @ x.T (one row as two)     15    15    23    45     99   324
    oneDNN, prepacked weights    22    29    21    29     74   253

``F.linear`` of a few rows reads the weights at ~11 GB/s, and 2 rows cost 1.6x as much as 1;
``W @ x.T`` reads them at ~30 GB/s but uses the arithmetic units poorly past two rows; oneDNN
with the weights reordered once into its blocked layout (what PyTorch's own compiler uses for
CPU inference) is the fastest from 3 rows up. In bfloat16 on a CPU with AVX512-BF16 it wins at
every size (13 ms for 1 row, 16 for 16, 132 for 256). That matters beyond speed: when a light
user's decode shares a step with part of a heavy user's prompt, every extra row must cost little
for the held step to carry the heavy user's work at all.

Which call is fastest depends on the CPU, the BLAS and the dtype, so ``choose`` times each on
the model's own weights at load, for each band of rows, and installs a forward that dispatches
on the rows of each call. The dense weights stay (the module is still an ordinary
``nn.Linear``); a prepacked copy is kept beside them only where it won a band. The copy is of
the weights at load: weights changed afterwards need ``choose`` again.
"""

from __future__ import annotations

import logging
import time
import types
from typing import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger("potluck.engine")

# The bands of rows a call is dispatched on, and the rows each is timed with.
FEW_ROWS = 2            # decode steps of one or two users
SMALL_ROWS = 64         # decode batches, a held step's share of a prompt
BANDS = (("few", (1, 2)), ("small", (4, 16)), ("large", (256,)))
MIN_GAIN = 1.1          # keep F.linear unless another call is clearly faster (timing noise is ~5%)
TIMED_BYTES = 256 << 20         # more than any CPU cache: the weights come from memory as in a step
LARGE_TIMED_BYTES = 32 << 20    # large calls are bound by arithmetic; a few layers time them

Forward = Callable[[torch.nn.Linear, torch.Tensor], torch.Tensor]


def _dense(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, self.weight, self.bias)


def _weight_first(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if rows == 0:
        return F.linear(x, self.weight, self.bias)
    x2 = x.reshape(rows, x.shape[-1])
    if rows == 1:
        x2 = torch.cat([x2, x2])        # the matrix-vector path is the slow one
    if self.bias is None:
        y = torch.matmul(self.weight, x2.t())
    else:
        y = torch.addmm(self.bias[:, None], self.weight, x2.t())
    return y[:, :rows].t().contiguous().view(*x.shape[:-1], y.shape[0])


def _prepacked(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self._potluck_packed, self.bias, "none", [], "")


def _pack(m: torch.nn.Linear) -> None:
    # A copy of the weights as they are now: weights changed after ``choose`` need ``choose`` again.
    m._potluck_packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), 256)


def _can_prepack(dtype: torch.dtype) -> bool:
    return (torch.backends.mkldnn.is_available() and dtype in (torch.float32, torch.bfloat16)
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


LAYOUTS: dict[str, Forward] = {"F.linear": _dense, "W @ x.T": _weight_first, "oneDNN prepacked": _prepacked}


def _dispatch(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    few, small, large = self._potluck_plan
    if rows == 0:
        return F.linear(x, self.weight, self.bias)
    return (few if rows <= FEW_ROWS else small if rows <= SMALL_ROWS else large)(self, x)


def _time_layout(layers: list[torch.nn.Linear], rows: int, forward: Forward) -> float:
    # Not torch.randn: the global random state is the users' (a seed set before the engine starts).
    x = torch.ones(rows, layers[0].in_features, dtype=layers[0].weight.dtype)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(3):
            t0 = time.perf_counter()
            for mod in layers:
                forward(mod, x)
            best = min(best, time.perf_counter() - t0)
    return best


def _uninstall(linears: list[torch.nn.Linear]) -> None:
    for m in linears:
        for attr in ("forward", "_potluck_plan", "_potluck_packed"):
            m.__dict__.pop(attr, None)


# What was measured, per weight shape, dtype and thread count: the same on every model load of a
# process (tests and benchmarks load the model many times).
_plans: dict[tuple, dict[str, str]] = {}


def choose(model: torch.nn.Module) -> dict[str, str]:
    """On a CPU, give the model's linear layers the fastest call for each band of rows; returns the choice.

    Timed on the largest weight shape the model repeats in every layer (its MLP's), over as many
    layers as make ~256 MB (~32 MB for the large band), each call three times: ~1 s at load for
    the default model. An empty result: nothing changed (not a CPU, no linear layers).
    """
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears or linears[0].weight.device.type != "cpu":
        return {}
    _uninstall(linears)         # measured again on a model patched before: from plain F.linear
    by_shape: dict[tuple[int, int], list[torch.nn.Linear]] = {}
    for m in linears:
        by_shape.setdefault(tuple(m.weight.shape), []).append(m)
    repeated = [ms for ms in by_shape.values() if len(ms) > 1] or list(by_shape.values())
    layers = max(repeated, key=lambda ms: ms[0].weight.numel() * len(ms))
    each = layers[0].weight.numel() * layers[0].weight.element_size()
    key = (tuple(layers[0].weight.shape), layers[0].weight.dtype, torch.get_num_threads())
    plan = _plans.get(key) or _measure(layers, each)
    _plans[key] = plan
    if set(plan.values()) == {"F.linear"}:
        _uninstall(linears)
        return plan
    forwards = tuple(LAYOUTS[plan[band]] for band, _ in BANDS)
    dense = tuple(_dense if f is _prepacked else f for f in forwards)
    packed_bytes = 0
    for m in linears:
        mine = forwards
        if _prepacked in forwards:
            try:
                if m.weight.dtype != layers[0].weight.dtype:
                    raise RuntimeError(f"its weights are {m.weight.dtype}, the calls were timed in "
                                       f"{layers[0].weight.dtype}")
                if "_potluck_packed" not in m.__dict__:      # not packed by this call's timing
                    _pack(m)
                packed_bytes += m.weight.numel() * m.weight.element_size()
            except RuntimeError as e:       # this layer keeps F.linear where the plan says oneDNN
                log.info("linear layer %s not prepacked: %s", tuple(m.weight.shape), str(e).splitlines()[0])
                mine = dense
        if _prepacked not in mine:          # a copy made only to time the calls
            m.__dict__.pop("_potluck_packed", None)
        m._potluck_plan = mine
        m.forward = types.MethodType(_dispatch, m)
    if packed_bytes:
        log.info("linear layers prepacked for oneDNN: %d MB beside the weights", packed_bytes >> 20)
    return plan


def _measure(layers: list[torch.nn.Linear], each: int) -> dict[str, str]:
    candidates = dict(LAYOUTS)
    if not _can_prepack(layers[0].weight.dtype):
        del candidates["oneDNN prepacked"]
    plan: dict[str, str] = {}
    report = []
    for band, rows_timed in BANDS:
        timed = layers[:max(2, (LARGE_TIMED_BYTES if band == "large" else TIMED_BYTES) // each)]
        times: dict[str, float] = {}
        for name, forward in candidates.items():
            try:
                if forward is _prepacked:
                    for m in timed:
                        _pack(m)
                times[name] = sum(_time_layout(timed, rows, forward) for rows in rows_timed)
            except RuntimeError as e:      # a oneDNN build without this dtype: not a candidate
                log.info("linear layout %s unavailable: %s", name, str(e).splitlines()[0])
        best = min(times, key=times.get)
        plan[band] = best if times[best] * MIN_GAIN < times["F.linear"] else "F.linear"
        report.append(f"{band} ({'+'.join(map(str, rows_timed))} rows): "
                      + ", ".join(f"{n} {t * 1e3:.1f} ms" for n, t in times.items()))
    log.info("linear layouts on this CPU: %s (%s)", plan, "; ".join(report))
    return plan
