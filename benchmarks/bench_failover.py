"""How long a user waits when their engine leaves the pool: a clean stop, and a crash.

Two ``potluck engine`` processes (the tests' ``EngineProcess`` launcher) form pool ``cpu`` on one
PostgreSQL (Debian's package, a throwaway cluster), at the default settings (`engine_stale_seconds`
6, the heartbeat every 2 s) except the launcher's small KV pool of 256 pages: two engines share this
machine, and the pool's size plays no part in a move (nothing is copied: saved contexts re-fill
from their tokens). Each user's time is end to end: from the signal to its next whole answer. Eight tenants, each with the
kernel's own client (``potluck.kernel.client.Client`` with ``$POTLUCK_POOLS``, as a notebook has
it), are pinned by rendezvous hashing; each keeps asking for 4 greedy tokens, one request after
another. Then engine ``a`` is stopped with SIGTERM (a clean stop: it marks itself stopped), started
again, its tenants wait until they are back, and it is killed with SIGKILL (a crash: the others
notice after ``engine_stale_seconds``, 6 s). Per tenant: the time from the signal to its first
answer from the other engine, and how many of its calls failed meanwhile (the call cut off by the
signal fails with one line; the next one moves); and the other engine's tenants' request latency
before and during the move.

    .venv/bin/python benchmarks/bench_failover.py          # ~2 min on 2 CPU cores

Writes ``benchmarks/results/failover_<device>.json`` and ``.png`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import begin, log, machine_info, save  # noqa: E402
from support.engine_process import Client as HTTPClient  # noqa: E402
from support.engine_process import EngineProcess  # noqa: E402  (the tests' engine launcher)
from support.postgres import PostgresServer  # noqa: E402

from potluck.engine.pools import POOLS_ENV, PoolMap, rendezvous_rank  # noqa: E402
from potluck.kernel.client import Client, PotluckError  # noqa: E402

ENGINES = ("a", "b")
TENANTS = [f"user{i}" for i in range(8)]


class Tenant(threading.Thread):
    """One user asking again and again; records when each answer came and from which engine."""

    def __init__(self, name: str, token: str, pools: PoolMap, home: str):
        super().__init__(daemon=True)
        os.environ.update({"POTLUCK_URL": pools.url(home), "JUPYTERHUB_USER": name})
        self.client = Client(token=token)         # the pool map comes from the environment
        self.name_ = name
        self.answers: list[tuple[float, float, str]] = []     # (sent, answered, engine url)
        self.failures: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                self.client.generate("Say the number 3.", max_tokens=4)
                self.answers.append((sent, time.monotonic(), self.client.url))
            except PotluckError as e:
                self.failures.append((time.monotonic(), str(e)))
                time.sleep(0.2)


def wait_routes(procs, tokens, want) -> None:
    deadline = time.monotonic() + 120
    for tenant, engine in want.items():
        while HTTPClient(procs["b"].url, tokens[tenant]).get("/api/me").json()["route"]["engine"] != engine:
            assert time.monotonic() < deadline, f"{tenant} never routed to {engine}"
            time.sleep(0.2)


def move(procs, tenants, kind: str) -> dict:
    """Signal engine a; each of a's tenants' time until answered by b."""
    url_b = procs["b"].url + "/"
    moved = [t for t in tenants if t.client.url == procs["a"].url + "/"]
    stayed = [t for t in tenants if t not in moved]
    time.sleep(3)
    t0 = time.monotonic()
    if kind == "clean stop":
        procs["a"].proc.send_signal(signal.SIGTERM)
    else:
        procs["a"].proc.send_signal(signal.SIGKILL)
    deadline = t0 + 60
    while any(not any(a[1] > t0 and a[2] == url_b for a in t.answers) for t in moved):
        assert time.monotonic() < deadline, "a tenant never moved"
        time.sleep(0.1)
    time.sleep(3)
    procs["a"].proc.wait(timeout=60)
    procs["a"].proc = None
    served = [min(a[1] for a in t.answers if a[1] > t0 and a[2] == url_b) - t0 for t in moved]
    before = [a[1] - a[0] for t in stayed for a in t.answers if t0 - 10 < a[0] < t0]
    during = [a[1] - a[0] for t in stayed for a in t.answers if t0 <= a[0] < t0 + max(served)]
    return {"kind": kind, "moved_tenants": len(moved),
            "seconds_to_served": {"each": [round(s, 3) for s in served], "median": round(statistics.median(served), 3),
                                  "max": round(max(served), 3)},
            "failed_calls_per_moved_tenant": [sum(1 for f in t.failures if f[0] > t0) for t in moved],
            "failure_lines": sorted({f[1] for t in moved for f in t.failures if f[0] > t0})[:4],
            "other_tenants_latency_s": {"before_median": round(statistics.median(before), 3) if before else None,
                                        "during_median": round(statistics.median(during), 3) if during else None,
                                        "during_failures": sum(1 for t in stayed for f in t.failures if f[0] > t0)}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="output path without suffix")
    args = ap.parse_args()
    out, load_before, code = begin("failover", args.out, quick=False)
    started = time.monotonic()
    pg = PostgresServer().start()
    tmp = Path(tempfile.mkdtemp(prefix="potluck-failover-"))
    procs = {}
    tenants: list[Tenant] = []
    try:
        url = pg.create_database()
        for name in ENGINES:
            (tmp / name).mkdir()
            procs[name] = EngineProcess(tmp / name, env={"POTLUCK_DB_URL": url},
                                        args=(f"--engine-name={name}", "--pool=cpu"))
        threads = [threading.Thread(target=p.start) for p in procs.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        from potluck.engine.store import Store
        store = Store(url)
        tokens = {n: store.create_token(n) for n in TENANTS}
        store.close()
        pools = PoolMap({"cpu": {n: procs[n].url + "/" for n in ENGINES}}, "cpu")
        os.environ[POOLS_ENV] = pools.to_json()
        homes = {n: rendezvous_rank(n, ENGINES)[0] for n in TENANTS}
        wait_routes(procs, tokens, homes)
        log(f"tenants on a: {sum(h == 'a' for h in homes.values())}, on b: {sum(h == 'b' for h in homes.values())}")
        results = []
        for kind in ("clean stop", "crash"):
            tenants = [Tenant(n, tokens[n], pools, homes[n]) for n in TENANTS]
            for t in tenants:
                t.start()
            results.append(move(procs, tenants, kind))
            log(f"{kind}: served again after median {results[-1]['seconds_to_served']['median']} s, "
                f"max {results[-1]['seconds_to_served']['max']} s")
            for t in tenants:
                t.stop.set()
            for t in tenants:
                t.join(timeout=120)
            if kind == "clean stop":
                procs["a"].start()
                wait_routes(procs, tokens, homes)
        result = {"benchmark": "failover", "engines": list(ENGINES), "tenants": len(TENANTS),
                  "engine_stale_seconds": 6, "results": results, "code": code,
                  "machine": machine_info(load_before), "total_seconds": time.monotonic() - started}
    finally:
        for t in tenants:
            t.stop.set()
        for p in procs.values():
            p.stop()
        pg.stop()

    def draw(path: Path) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for i, r in enumerate(results):
            each = r["seconds_to_served"]["each"]
            ax.scatter([i] * len(each), each, color="tab:blue")
            ax.bar(i, r["seconds_to_served"]["median"], color="tab:blue", alpha=0.3)
        ax.axhline(6, color="gray", linestyle="--", linewidth=1, label="engine_stale_seconds")
        ax.set_xticks(range(len(results)), [r["kind"] for r in results])
        ax.set_ylabel("seconds from the signal to served again")
        ax.set_title(f"A user's engine leaves the pool ({machine_info(load_before)['device']})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)

    save(out, result, draw)
    print("| engine leaves by | users moved | served again after (median / max) | failed calls per moved user | "
          "other users' latency before / during |")
    print("|---|---|---|---|---|")
    for r in results:
        o = r["other_tenants_latency_s"]
        print(f"| {r['kind']} | {r['moved_tenants']} | {r['seconds_to_served']['median']} s / "
              f"{r['seconds_to_served']['max']} s | {r['failed_calls_per_moved_tenant']} | "
              f"{o['before_median']} s / {o['during_median']} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
