"""Build, compile and cache the Python runner component.

    python -m potluck.engine.sandbox.build            # build if the sources changed
    python -m potluck.engine.sandbox.build --force    # rebuild anyway

Two expensive steps, each cached on disk under ``~/.cache/potluck/sandbox/``
(``$POTLUCK_SANDBOX_CACHE`` or ``$XDG_CACHE_HOME/potluck/sandbox``):

1. componentize-py wraps CPython, the SDK and the runner app into one
   component (``runner-<sources>.wasm``; ~15-20 s, ~20 MB). Key: the WIT and
   guest sources, the engine's ``textstream.py`` (bundled into the guest as
   ``potluck_textstream``, so the guest SDK streams text exactly as the engine
   does) and the componentize-py version.
2. Cranelift compiles it for this machine (``runner-<key>.cwasm``; ~15 s,
   ~35 MB). Key: the component's key, the wasmtime version, the engine's
   configuration flags and the machine type.

Both happen at most once per change of sources, never per run; a lock file
keeps concurrent engine starts (or test workers) from building twice.

This module also owns the wasmtime configuration (``WASM_CONFIG``,
``make_wasm_engine``): it decides what compiled code looks like, so it is part
of the compiled cache key. It never runs an inferlet (that is ``wasm.py``).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

SANDBOX = Path(__file__).resolve().parent
WIT_DIR = SANDBOX / "wit"
GUEST_DIR = SANDBOX / "guest"
TEXTSTREAM = SANDBOX.parent / "textstream.py"     # the engine's own module, one copy for both sides
GUEST_TEXTSTREAM = "potluck_textstream"           # its module name inside the guest
WORLD = "inferlet"
APP = "potluck_runner"

# Everything that changes compiled code is part of the cache key (compiled_key).
WASM_CONFIG = {"consume_fuel": True, "epoch_interruption": True, "cranelift_opt_level": "speed",
               "max_wasm_stack": 2 << 20}


def make_wasm_engine():
    """A wasmtime engine configured as ``WASM_CONFIG`` says (the runner is compiled for exactly this)."""
    from wasmtime import Config, Engine as WasmEngine
    cfg = Config()
    cfg.consume_fuel = WASM_CONFIG["consume_fuel"]
    cfg.epoch_interruption = WASM_CONFIG["epoch_interruption"]
    cfg.cranelift_opt_level = WASM_CONFIG["cranelift_opt_level"]
    cfg.max_wasm_stack = WASM_CONFIG["max_wasm_stack"]
    return WasmEngine(cfg)


def cache_dir() -> Path:
    d = os.environ.get("POTLUCK_SANDBOX_CACHE")
    if d:
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "potluck" / "sandbox"


def _sources() -> list[tuple[str, Path]]:
    """(name in the key, file) for every file that goes into the component."""
    files = sorted(WIT_DIR.glob("*.wit")) + sorted(p for p in GUEST_DIR.rglob("*.py") if "__pycache__" not in p.parts)
    named = [(str(p.relative_to(SANDBOX)), p) for p in files]
    return named + [(f"guest/{GUEST_TEXTSTREAM}.py", TEXTSTREAM)]


def sources_key() -> str:
    h = hashlib.sha256()
    h.update(f"componentize-py {version('componentize-py')}\n".encode())
    for name, p in _sources():
        h.update(name.encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def compiled_key(src_key: str) -> str:
    h = hashlib.sha256()
    h.update(src_key.encode())
    h.update(f"wasmtime {version('wasmtime')} {platform.machine()} {sys.platform}\n".encode())
    h.update(json.dumps(WASM_CONFIG, sort_keys=True).encode())
    return h.hexdigest()[:20]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def componentize(out: Path) -> None:
    """Run componentize-py (in a child process: it is CPU- and memory-hungry, ~20 s)."""
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    with tempfile.TemporaryDirectory(prefix="potluck-guest-") as bundled:
        # The engine's textstream goes in under its guest name; copied at build time, never kept twice in git.
        shutil.copyfile(TEXTSTREAM, Path(bundled) / f"{GUEST_TEXTSTREAM}.py")
        cmd = [sys.executable, "-c",
               "import sys, componentize_py; sys.argv[0] = 'componentize-py'; componentize_py.script()",
               "-d", str(WIT_DIR), "-w", WORLD, "componentize", APP, "-p", str(GUEST_DIR), "-p", bundled,
               "-o", str(tmp)]
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        proc = subprocess.run(cmd, cwd=str(GUEST_DIR), env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"componentize-py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    os.replace(tmp, out)


def _prune(d: Path, keep: set[str]) -> None:
    for p in d.glob("runner-*"):
        if p.name not in keep and ".tmp" not in p.name:
            p.unlink(missing_ok=True)


def ensure_runner(engine=None, *, force: bool = False, log=None) -> Path:
    """The compiled runner for this wasmtime and configuration, building what is missing."""
    say = log or (lambda msg: None)
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    src = sources_key()
    key = compiled_key(src)
    wasm = d / f"runner-{src}.wasm"
    cwasm = d / f"runner-{key}.cwasm"
    if cwasm.exists() and not force:
        return cwasm
    with open(d / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)           # another process may be building the same thing
        if cwasm.exists() and not force:
            return cwasm
        if force or not wasm.exists():
            t0 = time.perf_counter()
            say("building the Python runner component with componentize-py ...")
            componentize(wasm)
            say(f"  built {wasm.name} ({wasm.stat().st_size >> 20} MB) in {time.perf_counter() - t0:.1f} s")
        from wasmtime.component import Component
        t0 = time.perf_counter()
        say("compiling it with Cranelift ...")
        component = Component.from_file(engine or make_wasm_engine(), str(wasm))
        _atomic_write(cwasm, bytes(component.serialize()))
        say(f"  compiled {cwasm.name} ({cwasm.stat().st_size >> 20} MB) in {time.perf_counter() - t0:.1f} s")
        _prune(d, {wasm.name, cwasm.name, ".lock"})
    return cwasm


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m potluck.engine.sandbox.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if the cache is current")
    ns = ap.parse_args(argv)
    path = ensure_runner(force=ns.force, log=print)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
