"""wasmtime for inferlets: the engine configuration, the cached runner, the linker, one Store per run.

The runner component is built and compiled once (``build.py``) and loaded
here with ``Component.deserialize_file`` (milliseconds). Each run gets a
fresh ``Store`` (a trap poisons its store) with:

- fuel (``fuel_per_run``): CPU. Fuel used is the run's usage.
- an epoch deadline: a ticker thread bumps the engine's epoch every
  ``TICK`` seconds; each store's deadline is one tick ahead and a callback
  on the run's own thread decides, each tick, whether it continues (the run
  was not cancelled and is within ``max_run_seconds``) or traps. Time a run
  spends waiting for the scheduler in a host call is given back to it.
- a memory limit (``memory_mb_per_run``) on each linear memory.
- WASI with nothing in it: no preopened directories, no environment, no
  arguments, no network; stdout and stderr go to the run's owner.

One ``Linker`` serves every run: its host functions find the run through a
thread-local (each run executes on its own thread), so instantiating costs
no per-run wiring.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from pathlib import Path

import wasmtime
from wasmtime import Config, Engine as WasmEngine, Store, WasiConfig, WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime.component import Component, Linker
from wasmtime.component import _types as _component_types

from . import world
from .world import IMPORTS, PACKAGE, VERSION, RunImports

log = logging.getLogger("potluck.sandbox")

TICK = 0.05                 # seconds per epoch tick: how fast a cancel or a time limit bites
RUNNER_EXPORT = f"{PACKAGE}/runner@{VERSION}"

# Everything that changes compiled code is part of the cache key (build.py).
WASM_CONFIG = {"consume_fuel": True, "epoch_interruption": True, "cranelift_opt_level": "speed",
               "max_wasm_stack": 2 << 20}

_current = threading.local()


class _PerThreadSet(threading.local):
    """Stands in for wasmtime-py's module-global ``case_test_cache``.

    wasmtime-py (50.0.1) lowers an untagged ``result``/``option``/variant by
    clearing one global set, filling it with the case's classes and testing
    the value against it. Two runs' threads returning from host calls at once
    race on that set: a run's error string then matched the ``ok`` case and
    the call failed with "expected list value" (seen with 16 concurrent
    runs). ``_lower`` only calls ``clear``, ``add`` and iterates, so a set per
    thread behind those three is enough.
    """

    def __init__(self):
        self.classes: set = set()

    def clear(self) -> None:
        self.classes.clear()

    def add(self, cls) -> None:
        self.classes.add(cls)

    def __iter__(self):
        return iter(self.classes)


_component_types.case_test_cache = _PerThreadSet()


def make_wasm_engine() -> WasmEngine:
    cfg = Config()
    cfg.consume_fuel = WASM_CONFIG["consume_fuel"]
    cfg.epoch_interruption = WASM_CONFIG["epoch_interruption"]
    cfg.cranelift_opt_level = WASM_CONFIG["cranelift_opt_level"]
    cfg.max_wasm_stack = WASM_CONFIG["max_wasm_stack"]
    return WasmEngine(cfg)


def _host_func(method: str, shape: str):
    def fn(_store, *args):
        return world.call(getattr(_current, "imports", None), method, shape, args)
    return fn


def make_linker(engine: WasmEngine) -> Linker:
    linker = Linker(engine)
    linker.add_wasip2()
    with linker.root() as root:
        for iface, funcs in IMPORTS.items():
            with root.add_instance(f"{PACKAGE}/{iface}@{VERSION}") as inst:
                for name, (method, shape) in funcs.items():
                    inst.add_func(name, _host_func(method, shape))
    return linker


# ------------------------------------------------------------ epoch control
_UPDATE_CONTINUE = 0
_DEADLINE_CB = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.POINTER(ffi.wasmtime_context_t), ctypes.c_void_p,
                                ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint8))
_NO_FINALIZER = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))


@_DEADLINE_CB
def _on_deadline(_ctx, _data, delta, kind):
    # Runs on the run's thread, inside wasm: must not raise.
    try:
        run = getattr(_current, "run", None)
        reason = run.check_alive() if run is not None else None
    except Exception:
        reason = "internal error in the time limit check"
    if reason is None:
        delta[0] = 1
        kind[0] = _UPDATE_CONTINUE
        return 0
    err = ffi.wasmtime_error_new(ctypes.create_string_buffer(reason.encode()))
    return ctypes.cast(err, ctypes.c_void_p).value


class Ticker:
    """Bumps the engine's epoch every TICK seconds while runs are live."""

    def __init__(self, engine: WasmEngine):
        self.engine = engine
        self.live = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        with self._cond:
            self.live += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="potluck-sandbox-epoch", daemon=True)
                self._thread.start()
            self._cond.notify()

    def release(self) -> None:
        with self._cond:
            self.live -= 1

    def _loop(self) -> None:
        # One thread for the whole process; it sleeps, not exits, when idle,
        # so thread counts return to their baseline after runs end.
        while True:
            with self._cond:
                while self.live == 0:
                    self._cond.wait()
            self.engine.increment_epoch()
            time.sleep(TICK)


# ------------------------------------------------------------------ runner
class Sandbox:
    """The wasmtime engine, the runner component and the linker: built once per process."""

    def __init__(self, runner_path: Path | str | None = None):
        from . import build
        self.engine = make_wasm_engine()
        self.runner_path = Path(runner_path) if runner_path else build.ensure_runner(self.engine)
        self.runner = Component.deserialize_file(self.engine, str(self.runner_path))
        self.linker = make_linker(self.engine)
        self.ticker = Ticker(self.engine)

    def compile_user_component(self, wasm: bytes) -> Component:
        """A user's prebuilt component for the same world (compiled per submission: seconds)."""
        return Component(self.engine, wasm)

    def execute(self, run, imports: RunImports, component: Component | None, source: str) -> tuple[str | None, int]:
        """Run one inferlet to its end on this thread. Returns (error line or None, fuel used)."""
        q = run.quota
        store = Store(self.engine)
        fuel = q.fuel_per_run if q.fuel_per_run is not None else (1 << 62)
        store.set_fuel(fuel)
        if q.memory_mb_per_run is not None:
            store.set_limits(memory_size=q.memory_mb_per_run << 20)
        wasi = WasiConfig()
        wasi.argv = ["inferlet"]
        wasi.stdout_custom = run.wasi_stdout
        wasi.stderr_custom = run.wasi_stderr
        store.set_wasi(wasi)
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _on_deadline, None, _NO_FINALIZER)
        store.set_epoch_deadline(1)
        _current.run, _current.imports = run, imports
        self.ticker.acquire()
        error = None
        try:
            instance = self.linker.instantiate(store, component or self.runner)
            iface = instance.get_export_index(store, RUNNER_EXPORT)
            fn_index = instance.get_export_index(store, "run", iface) if iface is not None else None
            fn = instance.get_func(store, fn_index) if fn_index is not None else None
            if fn is None:
                error = f"the component does not export {RUNNER_EXPORT}#run"
            else:
                result = fn(store, source)
                fn.post_return(store)
                if isinstance(result, str):
                    error = result
        except WasmtimeError as e:
            error = run.killed_reason or describe_trap(str(e), q)
        except Exception as e:    # conversion bugs and the like: the run fails, the engine lives
            log.exception("inferlet run failed on the host side")
            error = run.killed_reason or f"internal error running the inferlet: {type(e).__name__}"
        finally:
            self.ticker.release()
            _current.run = _current.imports = None
            try:
                used = fuel - store.get_fuel()
            except WasmtimeError:
                used = fuel
            store.close()
        return error, used


def describe_trap(text: str, quota) -> str:
    """One line for the owner from a wasmtime trap."""
    low = text.lower()
    if "fuel" in low:
        return (f"the run used all its fuel (fuel_per_run = {quota.fuel_per_run}): "
                "a loop that never ends? ask an admin for more fuel if the work is real")
    if "stack overflow" in low or "call stack exhausted" in low:
        return "the run overflowed its stack (recursion too deep)"
    if "memory" in low and ("grow" in low or "limit" in low or "allocation" in low or "out of bounds" in low):
        return f"the run ran out of memory (memory_mb_per_run = {quota.memory_mb_per_run})"
    if "unreachable" in low:
        return "the inferlet crashed (wasm trap: unreachable); out of memory or an interpreter abort"
    first = text.strip().splitlines()[0] if text.strip() else "unknown trap"
    return f"the inferlet crashed: {first[:300]}"


__all__ = ["Sandbox", "make_wasm_engine", "make_linker", "describe_trap", "wasmtime"]
