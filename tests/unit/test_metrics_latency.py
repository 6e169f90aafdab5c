"""What users feel, for Prometheus: time to first token and between tokens per priority class,
and the step composer's targets and predictions against the measured steps.

``EngineMetrics`` subscribes itself to the engine's step and generation
listeners (as the service builds it), so these tests build it over the tiny
engine and only generate.
"""

from __future__ import annotations

import pytest

from potluck.engine.metrics import EngineMetrics

HEAVY_PROMPT = list(range(1000, 1200))     # 200 prompt tokens: most of a CPU step's budget
LIGHT_PROMPT = [11, 12, 13, 14]


def value(metrics: EngineMetrics, name: str, **labels) -> float:
    v = metrics.registry.get_sample_value(name, labels)
    assert v is not None, f"no sample {name} {labels}"
    return v


def settle(engine) -> None:
    """Wait until the loop has finished the step in progress (its step listeners ran after the results)."""
    engine.loop.call(lambda: None)


def test_time_to_first_token_and_between_tokens_are_counted_per_priority_class_never_per_user(engine):
    metrics = EngineMetrics(engine)
    # Both classes are there before any generation: a dashboard's rate() never lacks a series.
    for cls in ("interactive", "batch"):
        assert value(metrics, "potluck_time_to_first_token_seconds_count", priority=cls) == 0
        assert value(metrics, "potluck_time_between_tokens_seconds_count", priority=cls) == 0

    interactive = [engine.generate("alice", tokens=LIGHT_PROMPT, max_tokens=5, ignore_eos=True),
                   engine.generate("bob", tokens=LIGHT_PROMPT + [15], max_tokens=3, ignore_eos=True)]
    batch = [engine.generate("carol", tokens=LIGHT_PROMPT, max_tokens=4, ignore_eos=True, priority="batch")]
    for g in interactive + batch:
        g.result(timeout=120)

    assert value(metrics, "potluck_time_to_first_token_seconds_count", priority="interactive") == 2
    assert value(metrics, "potluck_time_to_first_token_seconds_count", priority="batch") == 1
    # One gap between each pair of consecutive tokens: 4 + 2 interactive, 3 batch.
    assert value(metrics, "potluck_time_between_tokens_seconds_count", priority="interactive") == 6
    assert value(metrics, "potluck_time_between_tokens_seconds_count", priority="batch") == 3
    # The gaps add up to each generation's span from its first to its last token.
    span = sum(g.token_times[-1] - g.token_times[0] for g in interactive)
    assert value(metrics, "potluck_time_between_tokens_seconds_sum", priority="interactive") == pytest.approx(span)
    assert value(metrics, "potluck_time_to_first_token_seconds_sum", priority="batch") == \
        pytest.approx(batch[0].first_token_at - batch[0].created)

    users = {"alice", "bob", "carol"}
    for family in metrics.registry.collect():
        if family.name in ("potluck_time_to_first_token_seconds", "potluck_time_between_tokens_seconds"):
            for s in family.samples:
                assert set(s.labels) <= {"priority", "le"}, s
                assert not users & set(s.labels.values()), s


def test_a_generation_cancelled_before_its_first_token_adds_no_latency(engine):
    metrics = EngineMetrics(engine)

    def start_and_cancel():
        # On the loop thread: cancelled before any step could give it a token.
        g = engine.generate("alice", tokens=HEAVY_PROMPT, max_tokens=50, ignore_eos=True)
        g.cancel()
        return g
    g = engine.loop.call(start_and_cancel)
    assert g.finish_reason == "cancelled" and g.first_token_at is None
    engine.generate("alice", tokens=LIGHT_PROMPT, max_tokens=2, ignore_eos=True).result(timeout=120)
    assert value(metrics, "potluck_time_to_first_token_seconds_count", priority="interactive") == 1
    assert value(metrics, "potluck_time_between_tokens_seconds_count", priority="interactive") == 1


def test_step_predictions_targets_and_latency_limited_steps_match_what_the_composer_reported(engine):
    metrics = EngineMetrics(engine)
    steps: list[dict] = []
    engine.step_listeners.append(steps.append)

    def submit_both():
        # On the loop thread, so both are queued before the next step: a heavy prefill beside a light
        # user's short request is the step the composer keeps within a latency target.
        return [engine.generate("heavy", tokens=HEAVY_PROMPT, max_tokens=6, ignore_eos=True),
                engine.generate("light", tokens=LIGHT_PROMPT, max_tokens=6, ignore_eos=True)]
    for g in engine.loop.call(submit_both):
        g.result(timeout=120)
    settle(engine)

    limited = [s for s in steps if s["target_seconds"] is not None]
    assert limited, "no step carried latency-sensitive work"
    assert value(metrics, "potluck_steps_latency_limited_total") == len(limited)
    assert value(metrics, "potluck_step_target_seconds_count") == len(limited)
    assert value(metrics, "potluck_step_target_seconds_sum") == pytest.approx(sum(s["target_seconds"] for s in limited))
    assert value(metrics, "potluck_steps_over_target_total") == \
        sum(1 for s in limited if s["seconds"] > s["target_seconds"])
    # Every step has a prediction, and its measured/predicted ratio says how calibrated the model is.
    assert value(metrics, "potluck_step_predicted_seconds_count") == len(steps)
    assert value(metrics, "potluck_step_predicted_seconds_sum") == \
        pytest.approx(sum(s["predicted_seconds"] for s in steps))
    assert value(metrics, "potluck_step_measured_to_predicted_ratio_count") == len(steps)
    assert value(metrics, "potluck_step_measured_to_predicted_ratio_sum") == \
        pytest.approx(sum(s["seconds"] / s["predicted_seconds"] for s in steps))
    assert value(metrics, "potluck_step_seconds_count") == len(steps)


def test_only_steps_held_to_a_target_count_as_latency_limited_and_over_target_is_measured_past_it(engine):
    metrics = EngineMetrics(engine)
    metrics.on_step({"seqs": 1, "tokens": 256, "seconds": 0.5, "usage": {}, "predicted_seconds": 0.4,
                     "target_seconds": None})
    metrics.on_step({"seqs": 2, "tokens": 40, "seconds": 0.12, "usage": {}, "predicted_seconds": 0.1,
                     "target_seconds": 0.1})
    metrics.on_step({"seqs": 2, "tokens": 30, "seconds": 0.08, "usage": {}, "predicted_seconds": 0.1,
                     "target_seconds": 0.1})
    assert value(metrics, "potluck_steps_latency_limited_total") == 2
    assert value(metrics, "potluck_steps_over_target_total") == 1
    assert value(metrics, "potluck_step_target_seconds_count") == 2
    assert value(metrics, "potluck_step_measured_to_predicted_ratio_count") == 3
    # 1.25, 1.2 and 0.8: two steps slower than predicted, one faster.
    assert value(metrics, "potluck_step_measured_to_predicted_ratio_bucket", le="1.0") == 1
    assert value(metrics, "potluck_step_measured_to_predicted_ratio_bucket", le="1.25") == 3
