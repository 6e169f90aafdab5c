"""Throughput of the Potluck engine against the two things people use instead.

For N concurrent sequences (distinct ~100-token prompts, 64 greedy new tokens
each, all of them forced to make exactly that many tokens) this measures, in
one process, on the same prompts:

  (a) engine          the Potluck engine: N ``engine.generate`` calls started at
                      once over 4 tenants, all batched by its loop;
  (b) sequential      the status quo: ``model.generate`` for one request after
                      the other (for N > 4 a few are timed and the rest
                      extrapolated linearly; the JSON says from how many);
  (c) generate_batch  transformers' own continuous batching
                      (``model.generate_batch``, paged KV cache).

It reports generated tokens per second (N * new_tokens / wall time), the ratios
engine/sequential and engine/generate_batch, mean time to first token, and the
engine's step times; it writes ``<out>.json`` and a plot ``<out>.png`` and
prints a markdown table.

    .venv/bin/python benchmarks/bench_engine.py                       # N = 1 4 16 32 64
    .venv/bin/python benchmarks/bench_engine.py --n 1 4 --new-tokens 8 # smoke run

Targets (from the issue) at N=32 on a CPU: engine >= 2x generate_batch and
>= 7x sequential. The numbers are what was measured; nothing is adjusted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from common import build_prompts, code_version, log, machine_info, quiet_logs, run_generate_batch, save

TENANTS = 4
TARGET_N = 32
TARGET_VS_BATCH = 2.0
TARGET_VS_SEQUENTIAL = 7.0
SEQUENTIAL_MAX_TIMED = 4
# Measured earlier on this machine (tokens/s), for the plot and the README.
REFERENCE = {
    "sequential_generate": {"1": 16, "4": 16, "16": 16, "32": 16},
    "generate_batch": {"1": 10, "4": 23, "16": 53, "32": 56},
    "paged_prototype": {"1": 17, "4": 41, "16": 95, "32": 131},
}

def load(which: str):
    from potluck.engine.weights import load_model
    t0 = time.perf_counter()
    lm = load_model("default", torch.float32, "cpu")
    log(f"loaded model for {which} in {time.perf_counter() - t0:.1f}s "
        f"(attn={lm.model.config._attn_implementation})")
    return lm


# --------------------------------------------------------------- (a) engine
def run_engine(engine, prompts: list[list[int]], new_tokens: int, submit: str = "threads") -> dict:
    """N generations started at once; tokens/s over the wall time from the start to the last result.

    ``submit="threads"``: one client thread per request, released together (N concurrent
    callers, as N users or N HTTP requests would be). ``submit="loop"``: one thread calls
    ``generate`` N times in a row; each call waits for the batch loop to take it, which the loop
    does between forward steps, so a burst from one thread is admitted about one request per step.
    """
    step_times: list[tuple[int, int, float]] = []
    lock = threading.Lock()

    def on_step(info: dict) -> None:
        with lock:
            step_times.append((info["seqs"], info["tokens"], info["seconds"]))

    def start(i: int):
        return engine.generate(f"tenant{i % TENANTS}", tokens=prompts[i], max_tokens=new_tokens, ignore_eos=True)

    engine.step_listeners.append(on_step)
    steps0 = engine.stats["steps"]
    try:
        if submit == "threads":
            gens: list = [None] * len(prompts)
            gate = threading.Barrier(len(prompts) + 1)
            errors: list[BaseException] = []

            def client(i: int) -> None:
                gate.wait()
                try:
                    gens[i] = start(i)
                except BaseException as e:     # reported below, on the main thread
                    errors.append(e)
            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(prompts))]
            for t in threads:
                t.start()
            t0 = time.time()
            gate.wait()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
        else:
            t0 = time.time()
            gens = [start(i) for i in range(len(prompts))]
        submitted = time.time() - t0
        results = [g.result(timeout=3600) for g in gens]
        wall = time.time() - t0
    finally:
        engine.step_listeners.remove(on_step)
    steps = engine.stats["steps"] - steps0
    for r in results:
        if len(r.tokens) != new_tokens or r.finish_reason != "length":
            raise AssertionError(f"engine made {len(r.tokens)} tokens ({r.finish_reason}), wanted {new_tokens}")
    # From the moment all requests were started (what a caller waits), and from the engine's
    # own admission stamp (``created``, set when the batch loop takes the request).
    ttft = [g.first_token_at - t0 for g in gens]
    ttft_admitted = [g.first_token_at - g.created for g in gens]
    decode_steps = [s for seqs, tok, s in step_times if tok == seqs]   # every chunk one token
    return {
        "submit": submit,
        "wall_s": wall,
        "tokens_per_s": len(prompts) * new_tokens / wall,
        "mean_ttft_s": statistics.mean(ttft),
        "max_ttft_s": max(ttft),
        "mean_ttft_from_admission_s": statistics.mean(ttft_admitted),
        "all_submitted_after_s": submitted,
        "steps": steps,
        "mean_step_ms": 1000 * sum(s for _, _, s in step_times) / max(1, len(step_times)),
        "mean_step_wall_ms": 1000 * wall / max(1, steps),
        "mean_decode_step_ms": 1000 * statistics.mean(decode_steps) if decode_steps else None,
        "decode_steps": len(decode_steps),
        "mean_batch_seqs": statistics.mean(s for s, _, _ in step_times) if step_times else 0,
        "forward_share": sum(s for _, _, s in step_times) / wall,
        "tokens": [r.tokens for r in results],
    }


# ----------------------------------------------------------- (b) sequential
@torch.inference_mode()
def hf_generate_one(model, prompt: list[int], new_tokens: int, pad_id: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_id,
                         temperature=None, top_p=None, top_k=None)
    return out[0, len(prompt):].tolist()


def run_sequential(model, prompts: list[list[int]], new_tokens: int, pad_id: int, max_timed: int) -> dict:
    k = min(len(prompts), max_timed)
    t0 = time.perf_counter()
    per = []
    toks = []
    for p in prompts[:k]:
        t = time.perf_counter()
        out = hf_generate_one(model, p, new_tokens, pad_id)
        per.append(time.perf_counter() - t)
        if len(out) != new_tokens:
            raise AssertionError(f"generate made {len(out)} tokens, wanted {new_tokens}")
        toks.append(out)
    timed = time.perf_counter() - t0
    total = timed * len(prompts) / k
    # TTFT when requests queue one after another: request i starts after i full
    # requests, then pays one prefill (measured with max_new_tokens=1).
    ids = torch.tensor([prompts[0]])
    t = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=1,
                       pad_token_id=pad_id, temperature=None, top_p=None, top_k=None)
    first = time.perf_counter() - t
    mean_req = timed / k
    n = len(prompts)
    return {
        "wall_s": total,
        "timed_s": timed,
        "tokens_per_s": n * new_tokens / total,
        "per_request_s": mean_req,
        "timed_requests": k,
        "extrapolated_from": k if k < n else None,
        "mean_ttft_s": mean_req * (n - 1) / 2 + first,
        "ttft_estimated": True,
        "tokens": toks,
    }


# ------------------------------------------------------- (c) generate_batch
# common.run_generate_batch: bench_throughput runs the same baseline.


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    """How many sequences are token-for-token equal, and the mean length of the common prefix."""
    same = sum(x == y for x, y in zip(a, b))
    pref = []
    for x, y in zip(a, b):
        k = 0
        while k < min(len(x), len(y)) and x[k] == y[k]:
            k += 1
        pref.append(k)
    return {"compared": len(pref), "identical": same, "mean_common_prefix": statistics.mean(pref) if pref else 0}


# --------------------------------------------------------------- reporting
def table(rows: list[dict], new_tokens: int) -> str:
    lines = [
        "| N | engine tok/s | sequential tok/s | generate_batch tok/s (call / excl. set-up) | engine / sequential"
        " | engine / generate_batch (call / excl. set-up) | TTFT engine / generate_batch (s)"
        " | engine step ms (all / decode) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        e, s, c = r["engine"], r["sequential"], r["generate_batch"]
        seq = f"{s['tokens_per_s']:.1f}" + (f" (ext. from {s['extrapolated_from']})" if s["extrapolated_from"] else "")
        ct = f"{c['mean_ttft_s']:.2f}" if c["mean_ttft_s"] is not None else "-"
        dec = f"{e['mean_decode_step_ms']:.0f}" if e["mean_decode_step_ms"] is not None else "-"
        lines.append(f"| {r['n']} | {e['tokens_per_s']:.1f} | {seq} | {c['tokens_per_s']:.1f} / "
                     f"{c['tokens_per_s_excl_setup']:.1f} | {r['ratio_vs_sequential']:.2f}x | "
                     f"{r['ratio_vs_generate_batch']:.2f}x / {r['ratio_vs_generate_batch_excl_setup']:.2f}x | "
                     f"{e['mean_ttft_s']:.2f} / {ct} | {e['mean_step_ms']:.0f} / {dec} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, meta: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    series = [("engine", "Potluck engine", "C0"), ("sequential", "sequential model.generate", "C1"),
              ("generate_batch", "transformers generate_batch", "C2")]
    for key, label, color in series:
        ax1.plot(ns, [r[key]["tokens_per_s"] for r in rows], "o-", color=color, label=label)
    ax1.plot(ns, [r["generate_batch"]["tokens_per_s_excl_setup"] for r in rows], "s--", color="C2", alpha=0.6,
             label="generate_batch excl. set-up")
    ref = REFERENCE["paged_prototype"]
    rn = [n for n in ns if str(n) in ref]
    if rn:
        ax1.plot(rn, [ref[str(n)] for n in rn], "x--", color="C7", alpha=0.7, label="paged prototype (earlier)")
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(ns)
    ax1.set_xticklabels([str(n) for n in ns])
    ax1.set_xlabel("concurrent sequences N")
    ax1.set_ylabel("generated tokens / s")
    ax1.set_title(f"Throughput ({meta['prompt_tokens']} prompt + {meta['new_tokens']} new tokens, CPU)")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)

    ax2.plot(ns, [r["ratio_vs_sequential"] for r in rows], "o-", color="C1", label="engine / sequential")
    ax2.plot(ns, [r["ratio_vs_generate_batch"] for r in rows], "o-", color="C2", label="engine / generate_batch")
    ax2.plot(ns, [r["ratio_vs_generate_batch_excl_setup"] for r in rows], "s--", color="C2", alpha=0.6,
             label="engine / generate_batch excl. set-up")
    ax2.axhline(TARGET_VS_SEQUENTIAL, color="C1", ls=":", label=f"target {TARGET_VS_SEQUENTIAL:g}x vs sequential")
    ax2.axhline(TARGET_VS_BATCH, color="C2", ls=":", label=f"target {TARGET_VS_BATCH:g}x vs generate_batch")
    ax2.axvline(TARGET_N, color="grey", ls="--", alpha=0.4)
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(ns)
    ax2.set_xticklabels([str(n) for n in ns])
    ax2.set_xlabel("concurrent sequences N")
    ax2.set_ylabel("speed-up (x)")
    ax2.set_title(f"Engine speed-up (targets at N={TARGET_N})")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 4, 16, 32, 64], help="concurrent sequences")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--sequential-max", type=int, default=SEQUENTIAL_MAX_TIMED,
                    help="time at most this many sequential requests and extrapolate the rest")
    ap.add_argument("--repeat", type=int, default=2,
                    help="run each N this many times (paths interleaved) and keep each path's fastest run")
    ap.add_argument("--engine-submit", choices=("threads", "loop"), default="threads",
                    help="start the engine's N requests from N client threads at once (default) or "
                         "from one thread in a row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/engine_cpu", help="output path without extension")
    args = ap.parse_args(argv)

    quiet_logs()
    torch.set_num_threads(args.threads)

    from potluck.engine.engine import Engine, EngineConfig

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    code = code_version()
    log(f"code: commit {str(code.get('git_commit'))[:10]}, uncommitted engine files "
        f"{code.get('engine_uncommitted') or 'none'}, model_runner.py sha256 {code.get('model_runner_sha256')}")
    log(f"load average before start: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
        f"on {os.cpu_count()} CPUs (other processes on the machine skew every number below)")
    lm_engine = load("engine")
    lm_seq = load("sequential generate")
    lm_cb = load("generate_batch")
    tok = lm_engine.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ns = sorted(set(args.n))

    t0 = time.perf_counter()
    engine = Engine(EngineConfig(), loaded=lm_engine).start()
    prof = engine.profile
    log(f"engine started in {time.perf_counter() - t0:.1f}s: profile {prof.name}, page {prof.page_size}, "
        f"budget {prof.batch_token_budget} tok/step, {engine.pool.num_slots} pages; torch threads "
        f"{torch.get_num_threads()}")

    # Warm-up: one short run of each path on prompts that are not measured.
    warm = build_prompts(tok, 2, args.prompt_tokens, seed=99)
    t0 = time.perf_counter()
    run_engine(engine, warm, 4)
    log(f"warm-up engine         {time.perf_counter() - t0:6.1f}s")
    t0 = time.perf_counter()
    hf_generate_one(lm_seq.model, warm[0], 4, pad_id)
    log(f"warm-up sequential     {time.perf_counter() - t0:6.1f}s")
    t0 = time.perf_counter()
    run_generate_batch(lm_cb.model, warm, 4)
    log(f"warm-up generate_batch {time.perf_counter() - t0:6.1f}s "
        f"(attn after: {lm_cb.model.config._attn_implementation})")

    rows = []
    try:
        for n in ns:
            runs: dict[str, list[dict]] = {"engine": [], "generate_batch": [], "sequential": []}
            loads = []
            for rep in range(args.repeat):
                # Fresh prompts for every round: reusing earlier ones would let the engine's
                # per-tenant prefix cache skip their prefill and flatter it.
                prompts = build_prompts(tok, n, args.prompt_tokens, seed=1000 + 100 * n + rep)
                tag = f"N={n}" + (f" [{rep + 1}/{args.repeat}]" if args.repeat > 1 else "")
                log(f"{tag}: engine ...")
                e = run_engine(engine, prompts, args.new_tokens, args.engine_submit)
                log(f"{tag}: engine          {e['wall_s']:7.1f}s  {e['tokens_per_s']:7.1f} tok/s  "
                    f"TTFT {e['mean_ttft_s']:.2f}s (max {e['max_ttft_s']:.2f}s)  {e['steps']} steps, {e['mean_step_ms']:.0f} ms/step "
                    f"(decode {e['mean_decode_step_ms'] or 0:.0f} ms, {e['mean_batch_seqs']:.1f} seqs/step)")
                c = run_generate_batch(lm_cb.model, prompts, args.new_tokens)
                log(f"{tag}: generate_batch  {c['wall_s']:7.1f}s  {c['tokens_per_s']:7.1f} tok/s  "
                    f"TTFT {c['mean_ttft_s'] or 0:.2f}s  (set-up {c['setup_s']:.1f}s; excluding it "
                    f"{c['tokens_per_s_excl_setup']:.1f} tok/s)")
                s = run_sequential(lm_seq.model, prompts, args.new_tokens, pad_id, args.sequential_max)
                log(f"{tag}: sequential      {s['timed_s']:7.1f}s  {s['tokens_per_s']:7.1f} tok/s  "
                    f"({s['timed_requests']} of {n} timed, {s['per_request_s']:.2f}s each)")
                runs["engine"].append(e)
                runs["generate_batch"].append(c)
                runs["sequential"].append(s)
                loads.append(round(os.getloadavg()[0], 2))
            # Other jobs on a shared machine only ever slow a run down: keep each path's fastest repeat.
            e, c, s = (max(runs[p], key=lambda r: r["tokens_per_s"])
                       for p in ("engine", "generate_batch", "sequential"))
            c = dict(c, tokens_per_s_excl_setup=max(r["tokens_per_s_excl_setup"] for r in runs["generate_batch"]))
            samples = {p: [round(r["tokens_per_s"], 2) for r in runs[p]] for p in runs}
            samples["generate_batch_excl_setup"] = [round(r["tokens_per_s_excl_setup"], 2)
                                                    for r in runs["generate_batch"]]
            k = len(s["tokens"])
            row = {
                "n": n,
                "load_average_1m_after_each_repeat": loads,
                "repeats": args.repeat,
                "tokens_per_s_samples": samples,
                "engine": {k2: v for k2, v in e.items() if k2 != "tokens"},
                "sequential": {k2: v for k2, v in s.items() if k2 != "tokens"},
                "generate_batch": {k2: v for k2, v in c.items() if k2 != "tokens"},
                "ratio_vs_sequential": e["tokens_per_s"] / s["tokens_per_s"],
                "ratio_vs_generate_batch": e["tokens_per_s"] / c["tokens_per_s"],
                "ratio_vs_generate_batch_excl_setup": e["tokens_per_s"] / c["tokens_per_s_excl_setup"],
                "tokens_per_sequence_verified": args.new_tokens,
                # Outputs are compared within one repeat: each repeat has its own prompts.
                "greedy_agreement": {
                    "engine_vs_sequential": agreement(runs["engine"][0]["tokens"][:k],
                                                      runs["sequential"][0]["tokens"]),
                    "engine_vs_generate_batch": agreement(runs["engine"][0]["tokens"],
                                                          runs["generate_batch"][0]["tokens"]),
                },
            }
            rows.append(row)
            ga = row["greedy_agreement"]
            log(f"N={n}: best of {args.repeat}: engine/sequential {row['ratio_vs_sequential']:.2f}x, "
                f"engine/generate_batch {row['ratio_vs_generate_batch']:.2f}x "
                f"({row['ratio_vs_generate_batch_excl_setup']:.2f}x excl. its set-up); identical greedy outputs: "
                f"vs sequential {ga['engine_vs_sequential']['identical']}/{k}, "
                f"vs generate_batch {ga['engine_vs_generate_batch']['identical']}/{n}")
    finally:
        engine.stop()

    meta = {"prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens}
    at_target = next((r for r in rows if r["n"] == TARGET_N), None)
    result = {
        "benchmark": "engine throughput vs sequential generate vs transformers generate_batch",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(load_before, torch_threads=args.threads),
        "code": code,
        "config": {
            "model": lm_engine.name, "dtype": "float32", "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens, "n": ns, "tenants": TENANTS, "greedy": True,
            "engine_profile": prof.to_json(), "engine_kv_pages": engine.pool.num_slots,
            "sequential_max_timed": args.sequential_max,
            "repeats": args.repeat, "selection": "per path, the fastest of the repeats",
            "engine_submit": args.engine_submit,
        },
        "targets": {"n": TARGET_N, "engine_vs_generate_batch": TARGET_VS_BATCH,
                    "engine_vs_sequential": TARGET_VS_SEQUENTIAL},
        "targets_met": None if at_target is None else {
            "engine_vs_generate_batch": at_target["ratio_vs_generate_batch"] >= TARGET_VS_BATCH,
            "engine_vs_generate_batch_excl_setup":
                at_target["ratio_vs_generate_batch_excl_setup"] >= TARGET_VS_BATCH,
            "engine_vs_sequential": at_target["ratio_vs_sequential"] >= TARGET_VS_SEQUENTIAL,
        },
        "reference_tokens_per_s": REFERENCE,
        "results": rows,
        "total_seconds": time.perf_counter() - t_start,
    }
    out = Path(args.out)
    save(out, result, lambda png: plot(rows, png, meta))
    print()
    print(table(rows, args.new_tokens))
    if at_target is not None:
        print()
        print(f"At N={TARGET_N}: engine/generate_batch {at_target['ratio_vs_generate_batch']:.2f}x "
              f"({at_target['ratio_vs_generate_batch_excl_setup']:.2f}x excl. its set-up; "
              f"target {TARGET_VS_BATCH:g}x), engine/sequential {at_target['ratio_vs_sequential']:.2f}x "
              f"(target {TARGET_VS_SEQUENTIAL:g}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
