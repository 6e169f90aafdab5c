"""The step composer and its cost model, simulated with a known cost model and no model."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from potluck.engine.composer import HOLD_SECONDS, CostModel, StepComposer, StepShape
from potluck.engine.scheduler import BATCH, INTERACTIVE, FairScheduler

_arrivals = itertools.count()
# A CPU-like device: 30 ms a step, 1.7 ms a prompt token, 4 ms a decode sequence, 2 us a KV token read.
TRUE = (0.030, 0.0017, 0.004, 0.000002)


@dataclass(eq=False)
class Req:
    tenant: str
    remaining: int
    decode: bool
    context: int = 0
    samples: bool = True
    priority: int = INTERACTIVE
    arrival: int = 0

    def __post_init__(self):
        self.arrival = next(_arrivals)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def composer(factor=2.0, target_ms=0.0, clock=None) -> StepComposer:
    return StepComposer(CostModel(TRUE), factor=factor, target_ms=target_ms, context_of=lambda r: r.context,
                        clock=clock or Clock())


def prefill_flood(sched, n=24, tokens=900, tenant="heavy", priority=INTERACTIVE):
    reqs = [Req(tenant, tokens, decode=False, priority=priority) for _ in range(n)]
    for r in reqs:
        sched.add(r)
    return reqs


def decode_flood(sched, n=24, context=400, tenant="heavy", priority=INTERACTIVE):
    reqs = [Req(tenant, 1, decode=True, context=context, priority=priority) for _ in range(n)]
    for r in reqs:
        sched.add(r)
    return reqs


def alone_cost(comp, reqs) -> float:
    shape = StepShape()
    for r in reqs:
        shape = shape.plus(r.context, r.remaining)
    return comp.cost.predict(shape)


def test_a_light_users_step_beside_a_prefill_flood_stays_within_its_target():
    sched, comp = FairScheduler(), composer()
    prefill_flood(sched)
    light = Req("light", 1, decode=True, context=40)
    sched.add(light)
    picked, plan = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: True)
    assert light in [r for r, _ in picked]
    assert plan.sensitive_tenants == ("light",)
    assert plan.target == 2 * alone_cost(comp, [light])
    assert plan.predicted <= plan.target
    # The flood still moves in the same step: its chunk was cut to fit, not dropped.
    heavy = [(r, n) for r, n in picked if r.tenant == "heavy"]
    assert heavy and all(1 < n < 256 for _, n in heavy)


def test_decodes_of_a_decode_flood_that_do_not_fit_wait_for_the_next_step():
    sched, comp = FairScheduler(), composer()
    flood = decode_flood(sched)
    light = Req("light", 1, decode=True, context=40)
    sched.add(light)
    picked, plan = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: True)
    served = [r for r, _ in picked if r.tenant == "heavy"]
    assert light in [r for r, _ in picked] and plan.predicted <= plan.target
    assert 0 < len(served) < len(flood)


def test_without_latency_sensitive_work_the_step_fills_the_budget():
    sched, comp = FairScheduler(), composer()
    prefill_flood(sched)
    picked, plan = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: True)
    assert sum(n for _, n in picked) == 256 and plan.target is None
    # Two floods alike: neither is under its share, both get full steps.
    prefill_flood(sched, tenant="heavy2")
    picked, plan = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: True)
    assert sum(n for _, n in picked) == 256 and plan.target is None


def test_the_factor_and_the_fixed_target_set_the_step_time():
    for factor in (1.5, 3.0):
        sched, comp = FairScheduler(), composer(factor=factor)
        prefill_flood(sched)
        light = Req("light", 1, decode=True, context=40)
        sched.add(light)
        _, plan = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: True)
        assert plan.target == factor * alone_cost(comp, [light]) and plan.predicted <= plan.target
    sched, comp = FairScheduler(), composer(target_ms=200)
    prefill_flood(sched)
    sched.add(Req("light", 1, decode=True, context=40))
    _, plan = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: True)
    assert plan.target == 0.2 and plan.predicted <= 0.2
    # Off: the old policy, whole budget.
    sched, comp = FairScheduler(), composer(factor=0)
    prefill_flood(sched)
    sched.add(Req("light", 1, decode=True, context=40))
    picked, plan = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: True)
    assert plan.target is None and sum(n for _, n in picked) == 256


def test_batch_work_yields_to_interactive_work_and_is_never_starved():
    clock = Clock()
    sched, comp = FairScheduler(), composer(clock=clock)
    batch = prefill_flood(sched, tenant="researcher", priority=BATCH)
    light = Req("student", 1, decode=True, context=40)
    sched.add(light)
    picked, plan = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: True)
    assert picked[0][0] is light and plan.predicted <= plan.target
    assert any(r.tenant == "researcher" for r, _ in picked)          # the remaining room is used
    sched.remove(light)
    clock.t += HOLD_SECONDS
    picked, plan = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: True)
    assert plan.target is None and sum(n for _, n in picked) == 256  # whole steps once interactive work is idle
    assert all(r in batch for r, _ in picked)


def test_a_step_always_moves_something_even_when_nothing_fits_the_target():
    sched = FairScheduler()
    comp = StepComposer(CostModel(TRUE), factor=1.0, context_of=lambda r: r.context)
    prefill_flood(sched, n=1)
    light = Req("light", 1, decode=True, context=40)
    sched.add(light)
    # The light tenant's only request cannot be admitted this step (say, its pages are pinned).
    picked, _ = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: r is not light)
    assert picked and picked[0][0].tenant == "heavy"


def test_the_cost_model_converges_on_measured_step_times():
    true = (0.002, 0.00005, 0.0004, 0.0000001)          # a device ~20x faster than the prior says
    model = CostModel()                                 # starts from the CPU prior
    rng = random.Random(7)

    def measured(shape):
        t = sum(c * f for c, f in zip(true, shape.features()))
        return t * rng.uniform(0.95, 1.05)
    shapes = [StepShape(rng.choice([0, 0, 64, 256]), rng.randint(0, 32), rng.randint(0, 20000)) for _ in range(400)]
    for s in shapes:
        model.observe(s, measured(s))
    for s in (StepShape(0, 1, 300), StepShape(256, 0, 256), StepShape(32, 24, 12000)):
        exact = sum(c * f for c, f in zip(true, s.features()))
        assert abs(model.predict(s) - exact) / exact < 0.15, (s, model.predict(s), exact)


def test_steps_of_one_mix_fit_that_mix_and_keep_the_priors_proportions_for_others():
    model = CostModel()
    seen = StepShape(0, 24, 9600)                       # a decode flood: always the same step
    for _ in range(64):
        model.observe(seen, 0.5)                        # a device slower than the prior says
    assert abs(model.predict(seen) - 0.5) / 0.5 < 0.05
    one, prompt = StepShape(0, 1, 400), StepShape(256, 0, 256)
    assert 0 < model.predict(one) < model.predict(seen)
    # Never seen a prompt token: its cost keeps the prior's proportion to a decode's, at this device's speed.
    prior = CostModel()
    ratio = model.predict(prompt) / model.predict(one)
    assert abs(ratio / (prior.predict(prompt) / prior.predict(one)) - 1) < 0.5


def test_tenants_with_like_loads_are_not_latency_sensitive_and_keep_full_steps():
    sched, comp = FairScheduler(), composer()
    for i, tenant in enumerate(("a", "b", "c", "d")):
        decode_flood(sched, n=8, context=380 + 10 * i, tenant=tenant)   # nearly equal, not exactly
    picked, plan = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: True)
    assert plan.target is None and len(picked) == 32


def test_backlogged_tenants_keep_the_vtc_bound_while_steps_are_held_short_for_a_light_one():
    sched, comp = FairScheduler(), composer()
    for tenant in ("a", "b"):
        prefill_flood(sched, n=8, tokens=600, tenant=tenant)
    largest = 0.0
    held = 0
    for _ in range(300):
        light = Req("light", 1, decode=True, context=40)
        sched.add(light)
        picked, plan = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: True)
        held += plan.target is not None
        for req, n in picked:
            largest = max(largest, n + 2.0)
            req.remaining -= n
            if req.remaining == 0:
                sched.remove(req)
                if req.tenant != "light":
                    sched.add(Req(req.tenant, 600, decode=False))    # stays backlogged
        gap = abs(sched.service.get("a", 0) - sched.service.get("b", 0))
        assert gap <= 2 * largest, (gap, largest)
    assert held == 300            # every step was held to the light tenant's target


def test_steps_stay_short_a_moment_after_the_light_users_request_so_its_next_one_starts_in_a_short_step():
    clock = Clock()
    sched, comp = FairScheduler(), composer(clock=clock)
    prefill_flood(sched)
    light = Req("light", 1, decode=True, context=40)
    sched.add(light)
    _, first = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: True)
    sched.remove(light)                                  # its request ended; the next is on its way
    clock.t += HOLD_SECONDS / 2
    picked, plan = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: True)
    assert plan.target == first.target and plan.predicted <= plan.target
    assert sum(n for _, n in picked) < 256
    clock.t += HOLD_SECONDS
    picked, plan = comp.compose(sched, budget=256, max_seqs=256, admit=lambda r, n: True)
    assert plan.target is None and sum(n for _, n in picked) == 256
