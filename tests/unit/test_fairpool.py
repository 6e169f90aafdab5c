"""The fair request threads: lanes served round-robin, a cap per tenant, nothing lost or leaked.

Every test holds the pool's threads with gates (events it sets itself) and asserts the order
calls ran in and the counts the pool keeps; no test measures time (``result(timeout=...)`` only
guards against a hang).
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from potluck.engine.errors import Cancelled, QuotaExceeded
from potluck.engine.http.base import ServiceHandler
from potluck.engine.http.fairpool import LANE, SERVICE_LANE, FairPool, admission_lane, tenant_lane

A, B, C = tenant_lane("alice"), tenant_lane("bob"), tenant_lane("carol")
GUARD = 30      # seconds before a test that hangs fails (never reached when the pool works)


@pytest.fixture
def pools():
    made = []

    def make(threads: int, per_group: int) -> FairPool:
        made.append(FairPool(threads, per_group, name="test-pool"))
        return made[-1]
    yield make
    for p in made:
        p.shutdown(wait=True, cancel_futures=True)


class Gate:
    """A call that holds its thread until ``open()``; ``started`` counts the calls that began."""

    def __init__(self):
        self._open = threading.Event()
        self._cond = threading.Condition()
        self.started = 0

    def __call__(self, value=None):
        with self._cond:
            self.started += 1
            self._cond.notify_all()
        assert self._open.wait(GUARD)
        return value

    def wait_started(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.started >= n, GUARD), f"{self.started} of {n} started"

    def open(self) -> None:
        self._open.set()


def test_lanes_take_turns_round_robin_each_in_its_own_order(pools):
    pool = pools(threads=1, per_group=1)
    gate, ran = Gate(), []
    held = pool.submit_to(SERVICE_LANE, gate)
    gate.wait_started(1)
    futures = [pool.submit_to(lane, ran.append, name) for lane, name in
               [(A, "a1"), (A, "a2"), (A, "a3"), (B, "b1"), (B, "b2"), (C, "c1")]]
    gate.open()
    held.result(GUARD)
    for f in futures:
        f.result(GUARD)
    assert ran == ["a1", "b1", "c1", "a2", "b2", "a3"]


def test_a_tenant_holds_at_most_its_share_and_another_tenant_gets_a_thread(pools):
    pool = pools(threads=4, per_group=2)
    gate = Gate()
    flood = [pool.submit_to(A, gate, i) for i in range(6)]
    gate.wait_started(2)
    # Alice's share is taken: her four other calls wait, and Bob's call runs beside hers.
    assert pool.submit_to(B, lambda: "bob").result(GUARD) == "bob"
    assert gate.started == 2 and pool.running(A) == 2 and pool.pending(A) == 6
    gate.open()
    assert [f.result(GUARD) for f in flood] == list(range(6))
    assert pool.pending(A) == 0 and pool.running(A) == 0


def test_all_token_checks_together_hold_one_share_so_tenants_keep_threads(pools):
    pool = pools(threads=4, per_group=2)
    gate = Gate()
    # A flood of different bad tokens: one admission lane each, one share between them.
    checks = [pool.submit_to(admission_lane(f"Bearer bad-{i}"), gate) for i in range(5)]
    gate.wait_started(2)
    assert pool.submit_to(A, lambda: "alice").result(GUARD) == "alice"
    assert pool.submit_to(B, lambda: "bob").result(GUARD) == "bob"
    assert gate.started == 2
    gate.open()
    for f in checks:
        f.result(GUARD)


def test_a_repeated_token_queues_behind_itself_not_ahead_of_another_token(pools):
    pool = pools(threads=1, per_group=1)
    gate, ran = Gate(), []
    held = pool.submit_to(SERVICE_LANE, gate)
    gate.wait_started(1)
    flood = admission_lane("Bearer alice-token")
    futures = [pool.submit_to(flood, ran.append, f"alice{i}") for i in range(5)]
    futures.append(pool.submit_to(admission_lane("Bearer bob-token"), ran.append, "bob"))
    gate.open()
    held.result(GUARD)
    for f in futures:
        f.result(GUARD)
    assert ran.index("bob") == 1          # after one of alice's checks, not after all five


def test_a_call_that_raises_gives_its_error_and_leaks_nothing(pools):
    pool = pools(threads=1, per_group=1)

    def broken():
        raise ValueError("broken call")
    with pytest.raises(ValueError, match="broken call"):
        pool.submit_to(A, broken).result(GUARD)
    assert pool.pending(A) == 0 and pool.running(A) == 0
    assert pool.submit_to(A, lambda: "next").result(GUARD) == "next"


def test_a_call_cancelled_while_queued_never_runs_and_stops_counting_at_once(pools):
    pool = pools(threads=1, per_group=1)
    gate, ran = Gate(), []
    held = pool.submit_to(A, gate)
    gate.wait_started(1)
    queued = pool.submit_to(A, ran.append, "cancelled")
    assert pool.pending(A) == 2
    assert queued.cancel()
    assert pool.pending(A) == 1
    gate.open()
    held.result(GUARD)
    assert pool.submit_to(A, ran.append, "after").result(GUARD) is None
    assert ran == ["after"] and pool.pending(A) == 0 and pool.queued() == 0


def test_a_call_whose_client_went_away_is_answered_cancelled_unrun(pools):
    pool = pools(threads=2, per_group=2)
    ran = []
    f = pool.submit_to(A, ran.append, "x", gone=lambda: True)
    with pytest.raises(Cancelled, match="went away"):
        f.result(GUARD)
    assert ran == [] and pool.pending(A) == 0 and pool.running(A) == 0


def test_an_awaiting_coroutine_cancelled_while_its_call_waits_drops_the_call(pools):
    pool = pools(threads=1, per_group=1)
    gate, ran = Gate(), []

    async def scenario():
        held = pool.submit_to(A, gate)
        gate.wait_started(1)
        waiter = asyncio.ensure_future(asyncio.wrap_future(pool.submit_to(A, ran.append, "gone")))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0)          # the cancel reaches the pool's future
        assert pool.pending(A) == 1
        gate.open()
        await asyncio.wrap_future(held)
        await asyncio.wrap_future(pool.submit_to(A, ran.append, "next"))
    asyncio.run(asyncio.wait_for(scenario(), GUARD))
    assert ran == ["next"] and pool.pending(A) == 0


def test_the_executor_interface_uses_the_lane_of_the_current_context(pools):
    pool = pools(threads=1, per_group=1)
    gate = Gate()

    async def scenario():
        held = pool.submit_to(SERVICE_LANE, gate)
        gate.wait_started(1)

        async def as_alice():
            LANE.set(A)            # a task's own context: the lane does not leak out of it
            return await asyncio.get_running_loop().run_in_executor(pool, lambda: "alice")
        task = asyncio.ensure_future(as_alice())
        await asyncio.sleep(0)
        assert pool.pending(A) == 1 and LANE.get() == SERVICE_LANE
        gate.open()
        await asyncio.wrap_future(held)
        assert await task == "alice"
    asyncio.run(asyncio.wait_for(scenario(), GUARD))


def test_shutdown_cancels_what_waits_and_ends_every_thread(pools):
    pool = FairPool(2, 1, name="test-stop")
    gate = Gate()
    running = pool.submit_to(A, gate)
    gate.wait_started(1)
    waiting = pool.submit_to(A, lambda: "never")
    gate.open()
    pool.shutdown(wait=True, cancel_futures=True)
    assert running.result(GUARD) is None
    assert waiting.cancelled() or waiting.result(GUARD) == "never"    # cancelled unless it had its turn
    assert not [t for t in threading.enumerate() if t.name.startswith("test-stop-")]
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit_to(A, lambda: None)


# ------------------------------------------------------------ the door
def _door(limit: int | None, generating: int, waiting: int):
    tenant = SimpleNamespace(quota=SimpleNamespace(max_concurrent_requests=limit), active_requests=generating)
    return SimpleNamespace(engine=SimpleNamespace(known_tenant={"alice": tenant}.get),
                           service=SimpleNamespace(executor=SimpleNamespace(pending=lambda lane: waiting)))


def test_the_door_refuses_a_tenant_whose_calls_and_generations_reach_its_limit():
    with pytest.raises(QuotaExceeded) as e:
        ServiceHandler._admit(_door(limit=4, generating=1, waiting=3), "alice", A)
    assert e.value.status == 429 and e.value.limit == "max_concurrent_requests" and e.value.value == 4
    assert "4 requests in flight (1 generating, 3 waiting" in e.value.message
    ServiceHandler._admit(_door(limit=4, generating=1, waiting=2), "alice", A)     # one below: let in
    ServiceHandler._admit(_door(limit=None, generating=9, waiting=9), "alice", A)  # no limit
    ServiceHandler._admit(_door(limit=1, generating=5, waiting=5), "bob", tenant_lane("bob"))  # not yet resolved
