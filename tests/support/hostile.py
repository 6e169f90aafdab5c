"""A hostile tenant's memory attacks on a real engine process, and what they leave behind.

``memory_attack`` runs, as one tenant over HTTP: ``runs`` inferlets that each print ``nbytes``
one byte at a time (each byte its own host call: before coalescing, one stored event per byte
and +260 MB of engine RSS per MiB), and ``floods`` inferlets that subscribe to 64 topics and
publish 60 KB messages until their output limit stops them. Before, it measures the engine's
RSS after a small warm-up of both; after, once the engine is quiet again, it measures it
again. The tests (``tests/faults/test_hostile_memory.py``) run it small; ``make soak``'s
``benchmarks/soak_hostile.py`` runs it as the issue asks (20 runs of 1 MiB each).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from .faults import proc_stats, runs_idle, settle

BYTE_AT_A_TIME = """
import sys
from potluck_inferlet import args
for i in range(args["n"]):
    sys.stdout.write("x")
    sys.stdout.flush()
"""
TOPIC_FLOOD = """
from potluck_inferlet import Topic
topics = [Topic(f"flood-{i}") for i in range(64)]
while True:
    for t in topics:
        t.publish("z" * 60000)
"""
DONE = ("finished", "failed", "cancelled")


def run_to_end(client, source: str, args: dict | None = None, timeout: float = 1800) -> dict:
    r = client.post("/api/runs", json={"source": source, "args": args or {}})
    r.raise_for_status()
    run_id = r.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        info = client.get(f"/api/runs/{run_id}").json()
        if info["state"] in DONE:
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not end in {timeout} s: {info}")
        time.sleep(0.5)


def memory_attack(proc, tenant: str = "hostile", *, runs: int = 20, nbytes: int = 1 << 20, floods: int = 4,
                  concurrency: int = 4) -> dict:
    """Run the attack; the engine's RSS before and after (KiB), and what each run ended with."""
    admin = proc.client("hostile-admin", admin=True)
    admin.put(f"/api/admin/quotas/users/{tenant}",
              json={"max_runs": concurrency, "run_output_bytes": max(nbytes, 1 << 20),
                    "max_run_seconds": 3600.0, "fuel_per_run": 1 << 40}).raise_for_status()
    me = proc.client(tenant)
    # Warm-up: both kinds of run once, small, so allocator pools and threads reach their working size.
    run_to_end(me, BYTE_AT_A_TIME, {"n": 4096})
    run_to_end(me, TOPIC_FLOOD)
    before, _ = settle(proc.status, proc.pid, lambda: runs_idle(admin))
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        jobs = [pool.submit(run_to_end, me, BYTE_AT_A_TIME, {"n": nbytes}) for _ in range(runs)]
        jobs += [pool.submit(run_to_end, me, TOPIC_FLOOD) for _ in range(floods)]
        ended = [j.result() for j in jobs]
    seconds = time.monotonic() - started
    after, _ = settle(proc.status, proc.pid, lambda: runs_idle(admin))
    peak = proc_stats(proc.pid)["rss_kb"]
    return {"runs": runs, "nbytes": nbytes, "floods": floods, "seconds": round(seconds, 1),
            "rss_kb_before": before["rss_kb"], "rss_kb_after": after["rss_kb"], "rss_kb_end": peak,
            "growth_mb": round((after["rss_kb"] - before["rss_kb"]) / 1024, 1),
            "printers": [(r["state"], r["events"], r["usage"].get("output_bytes")) for r in ended[:runs]],
            "floods_ended": [(r["state"], r["error"]) for r in ended[runs:]]}
