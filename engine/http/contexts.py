"""``/api/contexts``: my saved contexts (KV cache kept under a name, across cells and restarts).

A saved context lives in the caller's namespace only: another tenant's name is
404 exactly like a name that was never saved (never say whether someone else
has it). ``PUT`` fills a context from a prompt, chat messages or token ids and
keeps it under the name (replacing an earlier one); ``POST /api/generate``
with ``"context": name`` continues it. Inferlets open the same contexts with
``Context.open(name)``. Filling and keeping are the engine's
(``Engine.fill_saved``); this module only checks the request.
"""

from __future__ import annotations

from ..contexts import check_saved_name
from ..errors import BadRequest
from .base import APIHandler, check_fields

FILL_FIELDS = {"prompt": "string", "messages": "array", "tokens": "array"}


class ContextListHandler(APIHandler):
    """``GET api/contexts``: my saved contexts."""

    async def get(self) -> None:
        t = await self.tenant()
        self.write_json({"contexts": await self.blocking(self.engine.list_saved, t.name)})


class ContextHandler(APIHandler):
    """``GET/PUT/DELETE api/contexts/{name}``: look at, fill or forget one saved context."""

    async def get(self, name: str) -> None:
        check_saved_name(name)
        t = await self.tenant()
        tokens = await self.blocking(self.engine.saved_tokens, t.name, name)
        text = await self.blocking(lambda: self.engine.decode(tokens, skip_special_tokens=False))
        self.write_json({"name": name, "n_tokens": len(tokens), "text": text})

    async def put(self, name: str) -> None:
        p = check_fields(self.json_body(), FILL_FIELDS, nullable=False, where=f"PUT /api/contexts/{name}")
        if len(p) != 1:
            raise BadRequest("give exactly one of prompt, messages or tokens", code="invalid_prompt")
        check_saved_name(name)
        t = await self.tenant()
        engine = self.engine
        n = await self.blocking(lambda: engine.fill_saved(t.name, name, **p))
        self.write_json({"name": name, "n_tokens": n})

    async def delete(self, name: str) -> None:
        check_saved_name(name)
        t = await self.tenant()
        await self.blocking(self.engine.delete_saved, t.name, name)
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()


default_handlers = [
    (r"api/contexts", ContextListHandler),
    (r"api/contexts/([^/]+)", ContextHandler),
]
