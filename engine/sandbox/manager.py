"""RunManager: starts, finds, lists and cancels inferlet runs, per tenant.

``RunManager`` is the whole Python API the runs endpoints need::

    runs = RunManager(engine, store)           # loads (or first builds) the runner
    run = runs.start("alice", source, args={"n": 4})
    unsubscribe = run.subscribe(print)         # every event so far, then live ones
    run.send({"hello": "run"})                 # a message into the run
    run.wait(60); run.to_json()
    runs.get("alice", run.id); runs.list("alice"); runs.cancel("alice", run.id)
    runs.record("alice", run_id); runs.records("alice")   # live or past runs, as JSON

A thread per run: wasm runs with the GIL released, and a forward call simply
blocks its thread on the engine's future, so every run's forwards land in the
engine's shared batches. Limits come from the owner's quota when the run
starts: ``max_runs`` (concurrent; QuotaExceeded beyond), ``fuel_per_run``,
``max_run_seconds``, ``memory_mb_per_run``, ``run_output_bytes``; KV pages
and token rates are enforced by the engine on each forward.

Live runs are kept in memory, with the last ``keep_finished`` ended ones per
tenant as long as their events together hold at most the owner's
``run_history_bytes`` (older ones leave memory first); every run is also
written to the store's run history when it is created and at each change of
state (at most ``keep_records`` per tenant), so past runs can be listed after
they left memory or after a restart. Each record names this engine
(``engine_name``): engines of a hub share one run history, and at start the
manager marks as ``failed`` only this engine's runs the store still has as
queued or running (and unnamed ones, from before engines were recorded): this
engine stopped while running them (a crash or SIGKILL; a clean stop cancels
every run first), while runs of the hub's other engines may still be live.

The manager counts each tenant's live runs itself, under its own lock, and
reports the count (and each run's fuel) to the engine through its port
(``port.py``): the engine's tenant counters belong to the batch-loop thread,
and nothing here assigns them.

This module never lets a tenant see another tenant's run: every lookup is by
(tenant, id), and a run id of someone else is NotFound, exactly like one
that never existed.
"""

from __future__ import annotations

import collections
import json
import logging
import secrets
import threading
import time
from datetime import datetime, timezone

from ..errors import BadRequest, NotFound, QuotaExceeded, RequestTooLarge
from .port import EnginePort
from .run import Run
from .topics import Topics

log = logging.getLogger("potluck.sandbox")

MAX_SOURCE_BYTES = 1 << 20
MAX_COMPONENT_BYTES = 64 << 20
MAX_ARGS_BYTES = 1 << 20


class RunManager:
    """Starts, finds, lists and cancels runs, per tenant. Thread-safe."""

    def __init__(self, engine, store=None, *, sandbox=None, max_threads: int = 256, keep_finished: int = 20,
                 history_limit: int = 100, keep_records: int = 1000, engine_name: str | None = None):
        from .wasm import Sandbox
        self.engine_name = engine_name if engine_name is not None else engine.name
        self.port = EnginePort(engine, store)
        self.store = store
        self.sandbox = sandbox or Sandbox()
        self.max_threads = max_threads
        self.keep_finished = keep_finished
        self.keep_records = keep_records
        self.topics = Topics()
        self._lock = threading.Lock()
        self._runs: dict[str, dict[str, Run]] = {}       # tenant -> id -> run (insertion order)
        self._active: dict[str, int] = {}                  # tenant -> runs queued or running
        self._queue: collections.deque[Run] = collections.deque()
        self._threads = 0
        self.history_limit = history_limit
        self.restarted = time.time()
        self.cut_off = 0        # runs found queued or running at start and marked failed
        if store is not None:
            stamp = datetime.fromtimestamp(self.restarted, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            self.cut_off = store.fail_unfinished_runs(
                f"the engine stopped while this run was running (restarted at {stamp})",
                engine=self.engine_name)
            if self.cut_off:
                log.warning("%d runs were cut off when engine %s last stopped; marked failed", self.cut_off,
                            self.engine_name)

    # ---------------------------------------------------------------- API
    def start(self, tenant: str, source: str | bytes, args: dict | None = None) -> Run:
        """Start an inferlet: Python source, or a prebuilt component's bytes, with JSON ``args``."""
        if isinstance(source, (bytes, bytearray)):
            if len(source) > MAX_COMPONENT_BYTES:
                raise RequestTooLarge("component_bytes", MAX_COMPONENT_BYTES,
                                      f"a component is at most {MAX_COMPONENT_BYTES >> 20} MB")
            code, component = "", bytes(source)
        elif isinstance(source, str):
            if len(source.encode("utf-8", errors="replace")) > MAX_SOURCE_BYTES:
                raise RequestTooLarge("source_bytes", MAX_SOURCE_BYTES,
                                      f"an inferlet's source is at most {MAX_SOURCE_BYTES >> 10} KB")
            code, component = source, None
        else:
            raise BadRequest("source must be Python source text or a component's bytes", code="invalid_source")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise BadRequest("args must be a JSON object", code="invalid_args")
        try:
            args_json = json.dumps(args, allow_nan=False)
        except (TypeError, ValueError):
            raise BadRequest("args must be plain JSON (no NaN or Infinity)", code="invalid_args") from None
        if len(args_json) > MAX_ARGS_BYTES:
            raise RequestTooLarge("args_bytes", MAX_ARGS_BYTES, f"args are at most {MAX_ARGS_BYTES >> 10} KB of JSON")
        quota = self.port.quota(tenant)
        with self._lock:
            active = self._active.get(tenant, 0)
            if quota.max_runs is not None and active >= quota.max_runs:
                raise QuotaExceeded("max_runs", quota.max_runs,
                                    f"you have {active} runs going, your max_runs limit; "
                                    "wait for one to end or cancel one")
            run = Run(self, "r" + secrets.token_hex(6), tenant, quota, code, component, args_json)
            self._runs.setdefault(tenant, {})[run.id] = run
            self._set_active(tenant, active + 1)
            self._trim(tenant)
            self._queue.append(run)
        # Written before it can start, so the history never lacks a run that ran; persist orders
        # this write against the run thread's own (RUNNING, the end).
        run.persist()
        with self._lock:
            self._launch()
        return run

    def get(self, tenant: str, run_id: str) -> Run:
        run = self._runs.get(tenant, {}).get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r} in your namespace")
        return run

    def list(self, tenant: str) -> list[Run]:
        """The tenant's runs, newest first (live ones and the last ``keep_finished`` ended ones)."""
        with self._lock:
            return list(reversed(list(self._runs.get(tenant, {}).values())))

    def list_all(self) -> list[Run]:
        """Every tenant's runs held in memory, newest first (the admin view of live runs)."""
        with self._lock:
            runs = [r for by_id in self._runs.values() for r in by_id.values()]
        runs.sort(key=lambda r: r.created, reverse=True)
        return runs

    def record(self, tenant: str, run_id: str) -> dict:
        """One of ``tenant``'s runs as JSON: the live run, else its entry in the run history."""
        try:
            return self.get(tenant, run_id).to_json()
        except NotFound:
            pass
        found = self.store.get_run(tenant, run_id) if self.store is not None else None
        if found is None:
            raise NotFound(f"no run {run_id!r} in your namespace")
        return found

    def records(self, tenant: str | None, limit: int | None = None) -> list[dict]:
        """Runs as JSON, newest first: live ones, then past ones from the run history.

        ``tenant=None`` is every tenant's (admins). At most ``limit`` (``history_limit``) entries.
        """
        limit = self.history_limit if limit is None else limit
        live = self.list(tenant) if tenant is not None else self.list_all()
        out = [r.to_json() for r in live]
        seen = {r["id"] for r in out}
        if self.store is not None:
            out += [r for r in self.store.list_runs(tenant, limit=limit + len(seen)) if r["id"] not in seen]
        out.sort(key=lambda r: r["created"] or "", reverse=True)
        return out[:limit]

    def cancel(self, tenant: str, run_id: str) -> Run:
        run = self.get(tenant, run_id)
        run.cancel()
        return run

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel every run and wait for their threads."""
        with self._lock:
            runs = [r for by_id in self._runs.values() for r in by_id.values() if not r.done]
        for r in runs:
            r.cancel()
        end = time.monotonic() + timeout
        for r in runs:
            r.wait(max(0.0, end - time.monotonic()))

    def stats(self) -> dict:
        with self._lock:
            return {"threads": self._threads, "queued": len(self._queue),
                    "active_by_tenant": {t: n for t, n in self._active.items() if n}}

    # ------------------------------------------- what a Run asks (run.RunSite)
    def save_record(self, record: dict) -> None:
        if self.store is not None:
            self.store.save_run(record, engine=self.engine_name)

    def unqueue(self, run: Run) -> bool:
        with self._lock:
            if run not in self._queue:
                return False
            self._queue.remove(run)
            self._threads += 1      # ended() releases a slot; this run never took one
        return True

    def charge(self, run: Run, fuel: int) -> None:
        if fuel:
            self.port.charge_fuel(run.tenant, fuel)

    def ended(self, run: Run) -> None:
        self.topics.leave(run)
        with self._lock:
            self._threads -= 1
            self._set_active(run.tenant, self._active.get(run.tenant, 1) - 1)
            self._trim(run.tenant, ending=run)
            self._launch()
        if self.store is not None:
            try:
                self.store.prune_runs(run.tenant, self.keep_records)
            except Exception:
                log.exception("could not prune the run history of %s", run.tenant)

    def held_bytes(self, tenant: str) -> int:
        """What the tenant's runs in memory hold in events (live and ended)."""
        with self._lock:
            return sum(r.held_bytes for r in self._runs.get(tenant, {}).values())

    # ------------------------------------------------------------ internals
    def _set_active(self, tenant: str, n: int) -> None:
        # with self._lock held: the engine hears the counts in the order they changed
        self._active[tenant] = n
        self.port.note_active_runs(tenant, n)

    def _trim(self, tenant: str, ending: Run | None = None) -> None:
        # with self._lock held: keep the newest ended runs within keep_finished and run_history_bytes
        runs = self._runs[tenant]
        ended = [r for r in runs.values() if r.done or r is ending]
        budget = ended[-1].quota.run_history_bytes if ended else None
        kept, held = 0, 0
        for r in reversed(ended):
            held += r.held_bytes
            kept += 1
            if kept > self.keep_finished or (budget is not None and held > budget):
                del runs[r.id]

    def _launch(self) -> None:
        # with self._lock held
        while self._queue and self._threads < self.max_threads:
            run = self._queue.popleft()
            self._threads += 1
            run.thread = threading.Thread(target=run.main, name=f"potluck-run-{run.id}", daemon=True)
            run.thread.start()
