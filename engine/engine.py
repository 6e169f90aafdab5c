"""The engine: one batch loop that owns the model, and the one Python API over it.

Everything that touches the model, the KV pool or the scheduler runs on the
batch-loop thread (torch called from a second thread ran ~1.5x slower on a
small CPU, and one owner needs no locks). Other threads (the HTTP server,
inferlet runs, tests) talk to the loop through ``_call``: a command queue
and a future.

The loop, each step: run queued commands, let the scheduler pick chunks
under the token budget, prepare their pages, run one forward, sample,
commit tokens to contexts, deliver results, account usage.

The API here is the only way in: built-in generation, the HTTP layer and
inferlets all use ``generate``, the context calls and ``forward``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, time as dtime, timezone
from typing import Callable, Iterator

import torch

from . import __version__
from .accelerator import Device, Profile, choose_profile, detect_device
from .errors import BadRequest, Cancelled, EngineUnavailable, NotFound, PotluckError, QuotaExceeded
from .kv import Context, KvPool, PoolExhausted
from .model_runner import Chunk, ModelRunner
from .sampling import Sample, Sampler
from .scheduler import BATCH, INTERACTIVE, PRIORITIES, make_scheduler
from .tenants import Quota, Tenant, TokenWindow, resolve_quota, validate_quota_fields
from .weights import DEFAULT_MODEL, LoadedModel, load_model

log = logging.getLogger("potluck.engine")

MAX_CONTEXTS_PER_TENANT = 1024
MAX_SAVED_NAME = 128


@dataclass
class EngineConfig:
    model: str = DEFAULT_MODEL
    profile: str = "auto"
    profile_overrides: dict = field(default_factory=dict)
    extra_profiles: dict = field(default_factory=dict)
    kv_pages: int = 0                 # 0: size the pool from the profile
    scheduler: str = "fair"           # "fair" (VTC) or "fcfs"
    default_quota: Quota = field(default_factory=Quota)
    cache_dir: str | None = None
    max_context_tokens: int = 0       # 0: the model's max_position_embeddings
    # After a step served ``forward`` calls from other threads (inferlet runs),
    # wait up to this long for their next forward so it joins the next step
    # instead of fragmenting batches: 16 runs answer within a few ms, a CPU step
    # takes 30-300 ms. 0 turns it off.
    forward_linger_ms: float = 10.0


def _tune_malloc() -> None:
    # Attention on a CPU allocates many mid-sized tensors a step; glibc's
    # default thresholds return them to the OS and fault them back in each
    # time. Raising them cut small-tensor attention time ~3x here.
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-3, 32 << 20)    # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)   # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


# ----------------------------------------------------------------- requests
@dataclass(eq=False)
class ForwardRequest:
    """Feed ``tokens`` into ``ctx`` and, if ``sampler`` is set, sample the next token."""
    tenant: str
    priority: int
    arrival: int
    ctx: Context
    tokens: list[int]
    sampler: Sampler | None
    generator: torch.Generator | None
    decode: bool
    on_done: Callable[["ForwardRequest", Sample | None, PotluckError | None], None]
    fed: int = 0
    cancelled: bool = False

    @property
    def remaining(self) -> int:
        return len(self.tokens) - self.fed

    @property
    def samples(self) -> bool:
        return self.sampler is not None


@dataclass
class GenEvent:
    token: int
    text: str            # new text this token made visible (may be "" mid-character)
    logprob: float
    top: list[tuple[int, float]] | None = None


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    finish_reason: str   # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int
    cached_tokens: int
    logprobs: list[float]


_END = object()


class Generation:
    """A running generation. Iterate it for ``GenEvent``s, or wait with ``result()``.

    Listeners added with ``add_listener`` are called on the engine's loop
    thread with each event and finally with ``None``; they must not block.
    """

    def __init__(self, engine: "Engine", gid: int, tenant: Tenant, prompt: list[int], max_tokens: int,
                 sampler: Sampler, stop: list[str], stop_token_ids: set[int]):
        self.engine = engine
        self.id = gid
        self.tenant = tenant.name
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.sampler = sampler
        self.stop = stop
        self.stop_token_ids = stop_token_ids
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.error: PotluckError | None = None
        self.cached_tokens = 0
        self.created = time.time()
        self.first_token_at: float | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._listeners: list[Callable[[GenEvent | None], None]] = []
        self._done = threading.Event()
        self._ctx: Context | None = None
        self._req: ForwardRequest | None = None
        self._detok = _Detokenizer(engine.tokenizer)
        self._held = ""      # text withheld while it might be the start of a stop string

    def add_listener(self, fn: Callable[[GenEvent | None], None]) -> None:
        """Call ``fn`` for every event from now on (and for the end). Thread-safe."""
        self.engine._call(self._add_listener, fn)

    def _add_listener(self, fn) -> None:
        if self._done.is_set():
            fn(None)
        else:
            self._listeners.append(fn)

    def __iter__(self) -> Iterator[GenEvent]:
        while True:
            ev = self._events.get()
            if ev is _END:
                self._events.put(_END)
                if self.error is not None:
                    raise self.error
                return
            yield ev

    def result(self, timeout: float | None = None) -> GenerationResult:
        if not self._done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self.error is not None:
            raise self.error
        return GenerationResult(self.text, list(self.tokens), self.finish_reason, len(self.prompt),
                                self.cached_tokens, list(self.logprobs))

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop generating; pages are freed and the request leaves the batch at the next step."""
        if not self._done.is_set():
            try:
                self.engine._call(self.engine._cancel_generation, self)
            except EngineUnavailable:
                pass

    def _emit(self, ev: GenEvent | None) -> None:
        self._events.put(_END if ev is None else ev)
        for fn in self._listeners:
            try:
                fn(ev)
            except Exception:       # a broken listener must not break the loop
                log.exception("generation listener failed")


class _Detokenizer:
    """Incremental detokenization: only ever decodes the last few tokens."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0    # start of the window decoded for context
        self.read = 0      # tokens already turned into emitted text

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if after.endswith("\ufffd"):
            return ""           # in the middle of a multi-byte character
        delta = after[len(before):]
        self.prefix, self.read = self.read, len(self.ids)
        return delta


# ------------------------------------------------------------------- engine
class Engine:
    def __init__(self, config: EngineConfig | None = None, *, loaded: LoadedModel | None = None,
                 store=None, ledger=None):
        self.config = config or EngineConfig()
        self.store = store
        self.ledger = ledger
        self._loaded = loaded
        self.device: Device | None = None
        self.profile: Profile | None = None
        self.model_name = ""
        self.tokenizer = None
        self.pool: KvPool | None = None
        self.runner: ModelRunner | None = None
        self.scheduler = make_scheduler(self.config.scheduler)
        self.tenants: dict[str, Tenant] = {}
        self._contexts: dict[str, dict[int, Context]] = {}
        self._saved: dict[str, dict[str, Context]] = {}
        self._generations: dict[int, Generation] = {}
        self._overrides: dict[str, dict] = {}      # per-user overrides when there is no store
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._start_error: BaseException | None = None
        self._ids = itertools.count(1)
        self._arrivals = itertools.count()
        self._last_accrual = time.monotonic()
        self.max_context = 0
        self.eos_ids: set[int] = set()
        self.stats = {"steps": 0, "batch_tokens": 0, "batch_seqs": 0, "last_step_ms": 0.0,
                      "prefill_tokens": 0, "decode_tokens": 0, "prefix_hit_tokens": 0}
        self.step_listeners: list[Callable[[dict], None]] = []
        self._awaited_ctxs: set[int] = set()   # contexts whose forward the last step served, not yet fed again

    # ----------------------------------------------------------- lifecycle
    def start(self, timeout: float = 600.0) -> "Engine":
        self._thread = threading.Thread(target=self._main, name="potluck-batch-loop", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise EngineUnavailable("the engine did not become ready in time (model loading?)")
        if self._start_error is not None:
            raise self._start_error
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping = True
        self._commands.put(None)
        self._thread.join(timeout=60)
        self._thread = None

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def _setup(self) -> None:
        _tune_malloc()
        cfg = self.config
        self.device = detect_device()
        self.profile = choose_profile(self.device, cfg.profile, cfg.profile_overrides, cfg.extra_profiles)
        if self.device.kind == "cpu":
            torch.set_num_threads(max(1, self.device.cpu_count))
        if self._loaded is None:
            from pathlib import Path
            self._loaded = load_model(cfg.model, self.profile.torch_dtype, self.profile.device,
                                      Path(cfg.cache_dir) if cfg.cache_dir else None)
        lm = self._loaded
        self.model_name = lm.name
        self.tokenizer = lm.tokenizer
        mc = lm.model.config
        self.max_context = cfg.max_context_tokens or getattr(mc, "max_position_embeddings", 4096)
        eos = getattr(lm.model.generation_config, "eos_token_id", None) or mc.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) if eos is not None else set()
        head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
        kv_heads = getattr(mc, "num_key_value_heads", None) or mc.num_attention_heads
        p = self.profile
        dtype = next(lm.model.parameters()).dtype
        page_bytes = 2 * mc.num_hidden_layers * p.page_size * kv_heads * head_dim * dtype.itemsize
        slots = cfg.kv_pages
        if not slots:
            slots = int(self.device.free_bytes * p.kv_memory_fraction // page_bytes) if self.device.free_bytes else 256
            if p.max_kv_pages:
                slots = min(slots, p.max_kv_pages)
            slots = max(slots, 16)
        self.pool = KvPool(num_layers=mc.num_hidden_layers, num_slots=slots, page_size=p.page_size,
                           kv_heads=kv_heads, head_dim=head_dim, dtype=dtype, device=p.device,
                           host_pages=p.host_swap_pages)
        self.runner = ModelRunner(lm.model, self.pool)
        log.info("engine ready: model %s on %s (%s), profile %s, %d KV pages of %d tokens",
                 lm.name, self.device.name, p.dtype, p.name, slots, p.page_size)

    def _main(self) -> None:
        try:
            self._setup()
        except BaseException as e:   # report to start(), never die silently
            self._start_error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stopping:
                block = not any(True for _ in self.scheduler.pending())
                self._run_commands(block)
                if self._stopping:
                    break
                self._gather_forwards()
                self._accrue_page_seconds()
                if any(True for _ in self.scheduler.pending()):
                    self._step()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        err = EngineUnavailable("the engine is shutting down; retry when it is back")
        for req in list(self.scheduler.pending()):
            self.scheduler.remove(req)
            req.on_done(req, None, err)
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
            if cmd is not None:
                cmd[2].set_exception(err)

    def _run_commands(self, block: bool) -> None:
        while True:
            try:
                cmd = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
            except queue.Empty:
                return
            if cmd is None:
                return
            self._run_command(cmd)
            block = False

    @staticmethod
    def _run_command(cmd) -> None:
        fn, args, fut = cmd
        try:
            fut.set_result(fn(*args))
        except BaseException as e:
            fut.set_exception(e)

    def _gather_forwards(self) -> None:
        """Give callers whose forward the last step served a moment to send their next one.

        Waiting is per context: runs served in the previous step must not
        count as the answer of runs served in this one, or two half-batches
        would keep alternating. The wait is ``forward_linger_ms`` after the
        latest answer, not after the step: with many runs on few cores the
        answers trickle in (bench_throughput: 32 runs made 18 sequences per
        step with a fixed 10 ms wait), while a run that stays away costs at
        most one linger after the last answer, and the whole wait never
        exceeds four lingers.
        """
        if not self._awaited_ctxs or self.config.forward_linger_ms <= 0:
            self._awaited_ctxs.clear()
            return
        linger = self.config.forward_linger_ms / 1000
        end = time.monotonic() + linger
        cap = end + 3 * linger
        while self._awaited_ctxs and not self._stopping:
            left = min(end, cap) - time.monotonic()
            if left <= 0:
                break
            try:
                cmd = self._commands.get(timeout=left)
            except queue.Empty:
                break
            if cmd is None:
                break
            waiting = len(self._awaited_ctxs)
            self._run_command(cmd)
            if len(self._awaited_ctxs) < waiting:
                end = time.monotonic() + linger
        self._awaited_ctxs.clear()

    def _call(self, fn, *args, timeout: float | None = 300.0):
        """Run ``fn(*args)`` on the loop thread and return its result."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        if not self.running:
            raise EngineUnavailable("the engine is not running")
        fut: Future = Future()
        self._commands.put((fn, args, fut))
        return fut.result(timeout)

    # ---------------------------------------------------------------- step
    def _step(self) -> None:
        pool, p = self.pool, self.profile
        pinned: set[int] = set()
        failed: list[tuple[ForwardRequest, PotluckError]] = []
        in_step: set[int] = set()
        pool.tick()

        def admit(req: ForwardRequest, n: int) -> bool:
            if req.cancelled or req.ctx.id in in_step:
                return False
            tenant = self.tenants[req.tenant]
            try:
                pool.check_quota(req.ctx, n, tenant.quota.kv_pages)
                pool.prepare_write(req.ctx, n, pinned)
            except PoolExhausted:
                return False
            except QuotaExceeded as e:
                failed.append((req, e))
                return False
            in_step.add(req.ctx.id)
            return True

        picked = self.scheduler.schedule(p.batch_token_budget, p.max_batch_seqs, admit)
        for req, err in failed:
            self.scheduler.remove(req)
            req.on_done(req, None, err)
        if not picked:
            if not failed:
                # Everything pending is blocked (pages pinned by others, cancelled):
                # drop cancelled requests and wait for commands rather than spin.
                for req in [r for r in self.scheduler.pending() if r.cancelled]:
                    self.scheduler.remove(req)
                self._run_commands(block=True)
            return
        chunks = [Chunk(req.ctx, req.tokens[req.fed:req.fed + n],
                        req.sampler if n == req.remaining else None, req.generator) for req, n in picked]
        t0 = time.perf_counter()
        try:
            results = self.runner.step(chunks)
        except Exception as e:
            log.exception("forward step failed")
            err = PotluckError(f"internal error in the forward step: {type(e).__name__}: {e}",
                               code="internal_error", status=500)
            for req, _ in picked:
                self.scheduler.remove(req)
                req.on_done(req, None, err)
            return
        dt = time.perf_counter() - t0
        usage: dict[str, list[int]] = {}
        ntok = 0
        for (req, n), chunk, res in zip(picked, chunks, results):
            pool.commit(req.ctx, chunk.tokens)
            req.fed += n
            ntok += n
            tenant = self.tenants[req.tenant]
            u = usage.setdefault(req.tenant, [0, 0])
            if not req.decode:
                u[0] += n
                tenant.prefill_tokens += n
            if res is not None:
                u[1] += 1
                tenant.decode_tokens += 1
            tenant.window.add((0 if req.decode else n) + (1 if res is not None else 0))
        st = self.stats
        st["steps"] += 1
        st["batch_tokens"] += ntok
        st["batch_seqs"] += len(picked)
        st["last_step_ms"] = dt * 1000
        for name, (pre, dec) in usage.items():
            st["prefill_tokens"] += pre
            st["decode_tokens"] += dec
            if self.ledger is not None:
                self.ledger.record(name, prefill_tokens=pre, decode_tokens=dec)
        for (req, n), res in zip(picked, results):
            if req.remaining == 0:
                self.scheduler.remove(req)
                req.on_done(req, res, None)
        if self.step_listeners:
            info = {"seqs": len(picked), "tokens": ntok, "seconds": dt, "usage": usage,
                    "decode_seqs": sum(1 for c in chunks if len(c.tokens) == 1),
                    "prefill_seqs": sum(1 for c in chunks if len(c.tokens) > 1)}
            for fn in self.step_listeners:
                fn(info)

    def _accrue_page_seconds(self) -> None:
        now = time.monotonic()
        dt, self._last_accrual = now - self._last_accrual, now
        for name, t in self.pool.tenants.items():
            if t.held and name in self.tenants:
                ps = t.held * dt
                self.tenants[name].page_seconds += ps
                if self.ledger is not None:
                    self.ledger.record(name, page_seconds=ps)

    # --------------------------------------------------------------- tenants
    def tenant(self, name: str, groups: dict[str, dict] | None = None, is_admin: bool = False) -> Tenant:
        """The tenant ``name`` with its quota resolved (defaults <- groups <- user override)."""
        if not isinstance(name, str) or not name or len(name) > 255:
            raise BadRequest("a tenant name is 1 to 255 characters")
        return self._call(self._tenant, name, groups, is_admin)

    def _tenant(self, name: str, groups: dict[str, dict] | None, is_admin: bool) -> Tenant:
        t = self.tenants.get(name)
        if t is None:
            day_tokens = 0
            if self.ledger is not None:
                midnight = datetime.combine(datetime.now(timezone.utc).date(), dtime(), tzinfo=timezone.utc)
                day_tokens = self.ledger.tokens_since(name, midnight)
            t = self.tenants[name] = Tenant(name=name, window=TokenWindow(day_tokens))
            self._contexts[name] = {}
            self._saved[name] = {}
        if groups is not None:
            t.groups = tuple(sorted(groups))
            t.group_quotas = groups
        t.is_admin = is_admin
        self._resolve(t)
        return t

    def _resolve(self, t: Tenant) -> None:
        override = self.store.get_override(t.name) if self.store is not None else self._overrides.get(t.name)
        t.quota, t.quota_source = resolve_quota(self.config.default_quota, t.group_quotas,
                                                override)
        self.scheduler.set_weight(t.name, t.quota.weight)
        self.pool.set_soft_share(t.name, t.quota.kv_pages_soft or 0)

    def set_user_override(self, name: str, fields: dict, actor: str) -> dict:
        fields = validate_quota_fields(fields, where=f"quota override for {name}")
        if self.store is not None:
            self.store.set_override(name, fields, actor)
        self._call(self._apply_override, name, fields)
        return fields

    def delete_user_override(self, name: str, actor: str) -> bool:
        existed = (self.store.delete_override(name, actor) if self.store is not None
                   else name in self._overrides)
        self._call(self._apply_override, name, None)
        return existed

    def _apply_override(self, name: str, fields: dict | None) -> None:
        if fields is None:
            self._overrides.pop(name, None)
        else:
            self._overrides[name] = fields
        t = self.tenants.get(name)
        if t is not None:
            self._resolve(t)

    # ------------------------------------------------------------ generation
    def encode_chat(self, messages: list[dict]) -> list[int]:
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list of {role, content} objects", code="invalid_messages")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise BadRequest("each message needs a string 'role' and a string 'content'", code="invalid_messages")
            if m["role"] not in ("system", "user", "assistant", "tool"):
                raise BadRequest(f"unknown message role {m['role']!r}", code="invalid_messages")
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)
        return list(out["input_ids"])

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, tenant: Tenant | str, *, prompt: str | None = None, messages: list[dict] | None = None,
                 tokens: list[int] | None = None, max_tokens: int = 256, sampler: Sampler | None = None,
                 stop: list[str] | None = None, stop_token_ids: list[int] | None = None,
                 ignore_eos: bool = False, priority: str | None = None,
                 listener: Callable[[GenEvent | None], None] | None = None) -> Generation:
        """Start generating; returns at once with a ``Generation`` handle.

        ``listener`` is registered before the request is queued, so it sees every event
        (``add_listener`` after this returns may miss the first tokens of a busy loop).
        """
        called = time.time()   # time to first token counts the wait for the loop too
        t = self._tenant_obj(tenant)
        if sum(x is not None for x in (prompt, messages, tokens)) != 1:
            raise BadRequest("give exactly one of prompt, messages or tokens", code="invalid_prompt")
        if prompt is not None:
            if not isinstance(prompt, str) or not prompt:
                raise BadRequest("prompt must be a non-empty string", code="invalid_prompt")
            ids = self.encode(prompt)
        elif messages is not None:
            ids = self.encode_chat(messages)
        else:
            ids = self._check_tokens(tokens)
        if not ids:
            raise BadRequest("the prompt is empty after tokenization", code="invalid_prompt")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}", code="invalid_max_tokens")
        if len(ids) + max_tokens > self.max_context:
            if len(ids) >= self.max_context:
                raise BadRequest(f"the prompt has {len(ids)} tokens; the model's context window is "
                                 f"{self.max_context}", code="context_length_exceeded")
            raise BadRequest(f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                             f"context window of {self.max_context} tokens", code="context_length_exceeded")
        sampler = (sampler or Sampler()).validate(self.runner.vocab_size)
        stop = list(stop or [])
        if len(stop) > 16 or any(not isinstance(s, str) or not s or len(s) > 256 for s in stop):
            raise BadRequest("stop must be at most 16 non-empty strings of at most 256 characters",
                             code="invalid_stop")
        stop_ids = set(self._check_tokens(stop_token_ids or [], allow_empty=True))
        if not ignore_eos:
            stop_ids |= self.eos_ids
        prio = self._priority(t, priority)
        g = self._call(self._start_generation, t, ids, max_tokens, sampler, stop, stop_ids, prio, listener)
        g.created = called
        return g

    def _tenant_obj(self, tenant: Tenant | str) -> Tenant:
        if isinstance(tenant, Tenant):
            return tenant
        return self.tenants.get(tenant) or self.tenant(tenant)

    def _priority(self, t: Tenant, asked: str | None) -> int:
        if asked is None:
            return t.priority
        if asked not in PRIORITIES:
            raise BadRequest(f"priority must be one of {sorted(PRIORITIES)}", code="invalid_priority")
        return max(PRIORITIES[asked], t.priority)   # a batch tenant cannot ask for interactive

    def _check_tokens(self, tokens, allow_empty: bool = False) -> list[int]:
        vocab = self.runner.vocab_size
        if not isinstance(tokens, list) or (not tokens and not allow_empty):
            raise BadRequest("tokens must be a non-empty list of token ids", code="invalid_tokens")
        for x in tokens:
            if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < vocab:
                raise BadRequest(f"token {x!r} is not a token id (0..{vocab - 1})", code="invalid_tokens")
        return tokens

    def _start_generation(self, t: Tenant, ids: list[int], max_tokens: int, sampler: Sampler,
                          stop: list[str], stop_ids: set[int], prio: int, listener=None) -> Generation:
        t.check_model(self.model_name)
        t.check_request(len(ids), max_tokens)
        ctx = self._new_context(t.name, register=False)
        g = Generation(self, next(self._ids), t, ids, max_tokens, sampler, stop, stop_ids)
        g._ctx = ctx
        g.cached_tokens = self.pool.reuse_prefix(ctx, ids)
        self.stats["prefix_hit_tokens"] += g.cached_tokens
        t.active_requests += 1
        self._generations[g.id] = g
        gen = torch.Generator(device=self.pool.k.device) if sampler.seed is not None else None
        if gen is not None:
            gen.manual_seed(sampler.seed)
        g._torch_gen = gen
        g._prio = prio
        if listener is not None:
            g._listeners.append(listener)
        self._submit(g, ids[g.cached_tokens:], decode=False)
        return g

    def _submit(self, g: Generation, tokens: list[int], decode: bool) -> None:
        req = ForwardRequest(g.tenant, g._prio, next(self._arrivals), g._ctx, tokens, g.sampler,
                             g._torch_gen, decode, lambda r, s, e: self._on_generated(g, s, e))
        g._req = req
        self.scheduler.add(req)

    def _on_generated(self, g: Generation, s: Sample | None, err: PotluckError | None) -> None:
        if g.done:
            return
        if err is not None:
            return self._finish(g, "error", err)
        if g.first_token_at is None:
            g.first_token_at = time.time()
        tok = s.token
        if tok in g.stop_token_ids:
            return self._finish(g, "stop")
        g.tokens.append(tok)
        g.logprobs.append(s.logprob)
        delta = g._detok.push(tok)
        finish = None
        if g.stop:
            pending = g._held + delta
            cut = min((i for i in (pending.find(x) for x in g.stop) if i >= 0), default=-1)
            if cut >= 0:
                delta, finish = pending[:cut], "stop"
                g._held = ""
            else:
                # Hold back a tail that could be the start of a stop string.
                keep = max((k for x in g.stop for k in range(1, len(x)) if pending.endswith(x[:k])), default=0)
                delta, g._held = (pending[:-keep], pending[-keep:]) if keep else (pending, "")
        g.text += delta
        g._emit(GenEvent(tok, delta, s.logprob, s.top))
        if finish is None and len(g.tokens) >= g.max_tokens:
            finish = "length"
        if finish is None and g._ctx.length + 1 >= self.max_context:
            finish = "length"
        if finish is not None:
            return self._finish(g, finish)
        self._submit(g, [tok], decode=True)

    def _finish(self, g: Generation, reason: str, err: PotluckError | None = None) -> None:
        if g.done:
            return
        if g._held and reason != "stop":
            g.text += g._held
            g._emit(GenEvent(-1, g._held, 0.0))
            g._held = ""
        g.finish_reason = reason
        g.error = err
        if g._req is not None:
            g._req.cancelled = True
            self.scheduler.remove(g._req)
        self.pool.drop(g._ctx)
        self.tenants[g.tenant].active_requests -= 1
        self._generations.pop(g.id, None)
        if self.ledger is not None:
            self.ledger.record(g.tenant, requests=1)
            self.ledger.flush_soon()     # a finished request's usage reaches the database at once
        g._done.set()
        g._emit(None)

    def _cancel_generation(self, g: Generation) -> None:
        self._finish(g, "cancelled")

    # -------------------------------------------------------------- contexts
    def _new_context(self, tenant: str, register: bool = True) -> Context:
        ctx = self.pool.new_context(next(self._ids), tenant)
        if register:
            ctxs = self._contexts[tenant]
            if len(ctxs) >= MAX_CONTEXTS_PER_TENANT:
                raise QuotaExceeded("contexts", MAX_CONTEXTS_PER_TENANT,
                                    f"you have {len(ctxs)} open contexts, the limit; drop some first")
            ctxs[ctx.id] = ctx
        return ctx

    def _ctx(self, tenant: str, ctx_id: int) -> Context:
        ctx = self._contexts.get(tenant, {}).get(ctx_id)
        if ctx is None:
            raise NotFound(f"no context {ctx_id} in your namespace")
        return ctx

    def create_context(self, tenant: str) -> int:
        self._tenant_obj(tenant)
        return self._call(lambda: self._new_context(tenant).id)

    def fork_context(self, tenant: str, ctx_id: int) -> int:
        def fork():
            src = self._ctx(tenant, ctx_id)
            dst = self.pool.fork(src, next(self._ids))
            self._contexts[tenant][dst.id] = dst
            return dst.id
        return self._call(fork)

    def drop_context(self, tenant: str, ctx_id: int) -> None:
        def drop():
            ctx = self._ctx(tenant, ctx_id)
            if ctx.busy:
                raise BadRequest("the context is in use by a forward call", code="context_busy")
            self.pool.drop(ctx)
            del self._contexts[tenant][ctx_id]
        self._call(drop)

    def truncate_context(self, tenant: str, ctx_id: int, length: int) -> None:
        def trunc():
            ctx = self._ctx(tenant, ctx_id)
            if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= ctx.length:
                raise BadRequest(f"length must be from 0 to the context's {ctx.length} tokens", code="invalid_length")
            self.pool.truncate(ctx, length)
        self._call(trunc)

    def context_tokens(self, tenant: str, ctx_id: int) -> list[int]:
        return self._call(lambda: list(self._ctx(tenant, ctx_id).tokens))

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or len(name) > MAX_SAVED_NAME:
            raise BadRequest(f"a saved context name is 1 to {MAX_SAVED_NAME} characters", code="invalid_name")

    def save_context(self, tenant: str, ctx_id: int, name: str) -> None:
        """Keep a snapshot of the context under ``name`` in the tenant's namespace."""
        self._check_name(name)

        def save():
            ctx = self._ctx(tenant, ctx_id)
            snap = self.pool.fork(ctx, next(self._ids))
            old = self._saved[tenant].pop(name, None)
            if old is not None:
                self.pool.drop(old)
            self._saved[tenant][name] = snap
            return list(snap.tokens)
        tokens = self._call(save)
        if self.store is not None:
            self.store.save_context(tenant, name, tokens)

    def open_context(self, tenant: str, name: str) -> int:
        """A new context continuing the saved ``name`` (re-filled from its tokens after a restart)."""
        self._check_name(name)
        self._tenant_obj(tenant)

        def open_():
            snap = self._saved[tenant].get(name)
            if snap is None:
                return None
            ctx = self.pool.fork(snap, next(self._ids))
            self._contexts[tenant][ctx.id] = ctx
            return ctx.id
        ctx_id = self._call(open_)
        if ctx_id is not None:
            return ctx_id
        tokens = self.store.load_context(tenant, name) if self.store is not None else None
        if tokens is None:
            raise NotFound(f"no saved context named {name!r} in your namespace")
        ctx_id = self.create_context(tenant)
        try:
            if tokens:
                self.forward(tenant, ctx_id, tokens, None).result()
        except BaseException:
            # A refused re-fill (kv_pages, context window) must not leave a context
            # holding pages under an id the caller never got.
            self.drop_context(tenant, ctx_id)
            raise

        def keep():
            ctx = self._contexts[tenant][ctx_id]
            if name not in self._saved[tenant]:      # a concurrent open may have re-filled it first
                self._saved[tenant][name] = self.pool.fork(ctx, next(self._ids))
        self._call(keep)
        return ctx_id

    def delete_saved(self, tenant: str, name: str) -> None:
        def delete():
            snap = self._saved.get(tenant, {}).pop(name, None)
            if snap is not None:
                self.pool.drop(snap)
            return snap is not None
        found = self._call(delete)
        if self.store is not None:
            found = self.store.delete_context(tenant, name) or found
        if not found:
            raise NotFound(f"no saved context named {name!r} in your namespace")

    def list_saved(self, tenant: str) -> list[dict]:
        def names():
            return {n: c.length for n, c in self._saved.get(tenant, {}).items()}
        live = self._call(names)
        out = {n: {"name": n, "n_tokens": k} for n, k in live.items()}
        if self.store is not None:
            for row in self.store.list_contexts(tenant):
                out.setdefault(row["name"], {"name": row["name"], "n_tokens": row["n_tokens"]})
        return sorted(out.values(), key=lambda r: r["name"])

    def forward(self, tenant: str, ctx_id: int, tokens: list[int], sampler: Sampler | None,
                priority: str | None = "batch") -> Future:
        """Append ``tokens`` to the context; the future gives the next token's ``Sample`` (or None)."""
        t = self._tenant_obj(tenant)
        self._check_forward(tokens, sampler)
        prio = self._priority(t, priority)
        fut: Future = Future()
        self._call(self._enqueue_forward, t, ctx_id, tokens, sampler, prio, fut)
        return fut

    def forward_many(self, tenant: str, calls: list[tuple[int, list[int], Sampler | None]],
                     priority: str | None = "batch") -> list[Future]:
        """``forward`` on several of a tenant's contexts in one loop call, so they join the same step.

        One future per call, in order; a call that cannot be queued (a context
        not found or busy, a rate limit) gets a future holding its error.
        """
        t = self._tenant_obj(tenant)
        for _, tokens, sampler in calls:
            self._check_forward(tokens, sampler)
        prio = self._priority(t, priority)
        futs: list[Future] = [Future() for _ in calls]

        def submit():
            for (ctx_id, tokens, sampler), fut in zip(calls, futs):
                try:
                    self._enqueue_forward(t, ctx_id, tokens, sampler, prio, fut)
                except PotluckError as e:
                    fut.set_exception(e)
        self._call(submit)
        return futs

    def _check_forward(self, tokens: list[int], sampler: Sampler | None) -> None:
        self._check_tokens(tokens)
        if sampler is not None:
            sampler.validate(self.runner.vocab_size)

    def _enqueue_forward(self, t: Tenant, ctx_id: int, tokens: list[int], sampler: Sampler | None,
                         prio: int, fut: Future) -> None:
        tenant = t.name
        ctx = self._ctx(tenant, ctx_id)
        if ctx.busy:
            raise BadRequest("a forward call on this context is already running", code="context_busy")
        if ctx.length + len(tokens) > self.max_context:
            raise BadRequest(f"the context would hold {ctx.length + len(tokens)} tokens; the model's "
                             f"context window is {self.max_context}", code="context_length_exceeded")
        t.check_rate(len(tokens))
        feed = tokens
        decode = bool(ctx.tokens) and len(tokens) == 1 and ctx.last_sample == tokens[0]
        matched = self.pool.reuse_prefix(ctx, tokens) if sampler is not None or len(tokens) > 1 else 0
        if matched:
            self.stats["prefix_hit_tokens"] += matched
            feed = tokens[matched:]
        gen = None
        if sampler is not None and sampler.seed is not None:
            gen = torch.Generator(device=self.pool.k.device)
            gen.manual_seed(sampler.seed)

        def done(req, s, err):
            ctx.busy = False
            if err is not None:
                fut.set_exception(err)
            else:
                ctx.last_sample = s.token if s is not None else None
                self._awaited_ctxs.add(ctx.id)
                fut.set_result(s)
        ctx.busy = True
        self._awaited_ctxs.discard(ctx.id)
        self.scheduler.add(ForwardRequest(tenant, prio, next(self._arrivals), ctx, feed, sampler, gen,
                                          decode, done))

    # ----------------------------------------------------------------- info
    def status(self) -> dict:
        def snapshot():
            pool = self.pool
            active = sorted({r.tenant for r in self.scheduler.pending()} |
                            {g.tenant for g in self._generations.values()})
            return {
                "version": __version__,
                "model": self.model_name,
                "device": self.device.to_json(),
                "profile": self.profile.to_json(),
                "scheduler": self.scheduler.policy,
                "kv": {"page_size": pool.page_size, "total_pages": pool.num_slots, "free_pages": pool.free_slots,
                       "used_pages": pool.used_slots, "pages_on_host": pool.pages_on_host,
                       "swaps_out": pool.swaps_out, "swaps_in": pool.swaps_in},
                "active_tenants": len(active),
                "queue_depth": self.scheduler.depth(),
                "running_generations": len(self._generations),
                "max_context_tokens": self.max_context,
                "stats": dict(self.stats),
            }
        return self._call(snapshot)

    def tenant_report(self, name: str) -> dict | None:
        return self._call(lambda: self._report(name))

    def tenant_reports(self) -> list[dict]:
        """Every tenant the engine has seen since it started, in one loop call (the admin view)."""
        return self._call(lambda: [self._report(name) for name in sorted(self.tenants)])

    def _report(self, name: str) -> dict | None:
        t = self.tenants.get(name)
        if t is None:
            return None
        return {"name": t.name, "groups": list(t.groups), "is_admin": t.is_admin,
                "quota": t.quota.to_json(), "quota_source": dict(t.quota_source),
                "usage": t.usage_json(), "kv_pages": self.pool.held_by(name),
                "saved_contexts": len(self._saved.get(name, {})),
                "open_contexts": len(self._contexts.get(name, {}))}
