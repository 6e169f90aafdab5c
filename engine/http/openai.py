"""The OpenAI-compatible endpoints: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

Any OpenAI client works with ``base_url=<engine>/v1`` and the user's token as
the API key. The documented OpenAI request fields are accepted; those that ask
for something this engine does not do (``n`` > 1, tools, penalties, JSON mode,
audio) are refused with ``unsupported_parameter`` naming the field rather than
silently ignored, and unknown fields are refused as OpenAI itself does.
``user`` is accepted and ignored: the tenant is always the token's owner.

Defaults follow OpenAI: ``temperature`` 1, ``max_tokens`` 16 for completions;
chat completions default to 256 tokens (capped by the tenant's
``max_tokens_per_request``). Extensions, as vLLM has them: ``top_k``,
``min_p``, ``ignore_eos``, ``stop_token_ids``.
"""

from __future__ import annotations

import time
import uuid

from ..errors import BadRequest
from .base import APIHandler, check_fields, finite
from .streams import GenerationHandler, build_sampler, check_model, logprob_of, sse, usage_json

CHAT_DEFAULT_MAX_TOKENS = 256
COMPLETION_DEFAULT_MAX_TOKENS = 16      # OpenAI's documented default for /v1/completions

_COMMON = {
    "model": "string",
    "max_tokens": "integer",
    "temperature": "number",
    "top_p": "number",
    "n": "integer",
    "stream": "boolean",
    "stream_options": "object",
    "stop": ("string", "array"),
    "seed": "integer",
    "logit_bias": "object",
    "presence_penalty": "number",
    "frequency_penalty": "number",
    "user": "string",
    # extensions (as in vLLM)
    "top_k": "integer",
    "min_p": "number",
    "ignore_eos": "boolean",
    "stop_token_ids": "array",
}

CHAT_FIELDS = {
    **_COMMON,
    "messages": "array",
    "max_completion_tokens": "integer",
    "logprobs": "boolean",
    "top_logprobs": "integer",
    "response_format": "object",
    "tools": "array",
    "tool_choice": ("string", "object"),
    "parallel_tool_calls": "boolean",
    "functions": "array",
    "function_call": ("string", "object"),
    "metadata": "object",
    "store": "boolean",
    "service_tier": "string",
    "modalities": "array",
    "audio": "object",
    "prediction": "object",
    "reasoning_effort": "string",
    "web_search_options": "object",
    "verbosity": "string",
    "prompt_cache_key": "string",
    "safety_identifier": "string",
}

COMPLETION_FIELDS = {
    **_COMMON,
    "prompt": ("string", "array"),
    "logprobs": "integer",
    "echo": "boolean",
    "suffix": "string",
    "best_of": "integer",
}

STREAM_OPTIONS = {"include_usage": "boolean", "include_obfuscation": "boolean"}


def unsupported(param: str, message: str) -> BadRequest:
    return BadRequest(message, code="unsupported_parameter", param=param)


def _check_common(p: dict) -> None:
    if p.get("n", 1) != 1:
        raise unsupported("n", f"n={p['n']} is not supported: one choice per request (send several requests)")
    for name in ("presence_penalty", "frequency_penalty"):
        if p.get(name, 0) != 0:
            raise unsupported(name, f"{name} is not supported; leave it out or set it to 0")
    if "stream_options" in p:
        check_fields(p["stream_options"], STREAM_OPTIONS, where="stream_options")


def _sampling(p: dict, top_logprobs: int) -> dict:
    s = {k: p[k] for k in ("top_p", "top_k", "min_p", "seed", "logit_bias") if k in p}
    s["temperature"] = p.get("temperature", 1.0)
    s["top_logprobs"] = top_logprobs
    return s


def _stop(p: dict) -> list | None:
    stop = p.get("stop")
    return [stop] if isinstance(stop, str) else stop


def chat_messages(messages: list) -> list:
    """OpenAI messages as the engine's {role, content}: text parts joined, ``developer`` as ``system``."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            out.append(m)        # the engine names the problem
            continue
        if m.get("tool_calls") or m.get("function_call"):
            raise unsupported("messages", f"messages[{i}]: tool calls are not supported")
        content = m.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise unsupported("messages", f"messages[{i}]: only text content parts are supported")
                texts.append(part["text"])
            content = "".join(texts)
        role = m.get("role")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


class _OpenAIHandler(GenerationHandler):
    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:24]}"

    def token_text(self, token: int) -> str:
        # The token as the model wrote it, special tokens included (OpenAI's logprobs show them).
        return self.engine.decode([token], skip_special_tokens=False)

    async def fail_stream(self, g) -> None:
        # The OpenAI clients raise on a chunk carrying "error".
        await self.send(sse(g.error.to_json()))

    async def end_generation(self, g, stream: bool, chunk, last_choice: dict, include_usage: bool):
        """The end both endpoints share: ``(result, usage)`` to answer with, or None when done already.

        Streaming ends with the finishing chunk, the usage chunk if asked for, and ``[DONE]``; a
        failed generation raises (plain) or ends the stream with an error event.
        """
        if self.client_gone:
            return None
        if g.error is not None:
            if not stream:
                raise g.error
            await self.fail_stream(g)
            return None
        res = g.result(timeout=0)
        usage = openai_usage(res)
        if stream:
            tail = chunk([{**last_choice, "finish_reason": res.finish_reason}])
            if include_usage:
                tail += chunk([], usage=usage)
            await self.send(tail + sse("[DONE]"))
            return None
        return res, usage


class ChatCompletionsHandler(_OpenAIHandler):
    """``POST v1/chat/completions``."""

    async def post(self) -> None:
        p = check_fields(self.json_body(), CHAT_FIELDS, required=("model", "messages"),
                         where="/v1/chat/completions")
        _check_common(p)
        if p.get("tools") or p.get("functions"):
            raise unsupported("tools" if p.get("tools") else "functions", "tool and function calling is not supported")
        for name in ("tool_choice", "function_call"):
            if name in p and p[name] not in ("none", "auto"):
                raise unsupported(name, f"{name} is not supported (tool calling is not available)")
        fmt = p.get("response_format")
        if fmt is not None and fmt.get("type") != "text":
            raise unsupported("response_format", "only response_format {'type': 'text'} is supported")
        for name in ("audio", "prediction", "web_search_options"):
            if name in p:
                raise unsupported(name, f"{name} is not supported")
        if "modalities" in p and p["modalities"] != ["text"]:
            raise unsupported("modalities", "only the 'text' modality is supported")
        if p.get("top_logprobs") and not p.get("logprobs"):
            raise BadRequest("top_logprobs needs logprobs: true", code="invalid_sampling", param="top_logprobs")
        check_model(self.engine, p["model"])
        want_logprobs = p.get("logprobs", False)
        sampler = build_sampler(_sampling(p, p.get("top_logprobs", 0) if want_logprobs else 0))
        g, events = await self.start_generation(
            CHAT_DEFAULT_MAX_TOKENS, messages=chat_messages(p["messages"]),
            max_tokens=p.get("max_completion_tokens", p.get("max_tokens")), sampler=sampler, stop=_stop(p),
            stop_token_ids=p.get("stop_token_ids"), ignore_eos=p.get("ignore_eos", False))
        cid, created, model = self.new_id("chatcmpl"), int(time.time()), self.engine.model_name
        stream = p.get("stream", False)
        include_usage = bool(p.get("stream_options", {}).get("include_usage"))
        logprobs = []

        def chunk(choices: list, **extra) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": None, "choices": choices, **extra}
            if include_usage:
                body.setdefault("usage", None)
            return sse(body)

        if stream:
            self.begin_stream()
            if not await self.send(chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}])):
                return
        async for batch in events.batches():
            entries = [self.logprob_entry(ev) if want_logprobs and ev.token >= 0 else None for ev in batch]
            if not stream:
                logprobs.extend(e for e in entries if e is not None)
                continue
            text = "".join(chunk([{"index": 0, "delta": {"content": ev.text},
                                   "logprobs": {"content": [e]} if e is not None else None,
                                   "finish_reason": None}])
                           for ev, e in zip(batch, entries) if ev.text or e is not None)
            if text and not await self.send(text):
                return
        done = await self.end_generation(g, stream, chunk, {"index": 0, "delta": {}, "logprobs": None}, include_usage)
        if done is None:
            return
        res, usage = done
        self.write_json({
            "id": cid, "object": "chat.completion", "created": created, "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text, "refusal": None},
                         "logprobs": {"content": logprobs} if want_logprobs else None,
                         "finish_reason": res.finish_reason}],
            "usage": usage,
        })

    def logprob_entry(self, ev) -> dict:
        text = self.token_text(ev.token)
        entry = {"token": text, "logprob": finite(ev.logprob), "bytes": list(text.encode("utf-8")),
                 "top_logprobs": []}
        for tok, prob in ev.top or ():
            t = self.token_text(tok)
            entry["top_logprobs"].append({"token": t, "logprob": logprob_of(prob), "bytes": list(t.encode("utf-8"))})
        return entry


class CompletionsHandler(_OpenAIHandler):
    """``POST v1/completions``."""

    async def post(self) -> None:
        p = check_fields(self.json_body(), COMPLETION_FIELDS, required=("model", "prompt"), where="/v1/completions")
        _check_common(p)
        if p.get("best_of", 1) != 1:
            raise unsupported("best_of", "best_of other than 1 is not supported")
        if p.get("suffix"):
            raise unsupported("suffix", "suffix (fill-in-the-middle) is not supported")
        want_logprobs = "logprobs" in p
        if want_logprobs and p.get("echo"):
            raise unsupported("echo", "echo together with logprobs is not supported")
        check_model(self.engine, p["model"])
        prompt, tokens = self.prompt_of(p["prompt"])
        sampler = build_sampler(_sampling(p, p.get("logprobs") or 0))
        g, events = await self.start_generation(
            COMPLETION_DEFAULT_MAX_TOKENS, prompt=prompt, tokens=tokens, max_tokens=p.get("max_tokens"),
            sampler=sampler, stop=_stop(p), stop_token_ids=p.get("stop_token_ids"),
            ignore_eos=p.get("ignore_eos", False))
        cid, created, model = self.new_id("cmpl"), int(time.time()), self.engine.model_name
        stream = p.get("stream", False)
        include_usage = bool(p.get("stream_options", {}).get("include_usage"))
        echo = ""
        if p.get("echo"):
            echo = prompt if prompt is not None else await self.blocking(
                lambda: self.engine.decode(tokens, skip_special_tokens=False))
        lp = {"tokens": [], "token_logprobs": [], "top_logprobs": [] if p.get("logprobs") else None,
              "text_offset": []}
        offset = len(echo)

        def chunk(choices: list, **extra) -> str:
            body = {"id": cid, "object": "text_completion", "created": created, "model": model,
                    "system_fingerprint": None, "choices": choices, **extra}
            if include_usage:
                body.setdefault("usage", None)
            return sse(body)

        def logprobs_of(evs) -> dict:
            nonlocal offset
            part = {"tokens": [], "token_logprobs": [], "top_logprobs": [] if p.get("logprobs") else None,
                    "text_offset": []}
            for ev in evs:
                if ev.token >= 0:
                    part["tokens"].append(self.token_text(ev.token))
                    part["token_logprobs"].append(finite(ev.logprob))
                    part["text_offset"].append(offset)
                    if part["top_logprobs"] is not None:
                        part["top_logprobs"].append({self.token_text(t): logprob_of(pr) for t, pr in ev.top or ()})
                offset += len(ev.text)
            return part

        if stream:
            self.begin_stream()
            if echo and not await self.send(chunk([{"index": 0, "text": echo, "logprobs": None,
                                                    "finish_reason": None}])):
                return
        async for batch in events.batches():
            if not stream:
                if want_logprobs:
                    part = logprobs_of(batch)
                    for k, v in part.items():
                        if v is not None:
                            lp[k].extend(v)
                continue
            text = "".join(chunk([{"index": 0, "text": ev.text,
                                   "logprobs": logprobs_of([ev]) if want_logprobs else None,
                                   "finish_reason": None}])
                           for ev in batch)
            if not await self.send(text):
                return
        done = await self.end_generation(g, stream, chunk, {"index": 0, "text": "", "logprobs": None}, include_usage)
        if done is None:
            return
        res, usage = done
        self.write_json({
            "id": cid, "object": "text_completion", "created": created, "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "text": echo + res.text, "logprobs": lp if want_logprobs else None,
                         "finish_reason": res.finish_reason}],
            "usage": usage,
        })

    @staticmethod
    def prompt_of(prompt) -> tuple[str | None, list[int] | None]:
        """OpenAI's prompt forms: a string, [string], token ids, or [token ids]; one prompt only."""
        if isinstance(prompt, str):
            return prompt, None
        if len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
            return (prompt, None) if isinstance(prompt, str) else (None, prompt)
        if prompt and all(isinstance(x, list) or isinstance(x, str) for x in prompt):
            raise unsupported("prompt", "several prompts in one request are not supported; send one per request")
        return None, prompt      # token ids; the engine checks them


def openai_usage(res) -> dict:
    u = usage_json(res)
    cached = u.pop("cached_tokens")
    u["prompt_tokens_details"] = {"cached_tokens": cached}
    return u


class ModelsHandler(APIHandler):
    """``GET v1/models``: the served model, if the caller's quota allows it."""

    async def get(self) -> None:
        t = await self.tenant()
        allowed = t.quota.models
        name = self.engine.model_name
        data = []
        if "*" in allowed or name in allowed:
            data.append({"id": name, "object": "model", "created": int(self.service.started), "owned_by": "potluck"})
        self.write_json({"object": "list", "data": data})


default_handlers = [
    (r"v1/chat/completions", ChatCompletionsHandler),
    (r"v1/completions", CompletionsHandler),
    (r"v1/models", ModelsHandler),
]
