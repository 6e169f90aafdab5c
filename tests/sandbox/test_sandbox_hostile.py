"""Hostile and broken inferlets: each ends with one clear line to its owner, nothing leaks.

Keep growing this list. Every case runs under tight per-user quotas (set as
admin overrides), and the last tests check that other runs kept working and
that pages and threads went back to their baseline.
"""

from __future__ import annotations

import threading

import pytest

from potluck.engine.errors import QuotaExceeded
from sandbox_helpers import real_engine, runs, store  # noqa: F401 (fixtures)
from sandbox_helpers import messages_of, os_threads, output_of, pages_held, run_to_end, wait_for_threads

pytestmark = pytest.mark.e2e

TIGHT = {"fuel_per_run": 3_000_000_000, "max_run_seconds": 5.0, "memory_mb_per_run": 64, "kv_pages": 32,
         "max_runs": 64}

# (id, source, what the error line says)
FAILING = [
    ("infinite_loop", "while True:\n    pass\n", "used all its fuel (fuel_per_run = 3000000000)"),
    ("deep_recursion", "def f(n):\n    return f(n + 1)\nf(0)\n", "line 2: RecursionError"),
    ("recursion_past_the_interpreter_limit",
     "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1) + 1\nf(0)\n",
     "stack"),
    ("memory_bomb", "x = []\nwhile True:\n    x.append(bytearray(10**7))\n", "MemoryError"),
    ("one_huge_allocation", "x = bytearray(10**9)\n", "line 1: MemoryError"),
    ("huge_output", "while True:\n    print('x' * 10000)\n", "more than its output limit"),
    ("message_flood", "from potluck_inferlet import send\nwhile True:\n    send('y' * 60000)\n",
     "more than its output limit"),
    ("read_etc_passwd", "print(open('/etc/passwd').read())\n", "line 1: FileNotFoundError"),
    ("list_host_root", "import os\nprint(os.listdir('/'))\n", "line 2: FileNotFoundError"),
    ("write_a_file", "open('/tmp/pwned', 'w').write('x')\n", "line 1:"),
    ("socket", "import socket\nsocket.create_connection(('127.0.0.1', 22))\n",
     "line 1: ModuleNotFoundError: No module named 'socket'"),
    ("os_system", "import os\nos.system('id')\n", "line 2: AttributeError: module 'os' has no attribute 'system'"),
    ("subprocess", "import subprocess\n", "line 1: ModuleNotFoundError: No module named 'subprocess'"),
    ("ctypes", "import ctypes\n", "line 1: ModuleNotFoundError: No module named 'ctypes'"),
    ("syntax_error", "def broken(:\n    pass\n", "line 1: SyntaxError: invalid syntax"),
    ("uncaught_exception", "x = 1\nraise ValueError('boom')\n", "line 2: ValueError: boom"),
    ("keyboard_interrupt", "raise KeyboardInterrupt\n", "line 1: KeyboardInterrupt"),
    ("nonzero_exit", "import sys\nsys.exit(3)\n", "exit status 3"),
    ("sleeps_past_its_time_limit", "import time\ntime.sleep(10**6)\n", "time limit (max_run_seconds = 5.0)"),
    ("swallows_its_time_limit",
     "import time\nwhile True:\n    try:\n        time.sleep(100)\n    except Exception:\n        pass\n",
     "time limit (max_run_seconds = 5.0)"),
    ("pages_without_bound",
     "from potluck_inferlet import Context\nc = Context()\nwhile True:\n    c.fill([17] * 100).flush()\n",
     "kv_pages"),
    ("contexts_without_bound", "from potluck_inferlet import Context\nwhile True:\n    Context()\n",
     "256 contexts, the limit"),
    ("forged_sdk_handle", "from potluck_inferlet import Context\nContext(_handle=7).fill('x').flush()\n",
     "no context 7 in this run"),
    ("past_the_context_window",
     "from potluck_inferlet import Context\nContext().fill([17] * 100000).flush()\n", "context window"),
]


@pytest.fixture(scope="module", autouse=True)
def tight_quotas(real_engine):
    for name in ["victim"] + [f"h-{case[0]}" for case in FAILING] + ["h-guess", "h-thief", "h-quiet"]:
        real_engine.set_user_override(name, TIGHT, actor="test")


@pytest.fixture(scope="module")
def baseline(runs):
    # Starts the one epoch ticker thread and the model's own threads.
    run_to_end(runs, "bystander", "from potluck_inferlet import Context\nContext().fill('warm').next_token()\n")
    return threading.active_count(), os_threads()


@pytest.mark.parametrize("case,source,expected", FAILING, ids=[c[0] for c in FAILING])
def test_hostile_inferlet_ends_with_one_clear_line(runs, real_engine, baseline, case, source, expected):
    tenant = f"h-{case}"
    run = run_to_end(runs, tenant, source, timeout=120)
    assert run.state == "failed", (run.state, run.error)
    assert expected in run.error
    assert "\n" not in run.error and len(run.error) < 700
    assert run.events[-1] == {**run.events[-1], "type": "status", "state": "failed", "error": run.error}
    assert pages_held(real_engine, tenant) == 0


def test_the_environment_is_empty(runs):
    run = run_to_end(runs, "h-quiet", "import os\nprint(dict(os.environ), os.getcwd())\n")
    assert run.state == "finished", run.error
    assert output_of(run).startswith("{} ")


def test_a_run_that_never_calls_forward_just_finishes(runs, real_engine):
    run = run_to_end(runs, "h-quiet", "from potluck_inferlet import receive\nprint(sum(range(1000)), receive(0.1))\n")
    assert run.state == "finished", run.error
    assert output_of(run) == "499500 None\n"
    assert run.usage["forwards"] == 0 and pages_held(real_engine, "h-quiet") == 0


def test_guessed_handles_reach_nothing_of_another_run_or_tenant(runs, real_engine):
    holder = runs.start("victim", "from potluck_inferlet import Context, receive\n"
                                  "cs = [Context().fill('private words').flush() for _ in range(3)]\n"
                                  "receive()\n")
    guesser = """
import wit_world.imports.context as raw
from componentize_py_types import Err
found = []
for h in list(range(0, 70)) + [2**31, 2**32 - 1]:
    try:
        found.append((h, raw.tokens(h)))
    except Err as e:
        assert "no context" in e.value, e.value
print(found)
"""
    try:
        for _ in range(200):              # wait until the victim holds its contexts
            if pages_held(real_engine, "victim") >= 3:
                break
            threading.Event().wait(0.1)
        assert pages_held(real_engine, "victim") >= 3
        for tenant in ("h-guess", "victim"):          # another tenant, and another run of the same one
            run = run_to_end(runs, tenant, guesser)
            assert run.state == "finished", run.error
            assert output_of(run) == "[]\n"
    finally:
        holder.cancel()
        holder.wait(30)
    assert pages_held(real_engine, "victim") == 0


def test_another_tenants_saved_context_and_kv_are_invisible(runs, real_engine, store):
    store.kv_put("victim", "api-key", b"hunter2")
    saver = run_to_end(runs, "victim", "from potluck_inferlet import Context\nContext().fill('diary').save('diary')\n")
    assert saver.state == "finished", saver.error
    thief = """
from potluck_inferlet import Context, kv, InferletError, saved_contexts, send
try:
    Context.open("diary")
    opened = True
except InferletError as e:
    opened = str(e)
send({"opened": opened, "key": kv.get("api-key"), "keys": kv.keys(), "saved": saved_contexts()})
"""
    run = run_to_end(runs, "h-thief", thief)
    assert run.state == "finished", run.error
    assert messages_of(run) == [{"opened": "no saved context named 'diary' in your namespace",
                                 "key": None, "keys": [], "saved": []}]
    real_engine.delete_saved("victim", "diary")


def test_a_flood_of_messages_into_a_run_is_bounded(runs):
    run = runs.start("h-quiet", "from potluck_inferlet import receive\nimport time\ntime.sleep(4)\n")
    with pytest.raises(QuotaExceeded) as exc:
        for i in range(2000):
            run.send(i)
    assert exc.value.limit == "run_inbox"
    run.cancel()
    assert run.wait(30) and run.state == "cancelled"


def test_other_runs_keep_working_while_hostile_runs_fail(runs, real_engine, baseline):
    good_src = """
from potluck_inferlet import Context, send
ctx = Context()
ctx.fill_chat([{"role": "user", "content": "What is the capital of France?"}])
send(ctx.generate(max_tokens=8).tokens)
"""
    good = [runs.start("bystander", good_src) for _ in range(2)]
    bad = [runs.start(f"h-{case}", source) for case, source, _ in FAILING]
    for r in good + bad:
        assert r.wait(300), r.to_json()
    ref = real_engine.generate("bystander", messages=[{"role": "user", "content": "What is the capital of France?"}],
                               max_tokens=8).result(timeout=240)
    for r in good:
        assert r.state == "finished", r.error
        assert messages_of(r) == [ref.tokens]
    for r, (case, _, expected) in zip(bad, FAILING):
        assert r.state == "failed" and expected in r.error, (case, r.error)


def test_pages_and_threads_return_to_baseline(runs, real_engine, baseline):
    for name in ["victim", "bystander"] + [f"h-{case[0]}" for case in FAILING] + ["h-guess", "h-thief", "h-quiet"]:
        assert pages_held(real_engine, name) == 0, name
    python_threads, kernel_threads = baseline
    assert runs.stats()["threads"] == 0
    assert wait_for_threads(python_threads) == python_threads
    assert os_threads() <= kernel_threads
    assert real_engine.status()["kv"]["used_pages"] == 0
