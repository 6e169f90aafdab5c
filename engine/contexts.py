"""Each tenant's open and saved contexts: the registry, persistence and re-fill.

An *open* context is a ``Sequence`` on a KV ``Context`` that its tenant
drives with ``forward`` (an inferlet's ``Context``, a cell's). A *saved*
context is a snapshot (a fork: it shares pages) kept under a name in the
tenant's namespace; its tokens are also written to the store, so after a
restart the first open re-fills it from them.

Names and ids are looked up in the caller's namespace only: another
tenant's context is "not found" exactly like one that never existed. A tenant
keeps at most its quota's ``saved_contexts`` names (snapshots share pages, so
``kv_pages`` alone never bounded them); saves of new names are serialised so
concurrent ones cannot pass the limit together.

The ``_on_loop`` methods run on the batch-loop thread (the registry is its
state); the public methods are called from other threads and go through
``call``. This module never does HTTP and never decides who runs.
"""

from __future__ import annotations

import itertools
import threading
from typing import Callable

from .errors import BadRequest, NotFound, QuotaExceeded
from .pages import Context, KvPool
from .sequence import Sequence

MAX_CONTEXTS_PER_TENANT = 1024
MAX_SAVED_NAME = 128


def check_saved_name(name) -> str:
    """The one check of a saved context's name (HTTP, inferlets and the Python API share it)."""
    if not isinstance(name, str) or not name or len(name) > MAX_SAVED_NAME:
        raise BadRequest(f"a saved context name is 1 to {MAX_SAVED_NAME} characters", code="invalid_name",
                         param="name")
    if any(c < " " for c in name):     # control characters (NUL cannot even be stored in PostgreSQL)
        raise BadRequest("a saved context name has no control characters", code="invalid_name", param="name")
    return name


class ContextRegistry:
    def __init__(self, call: Callable, ids: itertools.count, *, store=None):
        self.call = call                    # run a function on the batch loop and wait for it
        self.ids = ids                      # context ids, shared with generations' contexts
        self.store = store
        self.pool: KvPool | None = None     # set once the loop has loaded the runtime
        self.device = "cpu"
        self.on_done: Callable | None = None   # what ends an open context's forward (the engine's)
        self.open: dict[str, dict[int, Sequence]] = {}
        self.saved: dict[str, dict[str, Context]] = {}
        self._saving = threading.Lock()     # a new name is counted and kept in one piece

    def add_tenant(self, tenant: str) -> None:
        self.open.setdefault(tenant, {})
        self.saved.setdefault(tenant, {})

    def counts(self, tenant: str) -> tuple[int, int]:
        """(open, saved) contexts of ``tenant`` held in memory."""
        return len(self.open.get(tenant, {})), len(self.saved.get(tenant, {}))

    # ---------------------------------------------------------- on the loop
    def new_on_loop(self, tenant: str, priority: int = 0) -> Sequence:
        ctxs = self.open[tenant]
        if len(ctxs) >= MAX_CONTEXTS_PER_TENANT:
            raise QuotaExceeded("contexts", MAX_CONTEXTS_PER_TENANT,
                                f"you have {len(ctxs)} open contexts, the limit; drop some first")
        return self._register(self.pool.new_context(next(self.ids), tenant))

    def _register(self, ctx: Context) -> Sequence:
        seq = Sequence(ctx.owner, ctx, 0, self.on_done)
        self.open[ctx.owner][ctx.id] = seq
        return seq

    def get_on_loop(self, tenant: str, ctx_id: int) -> Sequence:
        seq = self.open.get(tenant, {}).get(ctx_id)
        if seq is None:
            raise NotFound(f"no context {ctx_id} in your namespace")
        return seq

    def fork_on_loop(self, tenant: str, ctx_id: int) -> int:
        src = self.get_on_loop(tenant, ctx_id).ctx
        return self._register(self.pool.fork(src, next(self.ids))).id

    def drop_on_loop(self, tenant: str, ctx_id: int) -> None:
        seq = self.get_on_loop(tenant, ctx_id)
        if seq.queued:
            raise BadRequest("the context is in use by a forward call", code="context_busy")
        self.pool.drop(seq.ctx)
        del self.open[tenant][ctx_id]

    def truncate_on_loop(self, tenant: str, ctx_id: int, length: int) -> None:
        ctx = self.get_on_loop(tenant, ctx_id).ctx
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= ctx.length:
            raise BadRequest(f"length must be from 0 to the context's {ctx.length} tokens", code="invalid_length")
        self.pool.truncate(ctx, length)

    def _keep_on_loop(self, tenant: str, name: str, ctx: Context, replace: bool) -> list[int]:
        if name in self.saved[tenant] and not replace:
            return list(self.saved[tenant][name].tokens)   # a concurrent open re-filled it first
        snap = self.pool.fork(ctx, next(self.ids))
        old = self.saved[tenant].pop(name, None)
        if old is not None:
            self.pool.drop(old)
        self.saved[tenant][name] = snap
        return list(snap.tokens)

    def _open_saved_on_loop(self, tenant: str, name: str) -> int | None:
        snap = self.saved[tenant].get(name)
        if snap is None:
            return None
        return self._register(self.pool.fork(snap, next(self.ids))).id

    # ------------------------------------------------------- other threads
    def create(self, tenant: str) -> int:
        return self.call(lambda: self.new_on_loop(tenant).id)

    def tokens(self, tenant: str, ctx_id: int) -> list[int]:
        return self.call(lambda: list(self.get_on_loop(tenant, ctx_id).ctx.tokens))

    def save(self, tenant: str, ctx_id: int, name: str, limit: int | None = None) -> None:
        """Keep a snapshot of the context under ``name`` in the tenant's namespace.

        ``limit`` is the tenant's ``saved_contexts``: a new name past it is refused (replacing
        one of the names kept is always allowed).
        """
        check_saved_name(name)
        with self._saving:
            if limit is not None:
                names = self._saved_names(tenant)
                if name not in names and len(names) >= limit:
                    raise QuotaExceeded("saved_contexts", limit,
                                        f"you have {len(names)} saved contexts, your saved_contexts limit; "
                                        "delete one first (or save under a name you already use)")
            tokens = self.call(lambda: self._keep_on_loop(tenant, name, self.get_on_loop(tenant, ctx_id).ctx,
                                                          True))
            if self.store is not None:
                self.store.save_context(tenant, name, tokens)

    def _saved_names(self, tenant: str) -> set[str]:
        names = set(self.call(lambda: list(self.saved.get(tenant, {}))))
        if self.store is not None:
            names.update(row["name"] for row in self.store.list_contexts(tenant))
        return names

    def open_saved(self, tenant: str, name: str, refill: Callable[[int, list[int]], None]) -> int:
        """A new context continuing the saved ``name``; ``refill(ctx_id, tokens)`` re-computes it after a restart."""
        check_saved_name(name)
        ctx_id = self.call(self._open_saved_on_loop, tenant, name)
        if ctx_id is not None:
            return ctx_id
        tokens = self.store.load_context(tenant, name) if self.store is not None else None
        if tokens is None:
            raise NotFound(f"no saved context named {name!r} in your namespace")
        ctx_id = self.create(tenant)
        try:
            if tokens:
                refill(ctx_id, tokens)
        except BaseException:
            # A refused re-fill (kv_pages, context window) must not leave a context
            # holding pages under an id the caller never got.
            self.call(self.drop_on_loop, tenant, ctx_id)
            raise
        self.call(lambda: self._keep_on_loop(tenant, name, self.get_on_loop(tenant, ctx_id).ctx, False))
        return ctx_id

    def delete_saved(self, tenant: str, name: str) -> None:
        def delete():
            snap = self.saved.get(tenant, {}).pop(name, None)
            if snap is not None:
                self.pool.drop(snap)
            return snap is not None
        found = self.call(delete)
        if self.store is not None:
            found = self.store.delete_context(tenant, name) or found
        if not found:
            raise NotFound(f"no saved context named {name!r} in your namespace")

    def list_saved(self, tenant: str) -> list[dict]:
        live = self.call(lambda: {n: c.length for n, c in self.saved.get(tenant, {}).items()})
        out = {n: {"name": n, "n_tokens": k} for n, k in live.items()}
        if self.store is not None:
            for row in self.store.list_contexts(tenant):
                out.setdefault(row["name"], {"name": row["name"], "n_tokens": row["n_tokens"]})
        return sorted(out.values(), key=lambda r: r["name"])
