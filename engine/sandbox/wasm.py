"""wasmtime for inferlets: the cached runner, the linker, the epoch ticker, one Store per run.

The runner component is built and compiled once (``build.py``, which also
owns the wasmtime configuration) and loaded here with
``Component.deserialize_file`` (milliseconds). Each run gets a fresh ``Store``
(a trap poisons its store) with:

- fuel (``fuel_per_run``): CPU. Fuel used is the run's usage.
- an epoch deadline: a ticker thread bumps the engine's epoch every
  ``TICK`` seconds; each store's deadline is one tick ahead and a callback
  on the run's own thread decides, each tick, whether it continues (the run
  was not cancelled and is within ``max_run_seconds``) or traps. Time a run
  spends waiting for the scheduler in a host call is given back to it.
- a memory limit (``memory_mb_per_run``) on each linear memory.
- WASI with nothing in it: no preopened directories, no environment, no
  arguments, no network; stdout and stderr go to the run's owner.

One ``Linker`` serves every run: its host functions (``host_calls.VERBS``)
find the run through a thread-local (each run executes on its own thread), so
instantiating costs no per-run wiring.

This module never decides what a host call does (``host_calls.py``) or when a
run starts or ends (``manager.py``, ``run.py``); it never touches the engine.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import wasmtime
from wasmtime import Engine as WasmEngine, Store, WasiConfig, WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime.component import Component, FuncType, Linker, ResultType
from wasmtime.component import _types as _component_types

from . import build
from .host_calls import PACKAGE, RESULT, TAGGED, VERBS, VERSION, RunImports, Verb, call

if TYPE_CHECKING:
    from .run import Run

log = logging.getLogger("potluck.sandbox")

TICK = 0.05                 # seconds per epoch tick: how fast a cancel or a time limit bites
RUNNER_EXPORT = f"{PACKAGE}/runner@{VERSION}"

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


def _host_func(verb: Verb):
    def fn(_store, *args):
        return call(getattr(_current, "imports", None), verb, args)
    return fn


def make_linker(engine: WasmEngine) -> Linker:
    linker = Linker(engine)
    linker.add_wasip2()
    with linker.root() as root:
        for iface, funcs in VERBS.items():
            with root.add_instance(f"{PACKAGE}/{iface}@{VERSION}") as inst:
                for name, verb in funcs.items():
                    inst.add_func(name, _host_func(verb))
    return linker


def check_lowering(component: Component, engine: WasmEngine) -> None:
    """Each result-returning host call is lowered the way wasmtime-py expects (tagged or bare).

    ``host_calls`` checks its table against the WIT text; whether a
    ``result`` is tagged is wasmtime-py's decision, so it is checked here
    against the compiled component's own types.
    """
    imports = component.type.imports(engine)
    wrong = []
    for iface, funcs in VERBS.items():
        items = imports[f"{PACKAGE}/{iface}@{VERSION}"].ty.exports(engine).items()
        types = {k: v.ty for k, v in items if isinstance(v.ty, FuncType)}
        for name, verb in funcs.items():
            result = types[name].result
            if isinstance(result, ResultType) and verb.shape != (TAGGED if result._tagged() else RESULT):
                wrong.append(f"{iface}.{name}")
    if wrong:
        raise RuntimeError(f"host calls declared with the wrong result shape for wasmtime-py: {', '.join(wrong)}")


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
        self.engine = build.make_wasm_engine()
        self.runner_path = Path(runner_path) if runner_path else build.ensure_runner(self.engine)
        self.runner = Component.deserialize_file(self.engine, str(self.runner_path))
        check_lowering(self.runner, self.engine)
        self.linker = make_linker(self.engine)
        self.ticker = Ticker(self.engine)

    def compile_user_component(self, wasm: bytes) -> Component:
        """A user's prebuilt component for the same world (compiled per submission: seconds)."""
        return Component(self.engine, wasm)

    def execute(self, run: "Run", imports: RunImports, component: Component | None,
                source: str) -> tuple[str | None, int]:
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


__all__ = ["Sandbox", "make_linker", "check_lowering", "describe_trap", "wasmtime"]
