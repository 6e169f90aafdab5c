"""Structured outputs, several choices of one prompt, prompt logprobs and penalties, in the engine.

A random-weight model follows no instructions, so whatever it writes under a grammar shows the
grammar (the token mask inside the step), not the model, made the output valid.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from potluck.engine.constraints import Structured
from potluck.engine.errors import BadRequest
from potluck.engine.sampling import Sampler

SCHEMAS = [
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                      "tag": {"enum": ["red", "green", "blue"]}},
     "required": ["n", "tag"], "additionalProperties": False},
    {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 3},
    {"type": "object", "properties": {"kind": {"const": "point"},
                                      "xy": {"type": "array", "items": {"type": "integer", "minimum": -9,
                                                                        "maximum": 9}, "minItems": 2,
                                             "maxItems": 2}},
     "required": ["kind", "xy"], "additionalProperties": False},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_json_schema_output_parses_and_validates(engine, schema):
    for seed in range(3):
        r = engine.generate("alice", prompt="Answer:", max_tokens=60, sampler=Sampler(temperature=1.0, seed=seed),
                            structured=Structured("json", schema)).result()
        assert r.finish_reason == "stop", r.text
        jsonschema.validate(json.loads(r.text), schema)


def test_regex_and_choice_outputs_match(engine):
    r = engine.generate("alice", prompt="Code:", max_tokens=20, sampler=Sampler(temperature=1.0, seed=1),
                        structured=Structured("regex", r"[A-Z]{2}-\d{3}")).result()
    assert re.fullmatch(r"[A-Z]{2}-\d{3}", r.text), r.text
    choices = ["positive", "negative", "neutral"]
    for seed in range(4):
        r = engine.generate("alice", prompt="Mood:", max_tokens=10, sampler=Sampler(temperature=1.0, seed=seed),
                            structured=Structured("choice", choices)).result()
        assert r.text in choices


def test_constrained_and_free_rows_share_a_step_without_touching_each_other(engine):
    free_alone = engine.generate("bob", tokens=[11, 12, 13, 14], max_tokens=12, ignore_eos=True).result().tokens
    constrained = [engine.generate("alice", prompt=f"Q{i}:", max_tokens=40,
                                   structured=Structured("json", SCHEMAS[1])) for i in range(3)]
    free = engine.generate("bob", tokens=[11, 12, 13, 14], max_tokens=12, ignore_eos=True)
    for g in constrained:
        jsonschema.validate(json.loads(g.result().text), SCHEMAS[1])
    assert free.result().tokens == free_alone


def test_a_bad_grammar_is_a_one_line_400_at_the_door(engine):
    with pytest.raises(BadRequest) as e:
        engine.generate("alice", prompt="x", structured=Structured("regex", "(unclosed"))
    assert e.value.code == "invalid_structured_output" and "\n" not in e.value.message
    with pytest.raises(BadRequest, match="characters; the limit is"):
        engine.generate("alice", prompt="x", structured=Structured("choice", ["a" * 70000]))
    with pytest.raises(BadRequest, match="give one of"):
        Structured.of({"json": {"type": "object"}, "regex": "a+"}, where="structured_outputs")
    assert engine.pool.used_slots == 0


def test_n_choices_share_one_prefill(engine):
    prompt = list(range(100, 160))
    before = engine.stats["prefill_tokens"]
    gens = engine.generate_choices("alice", n=3, tokens=prompt, max_tokens=6, ignore_eos=True,
                                   sampler=Sampler(temperature=1.0, seed=7))
    results = [g.result() for g in gens]
    # The prompt once, then the last prompt token again for each further choice.
    assert engine.stats["prefill_tokens"] - before == len(prompt) + 2
    assert [r.cached_tokens for r in results[1:]] == [len(prompt) - 1] * 2
    assert all(len(r.tokens) == 6 for r in results)
    greedy = engine.generate_choices("alice", n=2, tokens=prompt, max_tokens=6, ignore_eos=True)
    alone = engine.generate("alice", tokens=prompt, max_tokens=6, ignore_eos=True).result().tokens
    assert [g.result().tokens for g in greedy] == [alone, alone]


def test_prompt_logprobs_equal_rescoring(engine, reference_model):
    prompt = list(range(200, 250))
    r = engine.generate("alice", tokens=prompt, max_tokens=1, prompt_logprobs=2).result()
    assert len(r.prompt_logprobs) == len(prompt) - 1
    with torch.no_grad():
        ref = torch.log_softmax(reference_model(torch.tensor([prompt])).logits[0].float(), dim=-1)
    expected = [ref[i, prompt[i + 1]].item() for i in range(len(prompt) - 1)]
    got = [lp for lp, _ in r.prompt_logprobs]
    assert got == pytest.approx(expected, abs=1e-3)
    top_ids = [ids for ids in torch.topk(ref[:-1], 2, dim=-1).indices.tolist()]
    assert [[t for t, _ in top] for _, top in r.prompt_logprobs] == top_ids


def test_penalties_follow_openai_and_vllm_definitions():
    from potluck.engine.sampling import sample
    logits = torch.full((3, 10), -5.0)
    logits[:, 5], logits[:, 6] = 10.0, 9.0
    s = [Sampler(frequency_penalty=1.0), Sampler(presence_penalty=2.0), Sampler(repetition_penalty=1.5)]
    hist = [([5, 5], [1, 5, 5]), ([5], [5]), ([], [5])]
    # frequency: 10 - 2*1 = 8 < 9; presence: 10 - 2 = 8 < 9; repetition: 10 / 1.5 = 6.7 < 9
    assert [x.token for x in sample(logits, s, [None] * 3, None, hist)] == [6, 6, 6]
    assert [x.token for x in sample(logits, [Sampler()] * 3, [None] * 3)] == [5, 5, 5]


def test_penalties_change_the_output(engine):
    prompt = [300, 301, 302]
    forced = {500: 100.0}    # makes the model repeat one token, so there is something to penalise
    plain = engine.generate("alice", tokens=prompt, max_tokens=60, ignore_eos=True,
                            sampler=Sampler(logit_bias=forced)).result().tokens
    pen = engine.generate("alice", tokens=prompt, max_tokens=60, ignore_eos=True,
                          sampler=Sampler(logit_bias=forced, frequency_penalty=2.0)).result().tokens
    assert plain.count(500) == 60
    assert pen.count(500) < 60 and pen[0] == 500
    with pytest.raises(BadRequest, match="presence_penalty must be a number from -2 to 2"):
        engine.generate("alice", tokens=prompt, sampler=Sampler(presence_penalty=3.0))


def test_a_context_under_a_grammar_samples_only_what_it_allows(engine):
    from potluck.engine.sampling import Sampler as S
    ctx = engine.create_context("alice")
    engine.constrain_context("alice", ctx, Structured("regex", r"(yes|no)"))
    fed, out = [5, 6, 7], []
    for _ in range(8):
        s = engine.forward("alice", ctx, fed, S(temperature=1.0, seed=3)).result()
        if s.token in engine.eos_ids:
            break
        out.append(s.token)
        fed = [s.token]
    assert engine.decode(out) in ("yes", "no")
    engine.constrain_context("alice", ctx, None)
    with pytest.raises(BadRequest):
        engine.constrain_context("alice", ctx, Structured("regex", "(bad"))
    engine.drop_context("alice", ctx)


def test_a_prompt_larger_than_the_kv_pool_is_refused_not_left_waiting(tokenizer, tiny_weights):
    from tiny_engine import make_engine
    small = make_engine(tokenizer, tiny_weights, kv_pages=8).start()     # 8 pages of 16 tokens
    try:
        assert small.max_context == 8 * small.pool.page_size
        with pytest.raises(BadRequest) as e:
            small.generate("alice", tokens=list(range(10, 10 + 200)), max_tokens=4)
        assert e.value.code == "context_length_exceeded" and "maximum context length is 128" in e.value.message
        assert len(small.generate("alice", tokens=list(range(10, 100)), max_tokens=4).result(timeout=60).tokens) <= 4
    finally:
        small.stop()
