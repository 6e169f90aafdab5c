"""The step composer: how much goes into the next step, so a light user's step stays short.

On a batched engine every sequence in a step waits for the whole step: a
light user's one decode token rides with a heavy user's 256-token prefill
chunk and takes its time. Fair shares of *tokens* (the scheduler's VTC)
cannot see that; this module measures *time*.

- ``CostModel`` predicts a step's seconds from what it carries (a fixed cost,
  per prefill token, per decode sequence, per KV token read), fitted online
  from the engine's own measured steps, starting from a prior and pulled
  back towards it where the steps seen so far cannot tell the terms apart.
- ``StepComposer`` builds each step in two passes over the scheduler's fair
  order. First the *latency-sensitive* work: interactive requests of tenants
  whose whole demand costs well under their fair share of the step (they are
  not backlogged in the max-min sense; a flood is, even a decode flood whose
  24 tokens would fit one step's token budget). If there is such work the
  step gets a target: ``latency_target_factor`` x the time that work would
  take alone (or ``latency_target_ms``, never below that time). Then the rest
  in fair order, only while the predicted step fits the target: prefill
  chunks are cut to fit, decodes that do not fit wait for the next step.
  Without latency-sensitive work (for ``HOLD_SECONDS`` after the last) the
  step fills the whole token budget, so a flood alone (or two floods) loses
  nothing.

Charging stays in tokens (the scheduler's ``charge``): the second pass serves
backlogged tenants in VTC order, so the bound on their service difference
holds; latency-sensitive tenants are under their share by definition.

The composer decides how much; the scheduler decides the order and never
sees a cost. Nothing here touches tensors.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .scheduler import BATCH, FairScheduler, Schedulable

# seconds = fixed + prefill_token * P + decode_seq * D + kv_token * K. A start only: a 2-core CPU
# with the 135M default model measured about these; a GPU is orders of magnitude faster, and the
# online fit replaces them within a few dozen steps. Targets are ratios of two predictions, so a
# wrong scale alone does not mislead the composer.
PRIOR = (0.030, 0.0017, 0.004, 0.000002)
WINDOW = 256          # measured steps the fit remembers
REFIT_EVERY = 8       # steps between fits
# How strongly the prior's *proportions* hold each term, in steps' worth of evidence: enough to
# keep terms the recent steps cannot separate (always the same mix) in the prior's proportion,
# little against real data.
PRIOR_STRENGTH = 2.0
# After a step held short for a light tenant, later steps stay held this long: its next request
# (the next turn of a chat) then starts in a short step, not behind a long one. A flood alone loses
# at most this much time of full steps after the light user leaves.
HOLD_SECONDS = 1.0


@dataclass
class StepShape:
    """What a step carries: the cost model's features."""
    prefill_tokens: int = 0
    decode_seqs: int = 0
    kv_tokens: int = 0        # keys and values the step's queries read (each sequence's context)

    def features(self) -> np.ndarray:
        return np.array([1.0, self.prefill_tokens, self.decode_seqs, self.kv_tokens])

    def plus(self, context: int, n: int) -> "StepShape":
        """This step with one more sequence feeding ``n`` tokens after ``context`` tokens."""
        if n == 1:
            return StepShape(self.prefill_tokens, self.decode_seqs + 1, self.kv_tokens + context + 1)
        return StepShape(self.prefill_tokens + n, self.decode_seqs, self.kv_tokens + context + n)


class CostModel:
    def __init__(self, prior: tuple[float, ...] = PRIOR):
        self.prior = np.array(prior, dtype=float)
        self.coef = self.prior.copy()
        self._c = tuple(float(v) for v in self.coef)
        self._x: deque[np.ndarray] = deque(maxlen=WINDOW)
        self._y: deque[float] = deque(maxlen=WINDOW)
        self._since_fit = 0
        self.observed = 0

    def predict(self, shape: StepShape) -> float:
        return self.predict_terms(shape.prefill_tokens, shape.decode_seqs, shape.kv_tokens)

    def predict_terms(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float:
        # Plain floats: this runs for every pending sequence each step, numpy's call overhead would dominate.
        c = self._c
        return c[0] + c[1] * prefill_tokens + c[2] * decode_seqs + c[3] * kv_tokens

    def observe(self, shape: StepShape, seconds: float) -> None:
        self._x.append(shape.features())
        self._y.append(seconds)
        self.observed += 1
        self._since_fit += 1
        if self._since_fit >= REFIT_EVERY:
            self._fit()

    def _fit(self) -> None:
        """Least squares in relative error, pulled towards the prior's proportions (ridge), terms kept >= 0.

        The pull is towards the prior scaled to this device's speed (the median ratio of measured
        to prior-predicted time): a GPU 100x faster than the prior keeps the prior's idea of how
        terms compare, not its absolute numbers.
        """
        self._since_fit = 0
        x = np.array(self._x)
        y = np.array(self._y)
        speed = float(np.median(y / np.maximum(x @ self.prior, 1e-9)))
        prior = self.prior * speed
        # Relative error: a 5 ms step counts as much as a 500 ms one.
        w = 1.0 / np.maximum(y, 1e-4)
        xw = x * w[:, None]
        yw = y * w
        # Each term's prior weight is scaled by how large that feature is in the data seen, so
        # "4 steps of evidence" means the same for a per-token and a fixed cost.
        scale = np.maximum(np.sqrt((xw ** 2).mean(axis=0)), 1e-12)
        reg = np.diag((PRIOR_STRENGTH * scale) ** 2)
        coef = np.linalg.solve(xw.T @ xw + reg, xw.T @ yw + reg @ prior)
        self.coef = np.maximum(coef, prior * 0.01)
        self._c = tuple(float(v) for v in self.coef)


@dataclass
class StepPlan:
    """What the composer decided for one step (for metrics and tests)."""
    shape: StepShape
    predicted: float
    target: float | None        # None: no latency-sensitive work, the whole budget was used
    sensitive_tenants: tuple[str, ...] = ()


Admit = Callable[[Schedulable, int], bool]


class StepComposer:
    def __init__(self, cost: CostModel, *, factor: float = 2.0, target_ms: float = 0.0,
                 context_of: Callable[[Schedulable], int] = lambda s: 0,
                 clock: Callable[[], float] = time.monotonic):
        self.cost = cost
        self.clock = clock
        self._hold_until = 0.0
        self._hold_target = 0.0
        self.factor = factor
        self.target_ms = target_ms
        self.context_of = context_of       # tokens already in a sequence's context (its KV reads)

    @property
    def enabled(self) -> bool:
        return self.factor > 0 or self.target_ms > 0

    def holding(self) -> bool:
        """Steps are being held short for a light user (the loop then never waits to batch more)."""
        return self.clock() < self._hold_until

    def sensitive(self, scheduler: FairScheduler, budget: int) -> set[str]:
        """Tenants whose interactive demand is small beside their fair share of this step.

        Each tenant's demand is costed as if it had the step to itself (up to the budget). A tenant
        is latency-sensitive when ``factor`` x that cost is under its weighted share of the sum:
        only then can a step held to its target be shorter than the step it would otherwise ride
        in. Tenants alike (four equal loads, two floods) are never sensitive, so their steps stay full.
        """
        if not self.enabled:
            return set()
        costs: dict[str, float] = {}
        for tenant, q in scheduler.queues.items():
            prefill = decodes = kv = 0
            left = budget
            for req in q:
                if left <= 0:
                    break
                n = min(req.remaining, left)
                left -= n
                kv += self.context_of(req) + n
                if n == 1:
                    decodes += 1
                else:
                    prefill += n
            if left < budget:
                costs[tenant] = self.cost.predict_terms(prefill, decodes, kv)
        if len(costs) < 2:
            return set()
        weights = {t: scheduler.weights.get(t, 1.0) for t in costs}
        total, wsum = sum(costs.values()), sum(weights.values())
        margin = max(self.factor, 1.0)
        return {t for t, c in costs.items()
                if c * margin < total * weights[t] / wsum
                and any(req.priority < BATCH for req in scheduler.queues[t])}

    def compose(self, scheduler: FairScheduler, budget: int, max_seqs: int,
                admit: Admit) -> tuple[list[tuple[Schedulable, int]], StepPlan]:
        light = self.sensitive(scheduler, budget)
        now = self.clock()
        if not light and now >= self._hold_until:
            picked = scheduler.schedule(budget, max_seqs, admit)
            shape = self._shape(picked)
            return picked, StepPlan(shape, self.cost.predict(shape), None)

        if light:
            # Pass 1: the latency-sensitive work, in the scheduler's order.
            def first(req: Schedulable, n: int) -> int:
                return n if req.tenant in light and req.priority < BATCH and admit(req, n) else 0
            picked = scheduler.schedule(budget, max_seqs, first)
            shape = self._shape(picked)
            alone = self.cost.predict(shape)
            target = alone * self.factor if self.factor > 0 else alone
            if self.target_ms > 0:
                target = max(self.target_ms / 1000.0, alone)
            # A light user's next request usually follows soon (the next chat turn, the next cell):
            # steps stay short a moment longer, so it does not arrive in the middle of a long one.
            self._hold_until, self._hold_target = now + HOLD_SECONDS, target
        else:
            picked, shape, target = [], StepShape(), self._hold_target

        # Pass 2: everything else in fair order, only while the predicted step fits the target.
        state = {"shape": shape}

        def fill(req: Schedulable, n: int) -> int:
            k = self._fit(state["shape"], self.context_of(req), n, target)
            if k and admit(req, k):
                state["shape"] = state["shape"].plus(self.context_of(req), k)
                return k
            return 0
        budget_left = budget - sum(n for _, n in picked)
        more = scheduler.schedule(budget_left, max_seqs - len(picked), fill) if budget_left > 0 else []
        if not more and not picked:
            # Never starve: a step always moves something.
            more = scheduler.schedule(1, 1, admit)
        picked += more
        shape = self._shape(picked)
        return picked, StepPlan(shape, self.cost.predict(shape), target, tuple(sorted(light)))

    def _fit(self, shape: StepShape, context: int, n: int, target: float) -> int:
        """How many of ``n`` tokens fit in a step of ``shape`` without passing ``target``."""
        if self.cost.predict(shape.plus(context, 1 if n == 1 else min(n, 2))) > target:
            return 0
        if n == 1 or self.cost.predict(shape.plus(context, n)) <= target:
            return n
        # Prefill chunk: the cost is linear in its length, so solve for the largest that fits.
        _, per_prefill, _, per_kv = self.cost.coef
        room = target - self.cost.predict(shape) - per_kv * context
        k = int(room // (per_prefill + per_kv)) if per_prefill + per_kv > 0 else n
        return max(2, min(n, k)) if k >= 2 else 0

    def _shape(self, picked: list[tuple[Schedulable, int]]) -> StepShape:
        shape = StepShape()
        for req, n in picked:
            shape = shape.plus(self.context_of(req), n)
        return shape
