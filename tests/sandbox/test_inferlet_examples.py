"""Every example under examples/inferlets/ runs on the default model and sends its documented result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox_helpers import real_engine, runs, store  # noqa: F401 (fixtures)
from sandbox_helpers import messages_of, pages_held, run_to_end

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "inferlets"


def example(name: str) -> str:
    return (EXAMPLES / f"{name}.py").read_text()


def result_of(run) -> dict:
    assert run.state == "finished", run.error
    [result] = messages_of(run)
    return result


def test_best_of_n_keeps_the_most_likely_sample(runs, real_engine):
    run = run_to_end(runs, "ex-best", example("best_of_n"),
                     {"question": "Give a name for a cat.", "n": 3, "max_tokens": 10, "seed": 1})
    r = result_of(run)
    assert len(r["candidates"]) == 3
    means = [c["mean_logprob"] for c in r["candidates"]]
    assert means == sorted(means, reverse=True) and all(m <= 0 for m in means)
    assert r["best"] == r["candidates"][0]["text"]
    assert pages_held(real_engine, "ex-best") == 0


def test_beam_search_returns_width_beams_best_first(runs):
    r = result_of(run_to_end(runs, "ex-beam", example("beam_search"),
                             {"prompt": "The three primary colors are", "width": 3, "max_tokens": 5}))
    assert len(r["beams"]) == 3
    scores = [b["logprob"] for b in r["beams"]]
    assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    assert all(isinstance(b["text"], str) and b["text"] for b in r["beams"])
    assert len({b["text"] for b in r["beams"]}) == 3


def test_json_output_is_valid_json_of_the_schema(runs):
    r = result_of(run_to_end(runs, "ex-json", example("json_output"),
                             {"description": "Ada is 36 and lives in London.", "max_value_tokens": 8}))
    assert json.loads(r["text"]) == r["json"]
    assert list(r["json"]) == ["name", "age", "city"]
    assert isinstance(r["json"]["name"], str) and r["json"]["name"]
    assert isinstance(r["json"]["age"], int)
    assert isinstance(r["json"]["city"], str) and r["json"]["city"]


def test_tree_of_thought_follows_the_best_branch(runs, real_engine):
    r = result_of(run_to_end(runs, "ex-tot", example("tree_of_thought"),
                             {"problem": "What is 12 + 30?", "branches": 2, "depth": 2, "max_tokens": 10}))
    assert len(r["path"]) == len(r["scores"]) == 2
    assert all(isinstance(p, str) for p in r["path"])
    assert all(0.0 <= s <= 1.0 for s in r["scores"])
    assert r["considered"] == 4
    assert pages_held(real_engine, "ex-tot") == 0


def test_chat_session_reuses_its_saved_cache_on_the_next_run(runs, real_engine):
    args = {"session": "s1", "max_tokens": 10}
    first = result_of(run_to_end(runs, "ex-chat", example("chat_session"), {**args, "message": "Hi! I am Ada."}))
    second = result_of(run_to_end(runs, "ex-chat", example("chat_session"), {**args, "message": "What is my name?"}))
    assert (first["turn"], second["turn"]) == (1, 2)
    assert first["reused_tokens"] == 0 and second["reused_tokens"] > 0
    assert isinstance(second["reply"], str)
    assert [s["name"] for s in real_engine.list_saved("ex-chat")] == ["chat:s1"]
    real_engine.delete_saved("ex-chat", "chat:s1")
    assert pages_held(real_engine, "ex-chat") == 0


def test_two_runs_of_one_user_talk_over_a_topic(runs):
    common = {"topic": "tabs", "subject": "tabs versus spaces", "turns": 2, "max_tokens": 10}
    ada = runs.start("ex-debate", example("debate"), {**common, "me": "Ada", "other": "Bob", "opens": True})
    bob = runs.start("ex-debate", example("debate"), {**common, "me": "Bob", "other": "Ada", "opens": False})
    assert ada.wait(600) and bob.wait(600)
    a, b = result_of(ada)["transcript"], result_of(bob)["transcript"]
    assert a == b
    assert [m["speaker"] for m in a] == ["Ada", "Bob", "Ada", "Bob"]
    assert all(isinstance(m["text"], str) and m["text"] for m in a)


def test_examples_are_all_tested():
    tested = {"best_of_n", "beam_search", "json_output", "tree_of_thought", "chat_session", "debate"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested
