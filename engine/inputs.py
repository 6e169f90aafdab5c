"""What a request may ask of the engine, checked once for every door.

The HTTP API, the OpenAI door, inferlets and the Python API all reach the
engine through ``Engine``; these checks run there, before anything is
queued, and each refusal is one line naming the field and its limit.
Nothing here holds state.
"""

from __future__ import annotations

from .errors import BadRequest
from .scheduler import PRIORITIES

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_CHOICES = 16             # choices of one prompt (OpenAI's ``n``), each a generation of its own
CHAT_ROLES = ("system", "user", "assistant", "tool")


def check_tokens(tokens, vocab_size: int, allow_empty: bool = False) -> list[int]:
    if not isinstance(tokens, list) or (not tokens and not allow_empty):
        raise BadRequest("tokens must be a non-empty list of token ids", code="invalid_tokens")
    for x in tokens:
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < vocab_size:
            raise BadRequest(f"token {x!r} is not a token id (0..{vocab_size - 1})", code="invalid_tokens")
    return tokens


def check_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list of {role, content} objects", code="invalid_messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRequest("each message needs a string 'role' and a string 'content'", code="invalid_messages")
        if m["role"] not in CHAT_ROLES:
            raise BadRequest(f"unknown message role {m['role']!r}", code="invalid_messages")
    return messages


def check_one_prompt(prompt, messages, tokens) -> None:
    if sum(x is not None for x in (prompt, messages, tokens)) != 1:
        raise BadRequest("give exactly one of prompt, messages or tokens", code="invalid_prompt")
    if prompt is not None and (not isinstance(prompt, str) or not prompt):
        raise BadRequest("prompt must be a non-empty string", code="invalid_prompt")


def check_max_tokens(max_tokens) -> int:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}", code="invalid_max_tokens")
    return max_tokens


def check_context_window(prompt_tokens: int, max_tokens: int, max_context: int) -> None:
    # OpenAI's own wording: clients (LiteLLM's context-window fallbacks) recognise it.
    if prompt_tokens + max_tokens > max_context:
        raise BadRequest(f"This model's maximum context length is {max_context} tokens. However, you requested "
                         f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                         f"completion). Please reduce the length of the messages or completion.",
                         code="context_length_exceeded")


def check_stop(stop) -> list[str]:
    stop = list(stop or [])
    if len(stop) > MAX_STOP_STRINGS or any(not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS
                                           for s in stop):
        raise BadRequest(f"stop must be at most {MAX_STOP_STRINGS} non-empty strings of at most "
                         f"{MAX_STOP_CHARS} characters", code="invalid_stop")
    return stop


def priority_of(tenant_priority: int, asked: str | None) -> int:
    """The priority class a request runs in: a batch tenant cannot ask for interactive."""
    if asked is None:
        return tenant_priority
    if asked not in PRIORITIES:
        raise BadRequest(f"priority must be one of {sorted(PRIORITIES)}", code="invalid_priority")
    return max(PRIORITIES[asked], tenant_priority)
