"""What one tenant's runs can make the engine hold is bounded by that tenant's quota (issue 15).

Each test is an attack that got through before: printing a byte at a time
(a million events), topic floods (memory kept after the run ended, topics
never freed), the key-value store and saved contexts without a cap,
tokenizing past ``max_run_seconds``, and messages that are not JSON. Each
ends with the attacker's run refused or stopped with one line naming the
limit, and what the engine holds for the tenant back under its caps.
"""

from __future__ import annotations

import time

import pytest

from potluck.engine.sandbox.run import COALESCE_BYTES, EVENT_OVERHEAD, MAX_EVENTS
from potluck.engine.sandbox.topics import MAX_TOPICS_PER_TENANT
from sandbox_helpers import real_engine, runs, store  # noqa: F401 (fixtures)
from sandbox_helpers import messages_of, output_of, run_to_end

pytestmark = pytest.mark.e2e

KIB = 1024
BYTE_AT_A_TIME = """
import sys
from potluck_inferlet import args
for i in range(args["n"]):
    sys.stdout.write("x")
    sys.stdout.flush()          # one host call per byte
"""


def quota(engine, tenant, **fields):
    engine.set_user_override(tenant, fields, actor="test")


def test_printing_a_byte_at_a_time_makes_few_events_and_holds_no_more_than_it_printed(runs, real_engine):
    n = 256 * KIB
    quota(real_engine, "res-printer", run_output_bytes=n)
    run = run_to_end(runs, "res-printer", BYTE_AT_A_TIME, {"n": n})
    assert run.state == "finished", run.error
    assert output_of(run) == "x" * n
    outputs = [e for e in run.events if e["type"] == "output"]
    # Before: one event per byte (262,144 here; 1,048,579 for a MiB). Now: pieces of ~COALESCE_BYTES
    # or ~50 ms each, so a few hundred at most.
    assert len(outputs) <= 1000, len(outputs)
    assert [e["seq"] for e in run.events] == list(range(len(run.events)))
    assert run.held_bytes <= n + len(run.events) * (EVENT_OVERHEAD + 64)


def test_printing_past_run_output_bytes_ends_the_run_with_the_limit_named(runs, real_engine):
    quota(real_engine, "res-loud", run_output_bytes=64 * KIB)
    run = run_to_end(runs, "res-loud", BYTE_AT_A_TIME, {"n": 200 * KIB})
    assert run.state == "failed" and "run_output_bytes" in run.error and "65536" in run.error, run.error
    assert len(output_of(run)) == 64 * KIB
    assert run.usage["output_bytes"] == 64 * KIB


def test_switching_streams_every_byte_is_stopped_by_the_event_cap(runs, real_engine):
    quota(real_engine, "res-switch", run_output_bytes=1 << 20)
    src = "import sys\nwhile True:\n    sys.stdout.write('a'); sys.stdout.flush()\n" \
          "    sys.stderr.write('b'); sys.stderr.flush()\n"
    run = run_to_end(runs, "res-switch", src)
    assert run.state == "failed" and f"more than {MAX_EVENTS} events" in run.error, run.error
    assert len(run.events) <= MAX_EVENTS + 4


def test_ended_runs_keep_at_most_run_history_bytes_in_memory(runs, real_engine, store):
    quota(real_engine, "res-history", run_output_bytes=128 * KIB, run_history_bytes=300 * KIB)
    done = [run_to_end(runs, "res-history", "print('y' * 100000)\n") for _ in range(4)]
    assert all(r.state == "finished" for r in done)
    kept = runs.list("res-history")
    assert 1 <= len(kept) <= 3 and kept[0].id == done[-1].id
    assert runs.held_bytes("res-history") <= 300 * KIB
    # Runs that left memory are still listed from the run history, ended.
    listed = {r["id"]: r["state"] for r in runs.records("res-history")}
    assert all(listed[r.id] == "finished" for r in done)
    # An ended run keeps neither its source nor its arguments.
    assert kept[0].source == "" and kept[0].args_json == ""


def test_the_run_history_in_the_database_is_bounded_per_tenant(runs, real_engine, store):
    from potluck.engine.sandbox import RunManager
    few = RunManager(real_engine, store, sandbox=runs.sandbox, keep_records=3)
    try:
        for _ in range(5):
            run_to_end(few, "res-many", "pass\n")
        # The manager prunes as a run ends, just after its followers were told: wait for the last one.
        deadline = time.monotonic() + 30
        while len(store.list_runs("res-many")) > 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        few.shutdown()
    assert len(store.list_runs("res-many")) == 3


def test_topic_messages_count_as_output_and_topics_are_freed_with_their_last_run(runs, real_engine):
    quota(real_engine, "res-topics", run_output_bytes=256 * KIB)
    flood = """
from potluck_inferlet import Topic
topics = [Topic(f"t{i}") for i in range(64)]
while True:
    for t in topics:
        t.publish("z" * 60000)
"""
    run = run_to_end(runs, "res-topics", flood)
    assert run.state == "failed" and "run_output_bytes" in run.error, run.error
    # Nothing is kept for topics no live run uses: their backlogs and the 64-topic cap are free again.
    assert runs.topics.held("res-topics") == (0, 0)
    again = run_to_end(runs, "res-topics",
                       f"from potluck_inferlet import Topic\nts = [Topic(f'u{{i}}') for i in range({MAX_TOPICS_PER_TENANT})]\n")
    assert again.state == "finished", again.error


def test_a_topic_lives_while_a_run_uses_it_and_its_backlog_reaches_later_subscribers(runs):
    keeper = runs.start("res-pair", "from potluck_inferlet import Topic, receive\nt = Topic('chat')\n"
                                    "receive(timeout=120)\n")
    deadline = time.monotonic() + 60
    while runs.topics.held("res-pair")[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)           # the keeper has joined the topic
    speaker = run_to_end(runs, "res-pair", "from potluck_inferlet import Topic\nt = Topic('chat')\n"
                                           "t.publish('one')\nt.publish('two')\n")
    assert speaker.state == "finished", speaker.error
    late = run_to_end(runs, "res-pair", "from potluck_inferlet import Topic\nt = Topic('chat')\n"
                                        "print(t.receive(timeout=30), t.receive(timeout=30))\n")
    assert late.state == "finished" and output_of(late) == "one two\n", (late.error, output_of(late))
    keeper.send("bye")
    assert keeper.wait(60) and keeper.state == "finished", keeper.error
    assert runs.topics.held("res-pair") == (0, 0)


def test_the_key_value_store_is_held_to_kv_store_bytes(runs, real_engine, store):
    quota(real_engine, "res-kv", kv_store_bytes=100_000)
    src = """
from potluck_inferlet import kv
i = 0
while True:
    kv.put(f"k{i}", "v" * 30000)
    i += 1
"""
    run = run_to_end(runs, "res-kv", src)
    assert run.state == "failed" and "kv_store_bytes" in run.error and "100000" in run.error, run.error
    assert store.kv_bytes("res-kv") <= 100_000
    # Replacing a value within the limit still works, and so does deleting.
    ok = run_to_end(runs, "res-kv", "from potluck_inferlet import kv\nkv.put('k0', 'w' * 30000)\n"
                                    "kv.delete('k1')\nkv.put('k9', 'u' * 30000)\n")
    assert ok.state == "finished", ok.error


def test_saved_contexts_are_held_to_saved_contexts(runs, real_engine):
    quota(real_engine, "res-saver", saved_contexts=3)
    src = """
from potluck_inferlet import Context
c = Context()
c.fill("hello").flush()
for i in range(10):
    c.save(f"s{i}")
"""
    run = run_to_end(runs, "res-saver", src)
    assert run.state == "failed" and "saved_contexts" in run.error, run.error
    assert [c["name"] for c in real_engine.list_saved("res-saver")] == ["s0", "s1", "s2"]


def test_tokenizing_is_run_time_max_run_seconds_is_wall_time(runs, real_engine):
    # Before: time in every host call was given back, so a run limited to 5 s tokenized for 18 s.
    quota(real_engine, "res-tokenizer", max_run_seconds=1.0)
    src = "from potluck_inferlet import encode\ntext = 'hello world ' * 20000\nfor i in range(2000):\n" \
          "    encode(text)\n"
    run = run_to_end(runs, "res-tokenizer", src)
    assert run.state == "failed" and "time limit (max_run_seconds = 1.0)" in run.error, run.error


def test_waiting_for_the_model_is_still_given_back(runs, real_engine):
    quota(real_engine, "res-patient", max_run_seconds=30.0)
    src = "from potluck_inferlet import Context\nc = Context()\nc.fill('Once upon a time')\n" \
          "print(c.generate(max_tokens=8))\n"
    run = run_to_end(runs, "res-patient", src)
    assert run.state == "finished", run.error


@pytest.mark.parametrize("case, body", [
    ("nan", "float('nan')"),
    ("infinity", "float('inf')"),
    ("nested_nan", "{'x': [1, float('-inf')]}"),
])
def test_a_message_that_is_not_json_fails_the_run_with_one_line_and_no_gap(runs, case, body):
    run = run_to_end(runs, "res-nan", f"from potluck_inferlet import send\nsend('before')\nsend({body})\n")
    assert run.state == "failed" and "not JSON" in run.error and "internal error" not in run.error, run.error
    assert messages_of(run) == ["before"]
    assert [e["seq"] for e in run.events] == list(range(len(run.events)))


@pytest.mark.parametrize("raw", ["{not json", "[1, 2", "", "NaN"])
def test_invalid_json_handed_to_send_is_one_line_not_an_internal_error(runs, raw):
    src = f"import potluck_inferlet as p\np._call(p._io.send, {raw!r})\n"
    run = run_to_end(runs, "res-badjson", src)
    assert run.state == "failed" and "a message must be one JSON value" in run.error, run.error
    assert "internal error" not in run.error and "\n" not in run.error
    src = f"import potluck_inferlet as p\np._call(p._io.publish, 'topic', {raw!r})\n"
    run = run_to_end(runs, "res-badjson", src)
    assert run.state == "failed" and "a message must be one JSON value" in run.error, run.error


def test_a_follower_past_the_end_of_an_ended_run_gets_its_final_status(runs):
    run = run_to_end(runs, "res-follow", "print('hi')\n")
    seen = []
    unsubscribe = run.subscribe(seen.append, since=len(run.events) + 1000)
    unsubscribe()
    assert seen == [run.events[-1]] and seen[0]["state"] == "finished"


def test_output_coalescing_keeps_order_between_prints_and_messages(runs):
    src = "from potluck_inferlet import send\nprint('a', end='', flush=True)\nsend(1)\n" \
          "print('b', end='', flush=True)\n"
    run = run_to_end(runs, "res-order", src)
    kinds = [(e["type"], e.get("text", e.get("body"))) for e in run.events if e["type"] in ("output", "message")]
    assert kinds == [("output", "a"), ("message", 1), ("output", "b")], kinds
    assert COALESCE_BYTES >= 1024


def test_a_run_printing_a_token_at_a_time_for_twenty_minutes_stays_under_the_event_cap(monkeypatch):
    """Legitimate streaming (one token printed every 60 ms) must never meet MAX_EVENTS: pieces grow instead."""
    from potluck.engine.sandbox import run as run_module
    from potluck.engine.quota import Quota

    class Site:
        def save_record(self, record):
            pass
    now = [1000.0]
    monkeypatch.setattr(run_module.time, "monotonic", lambda: now[0])
    r = run_module.Run(Site(), "r1", "alice", Quota(run_output_bytes=None), "", None, "{}")
    for i in range(20_000):               # 20 minutes of a token each 60 ms
        now[0] += 0.06
        r.output(f"t{i} ", "stdout")
    r.flush_output()
    assert len(r.events) < MAX_EVENTS - 1000, len(r.events)       # 4,201: pieces grew from 1 to 16 tokens
    assert "".join(e["text"] for e in r.events) == "".join(f"t{i} " for i in range(20_000))


class _StubRun:
    """What Topics asks of a run: its owner and id, charging output, delivery into its inbox."""

    def __init__(self, tenant, rid):
        self.tenant, self.id, self.got, self.charged = tenant, rid, [], 0

    def charge_output(self, n, what):
        self.charged += n

    def deliver(self, topic, body):
        self.got.append(body)
        return True


def test_topic_backlogs_expire_are_capped_in_bytes_per_tenant_and_freed_with_their_last_run(monkeypatch):
    from potluck.engine.sandbox import topics as topics_module
    now = [0.0]
    monkeypatch.setattr(topics_module.time, "monotonic", lambda: now[0])
    t = topics_module.Topics()
    speaker, other = _StubRun("alice", "r1"), _StubRun("bob", "r9")
    for i in range(40):                                  # 40 x 60 KB on 4 topics: over the 1 MiB cap
        t.publish(speaker, f"t{i % 4}", "z" * 60000)
    topics_held, kept = t.held("alice")
    assert topics_held == 4 and kept <= topics_module.BACKLOG_BYTES and speaker.charged == 40 * 60000
    t.publish(other, "t0", "mine")                       # bob's topic of the same name is his own
    assert t.held("bob") == (1, 4)
    late = _StubRun("alice", "r2")
    t.subscribe(late, "t0")
    assert late.got and all(len(b) == 60000 for b in late.got)        # the newest kept messages
    now[0] += topics_module.BACKLOG_SECONDS + 1          # old messages expire
    later = _StubRun("alice", "r3")
    t.subscribe(later, "t1")
    assert later.got == [] and t.held("alice")[1] == 0
    for run in (speaker, late, later):
        t.leave(run)
    assert t.held("alice") == (0, 0) and t.held("bob") == (1, 4)
