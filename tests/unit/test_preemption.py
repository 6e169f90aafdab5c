"""A light newcomer preempts a lone flood's long step instead of waiting for it."""

from __future__ import annotations

import threading
import time

import torch

from potluck.engine.composer import StepPlan, StepShape
from potluck.engine.model_runner import StepAborted
from test_generation import reference_greedy


def _inflight(tenants, predicted=10.0):
    return (time.monotonic(), StepPlan(StepShape(), predicted, None), frozenset(tenants), threading.Event())


def test_only_a_light_newcomer_outside_a_long_step_preempts_it(engine):
    loop = engine.loop
    budget = engine.rt.profile.batch_token_budget
    cases = [
        (["heavy"], "heavy", 10, 10.0, False),          # the flood's own next request
        (["heavy"], "light", budget + 1, 10.0, False),  # a prompt longer than a step: not light
        (["heavy"], "light", 10, 0.001, False),         # the step is about to end anyway
        (["heavy"], "light", 10, 10.0, True),
    ]
    for tenants, who, tokens, predicted, preempts in cases:
        loop._inflight = inflight = _inflight(tenants, predicted)
        assert loop.preempt_for(who, tokens) is preempts
        assert inflight[3].is_set() is preempts
    loop._inflight = _inflight(["heavy"])
    assert loop.preempt_for("light", 10) is False      # a tenant preempts once a second at most
    assert loop.preempt_for("light2", 10) is True
    loop._inflight = None
    assert loop.preempt_for("light3", 10) is False     # nothing in flight


def long_flood_steps(engine, every: bool = False, seconds: float = 5.0,
                     starts: list | None = None) -> tuple[threading.Event, list[float]]:
    """Make a flood's step (a chunk over 100 tokens) "run" until preempted or ``seconds``, like a 0.5 s
    CPU step (the first such step only, or ``every`` one), and predict every step without
    latency-sensitive work long enough to be worth preempting."""
    runner = engine.rt.runner
    real = runner.step
    started = threading.Event()
    aborted: list[float] = []

    def slow_step(chunks, abort=None):
        if any(len(c.tokens) > 100 for c in chunks) and (every or (abort is not None and not aborted)):
            started.set()
            if starts is not None:
                starts.append(abort is not None)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if abort is not None and abort.is_set():
                    aborted.append(time.monotonic())
                    raise StepAborted
                time.sleep(0.002)
        return real(chunks, abort)
    runner.step = slow_step
    compose = engine.loop.composer.compose

    def long_plans(*args):
        picked, plan = compose(*args)
        if plan.target is None:
            plan.predicted = 10.0
        return picked, plan
    engine.loop.composer.compose = long_plans
    return started, aborted


def test_a_preempted_step_is_redone_after_the_newcomers_and_loses_nothing(engine, reference_model):
    started, aborted = long_flood_steps(engine)
    g = torch.Generator().manual_seed(9)
    flood_prompt = torch.randint(3, 49152, (200,), generator=g).tolist()
    light_prompt = torch.randint(3, 49152, (8,), generator=g).tolist()
    # Both tenants known already (a new tenant's first request resolves it on the loop, between steps).
    for tenant in ("heavy", "light"):
        engine.generate(tenant, tokens=[5, 6, 7], max_tokens=1).result(timeout=30)
    flood = engine.generate("heavy", tokens=flood_prompt, max_tokens=5, ignore_eos=True)
    assert started.wait(30)
    t0 = time.monotonic()
    light = engine.generate("light", tokens=light_prompt, max_tokens=3, ignore_eos=True).result(timeout=30)
    assert time.monotonic() - t0 < 4.0, "the light request waited for the flood's step"
    assert aborted and engine.stats["preempted_steps"] == 1
    assert light.tokens == reference_greedy(reference_model, light_prompt, 3)
    heavy = flood.result(timeout=60)
    assert heavy.tokens == reference_greedy(reference_model, flood_prompt, 5)
    assert engine.status()["kv"]["used_pages"] == 0
    from potluck.engine.metrics import EngineMetrics
    from prometheus_client import generate_latest
    text = generate_latest(EngineMetrics(engine).registry).decode()
    assert "potluck_steps_preempted_total 1.0" in text


def test_a_tenant_new_to_the_engine_is_resolved_without_waiting_for_a_long_step(engine):
    started, _ = long_flood_steps(engine)
    engine.generate("heavy", tokens=[5, 6, 7], max_tokens=1).result(timeout=30)
    flood = engine.generate("heavy", tokens=list(range(10, 210)), max_tokens=2, ignore_eos=True)
    assert started.wait(30)
    t0 = time.monotonic()
    engine.tenant("newcomer")
    assert time.monotonic() - t0 < 4.0 and engine.stats["preempted_steps"] == 1
    flood.result(timeout=60)


def test_refused_requests_cannot_stall_another_tenants_flood(engine, reference_model):
    # A hostile tenant's requests are refused on the loop (a model its quota does not allow); each one
    # may look like a light newcomer at the door. One tenant preempts once a second at most, and the
    # step after a preemption always runs whole, so the flood still progresses.
    starts: list[bool] = []
    started, aborted = long_flood_steps(engine, every=True, seconds=0.5, starts=starts)
    from potluck.engine.errors import QuotaExceeded
    spammers = [engine.tenant(f"spam{i}", groups={"nomodel": {"models": ["another-model"]}}) for i in range(2)]
    engine.generate("heavy", tokens=[5, 6, 7], max_tokens=1).result(timeout=30)
    prompt = list(range(10, 210))
    flood = engine.generate("heavy", tokens=prompt, max_tokens=3, ignore_eos=True)
    assert started.wait(30)
    refused = []

    def spam(who):
        try:
            engine.generate(who, tokens=[1, 2, 3], max_tokens=2)
        except QuotaExceeded as e:
            refused.append(e)
    burst = [threading.Thread(target=spam, args=(spammers[0],)) for _ in range(5)]
    for th in burst:
        th.start()
    deadline = time.monotonic() + 30
    while not aborted:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    assert engine.stats["preempted_steps"] == 1
    deadline = time.monotonic() + 30
    while len(starts) < 2:                       # the redo step is running
        assert time.monotonic() < deadline
        time.sleep(0.002)
    assert starts[1] is False                    # ... and may not be preempted
    late = threading.Thread(target=spam, args=(spammers[1],))
    late.start()
    for th in burst + [late]:
        th.join(30)
    assert len(refused) == 6 and engine.stats["preempted_steps"] == 1
    assert flood.result(timeout=60).tokens == reference_greedy(reference_model, prompt, 3)
