"""Inferlet runs on the real default model: what a user's program can do, and what it gets back."""

from __future__ import annotations

import json
import threading
import time

import pytest

from potluck.engine.errors import NotFound, QuotaExceeded
from sandbox_helpers import real_engine, runs, store  # noqa: F401 (fixtures)
from sandbox_helpers import messages_of, output_of, pages_held, run_to_end

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_print_and_args_reach_the_owner(runs):
    run = run_to_end(runs, "alice", "from potluck_inferlet import args\nprint('hello', args['name'])\n",
                     {"name": "world"})
    assert run.state == "finished", run.error
    assert output_of(run, "stdout") == "hello world\n"
    kinds = [e["type"] for e in run.events]
    assert kinds[0] == "status" and kinds[-2:] == ["usage", "status"]
    assert run.events[-1]["state"] == "finished"
    assert run.usage["fuel"] > 0 and run.to_json()["usage"]["fuel"] == run.usage["fuel"]


def test_greedy_generate_in_the_sandbox_equals_engine_generate(runs, real_engine):
    src = """
from potluck_inferlet import Context, args, send
ctx = Context()
ctx.fill_chat(args["messages"])
out = ctx.generate(max_tokens=args["max_tokens"])
send({"text": out, "tokens": out.tokens, "finish": out.finish_reason})
"""
    run = run_to_end(runs, "alice", src, {"messages": QUESTION, "max_tokens": 12})
    assert run.state == "finished", run.error
    [got] = messages_of(run)
    ref = real_engine.generate("alice", messages=QUESTION, max_tokens=12).result(timeout=240)
    assert got["tokens"] == ref.tokens
    assert got["text"] == ref.text
    assert "Paris" in got["text"]
    assert run.usage["decode_tokens"] >= len(ref.tokens)



def test_a_stop_string_in_the_sandbox_ends_text_as_engine_generate_does(runs, real_engine):
    ref = real_engine.generate("tess", messages=QUESTION, max_tokens=12).result(timeout=240)
    stop = ref.text.strip()[3:6]                 # a few characters from inside the answer
    assert len(stop) == 3
    src = """
from potluck_inferlet import Context, args, send
ctx = Context()
ctx.fill_chat(args["messages"])
out = ctx.generate(max_tokens=12, stop=[args["stop"]], stream=True)
send({"text": out, "finish": out.finish_reason})
"""
    run = run_to_end(runs, "tess", src, {"messages": QUESTION, "stop": stop})
    assert run.state == "finished", run.error
    [got] = messages_of(run)
    engine_stopped = real_engine.generate("tess", messages=QUESTION, max_tokens=12, stop=[stop]).result(timeout=240)
    assert got["text"] == engine_stopped.text == ref.text[:ref.text.find(stop)]
    assert got["finish"] == engine_stopped.finish_reason == "stop"
    assert output_of(run, "stdout") == got["text"]      # streamed: the same text, never past the stop


def test_the_guest_streams_multibyte_text_as_the_engine_textstream_does(runs, real_engine):
    from potluck.engine.textstream import TextStream
    text = "naïve café – 日本語 🎉 ok"
    src = """
from potluck_inferlet import args, decode, encode, send
from potluck_textstream import TextStream
ts = TextStream(decode, args["stop"])
send([ts.push(t) for t in encode(args["text"])] + [ts.finish()])
"""
    for stop in ([], ["日本"]):
        run = run_to_end(runs, "tess", src, {"text": text, "stop": stop})
        assert run.state == "finished", run.error
        [pieces] = messages_of(run)
        host = TextStream(real_engine.decode, stop)
        assert pieces == [host.push(t) for t in real_engine.encode(text)] + [host.finish()]
        assert not any("\ufffd" in p for p in pieces)
        assert "".join(pieces) == (text.split("日本")[0] if stop else real_engine.decode(real_engine.encode(text)))

def test_distribution_and_next_token_agree_and_cost_no_pages_afterwards(runs, real_engine):
    src = """
from potluck_inferlet import Context, Sampler, send, decode
ctx = Context().fill("The capital of France is")
top = ctx.distribution(5)
s = ctx.next_token()                  # re-feeds the last token after distribution()
seeded = [ctx.fork().next_token(Sampler(temperature=0.7, seed=7)).token for _ in range(2)]
send({"top": top, "greedy": s.token, "text": decode([s.token]), "seeded": seeded, "n": len(ctx)})
"""
    run = run_to_end(runs, "dora", src)
    assert run.state == "finished", run.error
    [m] = messages_of(run)
    assert len(m["top"]) == 5 and m["top"][0][0] == m["greedy"]
    assert m["top"][0][1] >= m["top"][1][1] > 0
    assert "Paris" in m["text"]
    assert m["seeded"][0] == m["seeded"][1]       # a seed makes sampling repeatable
    assert pages_held(real_engine, "dora") == 0


def test_fork_save_and_open_across_runs(runs, real_engine):
    save = """
from potluck_inferlet import Context
ctx = Context()
ctx.fill_chat([{"role": "user", "content": "Name a color."}])
ctx.save("color-question")
a, b = ctx.fork(2)
print(len(a) == len(b) == len(ctx))
"""
    run = run_to_end(runs, "erin", save)
    assert run.state == "finished", run.error
    assert output_of(run) == "True\n"
    assert any(r["name"] == "color-question" for r in real_engine.list_saved("erin"))
    resume = """
from potluck_inferlet import Context, send
ctx = Context.open("color-question")
out = ctx.generate(max_tokens=8)
send({"tokens": out.tokens})
"""
    run = run_to_end(runs, "erin", resume)
    assert run.state == "finished", run.error
    ref = real_engine.generate("erin", messages=[{"role": "user", "content": "Name a color."}], max_tokens=8)
    assert messages_of(run)[0]["tokens"] == ref.result(timeout=240).tokens
    # The saved snapshot is the only thing the two runs left behind.
    saved_pages = pages_held(real_engine, "erin")
    real_engine.delete_saved("erin", "color-question")
    assert saved_pages > 0 and pages_held(real_engine, "erin") == 0


def test_second_tenant_cannot_open_my_saved_context(runs, real_engine):
    run = run_to_end(runs, "frank", "from potluck_inferlet import Context\nc = Context().fill('secret plan')\n"
                                     "c.save('plan')\n")
    assert run.state == "finished", run.error
    thief = run_to_end(runs, "mallory", "from potluck_inferlet import Context\nContext.open('plan')\n")
    assert thief.state == "failed"
    assert thief.error == "line 2: no saved context named 'plan' in your namespace"
    real_engine.delete_saved("frank", "plan")


def test_messages_to_and_from_a_run(runs):
    src = """
from potluck_inferlet import receive, send
while True:
    msg = receive(timeout=60)
    if msg is None or msg == "stop":
        break
    send({"echo": msg, "n": len(str(msg))})
"""
    run = runs.start("gina", src)
    seen = []
    got_two = threading.Event()

    def on_event(ev):
        if ev["type"] == "message":
            seen.append(ev["body"])
            if len(seen) == 2:
                got_two.set()
    unsubscribe = run.subscribe(on_event)
    run.send({"q": 1})
    run.send("hello")
    assert got_two.wait(60), run.to_json()
    run.send("stop")
    assert run.wait(60)
    unsubscribe()
    assert run.state == "finished", run.error
    assert seen == [{"echo": {"q": 1}, "n": 8}, {"echo": "hello", "n": 5}]
    with pytest.raises(Exception, match="has ended"):
        run.send("too late")


def test_topics_connect_runs_of_one_owner_only(runs):
    listener = """
from potluck_inferlet import Topic, send
t = Topic("news")
send({"got": t.receive(timeout=30)})
"""
    speaker = """
from potluck_inferlet import Topic
Topic("news").publish({"headline": "inferlets ship"})
"""
    mine = runs.start("hana", listener)
    stranger = runs.start("ivan", listener)
    run_to_end(runs, "hana", speaker)
    assert mine.wait(60) and mine.state == "finished", mine.error
    assert messages_of(mine) == [{"got": {"headline": "inferlets ship"}}]
    stranger.cancel()
    assert stranger.wait(30) and stranger.state == "cancelled"
    assert messages_of(stranger) == []


def test_key_value_store_is_per_tenant_and_persistent(runs, store):
    run = run_to_end(runs, "jo", "from potluck_inferlet import kv\nkv.put('color', 'teal')\n"
                                 "print(kv.get('color'), kv.keys())\n")
    assert run.state == "finished", run.error
    assert output_of(run) == "teal ['color']\n"
    assert store.kv_get("jo", "color") == b"teal"
    other = run_to_end(runs, "kim", "from potluck_inferlet import kv\nprint(kv.get('color'), kv.keys())\n")
    assert output_of(other) == "None []\n"


def test_runs_are_listed_found_and_cancelled_per_tenant(runs):
    run = runs.start("lee", "from potluck_inferlet import receive\nreceive()\n")
    assert run in runs.list("lee")
    assert runs.get("lee", run.id) is run
    with pytest.raises(NotFound):
        runs.get("mallory", run.id)
    with pytest.raises(NotFound):
        runs.cancel("mallory", run.id)
    assert run.state in ("queued", "running")
    runs.cancel("lee", run.id)
    assert run.wait(30)
    assert run.state == "cancelled" and run.error is None
    assert run.to_json()["state"] == "cancelled"


def test_another_engine_starting_on_the_shared_history_leaves_this_engines_live_runs_alone(runs, store,
                                                                                           real_engine):
    from potluck.engine.sandbox import RunManager
    run = runs.start("nina", "from potluck_inferlet import receive\nreceive()\n")
    try:
        assert store.get_run("nina", run.id)["state"] in ("queued", "running")
        # A second engine of the hub starts on the same database: this engine's run is not its to fail.
        other = RunManager(real_engine, store, sandbox=runs.sandbox, engine_name=f"{real_engine.name}-other")
        other.shutdown()
        assert store.get_run("nina", run.id)["state"] in ("queued", "running")
        # This engine starting again (it crashed while the run ran): the run is cut off.
        again = RunManager(real_engine, store, sandbox=runs.sandbox)
        again.shutdown()
        cut = store.get_run("nina", run.id)
        assert cut["state"] == "failed"
        assert cut["error"].startswith("the engine stopped while this run was running")
    finally:
        run.cancel()
        run.wait(30)


def test_cancel_stops_a_busy_loop_within_a_tick(runs):
    run = runs.start("lee", "while True:\n    pass\n")
    time.sleep(0.5)
    t0 = time.monotonic()
    run.cancel()
    assert run.wait(10)
    assert run.state == "cancelled"
    assert time.monotonic() - t0 < 2


def test_max_runs_is_enforced(runs, real_engine):
    real_engine.set_user_override("max", {"max_runs": 2}, actor="test")
    held = [runs.start("max", "from potluck_inferlet import receive\nreceive()\n") for _ in range(2)]
    with pytest.raises(QuotaExceeded) as exc:
        runs.start("max", "print(1)")
    assert exc.value.limit == "max_runs" and exc.value.value == 2
    for r in held:
        r.cancel()
    for r in held:
        assert r.wait(30)
    assert run_to_end(runs, "max", "print(1)").state == "finished"


def test_many_concurrent_runs_from_five_tenants_share_batches(runs, real_engine):
    steps = []
    listener = steps.append
    real_engine.step_listeners.append(listener)
    src = """
from potluck_inferlet import Context, args, send
ctx = Context().fill(args["prompt"])
out = ctx.generate(max_tokens=6)
send({"n": len(out.tokens)})
"""
    try:
        started = [runs.start(f"team{i % 5}", src, {"prompt": f"Count to {i + 3}:"}) for i in range(20)]
        for r in started:
            assert r.wait(600), r.to_json()
    finally:
        real_engine.step_listeners.remove(listener)
    assert all(r.state == "finished" for r in started), [r.error for r in started if r.error]
    assert all(messages_of(r)[0]["n"] >= 1 for r in started)
    shared = [s for s in steps if s["seqs"] > 1]
    assert shared, "no step held more than one run's forward"
    assert max(s["seqs"] for s in steps) >= 5
    assert max(len(s["usage"]) for s in steps) >= 2       # tenants shared a step
    for i in range(5):
        assert pages_held(real_engine, f"team{i}") == 0


def test_a_prebuilt_component_is_refused_cleanly_when_it_is_not_a_component(runs):
    run = run_to_end(runs, "nina", b"\x00asm\x01\x00\x00\x00")
    assert run.state == "failed"
    assert run.error.startswith("the component could not be compiled")
    assert json.dumps(run.to_json())


def test_concurrent_host_calls_return_their_own_results(runs):
    # Errors and values of differently shaped results, returned on many threads at once.
    src = """
import wit_world.imports.context as raw
from componentize_py_types import Err
from potluck_inferlet import args, kv, send
errors = lists = 0
for i in range(args["n"]):
    try:
        raw.tokens(999)
    except Err as e:
        errors += "no context 999" in e.value
    lists += raw.list_saved() == []
    assert kv.get("absent") is None
send([errors, lists])
"""
    started = [runs.start(f"busy{i % 4}", src, {"n": 400}) for i in range(8)]
    for r in started:
        assert r.wait(120), r.to_json()
    assert [r.error for r in started] == [None] * 8
    assert all(messages_of(r) == [[400, 400]] for r in started)
