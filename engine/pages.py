"""KV-cache pages: the pool, contexts, forks, prefix reuse and host swap.

The pool is a fixed number of device *slots*, each holding ``page_size``
tokens of keys and values for every layer, laid out flat
(``[layers, slots * page_size, kv_heads, head_dim]``) so that writing a step's
new tokens is one ``index_copy_`` per layer and reading a sequence is one
gather.

A *page* is a logical unit owned by exactly one tenant; it sits in a device
slot, or in host memory after a swap-out. A *context* is a page list plus a
token count. Forks share pages by reference count; a page is copied before
anyone writes into it while it is shared or registered for prefix reuse
(copy-on-write).

Prefix reuse: every full page gets a chained key over its tokens and the key
of the page before it, and the lookup table is keyed by ``(tenant, key)``: a
tenant only ever finds its own pages. A cross-tenant hit would let one tenant
learn another's prompt by timing, so even a hash collision cannot cross.

Every method runs on the engine's batch-loop thread; nothing here locks.
This module never decides *who* runs (that is the scheduler) and never runs
the model.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .errors import QuotaExceeded


class PoolExhausted(Exception):
    """No slot can be freed right now (everything resident is pinned by this step)."""


@dataclass(eq=False)
class Page:
    id: int
    owner: str
    slot: int | None                      # device slot, None while swapped out
    ref: int = 0
    key: int | None = None                # prefix key once full and registered
    tokens: tuple[int, ...] | None = None  # the page's tokens, kept with its key to verify hits
    host: tuple[torch.Tensor, torch.Tensor] | None = None
    last_use: int = 0


@dataclass(eq=False)
class Context:
    """A tenant's sequence in the cache: ``tokens[:length]`` are in ``pages``."""
    id: int
    owner: str
    pages: list[Page] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)   # chained prefix key of each full page
    dropped: bool = False

    @property
    def length(self) -> int:
        return len(self.tokens)


@dataclass
class TenantPages:
    held: int = 0        # pages this tenant references (its hard quota counts these)
    resident: int = 0    # of those, how many sit in device slots
    soft: int = 0        # its soft share; 0 = an equal share of the pool


class KvPool:
    def __init__(self, *, num_layers: int, num_slots: int, page_size: int, kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: str | torch.device, host_pages: int = 0):
        self.num_layers = num_layers
        self.num_slots = num_slots
        self.page_size = page_size
        self.host_pages = host_pages
        shape = (num_layers, num_slots * page_size, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._free_slots: list[int] = list(range(num_slots - 1, -1, -1))
        self._cached: OrderedDict[int, Page] = OrderedDict()   # ref-0 pages kept for reuse, LRU first
        self._by_key: dict[tuple[str, int], Page] = {}
        self._slot_page: dict[int, Page] = {}                   # resident pages by slot
        self._on_host = 0
        self._ids = itertools.count(1)
        self._clock = 0
        self.tenants: dict[str, TenantPages] = {}
        self.swaps_out = 0
        self.swaps_in = 0
        self.prefix_hits = 0

    # ---------------------------------------------------------------- stats
    @property
    def free_slots(self) -> int:
        """Slots that can be handed out without swapping anything in use."""
        return len(self._free_slots) + len(self._cached)

    @property
    def used_slots(self) -> int:
        return self.num_slots - len(self._free_slots) - len(self._cached)

    @property
    def pages_on_host(self) -> int:
        return self._on_host

    @property
    def memory_bytes(self) -> int:
        """What the pool holds on its device (K and V of every page), as reported at start and in status."""
        return 2 * self.k.numel() * self.k.element_size()

    def held_by(self, tenant: str) -> int:
        t = self.tenants.get(tenant)
        return t.held if t else 0

    def tick(self) -> int:
        self._clock += 1
        return self._clock

    def _t(self, tenant: str) -> TenantPages:
        t = self.tenants.get(tenant)
        if t is None:
            t = self.tenants[tenant] = TenantPages()
        return t

    # ---------------------------------------------------------- slots, swap
    def _take_slot(self, pinned: set[int]) -> int:
        if self._free_slots:
            return self._free_slots.pop()
        if self._cached:
            # A ref-0 cached page is free memory that merely remembers a
            # prefix; reclaiming it costs its owner nothing but a recompute.
            _, page = self._cached.popitem(last=False)
            self._forget(page)
            slot = page.slot
            self._release_slot_of(page)
            return slot
        victim = self._swap_victim(pinned)
        if victim is None:
            raise PoolExhausted()
        slot = victim.slot
        self._swap_out(victim)
        return slot

    def _release_slot_of(self, page: Page) -> None:
        self._slot_page.pop(page.slot, None)
        if page.ref > 0:
            self._t(page.owner).resident -= 1
        page.slot = None

    def _swap_victim(self, pinned: set[int]) -> Page | None:
        """LRU page of the tenant furthest over its share, never one this step uses."""
        if self._on_host >= self.host_pages:
            return None
        active = [n for n, t in self.tenants.items() if t.resident > 0]
        if not active:
            return None
        equal = self.num_slots / len(active)

        def over(name: str) -> float:
            t = self.tenants[name]
            return t.resident - (t.soft or equal)

        for name in sorted(active, key=over, reverse=True):
            candidates = [p for p in self._slot_page.values()
                          if p.owner == name and p.ref > 0 and p.id not in pinned]
            if candidates:
                return min(candidates, key=lambda p: p.last_use)
        return None

    def _swap_out(self, page: Page) -> None:
        s = page.slot * self.page_size
        sl = slice(s, s + self.page_size)
        page.host = (self.k[:, sl].to("cpu", copy=True), self.v[:, sl].to("cpu", copy=True))
        self._release_slot_of(page)
        self._on_host += 1
        self.swaps_out += 1

    def make_resident(self, pages: list[Page], pinned: set[int]) -> None:
        """Bring swapped-out pages back to device slots before a step reads them."""
        for page in pages:
            pinned.add(page.id)
        for page in pages:
            page.last_use = self._clock
            if page.slot is not None:
                continue
            slot = self._take_slot(pinned)
            s = slot * self.page_size
            hk, hv = page.host
            self.k[:, s:s + self.page_size].copy_(hk)
            self.v[:, s:s + self.page_size].copy_(hv)
            page.host = None
            self._on_host -= 1
            self._place(page, slot)
            self.swaps_in += 1

    def _place(self, page: Page, slot: int) -> None:
        page.slot = slot
        self._slot_page[slot] = page
        if page.ref > 0:
            self._t(page.owner).resident += 1

    # ------------------------------------------------------------ ref counts
    def _new_page(self, owner: str, pinned: set[int]) -> Page:
        slot = self._take_slot(pinned)
        page = Page(id=next(self._ids), owner=owner, slot=None, last_use=self._clock)
        self._incref(page)
        self._place(page, slot)
        pinned.add(page.id)
        return page

    def _incref(self, page: Page) -> None:
        if page.ref == 0:
            self._cached.pop(page.id, None)
            t = self._t(page.owner)
            t.held += 1
            if page.slot is not None:
                t.resident += 1
        page.ref += 1

    def _decref(self, page: Page) -> None:
        page.ref -= 1
        if page.ref > 0:
            return
        t = self._t(page.owner)
        t.held -= 1
        if page.slot is not None:
            t.resident -= 1
        if page.key is not None and page.slot is not None:
            self._cached[page.id] = page      # keep for prefix reuse until the slot is needed
            return
        self._forget(page)
        if page.slot is not None:
            self._slot_page.pop(page.slot, None)
            self._free_slots.append(page.slot)
            page.slot = None
        if page.host is not None:
            page.host = None
            self._on_host -= 1

    def _forget(self, page: Page) -> None:
        if page.key is not None and self._by_key.get((page.owner, page.key)) is page:
            del self._by_key[(page.owner, page.key)]
        page.key = None

    # -------------------------------------------------------------- contexts
    def check_quota(self, ctx: Context, new_tokens: int, hard_limit: int | None) -> None:
        """Refuse a write that would take the owner over its hard page quota."""
        if hard_limit is None:
            return
        need = self.pages_needed(ctx, new_tokens)
        if self.held_by(ctx.owner) + need > hard_limit:
            raise QuotaExceeded(
                "kv_pages", hard_limit,
                f"KV cache quota exceeded: this needs {need} more page(s) of {self.page_size} tokens "
                f"but you hold {self.held_by(ctx.owner)} of your kv_pages limit {hard_limit}; "
                f"drop saved contexts or finished runs to free some")

    def pages_needed(self, ctx: Context, new_tokens: int) -> int:
        total = -(-(ctx.length + new_tokens) // self.page_size)
        need = max(0, total - len(ctx.pages))
        # A shared or registered tail page is copied before the write.
        if ctx.pages and ctx.length % self.page_size and new_tokens:
            tail = ctx.pages[-1]
            if tail.ref > 1 or tail.key is not None:
                need += 1
        return need

    def prepare_write(self, ctx: Context, new_tokens: int, pinned: set[int]) -> None:
        """Make room for ``new_tokens`` after ``ctx.length``: resident, private, allocated."""
        self.make_resident(ctx.pages, pinned)
        ps = self.page_size
        if ctx.pages and ctx.length % ps and new_tokens:
            tail = ctx.pages[-1]
            if tail.ref > 1 or tail.key is not None:
                ctx.pages[-1] = self._copy(tail, ctx.owner, pinned)
        while len(ctx.pages) * ps < ctx.length + new_tokens:
            ctx.pages.append(self._new_page(ctx.owner, pinned))

    def _copy(self, src: Page, owner: str, pinned: set[int]) -> Page:
        dst = self._new_page(owner, pinned)
        a, b = src.slot * self.page_size, dst.slot * self.page_size
        self.k[:, b:b + self.page_size].copy_(self.k[:, a:a + self.page_size])
        self.v[:, b:b + self.page_size].copy_(self.v[:, a:a + self.page_size])
        self._decref(src)
        return dst

    def commit(self, ctx: Context, new_tokens: list[int]) -> None:
        """Record tokens written by a step; register pages that became full."""
        ps = self.page_size
        ctx.tokens.extend(new_tokens)
        while len(ctx.keys) < len(ctx.tokens) // ps:
            i = len(ctx.keys)
            toks = tuple(ctx.tokens[i * ps:(i + 1) * ps])
            key = hash((ctx.keys[-1] if ctx.keys else 0, toks))
            ctx.keys.append(key)
            page = ctx.pages[i]
            if page.key is None and (ctx.owner, key) not in self._by_key:
                page.key, page.tokens = key, toks
                self._by_key[(ctx.owner, key)] = page

    def reuse_prefix(self, ctx: Context, tokens: list[int]) -> int:
        """Attach this tenant's cached pages matching the start of ``tokens``.

        Only at a page boundary, and never the whole input: the last token must
        still be computed to give logits. Returns how many tokens were matched.
        """
        ps = self.page_size
        if ctx.length % ps:
            return 0
        matched = 0
        prev = ctx.keys[-1] if ctx.keys else 0
        while matched + ps <= len(tokens) - 1:
            toks = tuple(tokens[matched:matched + ps])
            key = hash((prev, toks))
            page = self._by_key.get((ctx.owner, key))
            if page is None or page.tokens != toks:
                break
            self._incref(page)
            ctx.pages.append(page)
            ctx.tokens.extend(toks)
            ctx.keys.append(key)
            page.last_use = self._clock
            prev = key
            matched += ps
        self.prefix_hits += matched // ps
        return matched

    def new_context(self, ctx_id: int, owner: str) -> Context:
        self._t(owner)
        return Context(id=ctx_id, owner=owner)

    def fork(self, ctx: Context, ctx_id: int) -> Context:
        """A new context sharing every page of ``ctx`` (the tail is copied on first write)."""
        for page in ctx.pages:
            self._incref(page)
        return Context(id=ctx_id, owner=ctx.owner, pages=list(ctx.pages),
                       tokens=list(ctx.tokens), keys=list(ctx.keys))

    def truncate(self, ctx: Context, length: int) -> None:
        if not 0 <= length <= ctx.length:
            raise ValueError(f"cannot truncate a context of {ctx.length} tokens to {length}")
        keep = -(-length // self.page_size)
        for page in ctx.pages[keep:]:
            self._decref(page)
        del ctx.pages[keep:]
        del ctx.tokens[length:]
        del ctx.keys[length // self.page_size:]

    def drop(self, ctx: Context) -> None:
        if ctx.dropped:
            return
        for page in ctx.pages:
            self._decref(page)
        ctx.pages.clear()
        ctx.dropped = True

    def slots_of(self, ctx: Context) -> list[int]:
        return [p.slot for p in ctx.pages]

    def set_soft_share(self, tenant: str, pages: int) -> None:
        self._t(tenant).soft = pages
