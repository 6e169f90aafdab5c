"""Sampling on the device.

One call samples every sequence of a step from its row of logits, each with
its own ``Sampler``: greedy, temperature, top-k, top-p, min-p, a seed, logit
bias, presence / frequency / repetition penalties, an allowed-token list and
the step's grammar mask (``constraints.allowed_mask``, one boolean row per
sequence). Only token ids, their log-probabilities and small top-k lists
leave the device: never a full vocabulary of floats.

A seeded sampler draws its noise from its own generator, so its output does
not depend on who else shared the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import BadRequest

MAX_TOP_LOGPROBS = 20
MAX_BIAS_ENTRIES = 1024


@dataclass(frozen=True)
class Sampler:
    temperature: float = 0.0          # 0 = greedy
    top_k: int = 0                    # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict, hash=False)
    allowed: tuple[int, ...] | None = None   # only these tokens may be sampled
    top_logprobs: int = 0             # also return this many (id, prob) of the distribution
    presence_penalty: float = 0.0     # OpenAI's: subtracted once from every token already in the output
    frequency_penalty: float = 0.0    # OpenAI's: subtracted per occurrence in the output
    repetition_penalty: float = 1.0   # vLLM's / HF's: divides (or multiplies) the logits of any token seen so far

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self, vocab_size: int) -> "Sampler":
        def bad(msg):
            raise BadRequest(msg, code="invalid_sampling")
        if not isinstance(self.temperature, (int, float)) or not 0.0 <= self.temperature <= 100.0:
            bad(f"temperature must be a number from 0 to 100, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or not 0 <= self.top_k <= vocab_size:
            bad(f"top_k must be an integer from 0 to the vocabulary size {vocab_size}, got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            bad(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.min_p, (int, float)) or not 0.0 <= self.min_p < 1.0:
            bad(f"min_p must be in [0, 1), got {self.min_p!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            bad(f"seed must be a non-negative 63-bit integer, got {self.seed!r}")
        if not isinstance(self.top_logprobs, int) or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            bad(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {self.top_logprobs!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -2.0 <= v <= 2.0:
                bad(f"{name} must be a number from -2 to 2, got {v!r}")
        r = self.repetition_penalty
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r <= 10.0:
            bad(f"repetition_penalty must be a number in (0, 10], got {r!r}")
        if len(self.logit_bias) > MAX_BIAS_ENTRIES:
            bad(f"logit_bias has {len(self.logit_bias)} entries; the limit is {MAX_BIAS_ENTRIES}")
        for tok, b in self.logit_bias.items():
            if not isinstance(tok, int) or not 0 <= tok < vocab_size:
                bad(f"logit_bias token {tok!r} is not a token id (0..{vocab_size - 1})")
            if not isinstance(b, (int, float)) or not -100.0 <= b <= 100.0:
                bad(f"logit_bias values must be numbers from -100 to 100, got {b!r}")
        if self.allowed is not None:
            if not self.allowed:
                bad("allowed token list is empty: nothing could be sampled")
            if any(not isinstance(t, int) or not 0 <= t < vocab_size for t in self.allowed):
                bad(f"allowed tokens must be token ids 0..{vocab_size - 1}")
        return self


@dataclass
class Sample:
    token: int
    logprob: float                                  # of the token under the (biased/masked) model distribution
    top: list[tuple[int, float]] | None = None      # (id, prob) pairs, most likely first


def sample(logits: torch.Tensor, samplers: list[Sampler], generators: list[torch.Generator | None],
           allowed: tuple[torch.Tensor, torch.Tensor] | None = None,
           histories: list[tuple[list[int], list[int]]] | None = None) -> list[Sample]:
    """Sample one token per row of ``logits`` ([rows, vocab]).

    ``allowed`` (row indices, [those rows, vocab] booleans) masks what those rows may sample (a grammar);
    ``histories`` gives each penalized row its (output tokens, every token of its context).
    """
    logits = logits.float()
    rows, vocab = logits.shape
    dev = logits.device
    shaped = False
    if allowed is not None or any(s.penalized for s in samplers):
        logits = logits.clone()
        shaped = True
    for i, s in enumerate(samplers):
        if s.penalized:
            _penalize(logits[i], s, *histories[i])
        if s.logit_bias:
            if not shaped:
                logits = logits.clone()
                shaped = True
            idx = torch.tensor(list(s.logit_bias.keys()), device=dev)
            logits[i, idx] += torch.tensor(list(s.logit_bias.values()), device=dev)
        if s.allowed is not None:
            if not shaped:
                logits = logits.clone()
                shaped = True
            keep = torch.full((vocab,), float("-inf"), device=dev)
            keep[torch.tensor(s.allowed, device=dev)] = 0.0
            logits[i] += keep
    if allowed is not None:
        idx, mask = allowed
        logits[idx] = logits[idx].masked_fill(~mask, float("-inf"))
    logprobs = torch.log_softmax(logits, dim=-1)

    tokens = torch.argmax(logits, dim=-1)
    dist = None   # the distribution sampled from, for rows that sample
    sampled = [i for i, s in enumerate(samplers) if not s.greedy]
    if sampled:
        idx = torch.tensor(sampled, device=dev)
        temps = torch.tensor([samplers[i].temperature for i in sampled], device=dev)
        scaled = logits[idx] / temps[:, None]
        topks = [samplers[i].top_k for i in sampled]
        if any(topks):
            k = torch.tensor([t if t else vocab for t in topks], device=dev)
            sorted_desc = torch.sort(scaled, dim=-1, descending=True).values
            kth = sorted_desc.gather(1, (k - 1)[:, None])
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        top_ps = [samplers[i].top_p for i in sampled]
        min_ps = [samplers[i].min_p for i in sampled]
        if any(p < 1.0 for p in top_ps):
            sp, si = torch.sort(probs, dim=-1, descending=True)
            before = torch.cumsum(sp, dim=-1) - sp     # mass strictly ahead of each token
            cut = before >= torch.tensor(top_ps, device=dev)[:, None]
            sp = sp.masked_fill(cut, 0.0)
            probs = torch.zeros_like(probs).scatter_(1, si, sp)
        if any(min_ps):
            floor = torch.tensor(min_ps, device=dev)[:, None] * probs.max(dim=-1, keepdim=True).values
            probs = probs.masked_fill(probs < floor, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p.
        noise = torch.empty_like(probs)
        unseeded = [j for j, i in enumerate(sampled) if generators[i] is None]
        if unseeded:
            noise[torch.tensor(unseeded, device=dev)] = torch.empty(
                len(unseeded), vocab, device=dev).exponential_()
        for j, i in enumerate(sampled):
            if generators[i] is not None:
                noise[j] = torch.empty(vocab, device=dev).exponential_(generator=generators[i])
        tokens[idx] = torch.argmax(probs / noise, dim=-1)
        dist = (sampled, probs)

    chosen = logprobs.gather(1, tokens[:, None])[:, 0]
    out_tokens = tokens.tolist()
    out_lp = chosen.tolist()
    results = [Sample(t, lp) for t, lp in zip(out_tokens, out_lp)]

    want = [i for i, s in enumerate(samplers) if s.top_logprobs]
    if want:
        pos = {i: j for j, i in enumerate(dist[0])} if dist else {}
        for i in want:
            k = samplers[i].top_logprobs
            p = dist[1][pos[i]] if i in pos else logprobs[i].exp()
            vals, ids = torch.topk(p, k)
            results[i].top = list(zip(ids.tolist(), vals.tolist()))
    return results


def _penalize(row: torch.Tensor, s: Sampler, output: list[int], seen: list[int]) -> None:
    """OpenAI's presence / frequency penalties over the output, and the repetition penalty over
    everything the context holds, applied in place on one row of logits on its device."""
    dev = row.device
    if (s.presence_penalty or s.frequency_penalty) and output:
        counts = torch.bincount(torch.tensor(output, device=dev), minlength=row.shape[0])[:row.shape[0]].float()
        row -= s.frequency_penalty * counts + s.presence_penalty * (counts > 0).float()
    if s.repetition_penalty != 1.0 and seen:
        ids = torch.unique(torch.tensor(seen, device=dev))
        vals = row[ids]
        row[ids] = torch.where(vals > 0, vals / s.repetition_penalty, vals * s.repetition_penalty)
