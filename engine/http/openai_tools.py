"""Tool (function) calling for the OpenAI door: tools into the prompt, calls out of the text.

``ToolRequest.of`` checks a request's ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` (and
the legacy ``functions`` / ``function_call``). How the model learns of the tools: if the model's
chat template renders tools itself (it mentions ``tools``), they go to the template; otherwise a
system message lists them and asks for ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
blocks (the Hermes convention most open chat models were tuned on). Earlier turns with
``tool_calls`` and ``tool`` results are rendered the same way.

What comes back: with ``tool_choice`` "required" or a named function the output is decoded under
the grammar of a call (``call_structure``): the name is one of the tools and the arguments follow
that function's JSON schema, every time. With "auto" the model chooses; ``parse_calls`` finds its
call blocks, and text that is not a valid call of a known tool stays content.

What it must never do: run a tool (the client does), or talk to the engine.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from ..constraints import Structured, closed_objects
from ..errors import BadRequest

MAX_TOOLS = 128
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
CALL_OPEN = "<tool_call>"


def _bad(message: str, param: str) -> BadRequest:
    return BadRequest(message, code="invalid_tools", param=param)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict

    def to_json(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolRequest:
    tools: tuple[Tool, ...]
    choice: str              # "none" | "auto" | "required" | "function" (one named function)
    named: str | None        # the function when choice == "function"
    parallel: bool

    @staticmethod
    def of(p: dict) -> "ToolRequest | None":
        """The request's tools, or None when it has none (or asks for none)."""
        tools, choice = p.get("tools"), p.get("tool_choice")
        if p.get("functions") is not None:       # the legacy form of the same thing
            if tools is not None:
                raise _bad("give tools or functions, not both", "functions")
            tools = [{"type": "function", "function": f} for f in p["functions"]]
            fc = p.get("function_call")
            choice = {"type": "function", "function": fc} if isinstance(fc, dict) else fc
        if not tools:
            if choice not in (None, "none", "auto"):
                raise _bad("tool_choice needs tools", "tool_choice")
            return None
        if len(tools) > MAX_TOOLS:
            raise _bad(f"{len(tools)} tools given; the limit is {MAX_TOOLS}", "tools")
        parsed: list[Tool] = []
        for i, t in enumerate(tools):
            f = t.get("function") if isinstance(t, dict) else None
            if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(f, dict):
                raise _bad(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", "tools")
            name = f.get("name")
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise _bad(f"tools[{i}].function.name must be 1 to 64 letters, digits, _ or -", "tools")
            params = f.get("parameters", {"type": "object", "properties": {}})
            if not isinstance(params, dict):
                raise _bad(f"tools[{i}].function.parameters must be a JSON schema object", "tools")
            desc = f.get("description") or ""
            if not isinstance(desc, str):
                raise _bad(f"tools[{i}].function.description must be a string", "tools")
            if any(x.name == name for x in parsed):
                raise _bad(f"tools[{i}]: the function name {name!r} is given twice", "tools")
            parsed.append(Tool(name, desc, params))
        named = None
        if choice is None:
            choice = "auto"
        elif isinstance(choice, dict):
            fn = choice.get("function") if choice.get("type", "function") == "function" else None
            named = fn.get("name") if isinstance(fn, dict) else None
            if named not in {t.name for t in parsed}:
                raise _bad(f"tool_choice names function {named!r}, which is not in tools", "tool_choice")
            choice = "function"
        elif choice not in ("none", "auto", "required"):
            raise _bad("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', "
                       "'function': {'name': ...}}", "tool_choice")
        return ToolRequest(tuple(parsed), choice, named, p.get("parallel_tool_calls", True))

    @property
    def forced(self) -> bool:
        return self.choice in ("required", "function")

    def call_structure(self) -> Structured:
        """The grammar of the one call the model must make (tool_choice required or named)."""
        pool = [t for t in self.tools if self.named is None or t.name == self.named]
        one = [{"type": "object", "properties": {"name": {"const": t.name},
                                                 "arguments": closed_objects(t.parameters)},
                "required": ["name", "arguments"], "additionalProperties": False} for t in pool]
        return Structured("json", one[0] if len(one) == 1 else {"anyOf": one}, "tools")

    def system_text(self) -> str:
        listing = "\n".join(json.dumps(t.to_json()["function"]) for t in self.tools)
        how = ("Call one of them" if self.forced else
               "If a function helps to answer, call it")
        return (f"You can call these functions:\n<tools>\n{listing}\n</tools>\n"
                f"{how} by answering with only <tool_call>{{\"name\": <function name>, \"arguments\": "
                f"<arguments as a JSON object>}}</tool_call>"
                + (", one block per call." if self.parallel and not self.forced else ".")
                + ("" if self.forced else " Otherwise answer normally."))


def template_renders_tools(template: str) -> bool:
    return "tools" in template and "tool_calls" in template


def prompt_messages(messages: list[dict], tools: ToolRequest | None, native: bool) -> tuple[list[dict], dict]:
    """The engine's messages (and chat-template kwargs) for OpenAI messages with tool turns.

    ``native``: the chat template renders tools itself; they are passed to it as OpenAI shapes.
    Otherwise tool calls become ``<tool_call>`` blocks in assistant turns, results become
    ``<tool_response>`` blocks in user turns, and the tool listing joins the system message.
    """
    use = tools if tools is not None and tools.choice != "none" else None
    if native:
        out = []
        for m in messages:
            if m.get("tool_calls"):
                m = {**m, "content": m.get("content") or "",
                     "tool_calls": [{**c, "function": {**c["function"],
                                                       "arguments": _args_obj(c["function"].get("arguments"))}}
                                    for c in m["tool_calls"]]}
            out.append(m)
        return out, ({"tools": [t.to_json() for t in use.tools]} if use else {})
    out = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role == "assistant" and m.get("tool_calls"):
            blocks = "".join(f"<tool_call>{json.dumps({'name': c['function']['name'], 'arguments': _args_obj(c['function'].get('arguments'))})}</tool_call>"
                             for c in m["tool_calls"])
            out.append({"role": "assistant", "content": (content or "") + blocks})
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    if use is not None:
        text = use.system_text()
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out, {}


def _args_obj(arguments) -> dict:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def new_call(name: str, arguments: dict) -> dict:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


def parse_calls(text: str, tools: ToolRequest) -> tuple[str | None, list[dict]]:
    """(content, tool calls) of a model's answer: ``<tool_call>`` blocks, or a whole-answer JSON call."""
    known = {t.name for t in tools.tools}
    calls = []
    bodies = _BLOCK.findall(text) if CALL_OPEN in text else [text.strip()]
    for body in bodies:
        try:
            obj = json.loads(body)
        except ValueError:
            continue
        if not isinstance(obj, dict) or obj.get("name") not in known:
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        if not isinstance(args, dict):
            continue
        calls.append(new_call(obj["name"], args))
    if not calls:
        return text, []
    if not tools.parallel:
        calls = calls[:1]
    content = text.split(CALL_OPEN, 1)[0].strip() if CALL_OPEN in text else ""
    return content or None, calls
