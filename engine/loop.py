"""The batch loop: the one thread that owns the model, the KV pool and the scheduler.

Everything that touches them runs here (torch called from a second thread
ran ~1.5x slower on a small CPU, and one owner needs no locks). Other
threads (HTTP requests, inferlet runs, tests) reach the loop through
``call`` (a command and a future: wait for the answer) or ``post`` (a
command without an answer, for counters a run thread reports).

Each step: ``compose`` (the composer and the scheduler pick sequences and
chunk sizes under the token budget and the latency target; their pages are
prepared as they are admitted) -> ``run``
(one forward of the model runner) -> ``commit`` (tokens into contexts,
usage to the tenants) -> ``deliver`` (each finished feed's ``Sequence.done``).

The loop decides no policy: who goes next is the scheduler's, what a
tenant may hold is the tenant registry's and the pool's.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable

from .composer import StepComposer, StepPlan, StepShape
from .errors import EngineUnavailable, PotluckError, QuotaExceeded
from .model_runner import Chunk, Runtime, StepAborted
from .pages import PoolExhausted
from .scheduler import FairScheduler
from .sequence import Sequence
from .tenants import TenantRegistry

log = logging.getLogger("potluck.engine")

# A tenant preempts a lone flood's step at most once in this many seconds.
PREEMPT_INTERVAL = 1.0


class BatchLoop:
    def __init__(self, scheduler: FairScheduler, composer: StepComposer, tenants: TenantRegistry,
                 forward_linger_ms: float):
        self.scheduler = scheduler
        self.composer = composer
        self.tenants = tenants
        self.forward_linger_ms = forward_linger_ms
        self.rt: Runtime | None = None
        self.stats = {"steps": 0, "batch_tokens": 0, "batch_seqs": 0, "last_step_ms": 0.0,
                      "prefill_tokens": 0, "decode_tokens": 0, "prefix_hit_tokens": 0, "preempted_steps": 0}
        self.step_listeners: list[Callable[[dict], None]] = []
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._start_error: BaseException | None = None
        self._arrivals = itertools.count()
        self._last_accrual = time.monotonic()
        self._awaited: set[int] = set()   # sequences whose forward the last step served, not yet fed again
        # The step running now, if a newcomer may preempt it: (start, plan, its tenants, abort flag).
        self._inflight: tuple[float, StepPlan, frozenset, threading.Event] | None = None
        self._redoing = False                     # the last step was preempted: the next one runs whole
        self._preempted_by: dict[str, float] = {}  # tenant -> when it last preempted a step

    # ----------------------------------------------------------- lifecycle
    def start(self, setup: Callable[[], Runtime], timeout: float) -> None:
        """Start the thread; ``setup`` runs on it first (model loading) and gives the runtime."""
        self._thread = threading.Thread(target=self._main, args=(setup,), name="potluck-batch-loop", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise EngineUnavailable("the engine did not become ready in time (model loading?)")
        if self._start_error is not None:
            raise self._start_error

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping = True
        self._commands.put(None)
        self._thread.join(timeout=60)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def call(self, fn, *args, timeout: float | None = 300.0, newcomer: tuple[str, int] | None = None):
        """Run ``fn(*args)`` on the loop thread and return its result.

        ``newcomer`` (tenant, prompt tokens): ``fn`` queues a new request, which may preempt the step
        in flight (``preempt_for``), asked once the command is queued so the loop finds it.
        """
        if threading.current_thread() is self._thread:
            return fn(*args)
        if not self.running:
            raise EngineUnavailable("the engine is not running")
        fut: Future = Future()
        self._commands.put((fn, args, fut))
        if newcomer is not None:
            self.preempt_for(*newcomer)
        return fut.result(timeout)

    def post(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the loop thread soon; nobody waits for it."""
        if threading.current_thread() is self._thread:
            fn(*args)
        elif self.running:
            self._commands.put((fn, args, None))

    # ------------------------------------------------------------ sequences
    def submit(self, seq: Sequence, tokens: list[int], arrived: float | None = None) -> int:
        """Queue ``tokens`` as ``seq``'s next feed; returns how many prompt tokens the prefix cache had.

        ``arrived`` (``time.monotonic()``): when the request reached the engine, if before now (it waited
        for the step in flight): the composer counts that wait against the request's latency target.
        """
        seq.feed(tokens, next(self._arrivals))
        if arrived is not None:
            seq.queued_at = min(seq.queued_at, arrived)
        # A scored feed computes every position: cached pages would have no logits to give.
        matched = 0 if seq.decode or seq.score >= 0 else self.rt.pool.reuse_prefix(seq.ctx, tokens)
        if matched:
            self.stats["prefix_hit_tokens"] += matched
            seq.tokens = tokens[matched:]
        if seq.future is not None:
            self._awaited.discard(seq.id)
        self.scheduler.add(seq)
        return matched

    def preempt_for(self, tenant: str, tokens: int) -> bool:
        """Any thread: a request of ``tokens`` from ``tenant`` is about to be queued; abandon the step in flight for it?

        Only a step without latency-sensitive work (a lone flood's, up to the flood cap), only for a
        tenant with nothing pending and not in that step, whose prompt fits one step, and only when
        the step has more left to run than a light user's decode target: else the newcomer waits
        for it, as it would for any step. The step stops at its next layer and is redone after the
        newcomer's first step. Others always progress: held steps and the step after a preemption
        are never preempted, and a tenant preempts at most once per ``PREEMPT_INTERVAL``.
        """
        inflight = self._inflight
        if inflight is None or self.rt is None:
            return False
        started, plan, tenants, abort = inflight
        if tenant in tenants or self.scheduler.queues.get(tenant) or tokens > self.rt.profile.batch_token_budget:
            return False
        now = time.monotonic()
        # Whether the request will be refused is known only on the loop: a tenant sending refused
        # requests (over its rate, a model it may not use) must not stall others' steps with them.
        if now - self._preempted_by.get(tenant, -PREEMPT_INTERVAL) < PREEMPT_INTERVAL:
            return False
        composer = self.composer
        left = plan.predicted - (now - started)
        if left <= composer.target_for(composer.cost.predict(StepShape().plus(0, 1))):
            return False
        self._preempted_by[tenant] = now
        abort.set()
        return True

    def withdraw(self, seq: Sequence) -> None:
        """Take ``seq``'s feed out of the scheduler (its owner ended it)."""
        seq.cancelled = True
        self.scheduler.remove(seq)

    def awaited(self, seq: Sequence) -> None:
        """An inferlet got its answer for ``seq``: the next step may wait a moment for its next feed."""
        self._awaited.add(seq.id)

    # ---------------------------------------------------------------- loop
    def _main(self, setup: Callable[[], Runtime]) -> None:
        try:
            self.rt = setup()
        except BaseException as e:   # report to start(), never die silently
            self._start_error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stopping:
                self._run_commands(block=self.scheduler.depth() == 0)
                if self._stopping:
                    break
                self._gather_forwards()
                self._accrue_page_seconds()
                if self.scheduler.depth():
                    self._step()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        err = EngineUnavailable("the engine is shutting down; retry when it is back")
        for seq in list(self.scheduler.pending()):
            self.scheduler.remove(seq)
            seq.done(None, err)
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
            if cmd is not None and cmd[2] is not None:
                cmd[2].set_exception(err)

    def _run_commands(self, block: bool) -> None:
        while True:
            try:
                cmd = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
            except queue.Empty:
                return
            if cmd is None:
                return
            self._run_command(cmd)
            block = False

    @staticmethod
    def _run_command(cmd) -> None:
        fn, args, fut = cmd
        try:
            result = fn(*args)
        except BaseException as e:
            if fut is None:
                log.exception("engine command %s failed", getattr(fn, "__name__", fn))
            else:
                fut.set_exception(e)
        else:
            if fut is not None:
                fut.set_result(result)

    def _gather_forwards(self) -> None:
        """Give callers whose forward the last step served a moment to send their next one.

        Waiting is per sequence: runs served in the previous step must not
        count as the answer of runs served in this one, or two half-batches
        would keep alternating. The wait is ``forward_linger_ms`` after the
        latest answer, not after the step: with many runs on few cores the
        answers trickle in (bench_throughput: 32 runs made 18 sequences per
        step with a fixed 10 ms wait), while a run that stays away costs at
        most one linger after the last answer, and the whole wait never
        exceeds four lingers.
        """
        if not self._awaited or self.forward_linger_ms <= 0 or self.composer.holding():
            # While steps are held short for a light user, waiting to batch more would only delay it.
            self._awaited.clear()
            return
        linger = self.forward_linger_ms / 1000
        end = time.monotonic() + linger
        cap = end + 3 * linger
        while self._awaited and not self._stopping:
            left = min(end, cap) - time.monotonic()
            if left <= 0:
                break
            try:
                cmd = self._commands.get(timeout=left)
            except queue.Empty:
                break
            if cmd is None:
                break
            waiting = len(self._awaited)
            self._run_command(cmd)
            if len(self._awaited) < waiting:
                end = time.monotonic() + linger
        self._awaited.clear()

    # ---------------------------------------------------------------- step
    def _step(self) -> None:
        picked, plan, failed = self._compose()
        for seq, err in failed:
            self.scheduler.remove(seq)
            seq.done(None, err)
        if not picked:
            if not failed:
                # Everything pending is blocked (pages pinned by others, cancelled):
                # drop cancelled feeds and wait for commands rather than spin.
                for seq in [s for s in self.scheduler.pending() if s.cancelled]:
                    self.scheduler.remove(seq)
                self._run_commands(block=True)
            return
        chunks = [_chunk(seq, n) for seq, n in picked]
        abort = None
        if plan.target is None and self.composer.enabled and not self._redoing:
            abort = threading.Event()
            self._inflight = (time.monotonic(), plan, frozenset(seq.tenant for seq, _ in picked), abort)
        t0 = time.perf_counter()
        try:
            results = self.rt.runner.step(chunks, abort)
        except StepAborted:
            # A light newcomer arrived (``preempt_for``): its request goes first; this work is redone,
            # and the next step is never preempted, so the others always make progress.
            self.scheduler.refund(picked)
            self.stats["preempted_steps"] += 1
            self._redoing = True
            return
        except Exception as e:
            log.exception("forward step failed")
            err = PotluckError(f"internal error in the forward step: {type(e).__name__}: {e}",
                               code="internal_error", status=500)
            for seq, _ in picked:
                self.scheduler.remove(seq)
                seq.done(None, err)
            return
        finally:
            self._inflight = None
        self._redoing = False
        seconds = time.perf_counter() - t0
        self.composer.cost.observe(plan.shape, seconds)
        usage = self._commit(picked, chunks, results, seconds)
        now = time.monotonic()
        for (seq, n), res in zip(picked, results):
            if seq.remaining == 0:
                self.scheduler.remove(seq)
                seq.done(res, None)
            else:
                seq.queued_at = now     # the rest of a prompt goes on at once: its wait was counted
        if self.step_listeners:
            info = {"seqs": len(picked), "tokens": sum(n for _, n in picked), "seconds": seconds, "usage": usage,
                    "decode_seqs": plan.shape.decode_seqs,
                    "prefill_seqs": sum(1 for c in chunks if len(c.tokens) > 1),
                    "predicted_seconds": plan.predicted, "target_seconds": plan.target}
            for fn in self.step_listeners:
                fn(info)

    def _compose(self) -> tuple[list[tuple[Sequence, int]], StepPlan, list[tuple[Sequence, PotluckError]]]:
        """The composer's pick for this step, each admitted with its pages prepared."""
        pool, profile = self.rt.pool, self.rt.profile
        pinned: set[int] = set()
        failed: list[tuple[Sequence, PotluckError]] = []
        in_step: set[int] = set()
        pool.tick()

        def admit(seq: Sequence, n: int) -> bool:
            if seq.cancelled or seq.id in in_step:
                return False
            try:
                pool.check_quota(seq.ctx, n, self.tenants[seq.tenant].quota.kv_pages)
                pool.prepare_write(seq.ctx, n, pinned)
            except PoolExhausted:
                return False
            except QuotaExceeded as e:
                failed.append((seq, e))
                return False
            in_step.add(seq.id)
            return True

        picked, plan = self.composer.compose(self.scheduler, profile.batch_token_budget, profile.max_batch_seqs,
                                             admit)
        return picked, plan, failed

    def _commit(self, picked, chunks, results, seconds: float) -> dict[str, list[int]]:
        """Tokens into their contexts; what each tenant used this step, to the tenants and the stats."""
        usage: dict[str, list[int]] = {}
        ntok = 0
        for (seq, n), chunk, res in zip(picked, chunks, results):
            if chunk.scores:
                seq.scores.extend(chunk.scores)
            self.rt.pool.commit(seq.ctx, chunk.tokens)
            seq.fed += n
            ntok += n
            u = usage.get(seq.tenant)
            if u is None:
                u = usage[seq.tenant] = [0, 0]
            if not seq.decode:
                u[0] += n
            if res is not None:
                u[1] += 1
        st = self.stats
        st["steps"] += 1
        st["batch_tokens"] += ntok
        st["batch_seqs"] += len(picked)
        st["last_step_ms"] = seconds * 1000
        for pre, dec in usage.values():
            st["prefill_tokens"] += pre
            st["decode_tokens"] += dec
        self.tenants.charge_tokens(usage)
        return usage

    def _accrue_page_seconds(self) -> None:
        now = time.monotonic()
        dt, self._last_accrual = now - self._last_accrual, now
        self.tenants.charge_pages({name: t.held for name, t in self.rt.pool.tenants.items() if t.held}, dt)


def _chunk(seq: Sequence, n: int) -> Chunk:
    """The next ``n`` tokens of ``seq``'s feed as a chunk; the feed's last chunk samples."""
    last = n == seq.remaining
    ch = Chunk(seq.ctx, seq.tokens[seq.fed:seq.fed + n], seq.sampler if last else None, seq.generator)
    if last:
        ch.constraint, ch.output = seq.constraint, seq.output
    if seq.score >= 0:
        ch.score = seq.score
        ch.next_token = None if last else seq.tokens[seq.fed + n]
    return ch
