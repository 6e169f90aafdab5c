"""Runs: inferlets started by users, one thread and one wasmtime Store each.

``RunManager`` is the whole Python API the runs endpoints need::

    runs = RunManager(engine, store)           # loads (or first builds) the runner
    run = runs.start("alice", source, args={"n": 4})
    unsubscribe = run.subscribe(print)         # every event so far, then live ones
    run.send({"hello": "run"})                 # a message into the run
    run.wait(60); run.to_json()
    runs.get("alice", run.id); runs.list("alice"); runs.cancel("alice", run.id)
    runs.record("alice", run_id); runs.records("alice")   # live or past runs, as JSON

A run's life: ``queued`` (waiting for a thread slot) -> ``running`` ->
``finished`` | ``failed`` (with a one-line ``error``) | ``cancelled``.
Events, each ``{"seq", "time", "type", ...}``:

- ``status``: ``state`` (and ``error`` when it failed),
- ``output``: ``stream`` ("stdout"/"stderr") and ``text``: what the run printed,
- ``message``: ``body``, a JSON value the run sent to its owner,
- ``usage``: ``prefill_tokens``, ``decode_tokens``, ``forwards``, ``fuel``, ``output_bytes``.

A thread per run: wasm runs with the GIL released, and a forward call simply
blocks its thread on the engine's future, so every run's forwards land in the
engine's shared batches. Limits come from the owner's quota when the run
starts: ``max_runs`` (concurrent; QuotaExceeded beyond), ``fuel_per_run``,
``max_run_seconds``, ``memory_mb_per_run``; KV pages and token rates are
enforced by the engine on each forward; output is capped by
``max_output_bytes``.

Live runs are kept in memory (with the last ``keep_finished`` ended ones per
tenant); every run is also written to the store's run history when it is
created and at each change of state, so past runs can be listed after they
left memory or after a restart. At start the manager marks runs the store
still has as queued or running as ``failed``: the engine that ran them stopped
(a crash or SIGKILL; a clean stop cancels every run first).

This module never lets a tenant see another tenant's run: every lookup is by
(tenant, id), and a run id of someone else is NotFound, exactly like one
that never existed.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import secrets
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from ..errors import BadRequest, NotFound, PotluckError, QuotaExceeded, RequestTooLarge
from .world import MAX_MESSAGE_BYTES, Refused, RunImports

log = logging.getLogger("potluck.sandbox")

QUEUED, RUNNING, FINISHED, FAILED, CANCELLED = "queued", "running", "finished", "failed", "cancelled"
DONE_STATES = (FINISHED, FAILED, CANCELLED)

MAX_SOURCE_BYTES = 1 << 20
MAX_COMPONENT_BYTES = 64 << 20
MAX_ARGS_BYTES = 1 << 20
MAX_INBOX = 1024
MAX_TOPICS_PER_TENANT = 64
TOPIC_BACKLOG = 64
MAX_TOPIC_NAME = 128


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, timezone.utc).isoformat() if t else None


class Run:
    """One inferlet run. Read its state with ``to_json``; follow it with ``subscribe``."""

    def __init__(self, manager: "RunManager", run_id: str, tenant: str, quota, source: str,
                 component: bytes | None, args_json: str):
        self.manager = manager
        self.id = run_id
        self.tenant = tenant
        self.quota = quota
        self.source = source
        self.component = component
        self.args_json = args_json
        self.state = QUEUED
        self.error: str | None = None
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.usage = {"prefill_tokens": 0, "decode_tokens": 0, "forwards": 0, "fuel": 0, "output_bytes": 0}
        self.events: list[dict] = []
        self.cancel_requested = False
        self.killed_reason: str | None = None
        self.started_monotonic = time.monotonic()
        self.deadline = float("inf")
        self._kill_state = FAILED
        self._lock = threading.RLock()
        self._inbox: collections.deque[tuple[str, str]] = collections.deque()
        self._wake = threading.Condition(self._lock)
        self._subs: list[Callable[[dict], None]] = []
        self._done = threading.Event()
        self._seq = itertools.count()
        self._persist_lock = threading.Lock()
        self.thread: threading.Thread | None = None

    # ---------------------------------------------------------- public API
    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run has ended; False on timeout."""
        return self._done.wait(timeout)

    def to_json(self) -> dict:
        with self._lock:
            return {"id": self.id, "owner": self.tenant, "state": self.state, "error": self.error,
                    "created": _iso(self.created), "started": _iso(self.started), "finished": _iso(self.finished),
                    "usage": dict(self.usage), "events": len(self.events),
                    "kind": "component" if self.component is not None else "python"}

    def subscribe(self, fn: Callable[[dict], None], since: int = 0) -> Callable[[], None]:
        """Call ``fn(event)`` for every event with ``seq >= since`` (past ones at once), then live ones.

        ``fn`` runs on whichever thread produced the event, with the run's lock
        held: it must not block (hand the event to a queue or an event loop).
        Returns a function that unsubscribes.
        """
        with self._lock:
            for ev in self.events[since:]:
                self._deliver(fn, ev)
            self._subs.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subs:
                    self._subs.remove(fn)
        return unsubscribe

    def events_since(self, seq: int = 0) -> list[dict]:
        with self._lock:
            return list(self.events[seq:])

    def send(self, message) -> None:
        """Deliver a JSON-serialisable message to the run (its ``receive()``)."""
        body = json.dumps(message)
        if len(body) > MAX_MESSAGE_BYTES:
            raise RequestTooLarge("message_bytes", MAX_MESSAGE_BYTES,
                                  f"a message to a run is at most {MAX_MESSAGE_BYTES} bytes of JSON")
        with self._lock:
            if self.done:
                raise BadRequest(f"run {self.id} has ended ({self.state}); it takes no more messages",
                                 code="run_ended")
            if len(self._inbox) >= MAX_INBOX:
                raise QuotaExceeded("run_inbox", MAX_INBOX,
                                    f"run {self.id} has {MAX_INBOX} unread messages; wait for it to read them")
            self._inbox.append(("", body))
            self._wake.notify_all()

    def cancel(self) -> None:
        """Stop the run: at its next host call, or within one epoch tick of running code."""
        with self._lock:
            if self.done:
                return
            self.cancel_requested = True
            self._wake.notify_all()
        self.manager._cancel_queued(self)

    def _persist(self) -> None:
        """Write the run's current state to the store's run history (never raises).

        The snapshot is taken under ``_persist_lock``, so concurrent writers (the
        starting thread, the run's thread) land in order: the last write is the newest state.
        """
        store = self.manager.store
        if store is None:
            return
        with self._persist_lock:
            try:
                store.save_run(self.to_json())
            except Exception:
                log.exception("run %s: could not write its state to the run history", self.id)

    # --------------------------------------------- called from the run thread
    def _event(self, type_: str, **data) -> dict:
        with self._lock:
            ev = {"seq": next(self._seq), "time": time.time(), "type": type_, **data}
            self.events.append(ev)
            for fn in list(self._subs):
                self._deliver(fn, ev)
            return ev

    @staticmethod
    def _deliver(fn, ev) -> None:
        try:
            fn(ev)
        except Exception:       # a broken subscriber must not break the run
            log.exception("run event subscriber failed")

    def kill(self, state: str, reason: str) -> str:
        """End the run with ``reason``: the next epoch tick traps. The first reason wins."""
        with self._lock:
            if self.killed_reason is None:
                self.killed_reason = reason
                self._kill_state = state
            self._wake.notify_all()
            return self.killed_reason

    def check_alive(self) -> str | None:
        """The epoch callback's question, each tick: a reason to stop now, or None."""
        if self.killed_reason is not None:
            return self.killed_reason
        if self.cancel_requested:
            return self.kill(CANCELLED, "cancelled by its owner")
        if time.monotonic() > self.deadline:
            return self.kill(FAILED, self._time_limit_message())
        return None

    def _time_limit_message(self) -> str:
        return (f"the run hit its time limit (max_run_seconds = {self.quota.max_run_seconds}); "
                "time spent waiting for the model does not count")

    def extend_deadline(self, seconds: float) -> None:
        self.deadline += seconds

    def count_tokens(self, prefill: int, decode: int) -> None:
        u = self.usage
        u["prefill_tokens"] += prefill
        u["decode_tokens"] += decode
        u["forwards"] += 1
        if u["forwards"] % 64 == 0:
            self._event("usage", **u)

    def output(self, text: str, stream: str) -> None:
        if not text:
            return
        n = len(text.encode("utf-8", errors="replace"))
        limit = self.manager.max_output_bytes
        if self.usage["output_bytes"] + n > limit:
            room = max(0, limit - self.usage["output_bytes"])
            if room:
                self._event("output", stream=stream, text=text.encode()[:room].decode("utf-8", errors="ignore"))
                self.usage["output_bytes"] = limit
            raise Refused(self.kill(FAILED, f"the run printed more than its output limit of {limit} bytes"))
        self.usage["output_bytes"] += n
        self._event("output", stream=stream, text=text)

    def message_out(self, body: str) -> None:
        n = len(body)
        limit = self.manager.max_output_bytes
        if self.usage["output_bytes"] + n > limit:
            raise Refused(self.kill(FAILED, f"the run sent more than its output limit of {limit} bytes"))
        self.usage["output_bytes"] += n
        self._event("message", body=json.loads(body))

    def wasi_stdout(self, data: bytes) -> None:
        self._wasi(data, "stdout")

    def wasi_stderr(self, data: bytes) -> None:
        self._wasi(data, "stderr")

    def _wasi(self, data: bytes, stream: str) -> None:
        # Called by wasmtime's WASI stream: never raise.
        try:
            self.output(data.decode("utf-8", errors="replace"), stream)
        except Exception:
            pass

    def _wait_for(self, ready: Callable[[], bool], seconds: float) -> bool:
        """Wait (lock held) until ``ready()``, the run is stopped, or ``seconds`` pass; counts as run time."""
        end = time.monotonic() + max(0.0, seconds)
        while not ready():
            if self.cancel_requested or self.killed_reason is not None:
                raise Refused(self.killed_reason or self.kill(CANCELLED, "cancelled by its owner"))
            now = time.monotonic()
            if now >= self.deadline:
                raise Refused(self.kill(FAILED, self._time_limit_message()))
            if now >= end:
                return False
            self._wake.wait(min(end, self.deadline) - now)
        return True

    def receive(self, timeout: float, limit: int) -> list[tuple[str, str]]:
        with self._lock:
            if not self._wait_for(lambda: bool(self._inbox), timeout):
                return []
            return [self._inbox.popleft() for _ in range(min(limit, len(self._inbox)))]

    def sleep(self, seconds: float) -> None:
        if not seconds >= 0:
            raise Refused("sleep needs a non-negative number of seconds")
        with self._lock:
            self._wait_for(lambda: False, seconds)

    def _deliver_topic(self, topic: str, body: str) -> bool:
        with self._lock:
            if self.done or len(self._inbox) >= MAX_INBOX:
                return False
            self._inbox.append((topic, body))
            self._wake.notify_all()
            return True

    # ---------------------------------------------------------- the thread
    def _main(self) -> None:
        sandbox = self.manager.sandbox
        imports = RunImports(self)
        error: str | None = None
        fuel = 0
        try:
            with self._lock:
                self.state = RUNNING
                self.started = time.time()
                self.started_monotonic = time.monotonic()
                if self.quota.max_run_seconds is not None:
                    self.deadline = self.started_monotonic + self.quota.max_run_seconds
            self._persist()
            self._event("status", state=RUNNING)
            component = None
            if self.component is not None:
                try:
                    component = sandbox.compile_user_component(self.component)
                except Exception as e:
                    error = f"the component could not be compiled: {' '.join(str(e).split())[:300]}"
            if error is None and not self.cancel_requested:
                error, fuel = sandbox.execute(self, imports, component, self.source)
            elif self.cancel_requested:
                # Cancelled before its code ran: that is a cancelled run, not a finished one.
                self.kill(CANCELLED, "cancelled by its owner")
        except Exception as e:
            log.exception("run %s failed on the host side", self.id)
            error = f"internal error: {type(e).__name__}"
        finally:
            try:
                imports.cleanup()
            finally:
                self._end(error, fuel)

    def _end(self, error: str | None, fuel: int) -> None:
        with self._lock:
            if self.killed_reason is not None:
                state = self._kill_state
                error = None if state == CANCELLED else self.killed_reason
            elif self.cancel_requested and error is not None:
                state, error = CANCELLED, None      # the error was the cancel reaching a host call
            else:
                state = FAILED if error is not None else FINISHED
            self.usage["fuel"] = fuel
        self.manager._account(self, fuel)
        self._event("usage", **self.usage)
        with self._lock:
            self.state = state
            self.error = error
            self.finished = time.time()
            self.source = ""
            self._inbox.clear()
        self._persist()     # before the final event: whoever saw the run end finds it so after a restart
        with self._lock:
            self.component = None
            ev = {"state": state}
            if error is not None:
                ev["error"] = error
            self._event("status", **ev)
            self._done.set()
        self.manager._release(self)


class Topics:
    """Each tenant's message topics: runs of one owner publish to and subscribe to them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subs: dict[tuple[str, str], set[Run]] = {}
        self._backlog: dict[tuple[str, str], collections.deque] = {}

    def _check(self, run: Run, topic: str) -> tuple[str, str]:
        if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC_NAME:
            raise Refused(f"a topic name is 1 to {MAX_TOPIC_NAME} characters")
        key = (run.tenant, topic)
        if key not in self._backlog:
            n = sum(1 for t, _ in self._backlog if t == run.tenant)
            if n >= MAX_TOPICS_PER_TENANT:
                raise Refused(f"you have {MAX_TOPICS_PER_TENANT} topics, the limit")
            self._backlog[key] = collections.deque(maxlen=TOPIC_BACKLOG)
        return key

    def subscribe(self, run: Run, topic: str) -> None:
        with self._lock:
            key = self._check(run, topic)
            self._subs.setdefault(key, set()).add(run)
            backlog = [body for sender, body in self._backlog[key] if sender != run.id]
        for body in backlog:     # what was said before this run joined
            run._deliver_topic(topic, body)

    def publish(self, run: Run, topic: str, body: str) -> None:
        with self._lock:
            key = self._check(run, topic)
            self._backlog[key].append((run.id, body))
            subs = [r for r in self._subs.get(key, ()) if r is not run]
        for r in subs:
            r._deliver_topic(topic, body)

    def leave(self, run: Run) -> None:
        with self._lock:
            for key, subs in list(self._subs.items()):
                subs.discard(run)
                if not subs:
                    del self._subs[key]


class RunManager:
    """Starts, finds, lists and cancels runs, per tenant. Thread-safe."""

    def __init__(self, engine, store=None, *, sandbox=None, max_output_bytes: int = 1 << 20,
                 max_threads: int = 256, keep_finished: int = 20, history_limit: int = 100):
        from .host import Sandbox
        self.engine = engine
        self.store = store
        self.sandbox = sandbox or Sandbox()
        self.max_output_bytes = max_output_bytes
        self.max_threads = max_threads
        self.keep_finished = keep_finished
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
                f"the engine stopped while this run was running (restarted at {stamp})")
            if self.cut_off:
                log.warning("%d runs were cut off when the engine last stopped; marked failed", self.cut_off)

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
            args_json = json.dumps(args)
        except (TypeError, ValueError):
            raise BadRequest("args must be JSON-serialisable", code="invalid_args") from None
        if len(args_json) > MAX_ARGS_BYTES:
            raise RequestTooLarge("args_bytes", MAX_ARGS_BYTES, f"args are at most {MAX_ARGS_BYTES >> 10} KB of JSON")
        t = self.engine.tenants.get(tenant) or self.engine.tenant(tenant)
        quota = t.quota
        with self._lock:
            active = self._active.get(tenant, 0)
            if quota.max_runs is not None and active >= quota.max_runs:
                raise QuotaExceeded("max_runs", quota.max_runs,
                                    f"you have {active} runs going, your max_runs limit; "
                                    "wait for one to end or cancel one")
            run = Run(self, "r" + secrets.token_hex(6), tenant, quota, code, component, args_json)
            self._runs.setdefault(tenant, {})[run.id] = run
            self._active[tenant] = active + 1
            t.active_runs = self._active[tenant]
            self._trim(tenant)
            self._queue.append(run)
        # Written before it can start, so the history never lacks a run that ran; _persist orders
        # this write against the run thread's own (RUNNING, the end).
        run._persist()
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

    # ------------------------------------------------------------ internals
    def _trim(self, tenant: str) -> None:
        runs = self._runs[tenant]
        ended = [rid for rid, r in runs.items() if r.done]
        for rid in ended[:max(0, len(ended) - self.keep_finished)]:
            del runs[rid]

    def _launch(self) -> None:
        # with self._lock held
        while self._queue and self._threads < self.max_threads:
            run = self._queue.popleft()
            self._threads += 1
            run.thread = threading.Thread(target=run._main, name=f"potluck-run-{run.id}", daemon=True)
            run.thread.start()

    def _cancel_queued(self, run: Run) -> None:
        with self._lock:
            if run not in self._queue:
                return
            self._queue.remove(run)
            self._threads += 1      # _end releases a slot; this run never took one
        run.kill(CANCELLED, "cancelled by its owner")
        run._end(None, 0)

    def _account(self, run: Run, fuel: int) -> None:
        t = self.engine.tenants.get(run.tenant)
        if t is not None:
            with self._lock:
                t.fuel += fuel
        if self.engine.ledger is not None and fuel:
            self.engine.ledger.record(run.tenant, fuel=fuel)
            self.engine.ledger.flush_soon()

    def _release(self, run: Run) -> None:
        self.topics.leave(run)
        with self._lock:
            self._threads -= 1
            n = self._active.get(run.tenant, 1) - 1
            self._active[run.tenant] = n
            t = self.engine.tenants.get(run.tenant)
            if t is not None:
                t.active_runs = n
            self._launch()


__all__ = ["RunManager", "Run", "QUEUED", "RUNNING", "FINISHED", "FAILED", "CANCELLED", "PotluckError"]
