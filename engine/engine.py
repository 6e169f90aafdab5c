"""``Engine``: the one Python API over the shared engine.

The HTTP layer, the sandbox (through its port), tests and benchmarks all
come in here: generate, forward, contexts, tenants and quotas, status. The
engine itself holds no logic; it checks inputs (``inputs``), then hands the
work to its rooms and runs their state changes on the batch loop:

- ``loop.BatchLoop``: the thread that owns the model; commands and steps.
- ``scheduler``: fair order between tenants.   ``pages.KvPool``: KV pages.
- ``composer``: how much goes into each step, so light users' steps stay short.
- ``sequence.Sequence``: one stream of forward work, kept across tokens.
- ``generation.Generation``: a text generation and its handle.
- ``contexts.ContextRegistry``: open and saved contexts per tenant.
- ``tenants.TenantRegistry``: quotas resolved in layers, usage, overrides.
- ``model_runner``: the runtime (device, profile, model, pool) and the batched forward.
- ``reports.EngineReports`` (a base class): status, load summary, tenant reports, the admin's view.
"""

from __future__ import annotations

import itertools
import logging
import time
from concurrent.futures import Future
from typing import Callable

from .composer import CostModel, StepComposer
from .config import EngineConfig
from .contexts import MAX_CONTEXTS_PER_TENANT, MAX_SAVED_NAME, ContextRegistry, check_saved_name
from .errors import BadRequest, PotluckError
from .constraints import Constraint, Structured
from .generation import GenEvent, Generation, GenerationResult
from .inputs import (MAX_CHOICES, check_context_window, check_max_tokens, check_messages, check_one_prompt, check_stop,
                     check_tokens, priority_of)
from .latency import LatencyStats
from .loop import BatchLoop
from .model_runner import Runtime, load_runtime
from .sampling import Sampler
from .scheduler import make_scheduler
from .sequence import Sequence
from .quota import Quota
from .reports import EngineReports
from .tenants import Tenant, TenantRegistry
from .weights import LoadedModel

log = logging.getLogger("potluck.engine")

__all__ = ["Engine", "EngineConfig", "Generation", "GenerationResult", "GenEvent", "MAX_CONTEXTS_PER_TENANT",
           "MAX_SAVED_NAME"]


class Engine(EngineReports):
    def __init__(self, config: EngineConfig | None = None, *, loaded: LoadedModel | None = None,
                 store=None, ledger=None):
        self.config = config if config is not None else EngineConfig()
        self.store = store
        self.ledger = ledger
        self._loaded = loaded
        self.scheduler = make_scheduler(self.config.scheduler)
        _, pools, default_pool = self.config.pool_settings()
        self.tenants = TenantRegistry(self.config.default_quota_object(), store=store, ledger=ledger,
                                      on_quota=self._quota_changed, pools=pools, default_pool=default_pool)
        # Set by the service for an engine of a hub (placement.Placement): a tenant that has just
        # become this engine's is resolved with token windows seeded from the shared ledger.
        self.placement = None
        self.composer = StepComposer(CostModel(), factor=self.config.latency_target_factor,
                                     target_ms=self.config.latency_target_ms, context_of=lambda seq: seq.ctx.length)
        self.loop = BatchLoop(self.scheduler, self.composer, self.tenants, self.config.forward_linger_ms)
        self._ids = itertools.count(1)
        self.contexts = ContextRegistry(self.loop.call, self._ids, store=store)
        self.contexts.on_done = self._forward_done
        self._generations: dict[int, Generation] = {}
        self.latency = LatencyStats()
        # Called on the loop thread with each generation that ended (cheap: no I/O, no engine calls).
        self.generation_listeners: list[Callable[[Generation], None]] = [self.latency.on_generation]
        self.rt: Runtime | None = None

    # ----------------------------------------------------------- lifecycle
    def start(self, timeout: float = 600.0) -> "Engine":
        self.loop.start(self._setup, timeout)
        return self

    def _setup(self) -> Runtime:
        rt = self.rt = load_runtime(self.config, self._loaded)
        self.contexts.pool = rt.pool
        self.contexts.device = rt.pool.k.device
        return rt

    def stop(self) -> None:
        self.loop.stop()

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.loop.running

    # This engine's name among the hub's engines (what its run history records, placement ranks).
    name = property(lambda self: self.config.engine_name)
    # What the runtime decided at start, for callers that need it.
    device = property(lambda self: self.rt.device)
    profile = property(lambda self: self.rt.profile)
    model_name = property(lambda self: self.rt.model_name if self.rt else "")
    tokenizer = property(lambda self: self.rt.tokenizer)
    max_context = property(lambda self: self.rt.max_context if self.rt else 0)
    eos_ids = property(lambda self: self.rt.eos_ids)
    pool = property(lambda self: self.rt.pool)
    runner = property(lambda self: self.rt.runner)
    vocab_size = property(lambda self: self.rt.runner.vocab_size)
    stats = property(lambda self: self.loop.stats)
    step_listeners = property(lambda self: self.loop.step_listeners)

    def _call(self, fn, *args, timeout: float | None = 300.0):
        return self.loop.call(fn, *args, timeout=timeout)

    # ---------------------------------------------------------------- text
    def encode(self, text: str) -> list[int]:
        return list(self.rt.tokenizer.encode(text, add_special_tokens=False))

    def encode_chat(self, messages: list[dict], chat_kwargs: dict | None = None) -> list[int]:
        """The chat template's tokens; ``chat_kwargs`` go to the template (e.g. ``tools``)."""
        out = self.rt.tokenizer.apply_chat_template(check_messages(messages), add_generation_prompt=True,
                                                    tokenize=True, return_dict=True, **(chat_kwargs or {}))
        return list(out["input_ids"])

    @property
    def chat_template(self) -> str:
        return getattr(self.rt.tokenizer, "chat_template", None) or ""

    def decode(self, tokens: list[int], *, skip_special_tokens: bool = True) -> str:
        return self.rt.tokenizer.decode(tokens, skip_special_tokens)

    def _stream_text(self, tokens: list[int]) -> str:
        # What generations stream (special tokens hidden); called twice per token, so no keyword dict.
        return self.rt.tokenizer.decode(tokens, True)

    def model_info(self) -> dict:
        return {"name": self.model_name, "vocab_size": self.vocab_size, "max_context": self.max_context,
                "eos_tokens": sorted(self.eos_ids)}

    def _prompt_tokens(self, prompt: str | None, messages: list[dict] | None, tokens: list[int] | None,
                       chat_kwargs: dict | None = None) -> list[int]:
        check_one_prompt(prompt, messages, tokens)
        if prompt is not None:
            ids = self.encode(prompt)
        elif messages is not None:
            ids = self.encode_chat(messages, chat_kwargs)
        else:
            ids = check_tokens(tokens, self.vocab_size)
        if not ids:
            raise BadRequest("the prompt is empty after tokenization", code="invalid_prompt")
        return ids

    # ------------------------------------------------------------ generation
    def generate(self, tenant: Tenant | str, *, listener: Callable[[GenEvent | None], None] | None = None,
                 **kwargs) -> Generation:
        """Start generating; returns at once with a ``Generation`` handle (see ``generate_choices``)."""
        on = None if listener is None else (lambda i, ev: listener(ev))
        return self.generate_choices(tenant, n=1, listener=on, **kwargs)[0]

    def generate_choices(self, tenant: Tenant | str, *, n: int = 1, prompt: str | None = None,
                         messages: list[dict] | None = None, tokens: list[int] | None = None,
                         max_tokens: int | None = None, default_max_tokens: int = 256,
                         sampler: Sampler | None = None, stop: list[str] | None = None,
                         stop_token_ids: list[int] | None = None, ignore_eos: bool = False,
                         priority: str | None = None, structured: Structured | None = None,
                         prompt_logprobs: int = -1, chat_kwargs: dict | None = None,
                         listener: Callable[[int, GenEvent | None], None] | None = None) -> list[Generation]:
        """Start ``n`` generations of one prompt; returns at once with their handles.

        The prompt is computed once: choices after the first fork its context
        (``Generation.follow``). Without ``max_tokens``, ``default_max_tokens`` capped by the
        tenant's ``max_tokens_per_request`` (so leaving it out never hits that quota).
        ``structured`` constrains every choice's output (compiled here, on the caller's thread);
        ``prompt_logprobs`` >= 0 also scores the prompt's tokens (with that many top logprobs).
        ``listener(i, event)`` is registered before anything is queued, so it sees every event.
        """
        called = time.time()   # time to first token counts the wait for the loop too
        arrived = time.monotonic()
        t = self._tenant_obj(tenant)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
            raise BadRequest(f"n must be an integer from 1 to {MAX_CHOICES}, got {n!r}", code="invalid_n", param="n")
        ids = self._prompt_tokens(prompt, messages, tokens, chat_kwargs)
        if max_tokens is None:
            cap = t.quota.max_tokens_per_request
            max_tokens = min(default_max_tokens, cap) if cap else default_max_tokens
        check_max_tokens(max_tokens)
        sampler = (sampler or Sampler()).validate(self.vocab_size)
        stop = check_stop(stop)
        stop_ids = set(check_tokens(stop_token_ids or [], self.vocab_size, allow_empty=True))
        if not ignore_eos:
            stop_ids |= self.eos_ids
        prio = priority_of(t.priority, priority)
        constraint = self.compile_structured(structured) if structured is not None else None

        def start() -> list[Generation]:
            t.check_model(self.model_name)
            gens: list[Generation] = []
            try:
                for i in range(n):
                    # The prompt is computed once; each further choice feeds one token of it again.
                    allowed = t.check_request(len(ids) if i == 0 else 1, max_tokens)
                    if i == 0:
                        # After the tenant's own per-request limit, which names what to change.
                        check_context_window(len(ids), max_tokens, self.max_context)
                    seq = Sequence(t.name, self.pool.new_context(next(self._ids), t.name), prio, None)
                    seq.use_sampler(sampler, self.contexts.device)
                    g = Generation(self.loop, next(self._ids), seq, ids, allowed, self.max_context, stop, stop_ids,
                                   self._stream_text, self._generation_ended,
                                   constraint=constraint.copy() if constraint is not None and i else constraint,
                                   prompt_logprobs=prompt_logprobs if i == 0 else -1)
                    t.reserve(g.id, (len(ids) if i == 0 else 1) + allowed, lambda g=g: len(g.tokens))
                    if listener is not None:
                        g._listeners.append(lambda ev, i=i: listener(i, ev))
                    t.active_requests += 1
                    self._generations[g.id] = g
                    gens.append(g)
            except PotluckError:
                for g in gens:
                    g.finish("cancelled")
                raise
            gens[0].start(arrived)
            for g in gens[1:]:
                g.follow(gens[0], self._fork_prompt)
            return gens
        gens = self.loop.call(start, newcomer=(t.name, len(ids)))
        for g in gens:
            g.created = called
        return gens

    def compile_structured(self, structured: Structured) -> Constraint:
        """A grammar for ``structured``, compiled on the caller's thread (a bad one is a one-line 400)."""
        return self.runner.constraints.compile(structured)

    def _fork_prompt(self, leader: Generation, g: Generation) -> None:
        """On the loop, once ``leader``'s prompt is computed: ``g`` continues from a fork of it."""
        self.pool.drop(g.seq.ctx)
        ctx = self.pool.fork(leader.seq.ctx, g.seq.ctx.id)
        self.pool.truncate(ctx, len(g.prompt) - 1)
        g.seq.ctx = ctx
        g.cached_tokens = len(g.prompt) - 1
        self.loop.submit(g.seq, g.prompt[-1:])

    def _generation_ended(self, g: Generation) -> None:
        self.pool.drop(g.seq.ctx)
        self.tenants.request_finished(g.tenant, g.id)
        self._generations.pop(g.id, None)
        for fn in self.generation_listeners:
            try:
                fn(g)
            except Exception:       # a broken listener must not break the loop
                log.exception("generation listener failed")

    # -------------------------------------------------------------- contexts
    def create_context(self, tenant: str) -> int:
        self._tenant_obj(tenant)
        return self.contexts.create(tenant)

    def fork_context(self, tenant: str, ctx_id: int) -> int:
        return self.loop.call(self.contexts.fork_on_loop, tenant, ctx_id)

    def drop_context(self, tenant: str, ctx_id: int) -> None:
        self.loop.call(self.contexts.drop_on_loop, tenant, ctx_id)

    def truncate_context(self, tenant: str, ctx_id: int, length: int) -> None:
        self.loop.call(self.contexts.truncate_on_loop, tenant, ctx_id, length)

    def context_tokens(self, tenant: str, ctx_id: int) -> list[int]:
        return self.contexts.tokens(tenant, ctx_id)

    def save_context(self, tenant: str, ctx_id: int, name: str) -> None:
        """Keep a snapshot of the context under ``name`` in the tenant's namespace (up to ``saved_contexts``)."""
        self.contexts.save(tenant, ctx_id, name, self.quota(tenant).saved_contexts)

    def open_context(self, tenant: str, name: str) -> int:
        """A new context continuing the saved ``name`` (re-filled from its tokens after a restart)."""
        check_saved_name(name)
        self._tenant_obj(tenant)
        return self.contexts.open_saved(tenant, name,
                                        lambda ctx_id, tokens: self.forward(tenant, ctx_id, tokens, None).result())

    def delete_saved(self, tenant: str, name: str) -> None:
        self.contexts.delete_saved(tenant, name)

    def list_saved(self, tenant: str) -> list[dict]:
        return self.contexts.list_saved(tenant)

    def fill_saved(self, tenant: str, name: str, *, prompt: str | None = None, messages: list[dict] | None = None,
                   tokens: list[int] | None = None) -> int:
        """Fill a new context from exactly one of prompt, messages or tokens and keep it under ``name``."""
        check_saved_name(name)
        check_one_prompt(prompt, messages, tokens)
        ids = tokens if tokens is not None else self._prompt_tokens(prompt, messages, None)
        if not ids:
            raise BadRequest("nothing to save: the context would be empty", code="invalid_prompt")
        ctx_id = self.create_context(tenant)
        try:
            self.forward(tenant, ctx_id, ids, None, priority=None).result()
            self.save_context(tenant, ctx_id, name)
        finally:
            self.drop_context(tenant, ctx_id)
        return len(ids)

    def saved_tokens(self, tenant: str, name: str) -> list[int]:
        """The tokens of my saved context ``name`` (NotFound if I have none by that name)."""
        ctx_id = self.open_context(tenant, name)
        try:
            return self.context_tokens(tenant, ctx_id)
        finally:
            self.drop_context(tenant, ctx_id)

    # --------------------------------------------------------------- forward
    def forward(self, tenant: str, ctx_id: int, tokens: list[int], sampler: Sampler | None,
                priority: str | None = "batch") -> Future:
        """Append ``tokens`` to the context; the future gives the next token's ``Sample`` (or None)."""
        return self.forward_many(tenant, [(ctx_id, tokens, sampler)], priority, single=True)[0]

    def forward_many(self, tenant: str, calls: list[tuple[int, list[int], Sampler | None]],
                     priority: str | None = "batch", *, single: bool = False) -> list[Future]:
        """``forward`` on several of a tenant's contexts in one loop call, so they join the same step.

        One future per call, in order; a call that cannot be queued (a context
        not found or busy, a rate limit) gets a future holding its error.
        """
        arrived = time.monotonic()
        t = self._tenant_obj(tenant)
        for _, tokens, sampler in calls:
            check_tokens(tokens, self.vocab_size)
            if sampler is not None:
                sampler.validate(self.vocab_size)
        prio = priority_of(t.priority, priority)
        futs: list[Future] = [Future() for _ in calls]

        def submit():
            for (ctx_id, tokens, sampler), fut in zip(calls, futs):
                try:
                    self._enqueue_forward(t, ctx_id, tokens, sampler, prio, fut, arrived)
                except PotluckError as e:
                    if single:
                        raise
                    fut.set_exception(e)
        self.loop.call(submit)
        return futs

    def _enqueue_forward(self, t: Tenant, ctx_id: int, tokens: list[int], sampler: Sampler | None,
                         prio: int, fut: Future, arrived: float) -> None:
        seq = self.contexts.get_on_loop(t.name, ctx_id)
        if seq.queued:
            raise BadRequest("a forward call on this context is already running", code="context_busy")
        if seq.ctx.length + len(tokens) > self.max_context:
            raise BadRequest(f"the context would hold {seq.ctx.length + len(tokens)} tokens; the model's "
                             f"context window is {self.max_context}", code="context_length_exceeded")
        t.check_rate(len(tokens))
        seq.priority = prio
        seq.cancelled = False
        seq.future = fut
        seq.use_sampler(sampler, self.contexts.device)
        self.loop.submit(seq, tokens, arrived)

    def _forward_done(self, seq: Sequence, sample, err: PotluckError | None) -> None:
        fut, seq.future = seq.future, None
        if err is not None:
            fut.set_exception(err)
        else:
            if sample is not None and seq.constraint is not None:
                seq.constraint.consume(sample.token)   # the grammar follows what it let the sampler choose
            self.loop.awaited(seq)
            fut.set_result(sample)

    def constrain_context(self, tenant: str, ctx_id: int, structured: Structured | None) -> None:
        """From now on, tokens sampled on the context follow ``structured`` (None: free again).

        The grammar advances with each sample, so the caller feeds back what was sampled (as the
        guest SDK's ``generate`` does); compiling runs here, on the caller's thread.
        """
        constraint = self.compile_structured(structured) if structured is not None else None

        def attach() -> None:
            seq = self.contexts.get_on_loop(tenant, ctx_id)
            if seq.queued:
                raise BadRequest("a forward call on this context is already running", code="context_busy")
            seq.constraint = constraint
        self.loop.call(attach)

    # --------------------------------------------------------------- tenants
    def tenant(self, name: str, groups: dict[str, dict] | None = None, is_admin: bool = False) -> Tenant:
        """The tenant ``name`` with its quota resolved (defaults <- groups <- user override)."""
        if not isinstance(name, str) or not name or len(name) > 255:
            raise BadRequest("a tenant name is 1 to 255 characters")
        # The override is read here, off the loop: fresh for every request (another engine of the
        # hub may have changed it), and the batch loop never waits on the database.
        override = self.tenants.read_override(name)

        def resolve(window) -> Tenant:
            same = None if window is not None else self.tenants.unchanged(name, groups, is_admin, override)
            # A tenant new to this engine (or whose groups changed) is resolved on the loop: like a
            # light request, that need not wait for a lone flood's long step (once per tenant).
            return same or self.loop.call(self._resolve_tenant, name, groups, is_admin, override, window,
                                          newcomer=(name, 0))
        return resolve(None) if self.placement is None else self.placement.resolve(name, resolve)

    def _resolve_tenant(self, name: str, groups, is_admin: bool, override=None, window=None) -> Tenant:
        self.contexts.add_tenant(name)
        return self.tenants.resolve(name, groups, is_admin, override, window)

    def known_tenant(self, name: str) -> Tenant | None:
        """A tenant already resolved, without waiting for the loop (a read of one registry entry)."""
        return self.tenants.get(name)

    def _tenant_obj(self, tenant: Tenant | str) -> Tenant:
        if isinstance(tenant, Tenant):
            return tenant
        return self.tenants.get(tenant) or self.tenant(tenant)

    def _quota_changed(self, t: Tenant) -> None:
        self.scheduler.set_weight(t.name, t.quota.weight)
        self.pool.set_soft_share(t.name, t.quota.kv_pages_soft or 0)

    def quota(self, tenant: str) -> Quota:
        return self._tenant_obj(tenant).quota

    def get_user_override(self, name: str) -> dict | None:
        return self.tenants.get_override(name)

    def set_user_override(self, name: str, fields: dict, actor: str) -> dict:
        fields = self.tenants.set_override(name, fields, actor)
        self.loop.call(self.tenants.apply_override, name, fields)
        return fields

    def delete_user_override(self, name: str, actor: str) -> bool:
        existed = self.tenants.delete_override(name, actor)
        self.loop.call(self.tenants.apply_override, name, None)
        return existed

    # What inferlet runs report (through the sandbox's port): the loop owns the counters.
    def note_active_runs(self, tenant: str, n: int) -> None:
        self.loop.post(self.tenants.set_active_runs, tenant, n)

    def charge_fuel(self, tenant: str, fuel: int) -> None:
        self.loop.post(self.tenants.charge_fuel, tenant, fuel)
