"""``POST /v1/completions``: OpenAI's text completions over the engine's generations.

``prompt`` is a string, token ids, or a list of up to 64 of either; each prompt gets ``n``
choices (one prefill each, forked), numbered prompt by prompt. ``echo`` returns the prompt
first, and with ``logprobs`` the prompt's own logprobs too (the first token's ``null``), as
lm-eval-harness' loglikelihood tasks read them. Everything else (sampling, penalties,
structured outputs, errors) is shared with chat in ``openai.py``.
"""

from __future__ import annotations

import time

from ..errors import BadRequest
from .base import check_fields, finite
from .openai import COMMON_FIELDS, OpenAIHandler, check_common, sampling_fields, stop_of, structured_of, unsupported
from .streams import build_sampler, check_model, logprob_of, sse

COMPLETION_DEFAULT_MAX_TOKENS = 16      # OpenAI's documented default for /v1/completions
MAX_PROMPTS = 64                        # prompts in one request

COMPLETION_FIELDS = {
    **COMMON_FIELDS,
    "prompt": ("string", "array"),
    "logprobs": "integer",
    "echo": "boolean",
    "suffix": "string",
    "best_of": "integer",
}


class CompletionsHandler(OpenAIHandler):
    """``POST v1/completions``."""

    async def post(self) -> None:
        p = check_fields(self.json_body(), COMPLETION_FIELDS, required=("model", "prompt"), where="/v1/completions")
        check_common(p)
        n = p.get("n", 1)
        if p.get("best_of", n) != n:
            raise unsupported("best_of", "best_of other than n is not supported (choices are not ranked)")
        if p.get("suffix"):
            raise unsupported("suffix", "suffix (fill-in-the-middle) is not supported")
        check_model(self.engine, p["model"])
        want_logprobs = "logprobs" in p
        top = p.get("logprobs") or 0
        echo = p.get("echo", False)
        prompts = self.prompts_of(p["prompt"])
        structured = structured_of(p)
        sampler = build_sampler(sampling_fields(p, top))
        gens, events = await self.start_choices(COMPLETION_DEFAULT_MAX_TOKENS, [dict(
            n=n, prompt=text, tokens=ids, max_tokens=p.get("max_tokens"), sampler=sampler, stop=stop_of(p),
            stop_token_ids=p.get("stop_token_ids"), ignore_eos=p.get("ignore_eos", False), structured=structured,
            prompt_logprobs=top if echo and want_logprobs else -1) for text, ids in prompts])
        self.leaders = list(range(0, len(gens), n))
        cid, created, model = self.new_id("cmpl"), int(time.time()), self.engine.model_name
        stream = p.get("stream", False)
        include_usage = bool(p.get("stream_options", {}).get("include_usage"))
        texts = [text for text, _ in prompts for _ in range(n)]
        echoes = [""] * len(gens)
        if echo:
            for i, g in enumerate(gens):
                echoes[i] = texts[i] if texts[i] is not None else await self.blocking(
                    lambda g=g: self.engine.decode(g.prompt, skip_special_tokens=False))
        lps = [_CompletionLogprobs(self, top) for _ in gens]
        echoed = [False] * len(gens)

        def chunk(items: list, **extra) -> str:
            body = {"id": cid, "object": "text_completion", "created": created, "model": model,
                    "system_fingerprint": None, "choices": items, **extra}
            if include_usage:
                body.setdefault("usage", None)
            return sse(body)

        def echo_part(i: int) -> tuple[str, dict | None]:
            # The prompt is scored by the time its first token arrives.
            echoed[i] = True
            part = None
            if want_logprobs:
                part = lps[i].prompt(gens[i].prompt, gens[i].seq.scores if gens[i].scored else None)
            return echoes[i], part

        if stream:
            self.begin_stream()
        async for batch in events.choice_batches():
            out = []
            for i, ev in batch:
                if ev is None:
                    continue
                if echo and not echoed[i]:
                    text, part = echo_part(i)
                    if stream:
                        out.append(chunk([{"index": i, "text": text, "logprobs": part, "finish_reason": None}]))
                part = lps[i].add([ev]) if want_logprobs else None
                if stream:      # a whole answer is written once, at the end: no per-token chunk
                    out.append(chunk([{"index": i, "text": ev.text, "logprobs": part, "finish_reason": None}]))
            if stream and out and not await self.send("".join(out)):
                return
        results = await self.results(gens, stream)
        if results is None:
            return
        usage = self.usage(gens, results)
        if stream:
            tail = [chunk([{"index": i, "text": "", "logprobs": None, "finish_reason": r.finish_reason}])
                    for i, r in enumerate(results)]
            if include_usage:
                tail.append(chunk([], usage=usage))
            await self.send("".join(tail) + sse("[DONE]"))
            return
        out = []
        for i, r in enumerate(results):
            if echo and not echoed[i]:
                echo_part(i)
            out.append({"index": i, "text": echoes[i] + r.text, "logprobs": lps[i].whole if want_logprobs else None,
                        "finish_reason": r.finish_reason})
        self.write_json({"id": cid, "object": "text_completion", "created": created, "model": model,
                         "system_fingerprint": None, "choices": out, "usage": usage})

    @staticmethod
    def prompts_of(prompt) -> list[tuple[str | None, list[int] | None]]:
        """OpenAI's prompt forms: a string, token ids, or a list of either (a batch of prompts)."""
        if isinstance(prompt, str):
            return [(prompt, None)]
        if prompt and all(isinstance(x, (str, list)) for x in prompt):
            if len(prompt) > MAX_PROMPTS:
                raise BadRequest(f"{len(prompt)} prompts in one request; the limit is {MAX_PROMPTS}",
                                 code="invalid_prompt", param="prompt")
            return [(x, None) if isinstance(x, str) else (None, x) for x in prompt]
        return [(None, prompt)]      # token ids; the engine checks them


class _CompletionLogprobs:
    """A completion choice's ``logprobs`` object (prompt tokens first, with ``echo``), built as tokens come."""

    def __init__(self, handler: OpenAIHandler, top: int):
        self.h = handler
        self.top = top
        self.offset = 0
        self.whole = {"tokens": [], "token_logprobs": [], "top_logprobs": [] if top else None, "text_offset": []}

    def _append(self, part: dict, token: int, lp: float | None, tops: dict | None, text: str) -> None:
        part["tokens"].append(self.h.token_text(token))
        part["token_logprobs"].append(lp)
        part["text_offset"].append(self.offset)
        if part["top_logprobs"] is not None:
            part["top_logprobs"].append(tops)
        self.offset += len(text)

    def _new(self) -> dict:
        return {"tokens": [], "token_logprobs": [], "top_logprobs": [] if self.top else None, "text_offset": []}

    def _merge(self, part: dict) -> dict:
        for k, v in part.items():
            if v is not None:
                self.whole[k].extend(v)
        return part

    def prompt(self, tokens: list[int], scores) -> dict:
        """The prompt's tokens: the first has no logprob (nothing comes before it)."""
        part = self._new()
        for k, tok in enumerate(tokens):
            text = self.h.token_text(tok)
            if k == 0 or scores is None or k - 1 >= len(scores):
                self._append(part, tok, None, None, text)
                continue
            lp, tops = scores[k - 1]
            self._append(part, tok, finite(lp), {self.h.token_text(t): finite(v) for t, v in tops}, text)
        return self._merge(part)

    def add(self, evs) -> dict:
        part = self._new()
        for ev in evs:
            if ev.token >= 0:
                self._append(part, ev.token, finite(ev.logprob),
                             {self.h.token_text(t): logprob_of(pr) for t, pr in ev.top or ()}, ev.text)
            else:
                self.offset += len(ev.text)
        return self._merge(part)


default_handlers = [
    (r"v1/completions", CompletionsHandler),
]
