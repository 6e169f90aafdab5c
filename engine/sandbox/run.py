"""Run: one inferlet run, its state, its events, its inbox, and the thread it executes on.

A run's life: ``queued`` (waiting for a thread slot) -> ``running`` ->
``finished`` | ``failed`` (with a one-line ``error``) | ``cancelled``
(the states are ``engine/protocol.py``'s). Events, each
``{"seq", "time", "type", ...}``:

- ``status``: ``state`` (and ``error`` when it failed),
- ``output``: ``stream`` ("stdout"/"stderr") and ``text``: what the run printed,
- ``message``: ``body``, a JSON value the run sent to its owner,
- ``usage``: ``prefill_tokens``, ``decode_tokens``, ``forwards``, ``fuel``, ``output_bytes``.

Everything a run makes the engine hold is bounded by its owner's quota: what
it prints, sends and publishes counts against ``run_output_bytes`` (a
message by its JSON length or, if larger, the memory its value takes);
printed text is gathered into one ``output`` event per ``COALESCE_BYTES`` or
``COALESCE_SECONDS`` (printing a byte at a time makes a few hundred events,
not a million; the age doubles with every ``SLOWER_EVERY`` events, so a run
printing a token at a time for its whole ``max_run_seconds`` stays far under
the cap), and a run makes at most ``MAX_EVENTS`` events. ``held_bytes``
estimates the memory its events take, so the manager can bound what ended
runs keep (``run_history_bytes``). Its inbox holds at most ``MAX_INBOX``
messages and ``MAX_INBOX_BYTES``.

A run talks to its manager only through ``RunSite`` (below): the engine port
and topics its host calls use, its run history, and three moments of its life
(taken off the queue, fuel used, ended). It never touches the engine or
another run's state.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import sys
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Protocol

from ..errors import BadRequest, QuotaExceeded, RequestTooLarge
from ..protocol import CANCELLED, DONE_STATES, FAILED, FINISHED, QUEUED, RUNNING
from .host_calls import MAX_MESSAGE_BYTES, Refused, RunImports, strict_json

if TYPE_CHECKING:
    from .port import EnginePort
    from .topics import Topics
    from .wasm import Sandbox

log = logging.getLogger("potluck.sandbox")

MAX_INBOX = 1024                 # unread messages in a run's inbox
MAX_INBOX_BYTES = 1 << 20        # and their bytes
MAX_EVENTS = 8192                # events one run may make (printed text is coalesced first)
COALESCE_BYTES = 4096            # printed text is gathered into events of about this size...
COALESCE_SECONDS = 0.05          # ...or this age, whichever comes first,
SLOWER_EVERY = 1024              # and the age doubles every this many events (up to 32x)
EVENT_OVERHEAD = 320             # bytes an event takes besides its text (dict, seq, time): counted too
USAGE_EVENT_SECONDS = 1.0        # periodic usage events at most this often


def _is_final(ev: dict) -> bool:
    return ev["type"] == "status" and ev["state"] in DONE_STATES


def value_bytes(obj) -> int:
    """Memory a parsed JSON value takes (a message of "[[],[],...]" takes ~20x its text)."""
    total, stack = 0, [obj]
    while stack:
        x = stack.pop()
        total += sys.getsizeof(x)
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return total


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, timezone.utc).isoformat() if t else None


class RunSite(Protocol):
    """What a run asks of its manager (``RunManager`` is one)."""

    port: "EnginePort"
    topics: "Topics"
    sandbox: "Sandbox"

    def save_record(self, record: dict) -> None:
        """Write a run's JSON to the run history (if there is one); may raise."""

    def unqueue(self, run: "Run") -> bool:
        """Take a run that never started off the queue; False if it was not queued."""

    def charge(self, run: "Run", fuel: int) -> None:
        """The run used ``fuel``: count it on its owner."""

    def ended(self, run: "Run") -> None:
        """The run has ended: free its slot and leave its topics."""


class Run:
    """One inferlet run. Read its state with ``to_json``; follow it with ``subscribe``."""

    def __init__(self, manager: RunSite, run_id: str, tenant: str, quota, source: str,
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
        self.held_bytes = 0                 # estimated memory of ``events`` (see EVENT_OVERHEAD)
        self._pending_stream: str | None = None     # printed text not yet made into an event
        self._pending: list[str] = []
        self._pending_chars = 0
        self._pending_since = 0.0
        self._last_usage_event = 0.0
        self._inbox_bytes = 0
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

        The final ``status`` event always comes, whatever ``since`` says, so a follower
        that asked for events past the end still learns how the run ended.
        ``fn`` runs on whichever thread produced the event, with the run's lock
        held: it must not block (hand the event to a queue or an event loop).
        Returns a function that unsubscribes.
        """
        def wanted(ev: dict) -> None:
            if ev["seq"] >= since or _is_final(ev):
                fn(ev)
        with self._lock:
            past = self.events[since:]
            if not past and self.events and _is_final(self.events[-1]):
                past = self.events[-1:]
            for ev in past:
                self._deliver_event(fn, ev)
            self._subs.append(wanted)

        def unsubscribe() -> None:
            with self._lock:
                if wanted in self._subs:
                    self._subs.remove(wanted)
        return unsubscribe

    def events_since(self, seq: int = 0) -> list[dict]:
        with self._lock:
            return list(self.events[seq:])

    def send(self, message) -> None:
        """Deliver a JSON-serialisable message to the run (its ``receive()``)."""
        try:
            body = json.dumps(message, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise BadRequest(f"a message to a run must be plain JSON (no NaN or Infinity): {e}",
                             code="invalid_json") from None
        if len(body) > MAX_MESSAGE_BYTES:
            raise RequestTooLarge("message_bytes", MAX_MESSAGE_BYTES,
                                  f"a message to a run is at most {MAX_MESSAGE_BYTES} bytes of JSON")
        with self._lock:
            if self.done:
                raise BadRequest(f"run {self.id} has ended ({self.state}); it takes no more messages",
                                 code="run_ended")
            if len(self._inbox) >= MAX_INBOX or self._inbox_bytes + len(body) > MAX_INBOX_BYTES:
                raise QuotaExceeded("run_inbox", MAX_INBOX,
                                    f"run {self.id} has {len(self._inbox)} unread messages ({self._inbox_bytes} "
                                    f"bytes; at most {MAX_INBOX} and {MAX_INBOX_BYTES} bytes); wait for it to "
                                    "read them")
            self._inbox.append(("", body))
            self._inbox_bytes += len(body)
            self._wake.notify_all()

    def cancel(self) -> None:
        """Stop the run: at its next host call, or within one epoch tick of running code."""
        with self._lock:
            if self.done:
                return
            self.cancel_requested = True
            self._wake.notify_all()
        if self.manager.unqueue(self):
            self.kill(CANCELLED, "cancelled by its owner")
            self._end(None, 0)

    def persist(self) -> None:
        """Write the run's current state to the run history (never raises).

        The snapshot is taken under ``_persist_lock``, so concurrent writers (the
        starting thread, the run's thread) land in order: the last write is the newest state.
        """
        with self._persist_lock:
            try:
                self.manager.save_record(self.to_json())
            except Exception:
                log.exception("run %s: could not write its state to the run history", self.id)

    # --------------------------------------------- called from the run thread
    def _event(self, type_: str, **data) -> dict:
        with self._lock:
            self._flush_output()        # printed text first: events stay in the order they happened
            return self._append(type_, data, EVENT_OVERHEAD)

    def _append(self, type_: str, data: dict, size: int) -> dict:
        # with self._lock held
        ev = {"seq": next(self._seq), "time": time.time(), "type": type_, **data}
        self.events.append(ev)
        self.held_bytes += size
        for fn in list(self._subs):
            self._deliver_event(fn, ev)
        return ev

    def _flush_output(self) -> None:
        # with self._lock held: the printed text gathered so far becomes one event
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._pending_chars = 0
            self._append("output", {"stream": self._pending_stream, "text": text},
                         EVENT_OVERHEAD + sys.getsizeof(text))

    def _flush_age(self) -> float:
        return COALESCE_SECONDS * (1 << min(len(self.events) // SLOWER_EVERY, 5))

    def flush_output(self, max_age: float = 0.0) -> None:
        """Make the printed text gathered so far an event (if it is at least ``max_age`` seconds old)."""
        if self._pending and time.monotonic() - self._pending_since >= max_age:
            with self._lock:
                self._flush_output()

    @staticmethod
    def _deliver_event(fn, ev) -> None:
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
        if self._pending:       # a run computing for long still shows what it printed
            self.flush_output(self._flush_age())
        return None

    def _time_limit_message(self) -> str:
        return (f"the run hit its time limit (max_run_seconds = {self.quota.max_run_seconds}); "
                "only time spent waiting for the model does not count")

    def extend_deadline(self, seconds: float) -> None:
        self.deadline += seconds

    def count_tokens(self, prefill: int, decode: int) -> None:
        u = self.usage
        u["prefill_tokens"] += prefill
        u["decode_tokens"] += decode
        u["forwards"] += 1
        if u["forwards"] % 64 == 0:
            now = time.monotonic()
            if now - self._last_usage_event >= USAGE_EVENT_SECONDS and len(self.events) < MAX_EVENTS // 2:
                self._last_usage_event = now
                self._event("usage", **u)

    def charge_output(self, n: int, what: str) -> None:
        """Count ``n`` bytes the run made the engine hold (printed, sent, published) against ``run_output_bytes``."""
        limit = self.quota.run_output_bytes
        if limit is not None and self.usage["output_bytes"] + n > limit:
            self.usage["output_bytes"] = max(self.usage["output_bytes"], limit)
            raise Refused(self.kill(FAILED, f"the run {what} more than its output limit of {limit} bytes "
                                            "(run_output_bytes)"))
        self.usage["output_bytes"] += n

    def _check_events(self) -> None:
        if len(self.events) >= MAX_EVENTS:
            raise Refused(self.kill(FAILED, f"the run made more than {MAX_EVENTS} events (prints and messages); "
                                            "print larger pieces or send fewer messages"))

    def output(self, text: str, stream: str) -> None:
        if not text:
            return
        data = text.encode("utf-8", errors="replace")
        with self._lock:
            self._check_events()
            limit = self.quota.run_output_bytes
            room = None if limit is None else limit - self.usage["output_bytes"]
            if room is not None and len(data) > room:
                # What fits is still shown, so the owner sees where it stopped.
                self._add_output(data[:max(0, room)].decode("utf-8", errors="ignore"), stream)
                self._flush_output()
            self.charge_output(len(data), "printed")
            self._add_output(text, stream)

    def _add_output(self, text: str, stream: str) -> None:
        # with self._lock held
        if not text:
            return
        if self._pending and self._pending_stream != stream:
            self._flush_output()
        if not self._pending:
            self._pending_stream, self._pending_since = stream, time.monotonic()
        self._pending.append(text)
        self._pending_chars += len(text)
        if self._pending_chars >= COALESCE_BYTES or time.monotonic() - self._pending_since >= self._flush_age():
            self._flush_output()

    def message_out(self, body: str) -> None:
        value = strict_json(body, "a message")
        size = value_bytes(value)
        with self._lock:
            self._check_events()
            self.charge_output(max(len(body), size), "sent")
            self._flush_output()
            self._append("message", {"body": value}, EVENT_OVERHEAD + size)

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
            out = [self._inbox.popleft() for _ in range(min(limit, len(self._inbox)))]
            self._inbox_bytes -= sum(len(body) for _, body in out)
            return out

    def sleep(self, seconds: float) -> None:
        if not seconds >= 0:
            raise Refused("sleep needs a non-negative number of seconds")
        with self._lock:
            self._wait_for(lambda: False, seconds)

    def deliver(self, topic: str, body: str) -> bool:
        """A message published on one of the owner's topics, into the inbox; False if it did not fit."""
        with self._lock:
            if self.done or len(self._inbox) >= MAX_INBOX or self._inbox_bytes + len(body) > MAX_INBOX_BYTES:
                return False
            self._inbox.append((topic, body))
            self._inbox_bytes += len(body)
            self._wake.notify_all()
            return True

    # ---------------------------------------------------------- the thread
    def main(self) -> None:
        """The run's thread: execute the inferlet, then end the run whatever happened."""
        sandbox = self.manager.sandbox
        imports = RunImports(self, self.manager.port, self.manager.topics)
        error: str | None = None
        fuel = 0
        try:
            with self._lock:
                self.state = RUNNING
                self.started = time.time()
                self.started_monotonic = time.monotonic()
                if self.quota.max_run_seconds is not None:
                    self.deadline = self.started_monotonic + self.quota.max_run_seconds
            self.persist()
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
        self.manager.charge(self, fuel)
        self._event("usage", **self.usage)
        with self._lock:
            self.state = state
            self.error = error
            self.finished = time.time()
            self.source = ""
            self.args_json = ""         # up to 1 MiB: an ended run keeps only its events
            self._inbox.clear()
            self._inbox_bytes = 0
        self.persist()     # before the final event: whoever saw the run end finds it so after a restart
        with self._lock:
            self.component = None
            ev = {"state": state}
            if error is not None:
                ev["error"] = error
            self._event("status", **ev)
        # Before waiters wake: whoever saw the run end finds its slot, topics and memory released.
        try:
            self.manager.ended(self)
        finally:
            self._done.set()
