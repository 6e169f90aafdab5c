"""Small-batch matrix products on a CPU: the call layout that reads the weights fastest.

A decode step multiplies a handful of activation rows by every weight matrix of the
model; on a CPU that is bound by reading the weights from memory, and how fast the
BLAS reads them depends on how the product is asked for. With the MKL that PyTorch's
CPU wheels carry, on the AMD EPYC these benchmarks ran on, ``F.linear`` (``x @ W.T``)
of 1 to 8 rows read the weights at ~11 GB/s, and 2 rows cost 1.6x as much as 1,
while the same product asked for as ``W @ x.T`` ran at ~33 GB/s. With the default
model a one-token decode step went from 56 to 32 ms and a two-token one from 87 to
32 ms. That matters beyond speed: when a light user's decode shares a step with one
token of somebody else's, the step must not cost 1.6x the step it would make alone.

Which layout is faster depends on the CPU and the BLAS, so ``choose`` measures both on
the model's own weights at load and keeps the faster for steps of at most
``SMALL_ROWS`` rows. One row is sent as two: the single-row (matrix-vector) path is
the slow one. Larger steps (prompt chunks) are bound by arithmetic, not reading, and
always use ``F.linear``.
"""

from __future__ import annotations

import logging
import time
import types

import torch
import torch.nn.functional as F

log = logging.getLogger("potluck.engine")

SMALL_ROWS = 64         # measured: faster or equal up to 64 rows, slower at 256
MIN_GAIN = 1.2          # keep F.linear unless the other layout is clearly faster
TIMED_BYTES = 256 << 20


def _weight_first(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if not 0 < rows <= SMALL_ROWS:
        return F.linear(x, self.weight, self.bias)
    x2 = x.reshape(rows, x.shape[-1])
    if rows == 1:
        x2 = torch.cat([x2, x2])
    if self.bias is None:
        y = torch.matmul(self.weight, x2.t())
    else:
        y = torch.addmm(self.bias[:, None], self.weight, x2.t())
    return y[:, :rows].t().contiguous().view(*x.shape[:-1], y.shape[0])


def _time_layout(layers: list[torch.nn.Linear], rows: int, forward) -> float:
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


def choose(model: torch.nn.Module) -> bool:
    """On a CPU, give the model's linear layers the faster small-batch layout; True if it changed.

    Timed on the largest weight shape the model repeats in every layer (its MLP's), over as many
    layers as make ~256 MB (more than any CPU cache, so the weights come from memory as in a
    step), for 1 and 4 rows: ~0.1 s at load for the default model, under a second for any.
    """
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears or linears[0].weight.device.type != "cpu":
        return False
    by_shape: dict[tuple[int, int], list[torch.nn.Linear]] = {}
    for m in linears:
        by_shape.setdefault(tuple(m.weight.shape), []).append(m)
    repeated = [ms for ms in by_shape.values() if len(ms) > 1] or list(by_shape.values())
    layers = max(repeated, key=lambda ms: ms[0].weight.numel() * len(ms))
    each = layers[0].weight.numel() * layers[0].weight.element_size()
    layers = layers[:max(2, TIMED_BYTES // each)]
    base = alt = 0.0
    for rows in (1, 4):
        base += _time_layout(layers, rows, lambda m, x: F.linear(x, m.weight, m.bias))
        alt += _time_layout(layers, rows, _weight_first)
    faster = base > MIN_GAIN * alt
    log.info("small-batch linear layout on this CPU: %s (1 + 4 rows over %d layers: F.linear %.1f ms, W @ x.T %.1f ms)",
             "W @ x.T" if faster else "F.linear", len(layers), base * 1e3, alt * 1e3)
    for m in linears:
        if faster:
            m.forward = types.MethodType(_weight_first, m)
        else:
            m.__dict__.pop("forward", None)     # measured again on a model patched before: undo
    return faster
