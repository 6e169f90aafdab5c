"""``potluck_requests_waiting`` counts prompts no step has started yet, as a router's "queue size"
(vLLM's ``num_requests_waiting``): a decoding generation is running, not waiting.

Read on the batch loop itself, inside a step (a step listener runs there, and the engine's calls
run inline on its own thread), so what is queued at that moment is exact, with no timing.
"""

from __future__ import annotations

import pytest

from potluck.engine.metrics import EngineMetrics
from unit.tiny_engine import make_engine, tiny_llama


@pytest.fixture(scope="module")
def engine(tokenizer):
    eng = make_engine(tokenizer, tiny_llama().state_dict(), kv_pages=256).start()
    yield eng
    eng.stop()


def test_prompts_queued_behind_a_step_are_waiting_until_a_step_takes_them(engine):
    metrics = EngineMetrics(engine)
    seen: dict[str, float] = {}
    late = []

    def during_first_step(info):
        if seen:
            return
        # Three prompts arrive while the first generation's step runs: none is started yet.
        late.extend(engine.generate(f"late-{i}", tokens=[100 + i, 7, 8, 9], max_tokens=2, ignore_eos=True)
                    for i in range(3))
        for name in ("potluck_requests_waiting", "potluck_queue_depth"):
            seen[name] = metrics.registry.get_sample_value(name)
    engine.step_listeners.append(during_first_step)
    try:
        first = engine.generate("early", tokens=[11, 12, 13, 14], max_tokens=3, ignore_eos=True)
        first.result(timeout=120)
        for g in late:
            g.result(timeout=120)
    finally:
        engine.step_listeners.remove(during_first_step)
    assert seen["potluck_requests_waiting"] == 3
    assert seen["potluck_queue_depth"] >= 3
    # Everything ran: nothing waits, and the gauges carry no tenant.
    assert metrics.registry.get_sample_value("potluck_requests_waiting") == 0
    for family in metrics.registry.collect():
        if family.name.startswith(("potluck_requests_waiting", "potluck_kv_cache_usage", "potluck_step_busy",
                                   "potluck_step_token")):
            assert all(not s.labels for s in family.samples), family.name
