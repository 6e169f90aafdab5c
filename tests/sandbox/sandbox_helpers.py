"""Fixtures and helpers shared by the sandbox tests: the real default model, a store, a RunManager.

Test modules import the fixtures by name (``from sandbox_helpers import runs``).
Each module gets its own engine (module scope) so quotas set by one module
never leak into another. Counts and token budgets stay small: these run on a
2-core CPU. (Not a conftest.py: the unit tests import the top-level
``conftest`` by name, and a second one would shadow it.)
"""

from __future__ import annotations

import threading
import time

import pytest

from potluck.engine.engine import Engine, EngineConfig
from potluck.engine.sandbox import RunManager
from potluck.engine.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(f"sqlite:///{tmp_path_factory.mktemp('sandbox')}/potluck.sqlite")
    yield s
    s.close()


@pytest.fixture(scope="module")
def real_engine(store):
    eng = Engine(EngineConfig(model="default"), store=store).start()
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def runs(real_engine, store):
    manager = RunManager(real_engine, store)
    yield manager
    manager.shutdown()


def run_to_end(runs, tenant, source, args=None, timeout=240):
    run = runs.start(tenant, source, args)
    assert run.wait(timeout), f"run did not end in {timeout} s: {run.to_json()}"
    return run


def output_of(run, stream=None) -> str:
    return "".join(e["text"] for e in run.events if e["type"] == "output" and (stream is None or e["stream"] == stream))


def messages_of(run) -> list:
    return [e["body"] for e in run.events if e["type"] == "message"]


def pages_held(engine, tenant) -> int:
    report = engine.tenant_report(tenant)
    return report["kv_pages"] if report else 0


def wait_for_threads(baseline: int, timeout: float = 10.0) -> int:
    end = time.monotonic() + timeout
    while threading.active_count() > baseline and time.monotonic() < end:
        time.sleep(0.05)
    return threading.active_count()


def os_threads() -> int:
    """Threads of this process as the kernel counts them (wasmtime's own included)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0
