"""What constrained decoding costs: tokens/s with and without a JSON schema, at N = 1 and 32.

For N concurrent generations (distinct ~100-token prompts over 4 tenants, never seen before by
the prefix cache, 64 new tokens each, greedy) this runs the default model in one engine, in one process, twice per N: free text, and
every generation under a JSON schema (``{"note": string of 200-400 characters}``, so the grammar
stays open for all 64 tokens and both runs make the same number of tokens), at the engine's
default settings. It reports tokens/s, the ratio, each request's time to first token and end to
end (p50, max), the mean step time, and the time the step spends computing the grammar masks
(``ConstraintCompiler.allowed_mask``: llguidance's parallel mask computation plus unpacking
the bitmask to one boolean tensor), per step and per constrained sequence.

In-process rather than through HTTP on purpose: the question is the cost inside the step; the
HTTP path adds the same per-token cost to both runs (bench_http.py measures it).

    .venv/bin/python benchmarks/bench_structured.py            # N = 1 32
    .venv/bin/python benchmarks/bench_structured.py --quick    # N = 1 4, 16 tokens
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import begin, build_prompts, log, machine_info, save

TENANTS = 4
SCHEMA = {"type": "object", "properties": {"note": {"type": "string", "minLength": 200, "maxLength": 400}},
          "required": ["note"], "additionalProperties": False}


def run(engine, prompts, new_tokens: int, structured) -> dict:
    from potluck.engine.constraints import ConstraintCompiler
    masks: list[float] = []
    steps: list[float] = []
    original = ConstraintCompiler.allowed_mask

    def timed(self, constraints, vocab, device):
        t0 = time.perf_counter()
        try:
            return original(self, constraints, vocab, device)
        finally:
            if any(c is not None for c in constraints):
                masks.append(time.perf_counter() - t0)

    def on_step(info):
        steps.append(info["seconds"])

    ConstraintCompiler.allowed_mask = timed
    engine.step_listeners.append(on_step)
    try:
        gate = threading.Barrier(len(prompts) + 1)
        gens: list = [None] * len(prompts)

        def client(i):
            gate.wait()
            gens[i] = engine.generate(f"tenant{i % TENANTS}", tokens=prompts[i], max_tokens=new_tokens,
                                      ignore_eos=True, structured=structured)
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(prompts))]
        for t in threads:
            t.start()
        t0 = time.time()
        gate.wait()
        for t in threads:
            t.join()
        results = [g.result(timeout=3600) for g in gens]
        wall = time.time() - t0
    finally:
        ConstraintCompiler.allowed_mask = original
        engine.step_listeners.remove(on_step)
    made = sum(len(r.tokens) for r in results)
    # Per request, from its call to its first and to its last token (what a caller waits).
    ttft = sorted(g.first_token_at - g.created for g in gens)
    e2e = sorted(g.token_times[-1] - g.created for g in gens)
    return {"wall_s": wall, "tokens": made, "tokens_per_s": made / wall, "steps": len(steps),
            "ttft_p50_s": statistics.median(ttft), "ttft_max_s": ttft[-1],
            "e2e_p50_s": statistics.median(e2e), "e2e_max_s": e2e[-1],
            "mean_step_ms": 1000 * statistics.mean(steps) if steps else None,
            "mask_steps": len(masks), "mean_mask_ms": 1000 * statistics.mean(masks) if masks else 0.0,
            "mean_mask_ms_per_sequence": 1000 * statistics.mean(masks) / len(prompts) if masks else 0.0,
            "finish_reasons": sorted({r.finish_reason for r in results}),
            "sample": results[0].text[:80]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="N = 1 4 and 16 tokens: a smoke run")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.quick:
        args.n, args.new_tokens = [1, 4], 16
    out, load_before, code = begin("structured", args.out, args.quick)
    from potluck.engine.constraints import Structured
    from potluck.engine.engine import Engine, EngineConfig
    started = time.time()
    engine = Engine(EngineConfig(model="default")).start()     # the default settings, as `potluck engine`
    structured = Structured("json", SCHEMA)
    rows = {}
    try:
        # Fresh prompts for every run: a prompt seen before would come from the prefix cache.
        fresh = iter(build_prompts(engine.tokenizer, 2 * sum(args.n) + 1, 100))
        run(engine, [next(fresh)], 4, None)          # warm up
        for n in args.n:
            free = run(engine, [next(fresh) for _ in range(n)], args.new_tokens, None)
            log(f"N={n} free: {free['tokens_per_s']:.1f} tok/s, step {free['mean_step_ms']:.1f} ms")
            constrained = run(engine, [next(fresh) for _ in range(n)], args.new_tokens, structured)
            log(f"N={n} json_schema: {constrained['tokens_per_s']:.1f} tok/s, step "
                f"{constrained['mean_step_ms']:.1f} ms, mask {constrained['mean_mask_ms']:.2f} ms/step")
            rows[str(n)] = {"free": free, "json_schema": constrained,
                            "ratio": constrained["tokens_per_s"] / free["tokens_per_s"]}
    finally:
        engine.stop()
    result = {"benchmark": "bench_structured", "new_tokens": args.new_tokens, "schema": SCHEMA, "results": rows,
              "machine": machine_info(load_before), "code": code, "total_seconds": time.time() - started}

    def draw(path):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        ns = list(rows)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        x = range(len(ns))
        ax.bar([i - 0.2 for i in x], [rows[n]["free"]["tokens_per_s"] for n in ns], 0.4, label="free text")
        ax.bar([i + 0.2 for i in x], [rows[n]["json_schema"]["tokens_per_s"] for n in ns], 0.4,
               label="json_schema")
        ax.set_xticks(list(x), [f"N={n}" for n in ns])
        ax.set_ylabel("generated tokens/s")
        ax.set_title(f"Constrained decoding cost ({result['machine']['device']})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)

    save(out, result, draw)
    print("| N | free tok/s | json_schema tok/s | ratio | mask ms/step | mask ms/sequence | step ms free / schema "
          "| TTFT p50 s free / schema | end-to-end p50 s free / schema |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, r in rows.items():
        f, c = r["free"], r["json_schema"]
        print(f"| {n} | {f['tokens_per_s']:.1f} | {c['tokens_per_s']:.1f} | {r['ratio']:.2f} | "
              f"{c['mean_mask_ms']:.2f} | {c['mean_mask_ms_per_sequence']:.3f} | "
              f"{f['mean_step_ms']:.0f} / {c['mean_step_ms']:.0f} | {f['ttft_p50_s']:.2f} / {c['ttft_p50_s']:.2f} | "
              f"{f['e2e_p50_s']:.2f} / {c['e2e_p50_s']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
