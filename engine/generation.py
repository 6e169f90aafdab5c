"""``Generation``: a running text generation, and the user's handle on it.

A generation owns one ``Sequence`` for its whole life: the prompt is its
first feed, each sampled token its next. After every sample it decides, on
the batch-loop thread, whether to go on: a stop token, a stop string (via
``TextStream``), a grammar that is complete (``Constraint``), ``max_tokens``
or the context window end it.

Several choices of one prompt (OpenAI's ``n``) share one prefill: the first
generation computes the prompt, and each *follower* starts from a copy-on-write
fork of its context once the prompt is in (``follow``), feeding only the
prompt's last token again to sample on its own.

Iterate a Generation for ``GenEvent``s, or wait with ``result()``; listeners
(``add_listener``, or ``listener=`` at ``Engine.generate``) are called on
the loop thread and must not block. This module never touches pages or the
scheduler's queues directly: feeds go through the loop, the end through the
engine's ``on_end``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from .constraints import Constraint
from .errors import EngineUnavailable, PotluckError
from .sampling import Sample, Sampler
from .sequence import Sequence
from .textstream import TextStream

if TYPE_CHECKING:
    from .loop import BatchLoop

log = logging.getLogger("potluck.engine")


@dataclass
class GenEvent:
    token: int
    text: str            # new text this token made visible (may be "" mid-character)
    logprob: float
    top: list[tuple[int, float]] | None = None


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    finish_reason: str   # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int
    cached_tokens: int
    logprobs: list[float]
    prompt_logprobs: list[tuple[float, list[tuple[int, float]]]] | None = None   # tokens 1.. of the prompt


_END = object()


class Generation:
    """A running generation. Iterate it for ``GenEvent``s, or wait with ``result()``.

    Listeners added with ``add_listener`` are called on the engine's loop
    thread with each event and finally with ``None``; they must not block.
    """

    def __init__(self, loop: "BatchLoop", gid: int, seq: Sequence, prompt: list[int], max_tokens: int,
                 max_context: int, stop: list[str], stop_token_ids: set[int], decode: Callable[[list], str],
                 on_end: Callable[["Generation"], None], constraint: Constraint | None = None,
                 prompt_logprobs: int = -1):
        self._loop = loop
        self.id = gid
        self.tenant = seq.tenant
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.sampler: Sampler = seq.sampler
        self.stop = stop
        self.stop_token_ids = stop_token_ids
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason: str | None = None
        self.error: PotluckError | None = None
        self.cached_tokens = 0
        self.created = time.time()
        self.first_token_at: float | None = None
        self.token_times: list[float] = []      # when each token was sampled (time between tokens)
        self.seq = seq
        self._max_context = max_context
        self._on_end = on_end
        self._stream = TextStream(decode, stop)
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._listeners: list[Callable[[GenEvent | None], None]] = []
        self._done = threading.Event()
        self._followers: list[tuple["Generation", Callable[["Generation", "Generation"], None]]] = []
        self.constraint = constraint
        self.scored = prompt_logprobs >= 0
        seq.on_done = self._on_sample
        seq.constraint = constraint
        seq.output = self.tokens
        seq.score = prompt_logprobs

    @property
    def text(self) -> str:
        return self._stream.text

    def add_listener(self, fn: Callable[[GenEvent | None], None]) -> None:
        """Call ``fn`` for every event from now on (and for the end). Thread-safe."""
        self._loop.call(self._add_listener, fn)

    def _add_listener(self, fn) -> None:
        if self._done.is_set():
            fn(None)
        else:
            self._listeners.append(fn)

    def __iter__(self) -> Iterator[GenEvent]:
        while True:
            ev = self._events.get()
            if ev is _END:
                self._events.put(_END)
                if self.error is not None:
                    raise self.error
                return
            yield ev

    def result(self, timeout: float | None = None) -> GenerationResult:
        if not self._done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self.error is not None:
            raise self.error
        return GenerationResult(self.text, list(self.tokens), self.finish_reason, len(self.prompt),
                                self.cached_tokens, list(self.logprobs),
                                list(self.seq.scores) if self.scored else None)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop generating; pages are freed and the request leaves the batch at the next step."""
        if not self._done.is_set():
            try:
                self._loop.call(self.finish, "cancelled")
            except EngineUnavailable:
                pass

    # ------------------------------------------------------ on the loop
    def start(self, arrived: float | None = None) -> None:
        """Queue the prompt; ``arrived`` (``time.monotonic()``) is when the request reached the engine."""
        self.cached_tokens = self._loop.submit(self.seq, self.prompt, arrived)

    def follow(self, leader: "Generation", fork: Callable[["Generation", "Generation"], None]) -> None:
        """Start from ``leader``'s prompt once it is computed: ``fork(leader, self)`` then does it."""
        leader._followers.append((self, fork))

    def _release_followers(self, err: PotluckError | None) -> None:
        followers, self._followers = self._followers, []
        for g, fork in followers:
            if err is not None:
                g.finish("error", err)
            elif not g.done:
                fork(self, g)

    def _on_sample(self, seq: Sequence, s: Sample | None, err: PotluckError | None) -> None:
        if self.done:
            return
        if err is not None:
            return self.finish("error", err)
        now = time.time()
        if self.first_token_at is None:
            self.first_token_at = now
            seq.score = -1            # the prompt is scored; generated tokens have their own logprobs
            self._release_followers(None)
        self.token_times.append(now)
        tok = s.token
        if tok in self.stop_token_ids:
            return self.finish("stop")
        if self.constraint is not None and not self.constraint.consume(tok):
            # The mask allowed only tokens the grammar accepts: this is a bug, not the user's.
            return self.finish("error", PotluckError(
                f"internal error: the grammar refused a token it allowed ({self.constraint.error})",
                code="internal_error", status=500))
        self.tokens.append(tok)
        self.logprobs.append(s.logprob)
        delta = self._stream.push(tok)
        self._emit(GenEvent(tok, delta, s.logprob, s.top))
        finish = "stop" if self._stream.stopped else None
        if finish is None and self.constraint is not None and self.constraint.finished:
            finish = "stop"
        if finish is None and len(self.tokens) >= self.max_tokens:
            finish = "length"
        if finish is None and seq.ctx.length + 1 >= self._max_context:
            finish = "length"
        if finish is not None:
            return self.finish(finish)
        self._loop.submit(seq, [tok])

    def finish(self, reason: str, err: PotluckError | None = None) -> None:
        if self.done:
            return
        tail = self._stream.finish()
        if tail:
            self._emit(GenEvent(-1, tail, 0.0))
        self.finish_reason = reason
        self.error = err
        if self._followers:
            # The prompt never got computed: the choices waiting for it end the same way.
            self._release_followers(err or PotluckError(f"the request ended ({reason}) before its prompt ran",
                                                        code=reason if reason == "cancelled" else "internal_error",
                                                        status=499 if reason == "cancelled" else 500))
        self._loop.withdraw(self.seq)
        self._on_end(self)
        self._done.set()
        self._emit(None)

    def _emit(self, ev: GenEvent | None) -> None:
        self._events.put(_END if ev is None else ev)
        for fn in self._listeners:
            try:
                fn(ev)
            except Exception:       # a broken listener must not break the loop
                log.exception("generation listener failed")
