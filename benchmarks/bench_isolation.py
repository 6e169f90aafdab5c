"""Isolation of the prefix cache, by timing: can tenant B tell that tenant A recently sent a prefix?

The engine's prefix cache is salted by tenant (``engine/kv.py``): a page is
found again only by its owner. If it were not, B could send a guessed prefix
and see from a faster time to first token that A's cache already held it, i.e.
learn A's prompt. This probe measures exactly that attack, on the real default
model. Every trial, A first sends a fresh secret prompt (``--prefix-tokens``
random token ids, page-aligned, plus a short suffix), then one measured request
of one of these classes, in random interleaved order, each with exactly
``--prefix-tokens + --suffix-tokens`` prompt tokens and ``max_tokens=1``:

  B-shared   B sends A's secret prefix + its own suffix    (the attack)
  B-fresh    B sends a fresh random prompt                  (B's baseline)
  A-repeat   A re-sends its secret prefix + a new suffix    (A's own reuse)
  A-fresh    A sends a fresh random prompt                  (A's baseline)

Time to first token (TTFT) is from the ``generate`` call to the first token
(the engine's ``first_token_at - created``); through HTTP it is the time of a
non-streamed ``POST /api/generate`` with ``max_tokens: 1``.

Isolation holds when B-shared and B-fresh are indistinguishable: a two-sample
Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``) gives no evidence of a
difference (p-value not small) and the ROC AUC of "faster means shared" (the
Mann-Whitney U statistic / n1 n2) is about 0.5. The probe has power: the same
statistics separate A-repeat from A-fresh (AUC about 1, a clear speed-up). The
engine's own counter (``cached_tokens``) is recorded too: 0 for every B request.

    .venv/bin/python benchmarks/bench_isolation.py            # in-process 40 + HTTP 20 per class (~4 min)
    .venv/bin/python benchmarks/bench_isolation.py --quick    # 12 per class, in-process only (~40 s)

Writes ``benchmarks/results/isolation_<device>.json`` and ``.png`` and prints
a markdown summary. The numbers are what was measured; nothing is adjusted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from common import begin, log, machine_info, save  # noqa: E402

CLASSES = ("B-shared", "B-fresh", "A-repeat", "A-fresh")
VOCAB_LO, VOCAB_HI = 1000, 40000
AUC_TOLERANCE = 0.15          # |AUC - 0.5| beyond this (or 2.5 sd of the AUC by chance, if larger) is a signal
KS_P_MIN = 0.01
AUC_REUSE_MIN = 0.9


def stats_for(shared: list[float], fresh: list[float]) -> dict:
    """KS test, ROC AUC of 'faster means the prefix was cached', medians and speed-up."""
    from scipy.stats import ks_2samp, mannwhitneyu
    ks = ks_2samp(shared, fresh)
    # U for `fresh` counts pairs where fresh > shared (+ half the ties): P(shared faster).
    u = mannwhitneyu(fresh, shared, alternative="two-sided")
    n1, n2 = len(shared), len(fresh)
    auc = float(u.statistic) / (n1 * n2)
    # The AUC's standard deviation when both samples come from one distribution (no ties).
    sd_null = ((n1 + n2 + 1) / (12 * n1 * n2)) ** 0.5
    return {"n": [n1, n2], "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "auc": auc, "auc_sd_if_indistinguishable": sd_null,
            "auc_tolerance": max(AUC_TOLERANCE, 2.5 * sd_null), "mannwhitney_pvalue": float(u.pvalue),
            "median_s": [statistics.median(shared), statistics.median(fresh)],
            "speedup_median": statistics.median(fresh) / statistics.median(shared)}


def trial_plan(n: int, seed: int) -> list[str]:
    plan = [c for c in CLASSES for _ in range(n)]
    random.Random(seed).shuffle(plan)
    return plan


class Prompts:
    def __init__(self, seed: int, prefix: int, suffix: int, page: int):
        assert prefix % page == 0, "the prefix must be whole pages so that it can be reused"
        self.rng = random.Random(seed)
        self.prefix, self.suffix = prefix, suffix

    def toks(self, n: int) -> list[int]:
        return [self.rng.randrange(VOCAB_LO, VOCAB_HI) for _ in range(n)]


def run_probe(send, prompts: Prompts, plan: list[str], label: str) -> dict:
    """``send(tenant, tokens) -> (ttft_s, cached_tokens)``. Returns every class's TTFTs and cached tokens."""
    out = {c: {"ttft_s": [], "cached_tokens": []} for c in CLASSES}
    p, s = prompts.prefix, prompts.suffix
    t0 = time.perf_counter()
    for i, cls in enumerate(plan):
        secret = prompts.toks(p)
        send("alice", secret + prompts.toks(s))            # A's recent prompt: its prefix is now cached (A's)
        if cls == "B-shared":
            tenant, tokens = "bob", secret + prompts.toks(s)
        elif cls == "B-fresh":
            tenant, tokens = "bob", prompts.toks(p + s)
        elif cls == "A-repeat":
            tenant, tokens = "alice", secret + prompts.toks(s)
        else:
            tenant, tokens = "alice", prompts.toks(p + s)
        ttft, cached = send(tenant, tokens)
        out[cls]["ttft_s"].append(ttft)
        out[cls]["cached_tokens"].append(cached)
        if (i + 1) % max(1, len(plan) // 4) == 0:
            log(f"{label}: {i + 1}/{len(plan)} trials ({time.perf_counter() - t0:.0f}s)")
    return out


def summarize(raw: dict) -> dict:
    b = stats_for(raw["B-shared"]["ttft_s"], raw["B-fresh"]["ttft_s"])
    a = stats_for(raw["A-repeat"]["ttft_s"], raw["A-fresh"]["ttft_s"])
    cached = {c: sum(raw[c]["cached_tokens"]) for c in CLASSES}
    return {
        "isolation_B_shared_vs_fresh": b,
        "reuse_A_repeat_vs_fresh": a,
        "cached_tokens_total": cached,
        "per_class": {c: {"n": len(raw[c]["ttft_s"]), "p50_s": statistics.median(raw[c]["ttft_s"]),
                          "mean_s": statistics.mean(raw[c]["ttft_s"]),
                          "ttft_s": [round(x, 5) for x in raw[c]["ttft_s"]],
                          "cached_tokens": raw[c]["cached_tokens"]} for c in CLASSES},
        "verdict": {
            "B_indistinguishable": b["ks_pvalue"] >= KS_P_MIN and abs(b["auc"] - 0.5) <= b["auc_tolerance"],
            "B_never_hit_cache": cached["B-shared"] == 0 and cached["B-fresh"] == 0,
            "A_reuse_detectable": a["auc"] >= AUC_REUSE_MIN,
        },
    }


# ----------------------------------------------------------------- sides
def in_process(args, plan: list[str]) -> tuple[dict, dict]:
    from potluck.engine.engine import Engine, EngineConfig
    eng = Engine(EngineConfig(model="default", kv_pages=args.kv_pages)).start()
    try:
        page = eng.pool.page_size
        info = {"model": eng.model_name, "profile": eng.profile.to_json(), "kv_pages": eng.pool.num_slots,
                "page_size": page}
        prompts = Prompts(1234, args.prefix_tokens, args.suffix_tokens, page)

        def send(tenant: str, tokens: list[int]) -> tuple[float, int]:
            g = eng.generate(tenant, tokens=tokens, max_tokens=1, ignore_eos=True)
            r = g.result(timeout=600)
            return g.first_token_at - g.created, r.cached_tokens
        for _ in range(2):      # warm-up, not measured
            send("warm", prompts.toks(args.prefix_tokens + args.suffix_tokens))
        hits0 = eng.pool.prefix_hits
        raw = run_probe(send, prompts, plan, "in-process")
        info["pool_prefix_hit_pages"] = eng.pool.prefix_hits - hits0
        return raw, info
    finally:
        eng.stop()


def over_http(args, plan: list[str]) -> tuple[dict, dict]:
    from support.engine_process import EngineProcess  # the tests' launcher (default model, 256 KV pages)
    with tempfile.TemporaryDirectory(prefix="potluck-bench-isolation-") as d:
        proc = EngineProcess(Path(d))
        t0 = time.perf_counter()
        proc.start()
        log(f"HTTP engine ready in {time.perf_counter() - t0:.1f}s at {proc.url}")
        try:
            clients = {t: proc.client(t) for t in ("alice", "bob", "warm")}
            status = proc.status()
            page = status["kv"]["page_size"]
            prompts = Prompts(4321, args.prefix_tokens, args.suffix_tokens, page)

            def send(tenant: str, tokens: list[int]) -> tuple[float, int]:
                t = time.perf_counter()
                r = clients[tenant].post("/api/generate", json={"tokens": tokens, "max_tokens": 1,
                                                                "ignore_eos": True, "temperature": 0})
                dt = time.perf_counter() - t
                if r.status_code != 200:
                    raise RuntimeError(f"POST /api/generate: {r.status_code} {r.text[:300]}")
                return dt, r.json()["usage"]["cached_tokens"]
            for _ in range(2):
                send("warm", prompts.toks(args.prefix_tokens + args.suffix_tokens))
            raw = run_probe(send, prompts, plan, "HTTP")
            return raw, {"profile": status["profile"], "kv_pages": status["kv"]["total_pages"], "page_size": page}
        finally:
            proc.stop()


# ---------------------------------------------------------------- output
def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [s for s in ("in_process", "http") if s in res["sides"]]
    fig, axes = plt.subplots(len(sides), 2, figsize=(13, 4.6 * len(sides)), squeeze=False)
    colors = {"B-shared": "C3", "B-fresh": "C0", "A-repeat": "C2", "A-fresh": "C7"}
    for row, side in zip(axes, sides):
        s = res["sides"][side]
        allx = [x for c in CLASSES for x in s["per_class"][c]["ttft_s"]]
        lo, hi = min(allx) * 1000, max(allx) * 1000
        bins = [lo + (hi - lo) * i / 40 for i in range(41)]
        for c in CLASSES:
            xs = [1000 * x for x in s["per_class"][c]["ttft_s"]]
            row[0].hist(xs, bins=bins, alpha=0.45, color=colors[c], label=f"{c} (median {statistics.median(xs):.0f} ms)")
            xs.sort()
            row[1].step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", color=colors[c], label=c)
        b, a = s["isolation_B_shared_vs_fresh"], s["reuse_A_repeat_vs_fresh"]
        row[0].set_title(f"{side}: TTFT, {res['config']['prefix_tokens']}-token shared prefix + "
                         f"{res['config']['suffix_tokens']} tokens, max_tokens=1")
        row[0].set_xlabel("time to first token (ms)")
        row[0].set_ylabel("requests")
        row[0].legend(fontsize=8)
        row[1].set_title(f"B shared vs fresh: KS p={b['ks_pvalue']:.2f}, AUC={b['auc']:.2f}   |   "
                         f"A repeat vs fresh: AUC={a['auc']:.2f}, {a['speedup_median']:.1f}x faster", fontsize=9)
        row[1].set_xlabel("time to first token (ms)")
        row[1].set_ylabel("CDF")
        row[1].legend(fontsize=8)
        for ax in row:
            ax.grid(alpha=0.3)
    fig.suptitle(f"Prefix-cache timing probe, {res['config']['model']} on {res['machine']['device_name']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(res: dict) -> str:
    lines = ["| path | n per class | B-shared / B-fresh median ms | KS p (B) | AUC (B) | B cached tokens | "
             "A-repeat / A-fresh median ms | A speed-up | AUC (A) | A-repeat cached tokens |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for side, s in res["sides"].items():
        b, a, pc = s["isolation_B_shared_vs_fresh"], s["reuse_A_repeat_vs_fresh"], s["per_class"]
        lines.append(
            f"| {side} | {pc['B-shared']['n']} | {1000 * b['median_s'][0]:.0f} / {1000 * b['median_s'][1]:.0f} | "
            f"{b['ks_pvalue']:.2f} | {b['auc']:.2f} | "
            f"{s['cached_tokens_total']['B-shared'] + s['cached_tokens_total']['B-fresh']} | "
            f"{1000 * a['median_s'][0]:.0f} / {1000 * a['median_s'][1]:.0f} | {a['speedup_median']:.2f}x | "
            f"{a['auc']:.2f} | {s['cached_tokens_total']['A-repeat']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="12 trials per class, in-process only")
    ap.add_argument("--n", type=int, default=None, help="trials per class (default 40, quick 12)")
    ap.add_argument("--prefix-tokens", type=int, default=320, help="the shared prefix (whole pages)")
    ap.add_argument("--suffix-tokens", type=int, default=16)
    ap.add_argument("--kv-pages", type=int, default=256)
    ap.add_argument("--no-http", action="store_true", help="skip the HTTP side")
    ap.add_argument("--http-n", type=int, default=None, help="trials per class through HTTP (default 20)")
    ap.add_argument("--out", default=None,
                    help="output path without extension (default results/isolation_<device>, _quick with --quick)")
    args = ap.parse_args(argv)
    n = args.n or (12 if args.quick else 40)
    http = not (args.no_http or args.quick)

    from potluck.engine.weights import DEFAULT_MODEL

    out, load_before, code = begin("isolation", args.out, args.quick)
    dev_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    t_start = time.perf_counter()

    sides = {}
    raw, info = in_process(args, trial_plan(n, seed=1))
    sides["in_process"] = {**summarize(raw), "engine": info}
    s = sides["in_process"]
    log(f"in-process: B shared vs fresh KS p={s['isolation_B_shared_vs_fresh']['ks_pvalue']:.3f} "
        f"AUC={s['isolation_B_shared_vs_fresh']['auc']:.3f}; A repeat vs fresh AUC="
        f"{s['reuse_A_repeat_vs_fresh']['auc']:.3f}, {s['reuse_A_repeat_vs_fresh']['speedup_median']:.2f}x")
    if http:
        raw, info = over_http(args, trial_plan(args.http_n or min(n, 20), seed=2))
        sides["http"] = {**summarize(raw), "engine": info}
        s = sides["http"]
        log(f"HTTP: B shared vs fresh KS p={s['isolation_B_shared_vs_fresh']['ks_pvalue']:.3f} "
            f"AUC={s['isolation_B_shared_vs_fresh']['auc']:.3f}; A repeat vs fresh AUC="
            f"{s['reuse_A_repeat_vs_fresh']['auc']:.3f}, {s['reuse_A_repeat_vs_fresh']['speedup_median']:.2f}x")

    result = {
        "benchmark": "prefix-cache timing probe: tenant B vs tenant A's cached prefix",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(load_before, device_name=dev_name),
        "code": code,
        "config": {"model": sides["in_process"]["engine"].get("model", DEFAULT_MODEL), "quick": args.quick, "n_per_class": n, "prefix_tokens": args.prefix_tokens,
                   "suffix_tokens": args.suffix_tokens, "max_tokens": 1, "classes": list(CLASSES),
                   "order": "random interleaved; A sends a fresh secret prompt before every trial"},
        "targets": {"B_ks_pvalue_min": KS_P_MIN,
                    "B_auc_within": f"0.5 +- max({AUC_TOLERANCE}, 2.5 x the AUC's sd by chance)",
                    "A_auc_min": AUC_REUSE_MIN},
        "targets_met": {side: s["verdict"] for side, s in sides.items()},
        "sides": sides,
        "total_seconds": time.perf_counter() - t_start,
    }
    save(out, result, lambda png: plot(result, png))
    print()
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
