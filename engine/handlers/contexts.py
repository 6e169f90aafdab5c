"""``/api/contexts``: my saved contexts (KV cache kept under a name, across cells and restarts).

A saved context lives in the caller's namespace only: another tenant's name is
404 exactly like a name that was never saved (never say whether someone else
has it). ``PUT`` fills a context from a prompt, chat messages or token ids and
keeps it under the name (replacing an earlier one); ``POST /api/generate``
with ``"context": name`` continues it. Inferlets open the same contexts with
``Context.open(name)``.
"""

from __future__ import annotations

from ..engine import MAX_SAVED_NAME
from ..errors import BadRequest
from .base import APIHandler, check_fields

FILL_FIELDS = {"prompt": "string", "messages": "array", "tokens": "array"}


def check_name(name: str) -> str:
    if not name or len(name) > MAX_SAVED_NAME:
        raise BadRequest(f"a saved context name is 1 to {MAX_SAVED_NAME} characters", code="invalid_name",
                         param="name")
    return name


def context_tokens(engine, tenant: str, name: str) -> list[int]:
    """The tokens of my saved context ``name`` (NotFound if I have none by that name)."""
    ctx_id = engine.open_context(tenant, name)
    try:
        return engine.context_tokens(tenant, ctx_id)
    finally:
        engine.drop_context(tenant, ctx_id)


class ContextListHandler(APIHandler):
    async def get(self) -> None:
        t = await self.tenant()
        self.write_json({"contexts": await self.blocking(self.engine.list_saved, t.name)})


class ContextHandler(APIHandler):
    async def get(self, name: str) -> None:
        check_name(name)
        t = await self.tenant()
        tokens = await self.blocking(context_tokens, self.engine, t.name, name)
        text = self.engine.tokenizer.decode(tokens, skip_special_tokens=False)
        self.write_json({"name": name, "n_tokens": len(tokens), "text": text})

    async def put(self, name: str) -> None:
        p = check_fields(self.json_body(), FILL_FIELDS, nullable=False, where=f"PUT /api/contexts/{name}")
        if len(p) != 1:
            raise BadRequest("give exactly one of prompt, messages or tokens", code="invalid_prompt")
        check_name(name)
        t = await self.tenant()
        engine = self.engine

        def fill() -> int:
            if "prompt" in p:
                if not p["prompt"]:
                    raise BadRequest("prompt must be a non-empty string", code="invalid_prompt")
                tokens = engine.encode(p["prompt"])
            elif "messages" in p:
                tokens = engine.encode_chat(p["messages"])
            else:
                tokens = p["tokens"]
            if not tokens:
                raise BadRequest("nothing to save: the context would be empty", code="invalid_prompt")
            ctx_id = engine.create_context(t.name)
            try:
                engine.forward(t.name, ctx_id, tokens, None, priority=None).result()
                engine.save_context(t.name, ctx_id, name)
            finally:
                engine.drop_context(t.name, ctx_id)
            return len(tokens)
        n = await self.blocking(fill)
        self.write_json({"name": name, "n_tokens": n})

    async def delete(self, name: str) -> None:
        check_name(name)
        t = await self.tenant()
        await self.blocking(self.engine.delete_saved, t.name, name)
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()
