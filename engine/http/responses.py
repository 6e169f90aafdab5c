"""``POST /v1/responses``: OpenAI's Responses API over the same generations as chat completions.

``input`` (a string, or a list of messages and ``function_call`` / ``function_call_output`` items)
and ``instructions`` become a chat; ``tools`` (flat function tools), ``tool_choice`` and
``text.format`` (``json_object`` / ``json_schema``) mean what they mean in chat completions
(``openai.chat_prompt``). The answer is a ``response`` object whose ``output`` holds one
``message`` item or ``function_call`` items; with ``stream`` the typed events OpenAI sends
(``response.created`` ... ``response.output_text.delta`` ... ``response.completed``).

Nothing is stored: ``previous_response_id`` and ``store: true`` lookups are refused with a
one-line 400 (send the whole conversation in ``input``), ``background`` likewise.
"""

from __future__ import annotations

import json
import time
import uuid

from ..constraints import Structured, closed_objects
from ..errors import BadRequest
from .base import check_fields
from .openai import ChatChoice, OpenAIHandler, chat_prompt, unsupported
from .openai_tools import ToolRequest
from .streams import build_sampler, check_model, sse

DEFAULT_MAX_OUTPUT_TOKENS = 256

FIELDS = {
    "model": "string",
    "input": ("string", "array"),
    "instructions": "string",
    "max_output_tokens": "integer",
    "temperature": "number",
    "top_p": "number",
    "top_logprobs": "integer",
    "stream": "boolean",
    "stream_options": "object",
    "tools": "array",
    "tool_choice": ("string", "object"),
    "parallel_tool_calls": "boolean",
    "text": "object",
    "store": "boolean",
    "metadata": "object",
    "user": "string",
    "previous_response_id": "string",
    "truncation": "string",
    "reasoning": "object",
    "include": "array",
    "background": "boolean",
    "service_tier": "string",
    "prompt_cache_key": "string",
    "safety_identifier": "string",
    "seed": "integer",
}


def _bad(message: str, param: str) -> BadRequest:
    return BadRequest(message, code="invalid_input", param=param)


def _text_of(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text") \
                    or not isinstance(part.get("text"), str):
                raise unsupported("input", f"{where}: only text content parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"{where}.content must be a string or a list of text parts", "input")


def chat_of(p: dict) -> list[dict]:
    """The conversation as chat messages (tool calls and their outputs as chat's tool turns)."""
    messages: list[dict] = []
    if "instructions" in p:
        messages.append({"role": "system", "content": p["instructions"]})
    items = p["input"]
    if isinstance(items, str):
        return messages + [{"role": "user", "content": items}]
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object", "input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise _bad(f"{where}.role must be user, system, developer or assistant", "input")
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _text_of(item.get("content"), where)})
        elif kind == "function_call":
            call = {"id": item.get("call_id") or item.get("id") or "call_0", "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}
            if not isinstance(call["function"]["name"], str):
                raise _bad(f"{where}: a function_call needs a name", "input")
            if messages and messages[-1]["role"] == "assistant" and "tool_calls" in messages[-1]:
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            out = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": out if isinstance(out, str) else json.dumps(out)})
        else:
            raise unsupported("input", f"{where}: input items of type {kind!r} are not supported")
    if not messages:
        raise _bad("input is empty", "input")
    return messages


def tools_of(p: dict) -> ToolRequest | None:
    """Responses' flat function tools as chat's ``{"type": "function", "function": {...}}``."""
    tools = []
    for i, t in enumerate(p.get("tools") or ()):
        if not isinstance(t, dict) or t.get("type") != "function":
            raise unsupported("tools", f"tools[{i}]: only function tools are supported")
        fn = {k: t[k] for k in ("name", "description", "parameters") if k in t}
        if t.get("strict") and isinstance(fn.get("parameters"), dict):
            fn["parameters"] = closed_objects(fn["parameters"])
        tools.append({"type": "function", "function": fn})
    choice = p.get("tool_choice")
    if isinstance(choice, dict):
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    return ToolRequest.of({"tools": tools, "tool_choice": choice,
                           "parallel_tool_calls": p.get("parallel_tool_calls", True)})


def format_of(p: dict) -> Structured | None:
    fmt = (p.get("text") or {}).get("format")
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return Structured("json_object", None, "text.format")
    if fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("text.format json_schema needs a 'schema' object", code="invalid_structured_output",
                             param="text")
        return Structured("json", closed_objects(schema) if fmt.get("strict") else schema, "text.format")
    raise unsupported("text", f"text.format type {fmt.get('type')!r} is not supported")


class ResponsesHandler(OpenAIHandler):
    """``POST v1/responses``."""

    async def post(self) -> None:
        p = check_fields(self.json_body(), FIELDS, required=("model", "input"), where="/v1/responses")
        for name in ("previous_response_id", "background"):
            if p.get(name):
                raise unsupported(name, f"{name} is not supported: responses are not stored; send the whole "
                                        "conversation in input")
        check_model(self.engine, p["model"])
        tools = tools_of(p)
        prompt = chat_prompt(self.engine, chat_of(p), tools, format_of(p))
        sampler = build_sampler({"temperature": p.get("temperature", 1.0),
                                 **{k: p[k] for k in ("top_p", "seed") if k in p}})
        gens, events = await self.start_choices(DEFAULT_MAX_OUTPUT_TOKENS, [dict(
            **prompt, max_tokens=p.get("max_output_tokens"), sampler=sampler)])
        rid, msg_id, created = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}", time.time()
        choice = ChatChoice(0, tools, False)
        stream = p.get("stream", False)
        seq = 0

        def event(kind: str, **body) -> str:
            nonlocal seq
            seq += 1
            return sse({"type": kind, "sequence_number": seq - 1, **body}, kind)

        def response(status: str, output: list, usage=None, reason: str | None = None) -> dict:
            return {"id": rid, "object": "response", "created_at": created, "status": status, "model":
                    self.engine.model_name, "output": output, "error": None,
                    "incomplete_details": {"reason": reason} if reason else None,
                    "instructions": p.get("instructions"), "max_output_tokens": p.get("max_output_tokens"),
                    "temperature": p.get("temperature", 1.0), "top_p": p.get("top_p", 1.0),
                    "parallel_tool_calls": p.get("parallel_tool_calls", True),
                    "tool_choice": p.get("tool_choice", "auto"), "tools": p.get("tools", []),
                    "text": p.get("text", {"format": {"type": "text"}}), "metadata": p.get("metadata", {}),
                    "store": False, "usage": usage}

        message = {"type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": []}
        text_open = False

        async def open_text() -> bool:
            nonlocal text_open
            text_open = True
            return await self.send(
                event("response.output_item.added", output_index=0, item=message)
                + event("response.content_part.added", item_id=msg_id, output_index=0, content_index=0,
                        part={"type": "output_text", "text": "", "annotations": []}))

        if stream:
            self.begin_stream()
            head = response("in_progress", [])
            if not await self.send(event("response.created", response=head)
                                   + event("response.in_progress", response=head)):
                return
        async for batch in events.batches():
            for ev in batch:
                for delta, _ in choice.push(ev.text, None, stream):
                    if not stream or not delta.get("content"):
                        continue
                    if not text_open and not await open_text():
                        return
                    if not await self.send(event("response.output_text.delta", item_id=msg_id, output_index=0,
                                                 content_index=0, delta=delta["content"], logprobs=[])):
                        return
        if self.client_gone:
            return
        g = gens[0]
        if g.error is not None:
            if not stream:
                raise g.error
            err = g.error.to_json()["error"]
            await self.send(event("error", code=err.get("code"), message=err.get("message"), param=None))
            return
        res = g.result(timeout=0)
        content, calls = choice.answer(res.text)
        output = []
        if content is not None:
            text = content
            output.append({**message, "status": "completed",
                           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
        for c in calls:
            output.append({"type": "function_call", "id": f"fc_{uuid.uuid4().hex}", "call_id": c["id"],
                           "name": c["function"]["name"], "arguments": c["function"]["arguments"],
                           "status": "completed"})
        usage = {"input_tokens": len(g.prompt), "input_tokens_details": {"cached_tokens": g.cached_tokens},
                 "output_tokens": len(res.tokens), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": len(g.prompt) + len(res.tokens)}
        incomplete = res.finish_reason == "length"
        final = response("incomplete" if incomplete else "completed", output, usage,
                         "max_output_tokens" if incomplete else None)
        if not stream:
            self.write_json(final)
            return
        tail = ""
        index = 0
        if content is not None:
            if not text_open:
                await open_text()
            if not choice.streaming and content:
                # Text held while it might have been a call: it goes out now, whole.
                tail += event("response.output_text.delta", item_id=msg_id, output_index=0, content_index=0,
                              delta=content, logprobs=[])
            part = output[0]["content"][0]
            tail += (event("response.output_text.done", item_id=msg_id, output_index=0, content_index=0,
                           text=content, logprobs=[])
                     + event("response.content_part.done", item_id=msg_id, output_index=0, content_index=0,
                             part=part)
                     + event("response.output_item.done", output_index=0, item=output[0]))
            index = 1
        for item in output[index:]:
            added = {**item, "arguments": "", "status": "in_progress"}
            tail += (event("response.output_item.added", output_index=index, item=added)
                     + event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                             delta=item["arguments"])
                     + event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                             arguments=item["arguments"], name=item["name"])
                     + event("response.output_item.done", output_index=index, item=item))
            index += 1
        tail += event("response.incomplete" if incomplete else "response.completed", response=final)
        await self.send(tail)


default_handlers = [
    (r"v1/responses", ResponsesHandler),
]
