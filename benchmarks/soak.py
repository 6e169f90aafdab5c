"""Soak: the real engine under hours-in-minutes of mixed use, watched for leaks.

For ``--minutes`` (10 by default) against one real ``potluck engine`` process (default model,
its own data dir, started with the tests' launcher ``tests/support/engine_process.py``):

- inferlet runs, ``--runs`` of them (20 a minute by default: 200 in 10 minutes), spread evenly
  over the time and over ``--tenants`` tenants (20): each fills a chat, generates 16 tokens and
  sends the text back; its owner follows it on the events WebSocket;
- the disconnect storm (``tests/support/faults.Storm``), all the time, ``--storm-threads`` (3) at once:
  a streaming ``/api/generate``, an OpenAI chat stream or a run's events socket is opened, its
  first chunk read and the TCP connection reset, over and over (about 110 a minute measured
  beside the runs on the shared 2-core CPU machine under a load of 5: ~1100 in 10 minutes;
  ``--storm-threads`` for more);
- every ``--every`` seconds (3): the engine's RSS (/proc/PID/status VmRSS), thread count, open
  fds, used KV pages and running generations.

At the end, after the engine has gone quiet, it checks: every run finished, no client saw an
error, KV pages are back to zero, threads and fds are back to the warm baseline (within a few),
and RSS is flat: the median of the last quarter of samples is within +10% of the median of the
first quarter (samples from the first eighth of the time, the warm-up, are left out).
Writes ``<out>.json`` and ``<out>.png`` (RSS, pages, threads over time); exits 1 if a check fails.

    .venv/bin/python benchmarks/soak.py                 # 10 minutes (make soak)
    .venv/bin/python benchmarks/soak.py --minutes 1     # a quick try
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common  # noqa: F401  (puts tests/ on sys.path, for support.* below)
from support.engine_process import EngineProcess
from support.faults import Storm, proc_stats, runs_idle, settle

from potluck.kernel.client import Client as KernelClient

ROOT = Path(__file__).resolve().parent.parent

INFERLET = """
from potluck_inferlet import Context, args, send
ctx = Context()
ctx.fill_chat([{"role": "user", "content": args["question"]}])
out = ctx.generate(max_tokens=16)
send({"text": out, "n": len(out.tokens)})
"""
QUESTIONS = ["Name a river.", "What is a KV cache?", "Give me a color.", "Say hello in French.",
             "What is two plus two?"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=None, help="inferlet runs in all (default: 20 a minute)")
    ap.add_argument("--tenants", type=int, default=20)
    ap.add_argument("--every", type=float, default=3.0, help="seconds between samples")
    ap.add_argument("--storm-threads", type=int, default=3, help="clients hanging up at the same time")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak_cpu"))
    args = ap.parse_args(argv)
    duration = args.minutes * 60
    n_runs = args.runs if args.runs is not None else round(20 * args.minutes)

    data_dir = Path(tempfile.mkdtemp(prefix="potluck-soak-"))
    proc = EngineProcess(data_dir)
    print(f"starting the engine ({data_dir})", flush=True)
    proc.start()
    ok = False
    try:
        result = soak(proc, duration, n_runs, args)
        ok = result == 0
        return result
    finally:
        code = proc.stop()
        if code != 0:
            print(f"the engine did not stop cleanly ({code}):\n{proc.log_tail()}", flush=True)
        elif ok:
            shutil.rmtree(data_dir, ignore_errors=True)     # kept (with engine.log) when something failed


def soak(proc: EngineProcess, duration: float, n_runs: int, args) -> int:
    admin = proc.client("soak-admin", admin=True)
    tenants = [f"soak-{i:02d}" for i in range(args.tenants)]
    for name in tenants:
        proc.token(name)
    # The storm leaves runs waiting a second each: more than the default 4 at once.
    admin.put("/api/admin/quotas/users/storm", json={"max_runs": 64}).raise_for_status()
    storms = [Storm(proc.url, proc.token("storm")) for _ in range(args.storm_threads)]
    storm = storms[0]
    errors: list[str] = []
    results: list[dict] = []
    samples: list[dict] = []
    stop = threading.Event()

    # The warm-up is the soak's load in small (runs 8 at a time beside the storm), so the request
    # thread pool and the database's connection pool reach their working size before the baseline.
    print("warm-up: 30 disconnects beside 8 concurrent runs", flush=True)
    with ThreadPoolExecutor(8) as pool:
        for i in range(8):
            pool.submit(one_run, proc, tenants[i % len(tenants)], i, results, errors)
        storm.run(30)
    storm.close()
    baseline, _ = settle(proc.status, proc.pid, lambda: runs_idle(admin))
    print(f"baseline {baseline}", flush=True)
    if errors:
        print(f"errors in the warm-up: {errors}", flush=True)
        return 1
    results.clear()
    storm.done = {k: 0 for k in storm.KINDS}

    def disconnects() -> dict:
        return {k: sum(st.done[k] for st in storms) for k in Storm.KINDS}

    t0 = time.monotonic()
    deadline = t0 + duration

    def sampler():
        while True:
            st, status = proc_stats(proc.pid), proc.status()
            samples.append({"t": round(time.monotonic() - t0, 2), **st, "used_pages": status["kv"]["used_pages"],
                            "running_generations": status["running_generations"],
                            "disconnects": sum(disconnects().values()), "runs_done": len(results)})
            if stop.wait(args.every):
                return

    def storm_loop(storm: Storm, i: int):
        while time.monotonic() < deadline:
            try:
                storm.one(storm.KINDS[i % 3])
            except Exception as e:          # noqa: BLE001 - counted, the soak goes on
                errors.append(f"storm {storm.KINDS[i % 3]}: {type(e).__name__}: {e}"[:300])
            i += 1
        storm.close()

    threads = [threading.Thread(target=sampler, daemon=True)]
    threads += [threading.Thread(target=storm_loop, args=(st, k), daemon=True) for k, st in enumerate(storms)]
    for t in threads:
        t.start()
    with ThreadPoolExecutor(8) as pool:
        for i in range(n_runs):
            wait = t0 + i * duration / max(1, n_runs) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            pool.submit(one_run, proc, tenants[i % len(tenants)], i, results, errors)
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
    for t in threads[1:]:
        t.join()
    after, status = settle(proc.status, proc.pid, lambda: runs_idle(admin), baseline, thread_slack=3, fd_slack=6)
    stop.set()
    threads[0].join()
    samples.append({"t": round(time.monotonic() - t0, 2), **after, "used_pages": status["kv"]["used_pages"],
                    "running_generations": status["running_generations"],
                    "disconnects": sum(disconnects().values()), "runs_done": len(results)})    # settled
    elapsed = time.monotonic() - t0
    return report(args, samples, baseline, after, status, disconnects(), results, errors, n_runs, elapsed)


def one_run(proc, tenant: str, i: int, results: list, errors: list) -> None:
    client = KernelClient(proc.url, proc.token(tenant), timeout=300)
    t = time.monotonic()
    try:
        run_id = client.start(INFERLET, {"question": QUESTIONS[i % len(QUESTIONS)]})
        res = client.follow(run_id)
        if res.state != "finished" or not res.messages or res.messages[-1].get("n", 0) < 1:
            errors.append(f"run {run_id} of {tenant}: {res.state} {res.error} {res.messages}"[:300])
        results.append({"tenant": tenant, "state": res.state, "seconds": round(time.monotonic() - t, 2),
                        "decode_tokens": res.usage.get("decode_tokens")})
    except Exception as e:          # noqa: BLE001
        errors.append(f"run of {tenant}: {type(e).__name__}: {e}"[:300])


def report(args, samples, baseline, after, status, done, results, errors, n_runs, elapsed) -> int:
    duration = args.minutes * 60
    steady = [s for s in samples if s["t"] >= duration / 8]
    q = max(1, len(steady) // 4)
    first = statistics.median(s["rss_kb"] for s in steady[:q]) if steady else 0
    last = statistics.median(s["rss_kb"] for s in steady[-q:]) if steady else 0
    growth = (last - first) / first if first else 0.0
    checks = {
        "every run finished": len(results) == n_runs and all(r["state"] == "finished" for r in results),
        "no client errors": not errors,
        "kv pages back to 0": status["kv"]["used_pages"] == 0 and status["running_generations"] == 0,
        "threads back to baseline (+3)": after["threads"] <= baseline["threads"] + 3,
        "fds back to baseline (+6)": after["fds"] <= baseline["fds"] + 6,
        "rss flat (last-quarter median within +10% of first-quarter)": bool(steady) and growth <= 0.10,
    }
    run_secs = sorted(r["seconds"] for r in results) or [0]
    out = {
        "minutes": args.minutes, "elapsed_s": round(elapsed, 1), "tenants": args.tenants,
        "runs": {"planned": n_runs, "done": len(results),
                 "finished": sum(r["state"] == "finished" for r in results),
                 "seconds_p50": run_secs[len(run_secs) // 2], "seconds_max": run_secs[-1]},
        "disconnects": dict(done, total=sum(done.values()), threads=args.storm_threads),
        "baseline": baseline, "after": after,
        "rss_kb": {"first_quarter_median": first, "last_quarter_median": last, "growth": round(growth, 4),
                   "max": max((s["rss_kb"] for s in samples), default=0)},
        "max_used_pages": max((s["used_pages"] for s in samples), default=0),
        "errors": errors[:50], "error_count": len(errors),
        "checks": checks, "ok": all(checks.values()), "samples": samples,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    plot(samples, args.out + ".png", out)
    print(json.dumps({k: v for k, v in out.items() if k != "samples"}, indent=1), flush=True)
    print(f"wrote {args.out}.json and .png: {'OK' if out['ok'] else 'FAILED'}", flush=True)
    return 0 if out["ok"] else 1


def plot(samples, path: str, out: dict) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", flush=True)
        return
    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    axes[0].plot(t, [s["rss_kb"] / 1024 for s in samples])
    axes[0].set_ylabel("engine RSS (MiB)")
    axes[1].plot(t, [s["used_pages"] for s in samples], label="used KV pages")
    axes[1].plot(t, [s["running_generations"] for s in samples], label="running generations")
    axes[1].legend(loc="upper right")
    axes[2].plot(t, [s["threads"] for s in samples], label="threads")
    axes[2].plot(t, [s["fds"] for s in samples], label="open fds")
    axes[2].legend(loc="upper right")
    axes[2].set_xlabel("minutes")
    fig.suptitle(f"Potluck soak: {out['runs']['done']} runs, {out['disconnects']['total']} disconnects, "
                 f"RSS growth {out['rss_kb']['growth']:+.1%}, {'OK' if out['ok'] else 'FAILED'}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
