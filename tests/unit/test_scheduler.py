"""The fair scheduler, simulated without a model: bounds, weights, FCFS's gap, no banked credit."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from potluck.engine.scheduler import BATCH, INTERACTIVE, FairScheduler, FcfsScheduler, TenantQueue, charge

_arrivals = itertools.count()


@dataclass(eq=False)
class Req:
    tenant: str
    remaining: int
    decode: bool
    samples: bool = True
    priority: int = INTERACTIVE
    arrival: int = 0
    left_after: int = 0    # decode tokens still to generate after this request

    def __post_init__(self):
        self.arrival = next(_arrivals)


class Workload:
    """Tenants each keep `jobs` generations running: a prompt of `prompt` tokens, then `decode` tokens."""

    def __init__(self, sched, spec: dict[str, tuple[int, int, int]]):
        self.sched = sched
        self.spec = spec
        self.max_charge = 0.0
        for tenant, (jobs, prompt, decode) in spec.items():
            for _ in range(jobs):
                self.new_job(tenant)

    def new_job(self, tenant):
        _, prompt, decode = self.spec[tenant]
        self.sched.add(Req(tenant, prompt, decode=False, left_after=decode))

    def step(self, budget=64, seqs=16, active=None):
        picked = self.sched.schedule(budget, seqs, lambda r, n: True)
        for req, n in picked:
            self.max_charge = max(self.max_charge, charge(req, n))
            req.remaining -= n
            if req.remaining == 0:
                self.sched.remove(req)
                if req.left_after > 0:
                    self.sched.add(Req(req.tenant, 1, decode=True, left_after=req.left_after - 1))
                elif active is None or req.tenant in active:
                    self.new_job(req.tenant)
        return picked


def test_two_backlogged_tenants_stay_within_twice_the_largest_charge():
    sched = FairScheduler()
    # Both want more than a step holds: Alice with long prompts, Bob chatty.
    w = Workload(sched, {"alice": (24, 120, 16), "bob": (16, 20, 64)})
    worst = 0.0
    for _ in range(600):
        w.step()
        worst = max(worst, abs(sched.service.get("alice", 0) - sched.service.get("bob", 0)))
    assert sched.service["bob"] > 2000           # both really were served a lot
    assert worst <= 2 * w.max_charge


def test_fcfs_lets_the_gap_grow_without_bound():
    sched = FcfsScheduler()
    w = Workload(sched, {"alice": (24, 120, 16), "bob": (16, 20, 64)})
    gaps = []
    for _ in range(600):
        w.step()
        gaps.append(abs(sched.service.get("alice", 0) - sched.service.get("bob", 0)))
    assert gaps[-1] > 10 * 2 * w.max_charge
    assert gaps[-1] > 1.8 * gaps[299]            # still growing, roughly linearly


def test_weights_one_to_three_split_service_one_to_three():
    sched = FairScheduler()
    sched.set_weight("alice", 1)
    sched.set_weight("bob", 3)
    w = Workload(sched, {"alice": (24, 40, 32), "bob": (24, 40, 32)})
    for _ in range(800):
        w.step()
    ratio = sched.service["bob"] / sched.service["alice"]
    assert 2.7 < ratio < 3.3


def test_returning_tenant_gets_no_credit_for_time_away():
    sched = FairScheduler()
    w = Workload(sched, {"alice": (24, 30, 32), "bob": (24, 30, 32)})
    for _ in range(100):
        w.step()
    # Bob stops submitting; his queue drains and Alice runs alone for a while.
    for _ in range(300):
        w.step(active={"alice"})
    assert not sched.queues["bob"]
    a0, b0 = sched.service["alice"], sched.service["bob"]
    for _ in range(24):
        w.new_job("bob")
    for _ in range(100):
        w.step()
    da, db = sched.service["alice"] - a0, sched.service["bob"] - b0
    # Banked credit would give Bob everything for a long while; the lift makes it an even split.
    assert da > 0.35 * (da + db)
    assert db > 0.35 * (da + db)


def test_interactive_requests_go_before_batch_ones_whatever_the_counters():
    sched = FairScheduler()
    sched.counters["student"] = 1000.0
    sched.queues["student"] = TenantQueue()
    batch = Req("researcher", 1, decode=True, priority=BATCH)
    inter = Req("student", 1, decode=True, priority=INTERACTIVE)
    sched.add(batch)
    sched.add(inter)
    picked = sched.schedule(budget=1, max_seqs=8, admit=lambda r, n: True)
    assert [r for r, _ in picked] == [inter]


def test_a_request_that_cannot_be_admitted_is_skipped_and_not_charged():
    sched = FairScheduler()
    blocked = Req("alice", 10, decode=False)
    ok = Req("bob", 1, decode=True)
    sched.add(blocked)
    sched.add(ok)
    picked = sched.schedule(64, 8, admit=lambda r, n: r is not blocked)
    assert [r for r, _ in picked] == [ok]
    assert sched.service.get("alice", 0.0) == 0.0


def test_a_tie_goes_to_the_tenant_served_least_recently_not_by_name():
    # A returning tenant is lifted to exactly the smallest active counter, so ties are the
    # common case; breaking them by name let "aaron" go first on every one of "zoe"'s returns,
    # which made zoe's first token wait a whole extra step behind aaron's prefill chunk.
    sched = FairScheduler()
    for _ in range(8):
        sched.add(Req("aaron", 64, decode=False))
    sched.schedule(64, 8, lambda r, n: True)                  # aaron's counter is now 66
    sched.add(Req("zoe", 32, decode=False))                   # lifted to 66: a tie
    assert sched.counters["zoe"] == sched.counters["aaron"]
    picked = sched.schedule(64, 8, lambda r, n: True)
    assert picked[0][0].tenant == "zoe" and picked[0][1] == 32


def test_a_tenants_running_decodes_go_before_its_own_waiting_prompts():
    """Under overload a tenant's new prompts must not keep its running sequences from finishing."""
    sched = FairScheduler()
    prompts = [Req("alice", 64, decode=False) for _ in range(3)]
    for p in prompts:
        sched.add(p)
    decode = Req("alice", 1, decode=True)                # arrives after the prompts
    sched.add(decode)
    picked = sched.schedule(budget=64, max_seqs=16, admit=lambda r, n: True)
    assert picked[0] == (decode, 1)                     # the decode first, then what budget is left
    assert picked[1] == (prompts[0], 63)
    # Decodes keep their own order among themselves, and other tenants' order is untouched.
    d2 = Req("alice", 1, decode=True)
    sched.add(d2)
    bob = Req("bob", 64, decode=False)
    sched.add(bob)
    assert list(sched.queues["alice"])[:2] == [decode, d2]
    assert list(sched.queues["bob"]) == [bob]


def test_a_refunded_step_leaves_counters_and_service_as_if_it_was_never_scheduled():
    s = FairScheduler()
    for t in ("a", "b"):
        s.add(Req(t, 100, decode=False))
    s.set_weight("b", 2.0)
    before = (dict(s.counters), dict(s.service))
    picked = s.schedule(64, 8, lambda r, n: True)
    assert picked and s.counters != before[0]
    s.refund(picked)
    assert s.counters == before[0] and all(s.service.get(t, 0.0) == before[1].get(t, 0.0) for t in "ab")
