"""Fairness of the real engine: the VTC paper's scenarios, fair (VTC) vs FCFS in one run.

Sheng et al., "Fairness in Serving Large Language Models" (OSDI'24) measure a
fair scheduler by the service each client receives, where service is the
weighted token count the scheduler itself charges (here: prompt tokens x 1,
output tokens x 2, ``potluck.engine.scheduler.charge``). This benchmark runs
their scenarios on the product path: the real default model (SmolLM2-135M) in
an in-process ``Engine``, with a small per-step token budget so that the
engine, not the clients, is the bottleneck and backlogged tenants contend for
every step. Every scenario runs under both schedulers in the same process, on
the same engine (the scheduler object is swapped while the engine is idle):

  (a) backlog   two backlogged tenants, A sending twice as much as B (A keeps
                2k requests in flight, B k; both far above what a step holds):
                the accumulated service difference A - B over time, against
                the bound 2U, U = the largest single charge (one prefill chunk
                of at most ``budget`` tokens plus one sampled token).
  (b) noisy     a light tenant (one short request at a time, with think time):
                its time to first token alone, then beside a flooding tenant
                (many long requests in flight) under fair and under FCFS.
                Target: p99 beside the flood <= 2x p99 alone under fair.
  (c) idle      two backlogged tenants; one goes idle for a third of the run
                and comes back: its share after the return stays at its fair
                share (no banked credit). Shown against a VTC variant without
                the counter lift (``vtc-no-lift``), which banks the idle time.
  (d) weights   four backlogged tenants with weights 1:2:3:4: measured service
                shares against 0.1/0.2/0.3/0.4 (FCFS for contrast).

Clients of (a), (c), (d) and the flood of (b) resubmit from a generation
listener the moment a request finishes (on the engine's loop thread), so each
stays backlogged at every step; the light tenant of (b) is a plain client thread
calling ``engine.generate``. Prompts are random token ids, distinct per request,
so the prefix cache never helps. ``ignore_eos`` makes every request generate
exactly ``max_tokens`` tokens.

    .venv/bin/python benchmarks/bench_fairness.py            # full run (~4 min on 2 CPU cores)
    .venv/bin/python benchmarks/bench_fairness.py --quick    # smoke run (~1.5 min)

Writes ``benchmarks/results/fairness_<device>.json`` and ``.png`` and prints a
markdown summary. The numbers are what was measured; nothing is adjusted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from common import begin, log, machine_info, save  # noqa: E402

from potluck.engine.scheduler import OUTPUT_WEIGHT, FairScheduler, TenantQueue, make_scheduler  # noqa: E402

TTFT_TARGET_RATIO = 2.0
VOCAB_LO, VOCAB_HI = 1000, 40000       # ordinary tokens of SmolLM2's vocabulary


class NoLiftScheduler(FairScheduler):
    """VTC without the lift of a returning tenant's counter: idle time is banked as credit.

    Only for contrast in scenario (c); the engine never uses it.
    """
    policy = "vtc-no-lift"

    def add(self, req) -> None:
        self.counters.setdefault(req.tenant, 0.0)
        self.queues.setdefault(req.tenant, TenantQueue()).add(req)


def new_scheduler(policy: str) -> FairScheduler:
    return NoLiftScheduler() if policy == "vtc-no-lift" else make_scheduler(policy)


def pct(xs: list[float], q: float) -> float:
    """Percentile by linear interpolation (numpy's default)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ------------------------------------------------------------------ harness
class Run:
    """One scenario under one scheduler: swaps the scheduler in, samples service every step."""

    def __init__(self, eng, policy: str, tag: str, seed: int):
        self.eng = eng
        self.policy = policy
        self.tag = tag
        self.rng = random.Random(seed)
        self.samples: list[tuple[float, int, dict, float]] = []   # (t, step, service by tenant, forward s)
        self.stopping = False
        self.live: set = set()
        self.t0 = 0.0
        self._lock = threading.Lock()

    def name(self, tenant: str) -> str:
        return f"{self.tag}-{self.policy}-{tenant}"

    def prompt(self, n: int) -> list[int]:
        with self._lock:
            return [self.rng.randrange(VOCAB_LO, VOCAB_HI) for _ in range(n)]

    def __enter__(self) -> "Run":
        eng = self.eng

        def swap():
            assert eng.scheduler.depth() == 0, "the engine must be idle to swap its scheduler"
            eng.scheduler = eng.loop.scheduler = new_scheduler(self.policy)
        eng._call(swap)
        eng.step_listeners.append(self._on_step)
        self.t0 = time.perf_counter()
        return self

    def _on_step(self, info: dict) -> None:   # loop thread
        self.samples.append((time.perf_counter() - self.t0, self.eng.stats["steps"], dict(self.eng.scheduler.service),
                             info["seconds"]))

    def backlog(self, *specs: tuple[str, int, int, int]) -> list[dict]:
        """Keep ``inflight`` requests of each ``(tenant, inflight, prompt, max_tokens)`` queued or running.

        A finished request is replaced at once, on the loop thread, so the tenant stays backlogged.
        Every tenant's first requests join the queue in one loop command: the same step, so no
        tenant gets steps alone before the others arrive. Returns a state per tenant (set
        ``["stopped"] = True`` to stop replacing its requests).
        """
        states = []
        submits = []
        for tenant, inflight, prompt, max_tokens in specs:
            name = self.name(tenant)
            self.eng.tenant(name)
            state = {"stopped": False}
            states.append(state)
            f = self._submitter(name, prompt, max_tokens, state)
            # Interleaved by rate (A, B, A, A, B, ...), as requests sent at these rates would arrive.
            submits += [((i + 0.5) / inflight, len(states), f) for i in range(inflight)]
        submits.sort(key=lambda x: (x[0], x[1]))
        self.eng._call(lambda: [f() for _, _, f in submits])
        return states

    def _submitter(self, name: str, prompt: int, max_tokens: int, state: dict):
        """A function that starts one request of ``name`` which, when it ends, starts the next."""
        def submit():
            if self.stopping or state["stopped"]:
                return
            box = {}

            def on_event(ev):
                if ev is None:
                    self.live.discard(box["g"])
                    submit()
            g = self.eng.generate(name, tokens=self.prompt(prompt), max_tokens=max_tokens, ignore_eos=True,
                                  listener=on_event)
            box["g"] = g
            self.live.add(g)
        return submit

    def service(self, tenant: str, sample) -> float:
        return sample[2].get(self.name(tenant), 0.0)

    def cancel(self, name: str) -> None:
        """Cancel every live request of tenant ``name`` in one loop command (as clients hanging up)."""
        def cancel_all():
            for g in list(self.live):
                if g.tenant == name and not g.done:
                    g.cancel()   # on the loop thread: at once
        self.eng._call(cancel_all)

    def stop(self) -> None:
        """Cancel everything still running in one loop command (``Generation.cancel`` costs a step each)."""
        self.stopping = True
        eng = self.eng

        def cancel_all():
            for g in list(self.live):
                if not g.done:
                    g.cancel()
            return eng.scheduler.depth(), len(eng._generations)
        deadline = time.time() + 120
        while eng._call(cancel_all) != (0, 0) and time.time() < deadline:
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.stop()
        self.eng.step_listeners.remove(self._on_step)


def run_for(seconds: float) -> None:
    time.sleep(seconds)


# ------------------------------------------------------------ (a) backlog
def scenario_backlog(eng, policy: str, seconds: float, k: int, prompt: int, max_tokens: int, bound: float) -> dict:
    with Run(eng, policy, "a", seed=11) as run:
        run.backlog(("A", 2 * k, prompt, max_tokens), ("B", k, prompt, max_tokens))
        run_for(seconds)
    t = [s[0] for s in run.samples]
    sa = [run.service("A", s) for s in run.samples]
    sb = [run.service("B", s) for s in run.samples]
    diff = [a - b for a, b in zip(sa, sb)]
    total = sa[-1] + sb[-1]
    return {
        "policy": policy, "seconds": seconds, "steps": len(t),
        "service_A": sa[-1], "service_B": sb[-1], "share_A": sa[-1] / total if total else None,
        "max_abs_diff": max(abs(d) for d in diff), "final_diff": diff[-1],
        "within_bound": max(abs(d) for d in diff) <= bound,
        "steps_over_bound": sum(abs(d) > bound for d in diff),
        "service_per_s": total / t[-1] if t else None,
        "series": {"t": [round(x, 3) for x in t], "diff": diff, "A": sa, "B": sb},
    }


# ---------------------------------------------------------- (b) noisy neighbour
def light_client(run: Run, seconds: float, prompt: int, max_tokens: int, think: tuple[float, float]) -> list[dict]:
    """One request at a time, think time between them; TTFT from the call to the first token."""
    eng, name = run.eng, run.name("light")
    eng.tenant(name)
    out = []
    end = time.perf_counter() + seconds
    rng = random.Random(7)
    while time.perf_counter() < end:
        first_step = {}

        def on_event(ev, first_step=first_step):
            if ev is not None and "step" not in first_step:
                first_step["step"] = eng.stats["steps"]
        g = eng.generate(name, tokens=run.prompt(prompt), max_tokens=max_tokens, ignore_eos=True, listener=on_event)
        admitted = eng.stats["steps"]
        g.result(timeout=600)
        out.append({"ttft_s": g.first_token_at - g.created,
                    "ttft_steps": first_step.get("step", admitted) - admitted})
        time.sleep(rng.uniform(*think))
    return out


def ttft_summary(rows: list[dict]) -> dict:
    xs = [r["ttft_s"] for r in rows]
    st = [r["ttft_steps"] for r in rows]
    return {"n": len(xs), "p50_s": pct(xs, 50), "p90_s": pct(xs, 90), "p99_s": pct(xs, 99), "max_s": max(xs),
            "mean_s": statistics.mean(xs), "p50_steps": pct(st, 50), "p99_steps": pct(st, 99), "max_steps": max(st),
            "ttft_s": [round(x, 4) for x in xs], "ttft_steps": st}


def scenario_noisy(eng, policy: str | None, seconds: float, light: dict, flood: dict) -> dict:
    with Run(eng, policy or "fair", "b" if policy else "b-alone", seed=22) as run:
        if policy is not None:
            run.backlog(("flood", flood["inflight"], flood["prompt"], flood["max_tokens"]))
            time.sleep(0.5)                     # let the flood fill the queue first
        rows = light_client(run, seconds, light["prompt"], light["max_tokens"], light["think"])
    steps = [s for s in run.samples]
    step_ms = None
    if len(steps) > 1:
        step_ms = 1000 * (steps[-1][0] - steps[0][0]) / (len(steps) - 1)
    fwd = [1000 * s[3] for s in steps]
    return {"policy": policy or "alone", "seconds": seconds, "steps": len(steps), "mean_step_wall_ms": step_ms,
            "forward_ms_p50": pct(fwd, 50) if fwd else None, "forward_ms_p99": pct(fwd, 99) if fwd else None,
            "light_service": run.service("light", steps[-1]) if steps else 0.0,
            "flood_service": run.service("flood", steps[-1]) if steps else 0.0,
            **ttft_summary(rows)}


# ------------------------------------------------------------- (c) idle/return
def scenario_idle(eng, policy: str, seconds: float, k: int, prompt: int, max_tokens: int, window: int) -> dict:
    """C1 and C2 backlogged; C2 leaves (its requests cancelled) at 1/3 of the run and comes back at 2/3.

    Shares per ``window`` steps.
    """
    leave, back = seconds / 3, 2 * seconds / 3
    with Run(eng, policy, "c", seed=33) as run:
        _, c2 = run.backlog(("C1", k, prompt, max_tokens), ("C2", k, prompt, max_tokens))
        run_for(leave)
        c2["stopped"] = True                        # C2 leaves: its clients stop and hang up
        run.cancel(run.name("C2"))
        run_for(back - leave)
        t_back = time.perf_counter() - run.t0
        run.backlog(("C2", k, prompt, max_tokens))  # back, as many in flight as before
        run_for(seconds - back)
    t = [s[0] for s in run.samples]
    s1 = [run.service("C1", s) for s in run.samples]
    s2 = [run.service("C2", s) for s in run.samples]

    def share(i: int, j: int) -> float | None:
        d1, d2 = s1[j] - s1[i], s2[j] - s2[i]
        return d2 / (d1 + d2) if d1 + d2 > 0 else None
    # C2's share of the service in consecutive blocks of `window` steps.
    share_t, shares = [], []
    for i in range(0, len(t) - window, window):
        x = share(i, i + window)
        if x is not None:
            share_t.append(round((t[i] + t[i + window]) / 2, 3))
            shares.append(x)
    ib = next((n for n, x in enumerate(t) if x >= t_back), len(t) - 1)
    il = next((n for n, x in enumerate(t) if x >= leave), 0)
    last = len(t) - 1
    return {
        "policy": policy, "seconds": seconds, "steps": len(t), "left_at_s": leave, "returned_at_s": t_back,
        "window_steps": window,
        "share_C2_before_leaving": share(0, il) if il else None,
        "share_C2_first_window_after_return": share(ib, min(ib + window, last)) if ib < last else None,
        "share_C2_after_return": share(ib, last) if ib < last else None,
        "share_C2_second_half_after_return": share((ib + last) // 2, last) if ib < last else None,
        "steps_after_return": last - ib,
        "series": {"t": share_t, "share_C2": shares},
    }


# ------------------------------------------------------------- (d) weights
def scenario_weights(eng, policy: str, seconds: float, k: int, prompt: int, max_tokens: int,
                     weights: list[float]) -> dict:
    with Run(eng, policy, "d", seed=44) as run:
        for i, w in enumerate(weights):
            eng.set_user_override(run.name(f"w{i + 1}"), {"weight": w}, actor="bench_fairness")
        run.backlog(*[(f"w{i + 1}", k, prompt, max_tokens) for i in range(len(weights))])
        run_for(seconds)
    last = run.samples[-1]
    svc = [run.service(f"w{i + 1}", last) for i in range(len(weights))]
    # Skip the first tenth of the run (all tenants' first prompts) for the steady share too.
    skip = next((s for s in run.samples if s[0] >= seconds / 10), run.samples[0])
    steady = [a - run.service(f"w{i + 1}", skip) for i, a in enumerate(svc)]
    ideal = [w / sum(weights) for w in weights]
    share = [x / sum(svc) for x in svc]
    steady_share = [x / sum(steady) for x in steady]
    return {"policy": policy, "seconds": seconds, "steps": len(run.samples), "weights": weights,
            "service": svc, "share": share, "steady_share": steady_share, "ideal": ideal,
            "max_abs_share_error": max(abs(a - b) for a, b in zip(share, ideal)),
            "max_rel_share_error": max(abs(a - b) / b for a, b in zip(share, ideal))}


# ----------------------------------------------------------------- output
def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    cfg = res["config"]
    # (a)
    if not res["backlog"]:
        axes[0][0].set_visible(False)
    else:
        ax = axes[0][0]
        bound = cfg["bound_2U"]
        for r, color in zip(res["backlog"], ("C0", "C3")):
            s = r["series"]
            ax.plot(s["t"], s["diff"], color=color, label=f"{r['policy']} (max |diff| {r['max_abs_diff']:.0f})")
        ax.axhline(bound, color="k", ls="--", lw=1, label=f"bound 2U = {bound:.0f}")
        ax.axhline(-bound, color="k", ls="--", lw=1)
        ax.set_yscale("symlog", linthresh=max(1.0, bound))
        ax.set_xlabel("time (s)")
        ax.set_ylabel("service(A) - service(B)  [weighted tokens]")
        ax.set_title(f"(a) two backlogged tenants, A sends 2x B ({cfg['backlog']['k'] * 2} vs {cfg['backlog']['k']} in flight)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    # (b)
    if not res["noisy"]:
        axes[0][1].set_visible(False)
    else:
        ax = axes[0][1]
        for r, color in zip(res["noisy"], ("C2", "C0", "C3")):
            xs = sorted(r["ttft_s"])
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step([1000 * x for x in xs], ys, where="post", color=color, marker="o", ms=3,
                    label=f"{r['policy']}: p50 {1000 * r['p50_s']:.0f} ms, p99 {1000 * r['p99_s']:.0f} ms (n={r['n']})")
        alone = res["noisy"][0]
        ax.axvline(1000 * TTFT_TARGET_RATIO * alone["p99_s"], color="k", ls="--", lw=1,
                   label=f"target: {TTFT_TARGET_RATIO:g}x p99 alone")
        ax.set_xscale("log")
        ax.set_xlabel("light tenant's time to first token (ms)")
        ax.set_ylabel("CDF")
        ax.set_title("(b) noisy neighbour: light tenant alone / beside a flood")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    # (c)
    if not res["idle"]:
        axes[1][0].set_visible(False)
    else:
        ax = axes[1][0]
        for r, color in zip(res["idle"], ("C0", "C1")):
            ax.plot(r["series"]["t"], r["series"]["share_C2"], "o-", ms=3, color=color,
                    label=f"{r['policy']}: share after return {r['share_C2_after_return']:.2f}")
        r0 = res["idle"][0]
        ax.axvspan(r0["left_at_s"], r0["returned_at_s"], color="grey", alpha=0.15, label="C2 idle")
        ax.axhline(0.5, color="k", ls="--", lw=1, label="fair share 0.5")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("C2's share of the service (per window)")
        ax.set_title("(c) a tenant goes idle and returns: no banked credit")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    # (d)
    if not res["weights"]:
        axes[1][1].set_visible(False)
    else:
        ax = axes[1][1]
        ws = res["weights"][0]["weights"]
        x = list(range(len(ws)))
        width = 0.8 / (len(res["weights"]) + 1)
        ax.bar([i - width * len(res["weights"]) / 2 for i in x], res["weights"][0]["ideal"], width, color="lightgrey",
               label="ideal w / sum(w)")
        for n, (r, color) in enumerate(zip(res["weights"], ("C0", "C3"))):
            ax.bar([i - width * len(res["weights"]) / 2 + width * (n + 1) for i in x], r["share"], width, color=color,
                   label=f"{r['policy']} (max error {r['max_abs_share_error']:.3f})")
        ax.set_xticks(x)
        ax.set_xticklabels([f"weight {w:g}" for w in ws])
        ax.set_ylabel("share of the service")
        ax.set_title("(d) four backlogged tenants, weights 1:2:3:4")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Potluck fairness, {res['config']['model']} on {res['machine']['device_name']} "
                 f"(budget {cfg['batch_token_budget']} tok/step, {cfg['max_batch_seqs']} seqs/step)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(res: dict) -> str:
    cfg = res["config"]
    lines: list[str] = []
    if res["backlog"]:
        lines += summary_a(res, cfg)
    if res["noisy"]:
        lines += summary_b(res)
    if res["idle"]:
        lines += summary_c(res)
    if res["weights"]:
        lines += summary_d(res)
    return "\n".join(lines)


def summary_a(res: dict, cfg: dict) -> list[str]:
    lines = ["### (a) two backlogged tenants, A sends 2x B", "",
             f"Bound 2U = {cfg['bound_2U']:.0f} weighted tokens (U = {cfg['U']:.0f}).", "",
             "| scheduler | steps | service A / B | share A | max abs(A - B) | final A - B | within 2U |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in res["backlog"]:
        lines.append(f"| {r['policy']} | {r['steps']} | {r['service_A']:.0f} / {r['service_B']:.0f} | "
                     f"{r['share_A']:.3f} | {r['max_abs_diff']:.0f} | {r['final_diff']:.0f} | "
                     f"{'yes' if r['within_bound'] else 'no'} |")
    return lines + [""]


def summary_b(res: dict) -> list[str]:
    lines = ["### (b) noisy neighbour: the light tenant's time to first token", "",
              "| light tenant | n | p50 ms | p90 ms | p99 ms | p99 / p99 alone | p50 / p99 steps waited | "
              "forward step p50 / p99 ms |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    alone = res["noisy"][0]
    for r in res["noisy"]:
        lines.append(f"| {r['policy'] if r['policy'] == 'alone' else 'beside flood, ' + r['policy']} | {r['n']} | "
                     f"{1000 * r['p50_s']:.0f} | {1000 * r['p90_s']:.0f} | {1000 * r['p99_s']:.0f} | "
                     f"{r['p99_s'] / alone['p99_s']:.2f}x | {r['p50_steps']:.0f} / {r['p99_steps']:.0f} | "
                     f"{r['forward_ms_p50']:.0f} / {r['forward_ms_p99']:.0f} |")
    lines += ["", f"Target: p99 beside the flood <= {TTFT_TARGET_RATIO:g}x p99 alone under fair: "
              f"**{'met' if res['targets_met']['noisy_p99_ratio_fair'] else 'not met'}** "
              f"({res['noisy_ratios']['fair']:.2f}x; FCFS {res['noisy_ratios']['fcfs']:.2f}x)."]
    return lines + [""]


def summary_c(res: dict) -> list[str]:
    lines = ["### (c) a tenant goes idle and returns", "",
              f"Windows of {res['idle'][0]['window_steps']} steps.", "",
              "| scheduler | C2 share before leaving | C2 share, first window after return | "
              "C2 share, whole time after return | steps after return |",
              "|---|---:|---:|---:|---:|"]
    for r in res["idle"]:
        lines.append(f"| {r['policy']} | {r['share_C2_before_leaving']:.3f} | "
                     f"{r['share_C2_first_window_after_return']:.3f} | {r['share_C2_after_return']:.3f} | "
                     f"{r['steps_after_return']} |")
    return lines + [""]


def summary_d(res: dict) -> list[str]:
    lines = ["### (d) weights 1:2:3:4", "",
              "| scheduler | " + " | ".join(f"w={w:g}" for w in res["weights"][0]["weights"]) + " | max abs error |",
              "|---|" + "---:|" * (len(res["weights"][0]["weights"]) + 1)]
    lines.append("| ideal | " + " | ".join(f"{x:.3f}" for x in res["weights"][0]["ideal"]) + " | |")
    for r in res["weights"]:
        lines.append(f"| {r['policy']} | " + " | ".join(f"{x:.3f}" for x in r["share"]) +
                     f" | {r['max_abs_share_error']:.3f} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short phases (a smoke run, ~1.5 min)")
    ap.add_argument("--scale", type=float, default=None, help="multiply every phase's duration (default 1, quick 0.35)")
    ap.add_argument("--budget", type=int, default=64, help="engine batch_token_budget (tokens per step)")
    ap.add_argument("--max-seqs", type=int, default=16, help="engine max_batch_seqs")
    ap.add_argument("--kv-pages", type=int, default=512)
    ap.add_argument("--scenarios", nargs="+", choices=("a", "b", "c", "d"), default=["a", "b", "c", "d"],
                    help="which scenarios to run (default all)")
    ap.add_argument("--out", default=None,
                    help="output path without extension (default results/fairness_<device>, _quick with --quick)")
    args = ap.parse_args(argv)
    scale = args.scale if args.scale is not None else (0.35 if args.quick else 1.0)

    from potluck.engine.engine import Engine, EngineConfig
    from potluck.engine.quota import Quota

    out, load_before, code = begin("fairness", args.out, args.quick)
    dev_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    t_start = time.perf_counter()

    # The engine is the bottleneck: a small token budget per step; no per-tenant request cap.
    config = EngineConfig(model="default", kv_pages=args.kv_pages, scheduler="fair",
                          profile_overrides={"batch_token_budget": args.budget, "max_batch_seqs": args.max_seqs},
                          default_quota=Quota(max_concurrent_requests=None, max_tokens_per_request=None))
    t0 = time.perf_counter()
    eng = Engine(config).start()
    log(f"engine ready in {time.perf_counter() - t0:.1f}s: {eng.model_name} on {eng.device.name}, "
        f"budget {args.budget} tok/step, {args.max_seqs} seqs/step, {eng.pool.num_slots} KV pages")

    # Workloads. Charges: a request of P prompt tokens and T new tokens costs P + 2T.
    bk = {"k": 16, "prompt": 48, "max_tokens": 16}
    light = {"prompt": args.budget, "max_tokens": 4, "think": (0.05, 0.25)}  # one step's worth
    flood = {"inflight": 16, "prompt": 128, "max_tokens": 16}
    # Prefill-heavy, so that a tenant with priority can always fill a whole step (banked credit would show).
    idle = {"k": 8, "prompt": 96, "max_tokens": 4, "window": 8}
    wts = {"k": 16, "prompt": 48, "max_tokens": 16, "weights": [1.0, 2.0, 3.0, 4.0]}
    U = min(max(bk["prompt"], 1), args.budget) + OUTPUT_WEIGHT   # the largest single charge in (a)
    bound = 2 * U
    dur = {"backlog": 24 * scale, "noisy_alone": 15 * scale, "noisy": 24 * scale, "idle": 30 * scale,
           "weights": 24 * scale, "weights_fcfs": 12 * scale}

    res: dict = {"backlog": [], "noisy": [], "idle": [], "weights": []}
    try:
        # Warm-up: a few requests, not measured.
        with Run(eng, "fair", "warm", seed=1) as run:
            gs = [eng.generate(run.name("w"), tokens=run.prompt(64), max_tokens=4, ignore_eos=True) for _ in range(4)]
            for g in gs:
                g.result(timeout=600)
        for policy in ("fair", "fcfs") if "a" in args.scenarios else ():
            r = scenario_backlog(eng, policy, dur["backlog"], bk["k"], bk["prompt"], bk["max_tokens"], bound)
            res["backlog"].append(r)
            log(f"(a) backlog  {policy:5s}: {r['steps']} steps, service A {r['service_A']:.0f} B {r['service_B']:.0f} "
                f"(share A {r['share_A']:.3f}), max |A-B| {r['max_abs_diff']:.0f} (bound {bound:.0f})")
        for policy in ("alone", "fair", "fcfs") if "b" in args.scenarios else ():
            r = scenario_noisy(eng, None if policy == "alone" else policy,
                               dur["noisy_alone" if policy == "alone" else "noisy"], light, flood)
            res["noisy"].append(r)
            if policy == "alone":
                log(f"(b) noisy    alone: n={r['n']} TTFT p50 {1000 * r['p50_s']:.0f} ms p99 {1000 * r['p99_s']:.0f} ms "
                    f"(steps p50 {r['p50_steps']:.0f} p99 {r['p99_steps']:.0f})")
            else:
                log(f"(b) noisy    {policy:5s}: n={r['n']} TTFT p50 {1000 * r['p50_s']:.0f} ms p99 "
                    f"{1000 * r['p99_s']:.0f} ms = {r['p99_s'] / res['noisy'][0]['p99_s']:.2f}x alone (steps p50 "
                    f"{r['p50_steps']:.0f} p99 {r['p99_steps']:.0f}; mean step {r['mean_step_wall_ms'] or 0:.0f} ms)")
        for policy in ("fair", "vtc-no-lift") if "c" in args.scenarios else ():
            r = scenario_idle(eng, policy, dur["idle"], idle["k"], idle["prompt"], idle["max_tokens"], idle["window"])
            res["idle"].append(r)
            log(f"(c) idle     {policy:11s}: C2's share after its return: first {idle['window']} steps "
                f"{r['share_C2_first_window_after_return']:.3f}, whole rest {r['share_C2_after_return']:.3f}")
        for policy, seconds in (("fair", dur["weights"]), ("fcfs", dur["weights_fcfs"])) if "d" in args.scenarios else ():
            r = scenario_weights(eng, policy, seconds, wts["k"], wts["prompt"], wts["max_tokens"], wts["weights"])
            res["weights"].append(r)
            log(f"(d) weights  {policy:5s}: shares {' '.join(f'{x:.3f}' for x in r['share'])} "
                f"(ideal {' '.join(f'{x:.2f}' for x in r['ideal'])}), max error {r['max_abs_share_error']:.3f}")
        prof = eng.profile.to_json()
    finally:
        eng.stop()

    ratios = {r["policy"]: r["p99_s"] / res["noisy"][0]["p99_s"] for r in res["noisy"][1:]}
    fair_a = next((r for r in res["backlog"] if r["policy"] == "fair"), None)
    fair_c = next((r for r in res["idle"] if r["policy"] == "fair"), None)
    fair_d = next((r for r in res["weights"] if r["policy"] == "fair"), None)
    result = {
        "benchmark": "fairness: VTC paper scenarios on the real engine, fair vs FCFS",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(load_before, device_name=dev_name, torch_threads=torch.get_num_threads()),
        "code": code,
        "config": {"model": eng.model_name, "quick": args.quick, "scale": scale, "durations_s": dur,
                   "batch_token_budget": args.budget, "max_batch_seqs": args.max_seqs, "kv_pages": args.kv_pages,
                   "engine_profile": prof, "service": "scheduler.service: prompt tokens x1 + output tokens x2",
                   "U": U, "bound_2U": bound, "backlog": bk, "noisy_light": light, "noisy_flood": flood,
                   "idle": idle, "weights": wts},
        "targets": {"backlog_max_abs_diff_fair": f"<= 2U = {bound:g}",
                    "noisy_p99_ratio_fair": f"<= {TTFT_TARGET_RATIO:g}",
                    "idle_share_after_return_fair": "about 0.5, not above",
                    "weights_share": "0.1 / 0.2 / 0.3 / 0.4"},
        "targets_met": {   # None: scenario not run
            "backlog_within_2U_fair": fair_a["within_bound"] if fair_a else None,
            "noisy_p99_ratio_fair": ratios["fair"] <= TTFT_TARGET_RATIO if "fair" in ratios else None,
            "idle_no_banked_credit_fair": (fair_c["share_C2_after_return"] or 1) <= 0.6 if fair_c else None,
            "weights_within_0.02_fair": fair_d["max_abs_share_error"] <= 0.02 if fair_d else None,
        },
        "noisy_ratios": ratios,
        "backlog": res["backlog"], "noisy": res["noisy"], "idle": res["idle"], "weights": res["weights"],
        "total_seconds": time.perf_counter() - t_start,
    }
    save(out, result, lambda png: plot(result, png))
    print()
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
