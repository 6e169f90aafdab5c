"""Who runs next: fair sharing of every forward step between tenants.

Each step has a token budget. The scheduler fills it from all tenants'
pending forward requests (prefill chunks and decode tokens) by **weighted
virtual token counters** (VTC, Sheng et al., OSDI'24): serving a tenant
charges its counter ``(input tokens x 1 + output tokens x 2) / weight``, and
the next chunk always goes to the backlogged tenant with the smallest
counter. A tenant that becomes backlogged again is lifted to the smallest
active counter, so idle time is not banked as credit. With two backlogged
tenants the difference in the service they received stays within 2x the
largest single charge; FCFS lets a flooding tenant take everything.

Priority classes sit above the counters: interactive requests are served
before batch ones. Within one tenant, running sequences' decode tokens go
before its prompts still waiting.

The scheduler sees requests only through a few plain attributes; it never
touches tensors, pages or the model.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterable, Iterator, Protocol

INTERACTIVE = 0
BATCH = 1
PRIORITIES = {"interactive": INTERACTIVE, "batch": BATCH}

INPUT_WEIGHT = 1.0
OUTPUT_WEIGHT = 2.0


class Schedulable(Protocol):
    tenant: str
    priority: int
    arrival: int
    queued_at: float      # time.monotonic() when this feed was queued (the composer counts its wait)
    remaining: int        # tokens still to feed
    decode: bool          # the fed token is the previous output (already charged as output)
    samples: bool         # produces an output token when its last chunk runs


# Called with a request and the tokens it could feed this step: True (all of them), False (not this
# step), or how many of them to feed (the composer cuts a prefill chunk to fit a step's time).
Admit = Callable[[Schedulable, int], "bool | int"]


def _admitted(admit: Admit, req: Schedulable, n: int) -> int:
    k = admit(req, n)
    return n if k is True else int(k)


def charge(req: Schedulable, n: int) -> float:
    """Unweighted cost of feeding ``n`` tokens of ``req`` this step."""
    c = 0.0 if req.decode else n * INPUT_WEIGHT
    if req.samples and n == req.remaining:
        c += OUTPUT_WEIGHT
    return c


class TenantQueue:
    """One tenant's pending requests: running sequences' decode tokens, then waiting prompts.

    Two insertion-ordered dicts used as ordered sets: adding and removing are
    O(1) (a decode token joins or leaves a queue every step), and iteration is
    decodes first, each group in arrival order.
    """

    __slots__ = ("decodes", "prompts")

    def __init__(self):
        self.decodes: dict[Schedulable, None] = {}
        self.prompts: dict[Schedulable, None] = {}

    def __len__(self) -> int:
        return len(self.decodes) + len(self.prompts)

    def __iter__(self) -> Iterator[Schedulable]:
        yield from self.decodes
        yield from self.prompts

    def add(self, req: Schedulable) -> None:
        # A running sequence's next token goes before this tenant's prompts still waiting
        # (as vLLM runs running sequences first): else, under overload, a tenant's new prompts
        # would keep its own decodes waiting and its pages growing. Other tenants are unaffected.
        (self.decodes if req.decode else self.prompts)[req] = None

    def discard(self, req: Schedulable) -> bool:
        for group in (self.decodes, self.prompts):
            if req in group:
                del group[req]
                return True
        return False


class FairScheduler:
    policy = "fair"

    def __init__(self):
        self.queues: dict[str, TenantQueue] = {}
        self.counters: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.service: dict[str, float] = {}      # unweighted charges served, for metrics and tests
        self._floor = 0.0                        # counter of the last tenant to go idle
        # Ties between counters (every returning tenant is lifted to exactly the smallest
        # active one) go to the tenant served least recently, never by name.
        self._last_served: dict[str, int] = {}
        self._serves = 0

    def set_weight(self, tenant: str, weight: float) -> None:
        self.weights[tenant] = max(float(weight), 1e-6)

    def backlogged(self) -> list[str]:
        return [t for t, q in self.queues.items() if q]

    def depth(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def add(self, req: Schedulable) -> None:
        q = self.queues.get(req.tenant)
        if q is None:
            q = self.queues[req.tenant] = TenantQueue()
        if not q:
            active = [self.counters[t] for t, other in self.queues.items() if other]
            base = min(active) if active else self._floor
            self.counters[req.tenant] = max(self.counters.get(req.tenant, 0.0), base)
        q.add(req)

    def remove(self, req: Schedulable) -> None:
        q = self.queues.get(req.tenant)
        if q is None or not q.discard(req):
            return
        if not q:
            self._floor = self.counters.get(req.tenant, 0.0)

    def pending(self) -> Iterable[Schedulable]:
        for q in self.queues.values():
            yield from q

    def _serve(self, req: Schedulable, n: int) -> None:
        """Charge ``req``'s tenant for feeding ``n`` of its tokens this step."""
        self._charge(req.tenant, charge(req, n))
        self._serves += 1
        self._last_served[req.tenant] = self._serves

    def refund(self, picked: list[tuple[Schedulable, int]]) -> None:
        """Take back the charges of a step that was scheduled but abandoned before it ran."""
        for req, n in picked:
            self._charge(req.tenant, -charge(req, n))

    def _charge(self, t: str, c: float) -> None:
        self.counters[t] = self.counters.get(t, 0.0) + c / self.weights.get(t, 1.0)
        self.service[t] = self.service.get(t, 0.0) + c

    def _key(self, t: str, req: Schedulable) -> tuple:
        return (req.priority, self.counters[t], self._last_served.get(t, 0), t)

    def schedule(self, budget: int, max_seqs: int, admit: Admit) -> list[tuple[Schedulable, int]]:
        picked: list[tuple[Schedulable, int]] = []
        # Each backlogged tenant's queue is walked in order; the heap holds each one's next request.
        walks = {t: iter(q) for t, q in self.queues.items() if q}
        nxt = {t: next(it) for t, it in walks.items()}
        heap = [self._key(t, req) for t, req in nxt.items()]
        heapq.heapify(heap)
        while heap and budget > 0 and len(picked) < max_seqs:
            t = heapq.heappop(heap)[-1]
            req = nxt[t]
            n = min(req.remaining, budget)
            n = _admitted(admit, req, n) if n > 0 else 0
            if n > 0:
                self._serve(req, n)
                picked.append((req, n))
                budget -= n
            following = next(walks[t], None)
            if following is not None:
                nxt[t] = following
                heapq.heappush(heap, self._key(t, following))
        return picked


class FcfsScheduler(FairScheduler):
    """First come, first served across all tenants: the baseline fairness is measured against."""
    policy = "fcfs"

    def schedule(self, budget: int, max_seqs: int, admit: Admit) -> list[tuple[Schedulable, int]]:
        picked: list[tuple[Schedulable, int]] = []
        for req in sorted(self.pending(), key=lambda r: (r.priority, r.arrival)):
            if budget <= 0 or len(picked) >= max_seqs:
                break
            n = min(req.remaining, budget)
            n = _admitted(admit, req, n) if n > 0 else 0
            if n > 0:
                self._serve(req, n)
                picked.append((req, n))
                budget -= n
        return picked


def make_scheduler(policy: str) -> FairScheduler:
    if policy == "fair":
        return FairScheduler()
    if policy == "fcfs":
        return FcfsScheduler()
    raise ValueError(f"unknown scheduling policy {policy!r}; use 'fair' or 'fcfs'")
