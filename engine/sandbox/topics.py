"""Topics: each tenant's message topics, which runs of one owner publish to and subscribe to.

A topic is named by its owner and a name, so runs of different owners never
share one, whatever name they pick. A topic lives while a run of its owner
that published to it or subscribed to it is live: when the last such run
ends, the topic and everything kept for it are freed (and stop counting
against ``MAX_TOPICS_PER_TENANT``). Each topic keeps its last messages for
runs that subscribe later: at most ``TOPIC_BACKLOG`` per topic, none older
than ``BACKLOG_SECONDS``, and ``BACKLOG_BYTES`` for all of a tenant's topics
together (the oldest go first). What a run publishes counts against its
``run_output_bytes`` like what it prints.

Delivery goes into each subscriber's inbox (``Run.deliver``), which drops
what does not fit; this module never blocks on a run, and never raises to a
guest except ``Refused``.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .host_calls import Refused

if TYPE_CHECKING:
    from .run import Run

MAX_TOPICS_PER_TENANT = 64
MAX_TOPIC_NAME = 128
TOPIC_BACKLOG = 64               # messages kept per topic for later subscribers
BACKLOG_SECONDS = 300.0          # and for at most this long
BACKLOG_BYTES = 1 << 20          # and at most this much for all of a tenant's topics


@dataclass(eq=False)
class _Kept:
    sender: str
    body: str
    at: float


@dataclass
class _Topic:
    members: set = field(default_factory=set)      # live runs that published or subscribed
    subs: set = field(default_factory=set)         # live runs subscribed
    backlog: collections.deque = field(default_factory=collections.deque)


class Topics:
    """Each tenant's message topics: runs of one owner publish to and subscribe to them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._topics: dict[tuple[str, str], _Topic] = {}
        self._per_tenant: collections.Counter = collections.Counter()       # tenant -> topics
        self._kept_bytes: collections.Counter = collections.Counter()       # tenant -> backlog bytes
        self._order: dict[str, collections.deque] = {}                      # tenant -> (key, kept), oldest first

    def _join(self, run: "Run", topic: str) -> _Topic:
        # with self._lock held
        if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC_NAME:
            raise Refused(f"a topic name is 1 to {MAX_TOPIC_NAME} characters")
        key = (run.tenant, topic)
        t = self._topics.get(key)
        if t is None:
            if self._per_tenant[run.tenant] >= MAX_TOPICS_PER_TENANT:
                raise Refused(f"your runs use {MAX_TOPICS_PER_TENANT} topics, the limit (a topic is freed when "
                              "the last run that used it ends)")
            t = self._topics[key] = _Topic()
            self._per_tenant[run.tenant] += 1
        t.members.add(run)
        self._expire(run.tenant, time.monotonic())
        return t

    def subscribe(self, run: "Run", topic: str) -> None:
        with self._lock:
            t = self._join(run, topic)
            t.subs.add(run)
            backlog = [k.body for k in t.backlog if k.sender != run.id]
        for body in backlog:     # what was said before this run joined
            run.deliver(topic, body)

    def publish(self, run: "Run", topic: str, body: str) -> None:
        run.charge_output(len(body), "published")
        with self._lock:
            t = self._join(run, topic)
            kept = _Kept(run.id, body, time.monotonic())
            t.backlog.append(kept)
            self._kept_bytes[run.tenant] += len(body)
            self._order.setdefault(run.tenant, collections.deque()).append(((run.tenant, topic), kept))
            if len(t.backlog) > TOPIC_BACKLOG:
                self._forget(run.tenant, t.backlog.popleft())
            while self._kept_bytes[run.tenant] > BACKLOG_BYTES:
                self._drop_oldest(run.tenant)
            subs = [r for r in t.subs if r is not run]
        for r in subs:
            r.deliver(topic, body)

    def leave(self, run: "Run") -> None:
        """The run has ended: it leaves its topics; a topic no live run uses is freed with its backlog."""
        with self._lock:
            for key, t in list(self._topics.items()):
                if run not in t.members:
                    continue
                t.members.discard(run)
                t.subs.discard(run)
                if not t.members:
                    for kept in t.backlog:
                        self._forget(key[0], kept)
                    del self._topics[key]
                    self._per_tenant[key[0]] -= 1
            self._compact(run.tenant)

    def held(self, tenant: str) -> tuple[int, int]:
        """(topics, backlog bytes) the tenant holds now."""
        with self._lock:
            return self._per_tenant[tenant], self._kept_bytes[tenant]

    # ------------------------------------------------------------ internals (lock held)
    def _forget(self, tenant: str, kept: _Kept) -> None:
        if kept.body is not None:
            self._kept_bytes[tenant] -= len(kept.body)
            kept.body = None            # its place in _order is skipped later

    def _drop_oldest(self, tenant: str) -> None:
        order = self._order[tenant]
        key, kept = order.popleft()
        t = self._topics.get(key)
        if kept.body is not None and t is not None and t.backlog and t.backlog[0] is kept:
            t.backlog.popleft()
        self._forget(tenant, kept)

    def _expire(self, tenant: str, now: float) -> None:
        order = self._order.get(tenant)
        while order and (order[0][1].body is None or now - order[0][1].at > BACKLOG_SECONDS):
            self._drop_oldest(tenant)

    def _compact(self, tenant: str) -> None:
        order = self._order.get(tenant)
        if order is not None:
            live = collections.deque(item for item in order if item[1].body is not None)
            if live:
                self._order[tenant] = live
            else:
                del self._order[tenant]
        if not self._per_tenant[tenant]:
            del self._per_tenant[tenant]
        if not self._kept_bytes[tenant]:
            del self._kept_bytes[tenant]
