"""Soak, hostile: one tenant's memory attacks on the real engine, and the RSS they leave behind.

Against one real ``potluck engine`` process (default model, its own data dir), one tenant runs
``--runs`` (20) inferlets that each print ``--bytes`` (1 MiB) one byte at a time, and
``--floods`` (4) that flood 64 topics with 60 KB messages until their output limit stops them,
``--concurrency`` (4) at a time (``tests/support/hostile.memory_attack``). The engine's RSS is
taken after a small warm-up and again once it is quiet. Before issue 15 each MiB printed this
way held +260 MB (one stored event per byte) and floods held their topics' backlogs after the
run; the check is that RSS ends within ``--limit-mb`` (50) of its baseline.
Writes ``<out>.json``; exits 1 if the check fails.

    .venv/bin/python benchmarks/soak_hostile.py                    # 20 x 1 MiB (make soak)
    .venv/bin/python benchmarks/soak_hostile.py --runs 4 --bytes 131072   # a quick try
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import common  # noqa: F401  (puts tests/ on sys.path, for support.* below)
from support.engine_process import EngineProcess
from support.hostile import memory_attack

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--bytes", type=int, default=1 << 20)
    ap.add_argument("--floods", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--limit-mb", type=float, default=50.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak_hostile_cpu"))
    args = ap.parse_args(argv)
    data_dir = Path(tempfile.mkdtemp(prefix="potluck-soak-hostile-"))
    proc = EngineProcess(data_dir)
    print(f"starting the engine ({data_dir})", flush=True)
    proc.start()
    try:
        out = memory_attack(proc, runs=args.runs, nbytes=args.bytes, floods=args.floods,
                            concurrency=args.concurrency)
    finally:
        code = proc.stop()
    out["limit_mb"] = args.limit_mb
    out["ok"] = (out["growth_mb"] <= args.limit_mb and code == 0
                 and all(s == "finished" for s, _, _ in out["printers"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("printers", "floods_ended")}), flush=True)
    if out["ok"]:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
