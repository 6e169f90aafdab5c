"""Topics: each tenant's message topics, which runs of one owner publish to and subscribe to.

A topic is named by its owner and a name, so runs of different owners never
share one, whatever name they pick. Each topic keeps its last
``TOPIC_BACKLOG`` messages for runs that subscribe later; a tenant has at most
``MAX_TOPICS_PER_TENANT`` topics. Delivery goes into each subscriber's inbox
(``Run.deliver``), which drops what does not fit; this module never blocks on
a run, and never raises to a guest except ``Refused``.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING

from .host_calls import Refused

if TYPE_CHECKING:
    from .run import Run

MAX_TOPICS_PER_TENANT = 64
TOPIC_BACKLOG = 64
MAX_TOPIC_NAME = 128


class Topics:
    """Each tenant's message topics: runs of one owner publish to and subscribe to them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subs: dict[tuple[str, str], set[Run]] = {}
        self._backlog: dict[tuple[str, str], collections.deque] = {}

    def _check(self, run: "Run", topic: str) -> tuple[str, str]:
        if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC_NAME:
            raise Refused(f"a topic name is 1 to {MAX_TOPIC_NAME} characters")
        key = (run.tenant, topic)
        if key not in self._backlog:
            n = sum(1 for t, _ in self._backlog if t == run.tenant)
            if n >= MAX_TOPICS_PER_TENANT:
                raise Refused(f"you have {MAX_TOPICS_PER_TENANT} topics, the limit")
            self._backlog[key] = collections.deque(maxlen=TOPIC_BACKLOG)
        return key

    def subscribe(self, run: "Run", topic: str) -> None:
        with self._lock:
            key = self._check(run, topic)
            self._subs.setdefault(key, set()).add(run)
            backlog = [body for sender, body in self._backlog[key] if sender != run.id]
        for body in backlog:     # what was said before this run joined
            run.deliver(topic, body)

    def publish(self, run: "Run", topic: str, body: str) -> None:
        with self._lock:
            key = self._check(run, topic)
            self._backlog[key].append((run.id, body))
            subs = [r for r in self._subs.get(key, ()) if r is not run]
        for r in subs:
            r.deliver(topic, body)

    def leave(self, run: "Run") -> None:
        with self._lock:
            for key, subs in list(self._subs.items()):
                subs.discard(run)
                if not subs:
                    del self._subs[key]
