"""The OpenAI-compatible door: ``/v1/chat/completions`` and ``/v1/models``, and what every ``/v1``
handler shares (request fields, structured outputs, OpenAI-shaped errors, the handler base).
``completions.py`` and ``responses.py`` are the other two generation endpoints.

Any OpenAI client works with ``base_url=<engine>/v1`` and the user's token as the API key.
Supported beyond text: ``n`` choices (one prefill, forked), lists of prompts, ``echo`` with
prompt logprobs, presence / frequency (and vLLM's repetition) penalties, ``response_format``
(``json_object``, ``json_schema``) and vLLM's ``structured_outputs`` / ``guided_*`` fields
(decoded under a grammar: the answer always parses), and tools (``openai_tools``). Fields that
ask for something a text model cannot do (audio, web search) are refused naming the field, and
unknown fields are refused as OpenAI itself does. ``user`` is accepted and ignored: the tenant
is always the token's owner.

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: request-shape
and per-request limits are 400 (``invalid_request_error``), rates 429 with ``Retry-After``.

Defaults follow OpenAI: ``temperature`` 1, ``max_tokens`` 16 for completions; chat completions
default to 256 tokens (capped by the tenant's ``max_tokens_per_request``).
"""

from __future__ import annotations

import json
import time
import uuid

from ..constraints import Structured, closed_objects
from ..errors import BadRequest
from .base import APIHandler, ServiceHandler, check_fields, finite
from .openai_tools import CALL_OPEN, ToolRequest, new_call, parse_calls, prompt_messages, template_renders_tools
from .streams import GenerationHandler, build_sampler, check_model, logprob_of, sse

CHAT_DEFAULT_MAX_TOKENS = 256

COMMON_FIELDS = {
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
    "response_format": "object",
    # extensions (as in vLLM)
    "top_k": "integer",
    "min_p": "number",
    "repetition_penalty": "number",
    "ignore_eos": "boolean",
    "stop_token_ids": "array",
    "structured_outputs": "object",
    "guided_json": ("object", "string"),
    "guided_regex": "string",
    "guided_choice": "array",
    "guided_grammar": "string",
}

CHAT_FIELDS = {
    **COMMON_FIELDS,
    "messages": "array",
    "max_completion_tokens": "integer",
    "logprobs": "boolean",
    "top_logprobs": "integer",
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

STREAM_OPTIONS = {"include_usage": "boolean", "include_obfuscation": "boolean"}

# OpenAI's error types by status; the openai SDK picks its exception class by status, LangChain
# and LiteLLM also read ``type`` and the message.
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
                422: "invalid_request_error", 429: "rate_limit_error"}


def unsupported(param: str, message: str) -> BadRequest:
    return BadRequest(message, code="unsupported_parameter", param=param)


def structured_of(p: dict) -> Structured | None:
    """The output structure asked for by ``response_format``, ``structured_outputs`` or ``guided_*``."""
    asked: list[tuple[str, Structured | None]] = []
    fmt = p.get("response_format")
    if fmt is not None:
        kind = fmt.get("type")
        if kind == "json_object":
            asked.append(("response_format", Structured("json_object", None, "response_format")))
        elif kind == "json_schema":
            js = fmt.get("json_schema")
            if not isinstance(js, dict):
                raise BadRequest("response_format json_schema needs a 'json_schema' object with a 'schema'",
                                 code="invalid_structured_output", param="response_format")
            schema = js.get("schema")
            if js.get("strict") and schema is not None:
                schema = closed_objects(schema)
            asked.append(("response_format", Structured("json", schema, "response_format") if schema is not None
                          else Structured("json_object", None, "response_format")))
        elif kind != "text":
            raise unsupported("response_format", f"response_format type {kind!r} is not supported; use "
                                                 "'text', 'json_object' or 'json_schema'")
    if "structured_outputs" in p:
        asked.append(("structured_outputs", Structured.of(p["structured_outputs"], where="structured_outputs")))
    legacy = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
    for name, kind in legacy.items():
        if name in p:
            asked.append((name, Structured.of({kind: p[name]}, where=name)))
    asked = [(n, s) for n, s in asked if s is not None]
    if len(asked) > 1:
        raise BadRequest(f"give one of {asked[0][0]} and {asked[1][0]}, not both",
                         code="invalid_structured_output", param=asked[1][0])
    return asked[0][1] if asked else None


def check_common(p: dict) -> None:
    if "stream_options" in p:
        check_fields(p["stream_options"], STREAM_OPTIONS, where="stream_options")


def sampling_fields(p: dict, top_logprobs: int) -> dict:
    s = {k: p[k] for k in ("top_p", "top_k", "min_p", "seed", "logit_bias", "presence_penalty",
                           "frequency_penalty", "repetition_penalty") if k in p}
    s["temperature"] = p.get("temperature", 1.0)
    s["top_logprobs"] = top_logprobs
    return s


def stop_of(p: dict) -> list | None:
    stop = p.get("stop")
    return [stop] if isinstance(stop, str) else stop


def chat_messages(messages: list) -> list:
    """OpenAI messages as the engine's {role, content}: text parts joined, ``developer`` as ``system``.

    Tool turns keep ``tool_calls`` / ``tool_call_id``; ``openai_tools.prompt_messages`` renders them.
    """
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            out.append(m)        # the engine names the problem
            continue
        content = m.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise unsupported("messages", f"messages[{i}]: only text content parts are supported")
                texts.append(part["text"])
            content = "".join(texts)
        role = m.get("role")
        msg = {"role": "system" if role == "developer" else role, "content": content}
        calls = m.get("tool_calls")
        if m.get("function_call") and not calls:
            calls = [{"id": "call_0", "type": "function", "function": m["function_call"]}]
        if calls is not None:
            if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                                      and isinstance(c["function"].get("name"), str)
                                                      for c in calls):
                raise BadRequest(f"messages[{i}].tool_calls must be a list of {{'function': {{'name', "
                                 f"'arguments'}}}} objects", code="invalid_messages", param="messages")
            msg["tool_calls"] = calls
            msg["content"] = content or ""
        if role in ("tool", "function"):
            msg["role"] = "tool"
            msg["content"] = content if isinstance(content, str) else json.dumps(content)
            if m.get("tool_call_id") is not None:
                msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out


def chat_prompt(engine, messages: list[dict], tools: ToolRequest | None, structured: Structured | None) -> dict:
    """The ``generate_choices`` arguments of a chat with tools: messages, template kwargs, structure."""
    if tools is not None and tools.forced:
        if structured is not None:
            raise BadRequest("give a response format or a required tool_choice, not both",
                             code="invalid_structured_output", param="tool_choice")
        structured = tools.call_structure()
    messages, chat_kwargs = prompt_messages(messages, tools, template_renders_tools(engine.chat_template))
    return {"messages": messages, "chat_kwargs": chat_kwargs, "structured": structured}


class OpenAIErrors(ServiceHandler):
    """Errors in OpenAI's shape, for every handler under ``/v1``."""

    def _finish_json_error(self, status: int, body: dict) -> None:
        err = dict(body.get("error") or {})
        if status == 413 and err.get("code") == "request_too_large":
            status = 400          # a per-request limit: OpenAI and vLLM answer 400 (the SDK's BadRequestError)
        shaped = {"message": err.pop("message", ""), "type": _ERROR_TYPES.get(status, "server_error"),
                  "param": err.pop("param", None), "code": err.pop("code", None), **err}
        super()._finish_json_error(status, {"error": shaped})


class OpenAIHandler(OpenAIErrors, GenerationHandler):
    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:24]}"

    def token_text(self, token: int) -> str:
        # The token as the model wrote it, special tokens included (OpenAI's logprobs show them).
        return self.engine.decode([token], skip_special_tokens=False)

    def usage(self, gens, results) -> dict:
        """One prompt's tokens per prompt (its choices share it), every choice's completion tokens."""
        prompt = sum(len(g.prompt) for i, g in enumerate(gens) if i in self.leaders)
        done = sum(len(r.tokens) for r in results)
        cached = sum(gens[i].cached_tokens for i in self.leaders)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done,
                "prompt_tokens_details": {"cached_tokens": cached}}

    leaders: list[int] = [0]

    async def fail_stream(self, g) -> None:
        # The OpenAI clients raise on a chunk carrying "error".
        shaped = g.error.to_json()["error"]
        await self.send(sse({"error": {"message": shaped.pop("message"), "type": _ERROR_TYPES.get(
            g.error.status, "server_error"), "param": shaped.pop("param", None), "code": shaped.pop("code")}}))

    async def results(self, gens, stream: bool) -> list | None:
        """Every choice's result; None when there is nothing more to send (the client left, or a
        failed choice ended the stream with an error event). A failure raises when not streaming."""
        if self.client_gone:
            return None
        bad = next((g for g in gens if g.error is not None), None)
        if bad is not None:
            if not stream:
                raise bad.error
            await self.fail_stream(bad)
            return None
        return [g.result(timeout=0) for g in gens]


class ChatCompletionsHandler(OpenAIHandler):
    """``POST v1/chat/completions``."""

    async def post(self) -> None:
        p = check_fields(self.json_body(), CHAT_FIELDS, required=("model", "messages"),
                         where="/v1/chat/completions")
        check_common(p)
        for name in ("audio", "prediction", "web_search_options"):
            if name in p:
                raise unsupported(name, f"{name} is not supported")
        if "modalities" in p and p["modalities"] != ["text"]:
            raise unsupported("modalities", "only the 'text' modality is supported")
        if p.get("top_logprobs") and not p.get("logprobs"):
            raise BadRequest("top_logprobs needs logprobs: true", code="invalid_sampling", param="top_logprobs")
        check_model(self.engine, p["model"])
        tools = ToolRequest.of(p)
        prompt = chat_prompt(self.engine, chat_messages(p["messages"]), tools, structured_of(p))
        want_logprobs = p.get("logprobs", False)
        n = p.get("n", 1)
        sampler = build_sampler(sampling_fields(p, p.get("top_logprobs", 0) if want_logprobs else 0))
        gens, events = await self.start_choices(CHAT_DEFAULT_MAX_TOKENS, [dict(
            n=n, **prompt,
            max_tokens=p.get("max_completion_tokens", p.get("max_tokens")), sampler=sampler, stop=stop_of(p),
            stop_token_ids=p.get("stop_token_ids"), ignore_eos=p.get("ignore_eos", False))])
        cid, created, model = self.new_id("chatcmpl"), int(time.time()), self.engine.model_name
        stream = p.get("stream", False)
        include_usage = bool(p.get("stream_options", {}).get("include_usage"))
        choices = [ChatChoice(i, tools, want_logprobs) for i in range(n)]

        def chunk(items: list, **extra) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": None, "choices": items, **extra}
            if include_usage:
                body.setdefault("usage", None)
            return sse(body)

        if stream:
            self.begin_stream()
            first = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None} for i in range(n)]
            if not await self.send("".join(chunk([c]) for c in first)):
                return
        async for batch in events.choice_batches():
            out = []
            for i, ev in batch:
                c = choices[i]
                if ev is None:
                    continue
                entry = self.logprob_entry(ev) if want_logprobs and ev.token >= 0 else None
                for delta, lps in c.push(ev.text, entry, stream):
                    out.append(chunk([{"index": i, "delta": delta, "logprobs": lps, "finish_reason": None}]))
            if stream and out and not await self.send("".join(out)):
                return
        results = await self.results(gens, stream)
        if results is None:
            return
        usage = self.usage(gens, results)
        if stream:
            tail = []
            for c, r in zip(choices, results):
                for delta, lps in c.end(r.text, stream=True):
                    tail.append(chunk([{"index": c.index, "delta": delta, "logprobs": lps, "finish_reason": None}]))
                tail.append(chunk([{"index": c.index, "delta": {}, "logprobs": None,
                                    "finish_reason": c.finish_reason(r.finish_reason)}]))
            if include_usage:
                tail.append(chunk([], usage=usage))
            await self.send("".join(tail) + sse("[DONE]"))
            return
        out_choices = []
        for c, r in zip(choices, results):
            content, calls = c.answer(r.text)
            msg = {"role": "assistant", "content": content, "refusal": None}
            if calls:
                msg["tool_calls"] = calls
            out_choices.append({"index": c.index, "message": msg,
                                "logprobs": {"content": c.logprobs} if want_logprobs else None,
                                "finish_reason": c.finish_reason(r.finish_reason)})
        self.write_json({"id": cid, "object": "chat.completion", "created": created, "model": model,
                         "system_fingerprint": None, "choices": out_choices, "usage": usage})

    def logprob_entry(self, ev) -> dict:
        text = self.token_text(ev.token)
        entry = {"token": text, "logprob": finite(ev.logprob), "bytes": list(text.encode("utf-8")),
                 "top_logprobs": []}
        for tok, prob in ev.top or ():
            t = self.token_text(tok)
            entry["top_logprobs"].append({"token": t, "logprob": logprob_of(prob), "bytes": list(t.encode("utf-8"))})
        return entry


class ChatChoice:
    """One choice of a chat completion: its text streamed as content, or held as a tool call.

    With a forced tool call the whole output is the call; with "auto" the output is held while it
    may still be a call (it starts like ``<tool_call>`` or a JSON object) and streamed as content
    as soon as it cannot be.
    """

    def __init__(self, index: int, tools: ToolRequest | None, want_logprobs: bool):
        self.index = index
        self.tools = tools
        self.logprobs: list[dict] = []
        self.held = ""
        self.held_lps: list[dict] = []
        self.streaming = tools is None or tools.choice == "none"
        self.calls: list[dict] | None = None

    def _maybe_call(self, text: str) -> bool:
        head = text.lstrip()
        return (not head or head.startswith(CALL_OPEN) or CALL_OPEN.startswith(head)
                or head.startswith("{"))

    def push(self, text: str, entry: dict | None, stream: bool):
        """The deltas to send now for this token (none while the text is held)."""
        if entry is not None:
            self.logprobs.append(entry)
        if self.streaming:
            if stream and (text or entry is not None):
                yield {"content": text}, ({"content": [entry]} if entry is not None else None)
            return
        self.held += text
        if entry is not None:
            self.held_lps.append(entry)
        if self.tools.choice == "auto" and not self._maybe_call(self.held):
            self.streaming = True
            held, lps, self.held, self.held_lps = self.held, self.held_lps, "", []
            if stream:
                yield {"content": held}, ({"content": lps} if lps else None)

    def answer(self, text: str) -> tuple[str | None, list[dict]]:
        """(content, tool calls) of the whole output."""
        if self.calls is None:
            self.calls = []
            if self.tools is not None and self.tools.forced:
                try:
                    obj = json.loads(text)
                except ValueError:       # cut by max_tokens: no call to give
                    return text, []
                self.calls = [new_call(obj["name"], obj["arguments"])]
                return None, self.calls
            if self.tools is not None and self.tools.choice == "auto" and not self.streaming:
                content, self.calls = parse_calls(text, self.tools)
                return content, self.calls
        return (None if self.calls else text), self.calls

    def end(self, text: str, stream: bool):
        """The deltas that close a streamed choice: held text as content, or its tool calls."""
        if self.streaming:
            return
        content, calls = self.answer(text)
        if calls:
            if content:
                yield {"content": content}, None
            yield {"tool_calls": [{"index": k, **c} for k, c in enumerate(calls)]}, None
        elif self.held:
            yield {"content": self.held}, ({"content": self.held_lps} if self.held_lps else None)

    def finish_reason(self, reason: str) -> str:
        return "tool_calls" if self.calls else reason


class ModelsHandler(OpenAIErrors, APIHandler):
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
    (r"v1/models", ModelsHandler),
]
