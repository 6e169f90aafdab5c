"""The step composer: how much goes into the next step, so a light user's step stays short.

On a batched engine every sequence in a step waits for the whole step: a
light user's one decode token rides with a heavy user's 256-token prefill
chunk and takes its time. Fair shares of *tokens* (the scheduler's VTC)
cannot see that; this module measures *time*.

- ``CostModel`` predicts a step's seconds from what it carries (a fixed cost,
  per prefill token, per decode sequence, per prefill chunk, the keys the
  decodes read, the query-key pairs of the prefill chunks, and the extra of a
  step's first rows), fitted online
  from the engine's own measured steps, starting from a prior and pulled
  back towards it where the steps seen so far cannot tell the terms apart.
- ``StepComposer`` builds each step in two passes over the scheduler's fair
  order. First the *latency-sensitive* work: interactive requests of tenants
  whose whole demand costs under their fair share of the step, and whose
  target is shorter than the step the largest other tenant makes alone (so
  holding the step to it helps; a flood, even a decode flood whose 24 tokens
  fit one step's token budget, is not sensitive). If there is such work the
  step gets a target: ``latency_target_factor`` x the time that work would
  take alone (or ``latency_target_ms``, never below that time), less what a
  new request already waited before its first step. Then the rest in fair
  order, only while the predicted step fits: prefill chunks are cut to fit,
  decodes that do not fit wait for the next step. Without latency-sensitive
  work (for ``HOLD_SECONDS`` after the last) a step carrying a prompt chunk
  is cut only to the *flood cap*: the shortest step whose predicted tokens/s
  are still ``FLOOD_STEP_EFFICIENCY`` of a full-budget step's: on a CPU a full
  256-token step is ~0.5 s, the cap ~0.35 s for ~10% of a lone flood's
  tokens/s (on a GPU, where the fixed cost is a small share, the cap is near
  the full step). Whoever else arrives waits for such a step, except a light
  newcomer, which preempts it (``BatchLoop.preempt_for``).

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

# seconds = fixed + prefill_token * P + decode_seq * D + prefill_chunk * C + decode_key * K
#           + prefill_pair * Q + min(rows, SMALL_STEP_ROWS) * S.
# A start only: fitted to the default 135M model's steps on a 2-core CPU (float32, each band of rows
# through the call ``cpu_linear`` picks; ~1200 steps: floods with a light user beside, and a grid of
# mixed decode and prompt shapes). A step's first rows can cost more each than later ones (a few rows
# only stream the weights, more reuse them; with F.linear alone on this CPU ~5 ms a row for the first
# 16 against ~1.5 after): that term lets the online fit find it on a device where it is so. With
# oneDNN's prepacked weights it is small here (under 1 ms a row). A prefill chunk pays its own
# gather, mask and attention call in every layer; a decode reads its context's keys (~7 ms for a
# 900-token context here: the runner pads a decode only to contexts of like length, at most ~2x);
# a chunk after ``s`` cached tokens attends n x (s + n) query-key pairs (a 900-token prompt's last
# chunk spends a third of its time there). A GPU is orders of magnitude faster, and the online fit
# replaces these within a few dozen steps. Targets are ratios of two predictions, so a wrong scale
# alone does not mislead the composer.
PRIOR = (0.030, 0.0010, 0.0015, 0.004, 0.0000080, 0.0000010, 0.0008)
SMALL_STEP_ROWS = 16
WINDOW = 256          # measured steps the fit remembers
# ... and steps of a few rows (a light user's own: LONE_ROWS or fewer) apart, so a long run of a
# flood's larger steps does not push out the steps a light user's target is a multiple of: the fit
# could then no longer tell the fixed cost from the first rows' extra, and would move the lone
# decode's prediction.
LONE_ROWS = 4
SMALL_WINDOW = 64
REFIT_EVERY = 8       # steps between fits
# How strongly the prior's *proportions* hold each term, in steps' worth of evidence: enough to
# keep terms the recent steps cannot separate (always the same mix) in the prior's proportion,
# little against real data.
PRIOR_STRENGTH = 2.0
# How far a fitted term may stray from the prior's, scaled to this device's speed.
BOUND = 10.0
# After a step held short for a light tenant, later steps stay held this long: its next request
# (a notebook's next call a moment later) then starts in a short step. A light newcomer preempts a
# lone flood's long step anyway (``BatchLoop.preempt_for``), losing the part already run (on average
# half a step, ~0.17 s on the 2-core CPU), while holding costs the flood ~70% of each held second:
# holding pays for gaps up to ~0.25 s. A flood alone loses at most this much after the user leaves.
HOLD_SECONDS = 0.25
# Without latency-sensitive work a step may run until its predicted tokens/s fall to this fraction
# of a full-budget step's: a trade between a lone flood's throughput (it loses at most ~10%) and
# what a newcomer waits for (the step in flight; on a 2-core CPU ~0.35 s instead of ~0.5 s).
FLOOD_STEP_EFFICIENCY = 0.9


@dataclass
class StepShape:
    """What a step carries: the cost model's features."""
    prefill_tokens: int = 0
    decode_seqs: int = 0
    prefill_chunks: int = 0
    decode_keys: int = 0      # the keys the decodes read: their contexts (the runner pads only like lengths together)
    prefill_pairs: int = 0    # query-key pairs of the prefill chunks: n x (context + n) each

    def features(self) -> np.ndarray:
        return np.array([1.0, self.prefill_tokens, self.decode_seqs, self.prefill_chunks,
                         self.decode_keys, self.prefill_pairs,
                         min(self.prefill_tokens + self.decode_seqs, SMALL_STEP_ROWS)])

    def plus(self, context: int, n: int) -> "StepShape":
        """This step with one more sequence feeding ``n`` tokens after ``context`` tokens."""
        if n == 1:
            return StepShape(self.prefill_tokens, self.decode_seqs + 1, self.prefill_chunks,
                             self.decode_keys + context + 1, self.prefill_pairs)
        return StepShape(self.prefill_tokens + n, self.decode_seqs, self.prefill_chunks + 1,
                         self.decode_keys, self.prefill_pairs + n * (context + n))


class CostModel:
    def __init__(self, prior: tuple[float, ...] = PRIOR):
        self.prior = np.array(prior, dtype=float)
        self.coef = self.prior.copy()
        self._c = tuple(float(v) for v in self.coef)
        self._large: deque[tuple[np.ndarray, float]] = deque(maxlen=WINDOW)
        self._small: deque[tuple[np.ndarray, float]] = deque(maxlen=SMALL_WINDOW)
        self._since_fit = 0
        self.observed = 0

    def predict(self, shape: StepShape) -> float:
        # Plain floats: this runs for every pending sequence each step, numpy's call overhead would dominate.
        c = self._c
        rows = shape.prefill_tokens + shape.decode_seqs
        return (c[0] + c[1] * shape.prefill_tokens + c[2] * shape.decode_seqs + c[3] * shape.prefill_chunks
                + c[4] * shape.decode_keys + c[5] * shape.prefill_pairs
                + c[6] * (rows if rows < SMALL_STEP_ROWS else SMALL_STEP_ROWS))

    def overhead(self, chunks: int) -> float:
        """What a step of more than ``SMALL_STEP_ROWS`` rows and ``chunks`` prompt chunks pays whatever its size.

        The fixed cost, each chunk's own, and the first rows' extra: what cutting such a step does not save.
        """
        c = self._c
        return c[0] + c[3] * chunks + c[6] * SMALL_STEP_ROWS

    def observe(self, shape: StepShape, seconds: float) -> None:
        small = shape.prefill_tokens + shape.decode_seqs <= LONE_ROWS
        (self._small if small else self._large).append((shape.features(), seconds))
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
        seen = [*self._small, *self._large]
        x = np.array([f for f, _ in seen])
        y = np.array([t for _, t in seen])
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
        # Within a factor of BOUND of the scaled prior: steps slowed by other processes on a shared
        # machine must not teach it that one term costs 100x (it would then never let that work in).
        self.coef = np.clip(coef, prior / BOUND, prior * BOUND)
        self._c = tuple(float(v) for v in self.coef)


@dataclass
class StepPlan:
    """What the composer decided for one step (for metrics and tests)."""
    shape: StepShape
    predicted: float
    target: float | None        # None: no latency-sensitive work, only the flood cap applied
    sensitive_tenants: tuple[str, ...] = ()
    cap: float | None = None    # the flood cap of a step without latency-sensitive work
    held_to: float | None = None  # what the step was filled to: the target less a new request's wait


Admit = Callable[[Schedulable, int], bool]


class StepComposer:
    def __init__(self, cost: CostModel, *, factor: float = 2.0, target_ms: float = 0.0,
                 efficiency: float = FLOOD_STEP_EFFICIENCY,
                 context_of: Callable[[Schedulable], int] = lambda s: 0,
                 clock: Callable[[], float] = time.monotonic):
        self.cost = cost
        self.clock = clock
        self._hold_until = 0.0
        self._hold_target = 0.0
        self.factor = factor
        self.target_ms = target_ms
        self.efficiency = efficiency
        self.context_of = context_of       # tokens already in a sequence's context (its KV reads)

    @property
    def enabled(self) -> bool:
        return self.factor > 0 or self.target_ms > 0

    def holding(self) -> bool:
        """Steps are being held short for a light user (the loop then never waits to batch more)."""
        return self.clock() < self._hold_until

    def target_for(self, alone: float) -> float:
        """The step-time target of latency-sensitive work that would take ``alone`` seconds by itself."""
        if self.target_ms > 0:
            return max(self.target_ms / 1000.0, alone)
        return alone * self.factor if self.factor > 0 else alone

    def flood_cap(self, scheduler: FairScheduler, budget: int, max_seqs: int) -> float | None:
        """The longest step without latency-sensitive work: None when the full step is shorter.

        A step of predicted time ``t`` does ``t - fixed`` of work; its tokens/s against the step the
        whole budget would make of the pending work (``t_full``) are about
        ``(1 - fixed / t) / (1 - fixed / t_full)``. The cap is the ``t`` where that equals
        ``efficiency``: ``fixed / (1 - efficiency * (1 - fixed / t_full))``, but never below twice
        the target of a light user's lone decode step: a step that short is not worth cutting. Only
        steps carrying a prompt chunk are cut (a decode flood's steps are left whole: they are short
        already, and a deferred decode is a stream stalled for a step).
        """
        if not self.enabled or self.efficiency >= 1:
            return None
        full = self._walk((req for q in scheduler.queues.values() for req in q), budget, max_seqs)
        if not full.prefill_chunks:
            return None
        t_full = self.cost.predict(full)
        fixed = self.cost.overhead(chunks=1)
        cap = max(fixed / (1 - self.efficiency * (1 - fixed / t_full)),
                  2 * self.target_for(self.cost.predict(StepShape().plus(0, 1))))
        return cap if cap < t_full else None

    def sensitive(self, scheduler: FairScheduler, budget: int) -> set[str]:
        """Tenants whose interactive demand is small beside the others' and their fair share of this step.

        Each tenant's demand is costed as if it had the step to itself (up to the budget). A tenant is
        latency-sensitive when that cost is under its weighted share of the sum and its target is
        shorter than the step the largest other tenant makes alone: only then can a step held to its
        target be shorter than the step it would otherwise ride in. Tenants alike (four equal loads,
        two floods) are never sensitive, so their steps stay full.
        """
        if not self.enabled:
            return set()
        costs: dict[str, float] = {}
        for tenant, q in scheduler.queues.items():
            if q:
                costs[tenant] = self.cost.predict(self._walk(q, budget, len(q)))
        if len(costs) < 2:
            return set()
        weights = {t: scheduler.weights.get(t, 1.0) for t in costs}
        total, wsum = sum(costs.values()), sum(weights.values())
        top = sorted(costs.values(), reverse=True)[:2]
        return {t for t, c in costs.items()
                if c < total * weights[t] / wsum
                and self.target_for(c) < (top[1] if c == top[0] else top[0])
                and any(req.priority < BATCH for req in scheduler.queues[t])}

    def compose(self, scheduler: FairScheduler, budget: int, max_seqs: int,
                admit: Admit) -> tuple[list[tuple[Schedulable, int]], StepPlan]:
        light = self.sensitive(scheduler, budget)
        now = self.clock()
        cap = None
        if light:
            # Pass 1: the latency-sensitive work, in the scheduler's order.
            def first(req: Schedulable, n: int) -> int:
                return n if req.tenant in light and req.priority < BATCH and admit(req, n) else 0
            picked = scheduler.schedule(budget, max_seqs, first)
            shape = self._shape(picked)
            alone = self.cost.predict(shape)
            # Never below what moves one piece of the others' work (a decode, a 2-token chunk): the
            # rest wait within the target but are never starved by a light user who never leaves.
            least = self._least_more(scheduler, shape, light)
            target = max(self.target_for(alone), least)
            # A light user's next request usually follows soon (the next chat turn, the next cell):
            # steps stay short a moment longer, so it does not arrive in the middle of a long one.
            self._hold_until, self._hold_target = now + HOLD_SECONDS, target
            # A new request has already waited (for the step in flight, for its prompt to be read):
            # that wait was spent from its target, so its first step gets only the rest, down to its
            # own work plus the one piece of the others'. A decode was fed back as the last step
            # ended: what it waited is the loop's own overhead, which it has alone too.
            waited = max((now - req.queued_at for req, _ in picked if not req.decode), default=0.0)
            held_to = max(target - waited, alone, least)
        elif now < self._hold_until:
            picked, shape, target = [], StepShape(), self._hold_target
            held_to = target
        else:
            cap = self.flood_cap(scheduler, budget, max_seqs)
            if cap is None:
                picked = scheduler.schedule(budget, max_seqs, admit)
                shape = self._shape(picked)
                return picked, StepPlan(shape, self.cost.predict(shape), None)
            picked, shape, target = [], StepShape(), cap
            held_to = cap

        # Pass 2: everything else in fair order, only while the predicted step fits the target.
        state = {"shape": shape}
        first_pass = {id(req) for req, _ in picked}

        def fill(req: Schedulable, n: int) -> int:
            if id(req) in first_pass:
                return 0
            k = self._fit(state["shape"], self.context_of(req), n, held_to)
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
        if cap is not None:
            return picked, StepPlan(shape, self.cost.predict(shape), None, cap=cap)
        # ``target`` is the promise (what metrics compare the step with); ``held_to`` what it was filled to.
        return picked, StepPlan(shape, self.cost.predict(shape), target, tuple(sorted(light)), held_to=held_to)

    def _least_more(self, scheduler: FairScheduler, shape: StepShape, light: set[str]) -> float:
        """The predicted time of ``shape`` plus the cheapest first piece of another tenant's work."""
        least = 0.0
        for tenant, q in scheduler.queues.items():
            for req in q:
                if tenant not in light or req.priority >= BATCH:
                    t = self.cost.predict(shape.plus(self.context_of(req), min(req.remaining, 2)))
                    least = t if not least else min(least, t)
                break
        return least

    def _fit(self, shape: StepShape, context: int, n: int, target: float) -> int:
        """How many of ``n`` tokens fit in a step of ``shape`` without passing ``target``."""
        predict = self.cost.predict
        if predict(shape.plus(context, 1 if n == 1 else min(n, 2))) > target:
            return 0
        if n == 1 or predict(shape.plus(context, n)) <= target:
            return n
        # Prefill chunk: its cost grows with its length (linearly, plus its query-key pairs), so the
        # largest that fits is found by bisection between 2 (fits) and n (does not).
        lo, hi = 2, n
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if predict(shape.plus(context, mid)) <= target:
                lo = mid
            else:
                hi = mid
        return lo

    def _walk(self, reqs, budget: int, max_seqs: int) -> StepShape:
        """The shape of a step taking ``reqs`` in this order up to the budget (plain ints: runs every step)."""
        pre = dec = chunks = keys = pairs = 0
        left, seqs = budget, max_seqs
        context_of = self.context_of
        for req in reqs:
            if left <= 0 or seqs <= 0:
                break
            n = min(req.remaining, left)
            left -= n
            seqs -= 1
            c = context_of(req)
            if n == 1:
                dec += 1
                keys += c + 1
            else:
                pre += n
                chunks += 1
                pairs += n * (c + n)
        return StepShape(pre, dec, chunks, keys, pairs)

    def _shape(self, picked: list[tuple[Schedulable, int]]) -> StepShape:
        shape = StepShape()
        for req, n in picked:
            shape = shape.plus(self.context_of(req), n)
        return shape
