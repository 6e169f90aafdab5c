"""What users feel: each tenant's recent time to first token and time between tokens.

Fed by the engine at the end of every generation (on the batch-loop thread,
so it only appends to bounded rings), read by the tenant reports (``/api/me``,
the admin view). Kept per tenant in memory only: a window of recent
experience, not an account (usage is the ledger's).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .generation import Generation

SAMPLES = 256    # per tenant and kind: enough for a p99 of the last few minutes of a busy user


def percentile(xs, q: float) -> float | None:
    """``q``-th percentile by linear interpolation (numpy's default); None without samples."""
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class LatencyStats:
    def __init__(self):
        self._ttft: dict[str, deque[float]] = {}
        self._tbt: dict[str, deque[float]] = {}

    def on_generation(self, g: "Generation") -> None:
        if g.first_token_at is None:
            return
        self._ttft.setdefault(g.tenant, deque(maxlen=SAMPLES)).append(g.first_token_at - g.created)
        times = g.token_times
        ring = self._tbt.setdefault(g.tenant, deque(maxlen=SAMPLES))
        ring.extend(b - a for a, b in zip(times, times[1:]))

    def report(self, tenant: str) -> dict:
        ttft, tbt = self._ttft.get(tenant, ()), self._tbt.get(tenant, ())

        def ms(x):
            return None if x is None else round(x * 1000, 1)
        return {"ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p99_ms": ms(percentile(ttft, 99)),
                "tbt_p50_ms": ms(percentile(tbt, 50)), "tbt_p99_ms": ms(percentile(tbt, 99)),
                "generations": len(ttft)}
