"""Running one engine generation for one HTTP request.

Shared by the native ``/api/generate`` and the OpenAI-compatible endpoints, so
there is one way to turn request parameters into a ``Sampler``, start a
generation as the caller's tenant, follow it and cancel it. The rules of a
generation (defaults, quotas, stop strings) are the engine's; this module only
carries its events to the client.

Events arrive on the engine's batch-loop thread (``Generation`` listeners):
the listener here only hands each one to the IOLoop with ``add_callback``
and never blocks that thread. A client that goes away cancels its generation,
which frees its pages and takes it out of the batch at the next step.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import deque
from typing import TYPE_CHECKING, AsyncIterator

from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

from ..errors import BadRequest, NotFound
from ..sampling import Sampler
from .base import APIHandler

if TYPE_CHECKING:
    from ..engine import GenEvent, Generation, GenerationResult

_TOKEN_ID = re.compile(r"-?\d{1,10}")


class GenerationEvents:
    """The events of one or more choices, moved from the batch-loop thread onto the IOLoop, in order."""

    def __init__(self, choices: int = 1) -> None:
        self._loop = IOLoop.current()
        self._arrived: deque[tuple[int, GenEvent | None]] = deque()
        self._wake = asyncio.Event()
        self._open = choices

    def push(self, i: int, ev: GenEvent | None) -> None:
        """The listener: runs on the batch-loop thread, so it only schedules."""
        self._loop.add_callback(self._arrive, i, ev)

    def _arrive(self, i: int, ev: GenEvent | None) -> None:
        self._arrived.append((i, ev))
        self._wake.set()

    async def choice_batches(self) -> AsyncIterator[list[tuple[int, GenEvent | None]]]:
        """Lists of (choice, event) that arrived together (one write per list); a choice's end is
        (choice, None). Ends when every choice has ended."""
        while self._open:
            await self._wake.wait()
            self._wake.clear()
            batch = []
            while self._arrived:
                i, ev = self._arrived.popleft()
                batch.append((i, ev))
                if ev is None:
                    self._open -= 1
            if batch:
                yield batch

    async def batches(self) -> AsyncIterator[list[GenEvent]]:
        """The events of a single choice, in lists that arrived together, until its end."""
        async for batch in self.choice_batches():
            evs = [ev for _, ev in batch if ev is not None]
            if evs:
                yield evs


def check_model(engine, name: str | None) -> None:
    """``model`` may name the served model (or the name it was configured by); else 404."""
    if name is None or name in (engine.model_name, engine.config.model):
        return
    raise NotFound(f"model {name!r} is not served here; this engine serves {engine.model_name!r} "
                   f"(see GET /v1/models)", code="model_not_found", param="model")


def build_sampler(p: dict) -> Sampler:
    """A ``Sampler`` from checked request fields (ranges are checked by ``Sampler.validate``)."""
    kw = {k: p[k] for k in ("temperature", "top_k", "top_p", "min_p", "seed", "top_logprobs", "presence_penalty",
                            "frequency_penalty", "repetition_penalty") if k in p}
    if "logit_bias" in p:
        bias = {}
        for key, value in p["logit_bias"].items():
            if not _TOKEN_ID.fullmatch(key):
                raise BadRequest(f"logit_bias keys must be token ids, got {key!r}", code="invalid_sampling",
                                 param="logit_bias")
            bias[int(key)] = value
        kw["logit_bias"] = bias
    if "allowed_token_ids" in p:
        kw["allowed"] = tuple(p["allowed_token_ids"])
    return Sampler(**kw)


def logprob_of(p: float) -> float:
    """log(p) for a probability from a top-k list; JSON has no -inf, so p == 0 gives -9999."""
    return math.log(p) if p > 0 else -9999.0


def usage_json(res: GenerationResult) -> dict:
    n = len(res.tokens)
    return {"prompt_tokens": res.prompt_tokens, "completion_tokens": n, "total_tokens": res.prompt_tokens + n,
            "cached_tokens": res.cached_tokens}


def sse(data, event: str | None = None) -> str:
    """One server-sent event; ``data`` is JSON-encoded unless it is already a string."""
    text = data if isinstance(data, str) else json.dumps(data, allow_nan=False)
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


class GenerationHandler(APIHandler):
    """A handler that runs generations (one, or the choices of one request) and follows them to the end."""

    generations: list[Generation] = []
    client_gone = False

    @property
    def generation(self) -> Generation | None:
        return self.generations[0] if self.generations else None

    async def start_generation(self, default_max_tokens: int, **kwargs) -> tuple[Generation, GenerationEvents]:
        """Start ``engine.generate(**kwargs)`` as the caller's tenant, its events bound for the IOLoop.

        Without ``max_tokens`` the engine uses ``default_max_tokens`` capped by the tenant's
        ``max_tokens_per_request``, so leaving it out never hits that quota.
        """
        gens, events = await self.start_choices(default_max_tokens, [kwargs])
        return gens[0], events

    async def start_choices(self, default_max_tokens: int, requests: list[dict]) -> tuple[list[Generation],
                                                                                          GenerationEvents]:
        """Start ``engine.generate_choices(**r)`` for each request dict (each may ask ``n`` choices).

        The choices are numbered in order across the requests (OpenAI's ``index``); their events
        arrive on one ``GenerationEvents``. If one request is refused, those already started are
        cancelled and the refusal is raised.
        """
        counts = [r.get("n", 1) for r in requests]
        events = GenerationEvents(sum(counts))
        ident, engine = self.identity, self.engine
        self.generations = []

        def start() -> list[Generation]:
            # One trip off the IOLoop: resolving the tenant and starting wait on the batch loop alike.
            t = engine.tenant(ident.tenant, ident.groups, ident.is_admin)
            started: list[Generation] = []
            base = 0
            try:
                for r, n in zip(requests, counts):
                    started += engine.generate_choices(
                        t, listener=lambda i, ev, base=base: events.push(base + i, ev),
                        default_max_tokens=default_max_tokens, **r)
                    base += n
            except BaseException:
                for g in started:
                    g.cancel()
                raise
            return started

        self.generations = await self.blocking(start)
        if self.client_gone:
            self.cancel_generation()
        return self.generations, events

    def cancel_generation(self) -> None:
        for g in self.generations:
            if not g.done:
                self.release(g.cancel)   # waits on the batch loop: never on the IOLoop, never behind my own flood

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self.client_gone = True
        self.cancel_generation()

    def on_finish(self) -> None:
        super().on_finish()
        for g in self.generations:
            self.service.metrics.generation_finished(g.tenant, g.finish_reason or "cancelled")
        # A handler that ended early (an error while writing) must not leave its generations running.
        self.cancel_generation()

    def begin_stream(self) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")   # proxies (nginx, the Hub's) must not buffer tokens

    async def send(self, text: str) -> bool:
        """Write and flush; False once the client is gone (its generation is then cancelled)."""
        if self.client_gone:
            return False
        self.write(text)
        try:
            await self.flush()
        except StreamClosedError:
            self.on_connection_close()
            return False
        return True
