"""Allocations per decode token: this checkout against another commit, measured in one sitting.

The engine's hot path (batch build -> forward -> sample -> deliver) should
not allocate per token what it can keep. This counts every allocation the
process makes while N greedy generations of the default model decode
(memray, with Python's own allocator traced too), and separately the Python
allocations (pymalloc: objects, frames, containers) made by Potluck's engine
code itself (the innermost Python frame is a file under ``engine/``; torch's
tensor storage and transformers' allocations are counted only in the total).

    .venv/bin/python benchmarks/bench_alloc.py --baseline ded004a     # this tree vs commit ded004a
    .venv/bin/python benchmarks/bench_alloc.py --n 8 --new-tokens 16  # this tree only, quick

The baseline commit is checked out into a temporary git worktree and imported
from there (a ``potluck`` namespace of symlinks first on ``PYTHONPATH``);
each version runs in its own process. Needs ``pip install memray`` (not a
project dependency: a measuring tool).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import begin, log, machine_info, save

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "kernel", "jupyter_ext", "hub_config")


def measure(n: int, new_tokens: int, prompt_tokens: int) -> dict:
    """In this process: N concurrent generations under memray; allocations per decode token."""
    import memray
    from memray import AllocatorType, FileReader

    from potluck.engine import engine as engine_mod
    from potluck.engine.engine import Engine, EngineConfig
    from common import build_prompts

    engine = Engine(EngineConfig(model="default")).start()
    prompts = build_prompts(engine.tokenizer, n, prompt_tokens)
    # Warm up (first-step costs, caches), then measure a fresh round.
    for g in [engine.generate(f"warm{i}", tokens=p, max_tokens=4, ignore_eos=True) for i, p in enumerate(prompts)]:
        g.result()
    engine_dir = str(Path(engine_mod.__file__).resolve().parent)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "alloc.bin"
        with memray.Tracker(path, trace_python_allocators=True):
            t0 = time.perf_counter()
            gens = [engine.generate(f"tenant{i % 4}", tokens=p, max_tokens=new_tokens, ignore_eos=True)
                    for i, p in enumerate(prompts)]
            tokens = sum(len(g.result().tokens) for g in gens)
            seconds = time.perf_counter() - t0
        engine.stop()
        frees = {AllocatorType.FREE, AllocatorType.PYMALLOC_FREE, AllocatorType.MUNMAP}
        # Python objects (frames, lists, dicts, closures, request objects) come from pymalloc;
        # tensor storage comes from malloc and is the same in both versions.
        pymalloc = {AllocatorType.PYMALLOC_MALLOC, AllocatorType.PYMALLOC_CALLOC, AllocatorType.PYMALLOC_REALLOC}
        total = ours = 0
        by_line: dict[str, int] = {}
        by_file: dict[str, int] = {}
        for rec in FileReader(path).get_allocation_records():
            if rec.allocator in frees:
                continue
            total += 1
            stack = rec.stack_trace(max_stacks=1)
            if rec.allocator in pymalloc and stack and str(Path(stack[0][1]).resolve()).startswith(engine_dir):
                ours += 1
                key = f"{Path(stack[0][1]).name}:{stack[0][0]}"
                by_line[key] = by_line.get(key, 0) + 1
                by_file[Path(stack[0][1]).name] = by_file.get(Path(stack[0][1]).name, 0) + 1
    top = dict(sorted(by_line.items(), key=lambda kv: -kv[1])[:12])
    # The forward itself (runner, sampling, the page pool's tensors) is one room; everything else is the
    # request path this restructure changed: scheduling, feeding, detokenizing, accounting.
    forward = {"model_runner.py", "sampling.py", "pages.py", "kv.py"}
    request_path = sum(n for f, n in by_file.items() if f not in forward)
    return {"n": n, "new_tokens": new_tokens, "decode_tokens": tokens, "seconds_under_memray": round(seconds, 2),
            "allocations_total": total, "allocations_engine_code": ours,
            "per_decode_token_total": round(total / tokens, 1),
            "per_decode_token_engine_code": round(ours / tokens, 2),
            "per_decode_token_request_path": round(request_path / tokens, 2),
            "engine_code_by_file": {f: round(n / tokens, 2) for f, n in sorted(by_file.items(), key=lambda kv: -kv[1])},
            "engine_code_top": top,
            "engine_dir": engine_dir}


def run_version(label: str, pythonpath: str | None, args) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--child", "--n", str(args.n), "--new-tokens", str(args.new_tokens),
           "--prompt-tokens", str(args.prompt_tokens)]
    log(f"{label}: measuring")
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=ROOT / "benchmarks")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"{label}: {result['per_decode_token_total']} allocations per decode token in all, "
        f"{result['per_decode_token_engine_code']} Python allocations from the engine's own code, "
        f"{result['per_decode_token_request_path']} of them outside the forward (scheduling, feeding, text, accounting)")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32, help="concurrent generations")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--baseline", help="a commit to compare against, measured in the same sitting")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help="output path without extension")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.n, args.new_tokens, args.prompt_tokens)))
        return
    out, load_before, code = begin("alloc", args.out, quick=False)
    t0 = time.time()
    versions = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            tree = Path(tmp) / "tree"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.baseline],
                           check=True, capture_output=True)
            try:
                shim = Path(tmp) / "shim" / "potluck"
                shim.mkdir(parents=True)
                for p in PACKAGES:
                    (shim / p).symlink_to(tree / p)
                versions[f"baseline {args.baseline}"] = run_version(f"baseline {args.baseline}", str(shim.parent), args)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        versions["this tree"] = run_version("this tree", None, args)
    result = {"benchmark": "alloc", "what": "allocations per decode token (memray): every allocator in total; pymalloc from engine/ code",
              "code": code, "machine": machine_info(load_before), "versions": versions,
              "total_seconds": time.time() - t0}

    def draw(png: Path) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        labels = list(versions)
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
        for ax, key, title in ((axes[0], "per_decode_token_total", "all allocations / decode token"),
                               (axes[1], "per_decode_token_engine_code", "engine code (Python) / decode token"),
                               (axes[2], "per_decode_token_request_path", "request path (Python) / decode token")):
            ax.bar(labels, [versions[v][key] for v in labels], color=["#999", "#3a7"][-len(labels):])
            ax.set_title(title, fontsize=10)
        fig.suptitle(f"N={args.n} greedy generations x {args.new_tokens} tokens, default model", fontsize=10)
        fig.tight_layout()
        fig.savefig(png, dpi=110)

    save(out, result, draw)


if __name__ == "__main__":
    main()
