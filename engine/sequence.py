"""``Sequence``: one stream of forward work on one context, kept across tokens.

A generation has one Sequence for its whole life; an inferlet's open context
has one for as long as it is open. Each ``feed`` queues the next tokens (a
prompt chunk, or the token sampled last) on the same object, so a decode
token allocates no request object, no callback and no generator.

The scheduler sees a Sequence through its plain attributes (tenant, priority,
arrival, remaining, decode, samples); the batch loop feeds ``remaining``
tokens in chunks and calls ``on_done`` when the last chunk ran.

Whether a feed is a *decode* (the previous output fed back: charged as
output already, and served before the tenant's waiting prompts) is decided
here, once, for generations and inferlets alike.

This module never touches the scheduler's queues, pages or the model.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch

from .constraints import Constraint
from .errors import PotluckError
from .pages import Context
from .sampling import Sample, Sampler

OnDone = Callable[["Sequence", "Sample | None", "PotluckError | None"], None]


@dataclass(eq=False)
class Sequence:
    tenant: str
    ctx: Context
    priority: int
    on_done: OnDone
    sampler: Sampler | None = None
    generator: torch.Generator | None = None     # a seeded sampler's own noise source
    tokens: list[int] = field(default_factory=list)   # the current feed
    fed: int = 0
    arrival: int = 0
    queued_at: float = 0.0                       # time.monotonic() when the current feed was queued
    decode: bool = False
    last_sample: int | None = None               # what the last step sampled for this sequence
    queued: bool = False                         # a feed is waiting in the scheduler or running
    cancelled: bool = False
    future: Future | None = None                 # an inferlet's forward call waiting on this feed
    constraint: Constraint | None = None         # a grammar the samples must follow
    output: list[int] | None = None              # the tokens generated so far (for penalties)
    score: int = -1                              # >= 0: score the feed's tokens (prompt logprobs), k top each
    scores: list = field(default_factory=list)   # (logprob, top) of each scored token after the first

    @property
    def id(self) -> int:
        return self.ctx.id

    @property
    def remaining(self) -> int:
        return len(self.tokens) - self.fed

    @property
    def samples(self) -> bool:
        return self.sampler is not None

    def use_sampler(self, sampler: Sampler | None, device: torch.device | str) -> None:
        """Sample with ``sampler`` from the next feed on; a seed restarts its own noise source."""
        self.sampler = sampler
        self.generator = None
        if sampler is not None and sampler.seed is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(sampler.seed)

    def feed(self, tokens: list[int], arrival: int) -> None:
        """Queue ``tokens`` as this sequence's next feed (the loop adds it to the scheduler)."""
        self.decode = bool(self.ctx.tokens) and len(tokens) == 1 and self.last_sample == tokens[0]
        self.tokens = tokens
        self.fed = 0
        self.arrival = arrival
        self.queued_at = time.monotonic()
        self.queued = True

    def done(self, sample: Sample | None, err: PotluckError | None) -> None:
        """The feed ran (or failed): remember the sample and tell the owner."""
        self.queued = False
        if err is None:
            self.last_sample = sample.token if sample is not None else None
        self.on_done(self, sample, err)
