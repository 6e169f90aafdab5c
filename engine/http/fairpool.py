"""``FairPool``: the request threads, handed out fairly between tenants.

Every HTTP handler call that would block the IOLoop (an engine call that waits on the
batch loop, the database, tokenizing a prompt) runs on these threads. A plain thread
pool is one FIFO queue: 48 slow ``PUT /api/contexts`` from one tenant held all 16
threads and queued ahead of everyone, and another tenant's ``GET /api/me`` took 23 s
instead of 0.01 s. Here every *lane* has its own FIFO queue, a free thread takes the
head of the next lane in round-robin order, and no *group* of lanes holds more than
``per_group`` threads at once: whatever one tenant sends, the other threads stay free
for the others, and a newcomer's call waits for at most one call per busy lane.

The lanes:

- ``tenant_lane(name)``: one tenant's work; a group of its own.
- ``admission_lane(credential)``: work before the tenant is known (checking the token
  itself). One lane per credential, so a flood with one token, valid or not, queues
  behind itself; all admission lanes together are one group, so a flood of many
  different bad tokens cannot take more than one share of the threads either.
- ``SERVICE_LANE``: the service's own work (start, stop, cancelling what a client left).

``submit_to(lane, fn, *args)`` names the lane. ``submit(fn, *args)``, the
``concurrent.futures.Executor`` interface for code that takes an executor (the
authenticator, ``loop.run_in_executor``), uses the lane of the current context:
``LANE``, a ContextVar the HTTP base sets for each request (asyncio copies it into
every task, so one request's lane never leaks into another's).

A call whose future was cancelled while it waited (its awaiting coroutine was
cancelled), or whose ``gone()`` says its client left, never runs. ``pending(lane)``
counts a lane's calls queued or running, and drops as each future settles however it
settles: the HTTP door counts it against a tenant's ``max_concurrent_requests``.

This module never looks inside a call, never decides quotas, never touches the engine.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from concurrent.futures import Executor, Future
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import Cancelled

Lane = tuple[str, str]          # (kind, key): ("tenant", name), ("admission", digest), ("service", "")

SERVICE_LANE: Lane = ("service", "")
LANE: ContextVar[Lane] = ContextVar("potluck_lane", default=SERVICE_LANE)


def tenant_lane(name: str) -> Lane:
    return ("tenant", name)


def admission_lane(credential: str) -> Lane:
    # A digest: the queue never holds a credential in the clear (a log or a repr could show it).
    return ("admission", hashlib.sha256(credential.encode("utf-8", "replace")).hexdigest()[:16])


def group_of(lane: Lane) -> Lane:
    """The lanes that share one thread cap: a tenant alone; all admission lanes together."""
    return lane if lane[0] == "tenant" else (lane[0], "")


@dataclass(slots=True)
class _Call:
    fn: Callable
    args: tuple
    future: Future
    gone: Callable[[], bool] | None


class FairPool(Executor):
    """``threads`` worker threads; per-lane FIFO queues served round-robin; ``per_group`` cap."""

    def __init__(self, threads: int, per_group: int, *, name: str = "potluck-http"):
        if threads < 1:
            raise ValueError(f"request_threads must be at least 1, got {threads}")
        self.threads = threads
        self.per_group = max(1, min(per_group, threads))
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queues: dict[Lane, deque[_Call]] = {}
        self._turns: list[Lane] = []                 # lanes with queued calls, whose turn is next first
        self._running: dict[Lane, int] = {}          # group -> calls running
        self._pending: dict[Lane, int] = {}          # lane -> calls queued or running
        self._closed = False
        self._workers = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(threads)]
        for w in self._workers:
            w.start()

    # ------------------------------------------------------------ submitting
    def submit_to(self, lane: Lane, fn: Callable, /, *args: Any, gone: Callable[[], bool] | None = None) -> Future:
        """Queue ``fn(*args)`` on ``lane``; ``gone()``, checked as it starts, skips a call nobody awaits."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the request threads are shut down: the service is stopping")
            queue = self._queues.get(lane)
            if queue is None:
                queue = self._queues[lane] = deque()
                self._turns.append(lane)
            queue.append(_Call(fn, args, future, gone))
            self._pending[lane] = self._pending.get(lane, 0) + 1
            self._wake.notify()
        # However the future settles (result, error, cancelled in the queue), the count drops once.
        future.add_done_callback(lambda _, lane=lane: self._settled(lane))
        return future

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """The ``Executor`` interface: ``fn`` on the current context's lane (``LANE``)."""
        if kwargs:
            return self.submit_to(LANE.get(), lambda: fn(*args, **kwargs))
        return self.submit_to(LANE.get(), fn, *args)

    def _settled(self, lane: Lane) -> None:
        with self._lock:
            n = self._pending[lane] - 1
            if n:
                self._pending[lane] = n
            else:
                del self._pending[lane]

    # ------------------------------------------------------------ looking
    def pending(self, lane: Lane) -> int:
        """The lane's calls queued or running (done ones never count)."""
        with self._lock:
            return self._pending.get(lane, 0)

    def running(self, lane: Lane) -> int:
        """Threads now held by the lane's group."""
        with self._lock:
            return self._running.get(group_of(lane), 0)

    def queued(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    # ------------------------------------------------------------ the threads
    def _next(self) -> tuple[Lane, _Call] | None:
        """The head call of the first lane in turn whose group has a thread to spare (lock held)."""
        i = 0
        while i < len(self._turns):
            lane = self._turns[i]
            group = group_of(lane)
            if self._running.get(group, 0) >= self.per_group:
                i += 1              # keeps its place: first in line when its group's thread comes back
                continue
            queue = self._queues[lane]
            call = queue.popleft()
            del self._turns[i]
            if queue:
                self._turns.append(lane)     # served: to the back of the line
            else:
                del self._queues[lane]
            if not call.future.set_running_or_notify_cancel():
                i = 0                # cancelled while it waited: nobody wants it; look again
                continue
            self._running[group] = self._running.get(group, 0) + 1
            return group, call
        return None

    def _work(self) -> None:
        while True:
            with self._lock:
                picked = self._next()
                while picked is None:
                    if self._closed and not self._queues:
                        return
                    self._wake.wait()
                    picked = self._next()
            group, call = picked
            try:
                self._run(call)
            finally:
                with self._lock:
                    self._running[group] -= 1
                    if not self._running[group]:
                        del self._running[group]
                    if self._closed:
                        self._wake.notify_all()      # let idle threads see the end
            del call, picked       # a finished call's arguments are not kept alive by an idle thread

    @staticmethod
    def _run(call: _Call) -> None:
        # Never under the lock: settling the future runs its callbacks (``_settled`` takes the lock).
        if call.gone is not None and call.gone():
            call.future.set_exception(Cancelled("the client went away before its request was served; "
                                                "nothing was done"))
            return
        try:
            result = call.fn(*call.args)
        except BaseException as e:          # the caller gets it; the thread lives on
            call.future.set_exception(e)
        else:
            call.future.set_result(result)

    # ------------------------------------------------------------ stopping
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; queued ones run (or are cancelled with ``cancel_futures``); threads end."""
        dropped: list[_Call] = []
        with self._lock:
            self._closed = True
            if cancel_futures:
                for queue in self._queues.values():
                    dropped.extend(queue)
                self._queues.clear()
                self._turns.clear()
            self._wake.notify_all()
        for call in dropped:
            call.future.cancel()
        if wait:
            for w in self._workers:
                w.join()
