"""Structured outputs inside an inferlet: ``ctx.generate(json_schema=...)`` decodes under the grammar."""

from __future__ import annotations

import json

import jsonschema
import pytest

from sandbox_helpers import real_engine, runs, store  # noqa: F401 (fixtures)
from sandbox_helpers import messages_of, run_to_end

pytestmark = pytest.mark.e2e

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                           "country": {"type": "string", "maxLength": 20}},
          "required": ["city", "country"], "additionalProperties": False}


def test_generate_with_a_json_schema_regex_and_choice(runs):
    src = """
from potluck_inferlet import Context, args, generate_all, send
ctx = Context()
ctx.fill_chat([{"role": "user", "content": "Name a city and its country as JSON."}])
forks = [ctx.fork() for _ in range(3)]
outs = generate_all(forks, max_tokens=60, temperature=1.0, seed=1, json_schema=args["schema"])
c = Context().fill("Code: ")
code = c.generate(max_tokens=12, regex="[A-Z]{3}-[0-9]{2}")
free = c.fill(" and the word hello").generate(max_tokens=4, stop_at_eos=False)
pick = Context().fill("Mood: ").generate(max_tokens=5, choice=["happy", "sad"])
send({"outs": [str(o) for o in outs], "finish": [o.finish_reason for o in outs], "free": str(free),
      "code": str(code), "pick": str(pick)})
"""
    run = run_to_end(runs, "alice", src, {"schema": SCHEMA})
    assert run.state == "finished", run.error
    [got] = messages_of(run)
    for text in got["outs"]:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert got["code"][:3].isupper() and got["code"][3] == "-" and len(got["code"]) == 6
    assert got["pick"] in ("happy", "sad")
    # The grammar is lifted after its generate: a finished grammar would allow only end-of-sequence.
    assert got["free"].strip()


def test_a_bad_grammar_is_an_inferlet_error_naming_it(runs):
    src = """
from potluck_inferlet import Context, InferletError, send
try:
    Context().fill("x").generate(max_tokens=3, regex="(unclosed")
except InferletError as e:
    send({"error": str(e)})
"""
    run = run_to_end(runs, "alice", src, {})
    assert run.state == "finished", run.error
    [got] = messages_of(run)
    assert "constrain" in got["error"] and "regex" in got["error"]
