"""Each tenant's open and saved contexts: the registry, persistence and re-fill.

An *open* context is a ``Sequence`` on a KV ``Context`` that its tenant
drives with ``forward`` (an inferlet's ``Context``, a cell's). A *saved*
context is a snapshot (a fork: it shares pages) kept under a name in the
tenant's namespace; its tokens are also written to the store, so after a
restart the first open re-fills it from them. Every engine of a hub shares
the store, and there the store is the truth: a snapshot is only this engine's
cache of the KV computed from the stored tokens, checked against them at each
open (one primary-key read, never per token). So a name saved on one engine
opens on another (re-filled on first open), one replaced or deleted on
another is never served stale here, and the names are counted in the store.

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
from .store.contexts import too_many_saved

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

    def _keep_on_loop(self, tenant: str, name: str, ctx: Context) -> Context:
        snap = self.pool.fork(ctx, next(self.ids))
        self._forget_on_loop(tenant, name)
        self.saved[tenant][name] = snap
        return snap

    def _forget_on_loop(self, tenant: str, name: str, only: Context | None = None) -> bool:
        """Drop the snapshot kept under ``name`` (only if it is ``only``, when given); whether one was."""
        snap = self.saved.get(tenant, {}).get(name)
        if snap is None or (only is not None and snap is not only):
            return False
        del self.saved[tenant][name]
        self.pool.drop(snap)
        return True

    def _open_saved_on_loop(self, tenant: str, name: str, tokens: list[int] | None) -> int | None:
        """A fork of the snapshot kept here, if there is one of exactly ``tokens`` (None: any)."""
        snap = self.saved.get(tenant, {}).get(name)
        if snap is None or (tokens is not None and snap.tokens != tokens):
            return None     # none here, or another engine of the hub replaced it since: re-fill
        return self._register(self.pool.fork(snap, next(self.ids))).id

    # ------------------------------------------------------- other threads
    def create(self, tenant: str) -> int:
        return self.call(lambda: self.new_on_loop(tenant).id)

    def tokens(self, tenant: str, ctx_id: int) -> list[int]:
        return self.call(lambda: list(self.get_on_loop(tenant, ctx_id).ctx.tokens))

    def save(self, tenant: str, ctx_id: int, name: str, limit: int | None = None) -> None:
        """Keep a snapshot of the context under ``name`` in the tenant's namespace.

        ``limit`` is the tenant's ``saved_contexts``: a new name past it is refused (replacing
        one of the names kept is always allowed). With a store, the names are counted there, in
        the transaction that writes the new one, so every engine of a hub counts the same.
        """
        check_saved_name(name)
        with self._saving:
            if self.store is None and limit is not None:
                names = self.call(lambda: list(self.saved.get(tenant, {})))
                if name not in names and len(names) >= limit:
                    raise too_many_saved(len(names), limit)
            snap, tokens = self.call(lambda: self._keep_tokens_on_loop(tenant, name, ctx_id))
            if self.store is None:
                return
            try:
                self.store.save_context(tenant, name, tokens, limit=limit)
            except BaseException:
                # Refused (or not written): a snapshot here must not stand for a name the database lacks.
                self.call(self._forget_on_loop, tenant, name, snap)
                raise

    def _keep_tokens_on_loop(self, tenant: str, name: str, ctx_id: int) -> tuple[Context, list[int]]:
        snap = self._keep_on_loop(tenant, name, self.get_on_loop(tenant, ctx_id).ctx)
        return snap, list(snap.tokens)

    def open_saved(self, tenant: str, name: str, refill: Callable[[int, list[int]], None]) -> int:
        """A new context continuing the saved ``name``; ``refill(ctx_id, tokens)`` re-computes it.

        With a store, the database is the truth and the snapshot kept here only a cache of the KV
        computed from its tokens: it is used when it holds exactly the stored tokens, and re-filled
        when there is none here (after a restart, or the name was saved on another engine of the
        hub) or another engine replaced it since. A name deleted on another engine is gone here too.
        """
        check_saved_name(name)
        tokens = None
        if self.store is not None:
            tokens = self.store.load_context(tenant, name)      # one primary-key read per open
            if tokens is None:
                self.call(self._forget_on_loop, tenant, name)   # deleted elsewhere: free its pages here too
                raise NotFound(f"no saved context named {name!r} in your namespace")
        ctx_id = self.call(self._open_saved_on_loop, tenant, name, tokens)
        if ctx_id is not None:
            return ctx_id
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
        self.call(lambda: self._keep_on_loop(tenant, name, self.get_on_loop(tenant, ctx_id).ctx))
        return ctx_id

    def delete_saved(self, tenant: str, name: str) -> None:
        found = self.call(self._forget_on_loop, tenant, name)
        if self.store is not None:
            found = self.store.delete_context(tenant, name)     # the database alone says whether it existed
        if not found:
            raise NotFound(f"no saved context named {name!r} in your namespace")

    def list_saved(self, tenant: str) -> list[dict]:
        if self.store is None:
            live = self.call(lambda: {n: c.length for n, c in self.saved.get(tenant, {}).items()})
            return [{"name": n, "n_tokens": k} for n, k in sorted(live.items())]
        rows = self.store.list_contexts(tenant)
        self.call(self._forget_missing_on_loop, tenant, {row["name"] for row in rows})
        return [{"name": row["name"], "n_tokens": row["n_tokens"]} for row in rows]

    def _forget_missing_on_loop(self, tenant: str, names: set[str]) -> None:
        """Free the snapshots of names another engine of the hub deleted."""
        for name in [n for n in self.saved.get(tenant, {}) if n not in names]:
            self._forget_on_loop(tenant, name)

