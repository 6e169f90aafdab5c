"""Clients that hang up mid-stream, hundreds of times, leave nothing behind in the engine.

Each disconnect opens a stream (``/api/generate`` with ``stream``, the OpenAI chat stream, or a
run's events WebSocket), reads its first chunk and resets the TCP connection. After a warm-up
(the request thread pool and the database pool grow to their working size), the engine's KV
pages, thread count and open file descriptors (from /proc) must come back to that baseline.
``POTLUCK_STORM_N`` sets the number of disconnects (300 here; ``make soak`` runs thousands).
"""

from __future__ import annotations

import os
import time

import pytest

from support.engine_process import EngineProcess
from support.faults import Storm, runs_idle, settle

pytestmark = pytest.mark.timeout(900)

N = int(os.environ.get("POTLUCK_STORM_N", "300"))
WARMUP = 30
# A leak of one thread or socket per disconnect would be ~N/3 over; a pool growing by a few is not.
THREAD_SLACK, FD_SLACK = 3, 6


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    proc = EngineProcess(tmp_path_factory.mktemp("potluck-storm"))
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log_tail()


def test_hundreds_of_hang_ups_leak_no_pages_threads_or_fds(engine):
    admin = engine.client("storm-admin", admin=True)
    # Run-event disconnects leave runs waiting a second each: more than the default 4 at once.
    assert admin.put("/api/admin/quotas/users/storm", json={"max_runs": 64}).status_code == 200
    storm = Storm(engine.url, engine.token("storm"))

    storm.run(WARMUP)
    storm.close()
    before, status = settle(engine.status, engine.pid, lambda: runs_idle(admin))
    assert status["kv"]["used_pages"] == 0 and status["running_generations"] == 0, status
    assert runs_idle(admin), admin.get("/api/admin/runs").json()["stats"]

    t0 = time.monotonic()
    storm.run(N)
    elapsed = time.monotonic() - t0
    storm.close()
    after, status = settle(engine.status, engine.pid, lambda: runs_idle(admin), before,
                           thread_slack=THREAD_SLACK, fd_slack=FD_SLACK)

    print(f"\n{N} disconnects in {elapsed:.1f} s {storm.done}; before {before}, after {after}")
    assert status["running_generations"] == 0 and status["queue_depth"] == 0, status
    assert status["kv"]["used_pages"] == 0, status
    assert runs_idle(admin), admin.get("/api/admin/runs").json()["stats"]
    assert after["threads"] <= before["threads"] + THREAD_SLACK, (before, after)
    assert after["fds"] <= before["fds"] + FD_SLACK, (before, after)
    storm_client = engine.client("storm")
    assert storm_client.get("/api/me").json()["kv_pages"] == 0
    # The hang-ups were mid-stream: each generation was cut short of its 64 tokens.
    generations = storm.done["generate"] + storm.done["openai"]
    assert storm_client.get("/api/me").json()["usage"]["decode_tokens"] < 64 * generations / 4
    # And the engine still answers normally.
    r = storm_client.post("/api/generate", json={"prompt": "Hello", "max_tokens": 4})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
