"""``POST /api/generate``: Potluck's own generation endpoint.

A prompt, chat messages or token ids in (optionally ``structured_outputs``: a
JSON schema, regex, choice or grammar the text must follow); text, tokens,
log-probabilities and usage out, or with ``"stream": true`` server-sent events: ``token`` per token,
then ``done`` (or ``error``). Unknown fields are refused, so a misspelt
parameter never silently falls back to its default.
"""

from __future__ import annotations

from ..constraints import Structured
from ..contexts import check_saved_name
from ..errors import BadRequest
from ..sampling import Sampler
from .base import check_fields, finite
from .streams import GenerationHandler, build_sampler, check_model, logprob_of, sse, usage_json

DEFAULT_MAX_TOKENS = 256

FIELDS = {
    "model": "string",
    "prompt": "string",
    "messages": "array",
    "tokens": "array",
    "max_tokens": "integer",
    "temperature": "number",
    "top_k": "integer",
    "top_p": "number",
    "min_p": "number",
    "seed": "integer",
    "logit_bias": "object",
    "allowed_token_ids": "array",
    "top_logprobs": "integer",
    "stop": ("string", "array"),
    "stop_token_ids": "array",
    "presence_penalty": "number",
    "frequency_penalty": "number",
    "repetition_penalty": "number",
    "structured_outputs": "object",
    "ignore_eos": "boolean",
    "priority": "string",
    "stream": "boolean",
    "context": "string",
}


def _tops(ev) -> list[dict] | None:
    if ev.top is None:
        return None
    return [{"token": tok, "logprob": logprob_of(p)} for tok, p in ev.top]


class GenerateHandler(GenerationHandler):
    """``POST api/generate``: one generation, whole or streamed."""

    async def continued(self, name: str, prompt: str | None, tokens: list | None, messages) -> list:
        """My saved context ``name``'s tokens, then the prompt's (its KV pages are reused, not recomputed)."""
        check_saved_name(name)
        if messages is not None or (prompt is None) == (tokens is None):
            raise BadRequest("with context, give a prompt or tokens to continue it with (not messages)",
                             code="invalid_prompt", param="context")
        t = await self.tenant()
        engine = self.engine

        def join() -> list:
            saved = engine.saved_tokens(t.name, name)
            return saved + (engine.encode(prompt) if prompt is not None else list(tokens))
        return await self.blocking(join)

    async def post(self) -> None:
        p = check_fields(self.json_body(), FIELDS, nullable=False, where="/api/generate")
        check_model(self.engine, p.get("model"))
        sampler: Sampler = build_sampler(p)
        stop = p.get("stop")
        prompt, tokens = p.get("prompt"), p.get("tokens")
        if "context" in p:
            tokens = await self.continued(p["context"], prompt, tokens, p.get("messages"))
            prompt = None
        g, events = await self.start_generation(
            DEFAULT_MAX_TOKENS,
            prompt=prompt, messages=p.get("messages"), tokens=tokens,
            max_tokens=p.get("max_tokens"), sampler=sampler,
            stop=[stop] if isinstance(stop, str) else stop, stop_token_ids=p.get("stop_token_ids"),
            ignore_eos=p.get("ignore_eos", False), priority=p.get("priority"),
            structured=Structured.of(p["structured_outputs"], where="structured_outputs")
            if "structured_outputs" in p else None)
        stream = p.get("stream", False)
        if stream:
            self.begin_stream()
        tops = []
        async for batch in events.batches():
            if stream:
                chunk = "".join(sse({"token": ev.token if ev.token >= 0 else None, "text": ev.text,
                                     "logprob": finite(ev.logprob), "top_logprobs": _tops(ev)}, "token")
                                for ev in batch)
                if not await self.send(chunk):
                    return
            elif sampler.top_logprobs:
                tops.extend(_tops(ev) for ev in batch if ev.token >= 0)
        if self.client_gone:
            return
        if g.error is not None:
            if not stream:
                raise g.error
            await self.send(sse(g.error.to_json(), "error"))
            return
        res = g.result(timeout=0)
        out = {"id": f"gen-{g.id}", "object": "generation", "model": self.engine.model_name, "text": res.text,
               "tokens": res.tokens, "logprobs": [finite(x) for x in res.logprobs],
               "finish_reason": res.finish_reason, "usage": usage_json(res)}
        if sampler.top_logprobs and not stream:
            out["top_logprobs"] = tops
        if stream:
            await self.send(sse(out, "done"))
        else:
            self.write_json(out)


default_handlers = [
    (r"api/generate", GenerateHandler),
]
