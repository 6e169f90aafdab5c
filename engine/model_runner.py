"""The model runner: one batched forward over many sequences of different lengths.

A step is a list of chunks, one per sequence: new tokens to append to a
context (a prefill chunk or one decode token), and whether to sample after
them. The whole step is flattened into plain arrays (token ids, positions,
the flat KV slot of every new token, each sequence's gather index) and run
as **one** forward of the Hugging Face model with ``use_cache=False``; our
attention function, registered with transformers' ``AttentionInterface``,
writes the new keys and values into the paged pool and reads each sequence's
pages. The model's own code (projections, RoPE, MLP, norms) is untouched, so
any causal LM whose attention goes through that interface works.

Decode rows (one query token each) share a padded SDPA call per layer, one per
group of similar context lengths (``decode_groups``: a light user's short
context is not padded to a flood's long ones); prefill chunks get one causal
SDPA call each.

The runner owns the model and the pool tensors and runs only on the engine's
batch-loop thread; ``load_runtime`` builds both for the device found at start.
It never decides who runs and never touches quotas.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .accelerator import Device, Profile, choose_profile, detect_device, kv_pool_pages
from . import cpu_linear
from .constraints import Constraint, ConstraintCompiler
from .pages import Context, KvPool
from .sampling import Sample, Sampler, sample
from .weights import LoadedModel, load_model

log = logging.getLogger("potluck.engine")

ATTN_NAME = "potluck_paged"
# A decode row starts its own padded attention call when its context is under half the longest in
# its group and at least this many keys shorter: each call costs a fixed overhead in every layer,
# each padded key a read of masked-out memory (a 37-token chat padded to a flood's 940 read 25x
# its keys).
PAD_SPLIT_KEYS = 256


@dataclass
class Chunk:
    ctx: Context
    tokens: list[int]
    sampler: Sampler | None          # None: fill only, no logits needed
    generator: torch.Generator | None = None
    constraint: Constraint | None = None       # the grammar the sample must follow
    output: list[int] | None = None            # the generation's output so far (penalties)
    score: int = -1                  # >= 0: also give each token's logprob (and this many top ones)
    next_token: int | None = None    # the token after the chunk, when it is known (scoring)
    scores: list[tuple[float, list[tuple[int, float]]]] | None = None   # out: for the tokens after position 0


@dataclass
class StepMeta:
    pool: KvPool
    slot_mapping: torch.Tensor                 # [T] flat slot of each new token
    decodes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    # per group of decode rows: [B] packed index of each decode token, [B, L] flat slots to read
    # (padded to the group's longest), [B, 1, 1, L] True where a key is visible
    prefills: list[tuple[int, int, torch.Tensor | None, torch.Tensor | None]]
    # (start, end) in the packed tokens, gather index over the whole context
    # (None when the chunk is the context's first, so it attends only to itself),
    # causal mask with the chunk's offset (None: plain causal)
    abort: threading.Event | None = None       # set from another thread: stop at the next layer


class StepAborted(Exception):
    """The step was abandoned between two layers (``StepMeta.abort``); nothing of it was committed."""


def paged_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention over the paged pool; falls back to SDPA for ordinary calls (e.g. ``generate``)."""
    step: StepMeta | None = kwargs.pop("potluck_step", None)
    if step is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    layer = module.layer_idx
    if step.abort is not None and step.abort.is_set():
        raise StepAborted
    kvh, dim = key.shape[1], key.shape[3]
    # 2-D row views: index_select copies whole rows, where advanced indexing
    # copies element by element (measured ~10x slower for the decode gather).
    kc = step.pool.k[layer].view(-1, kvh * dim)
    vc = step.pool.v[layer].view(-1, kvh * dim)
    kc.index_copy_(0, step.slot_mapping, key[0].transpose(0, 1).reshape(-1, kvh * dim))
    vc.index_copy_(0, step.slot_mapping, value[0].transpose(0, 1).reshape(-1, kvh * dim))

    q = query[0]                                        # [h, T, d]
    heads, total, _ = q.shape
    gqa = heads != kvh
    out = torch.empty((total, heads, dim), dtype=query.dtype, device=query.device)

    for rows, gather, mask in step.decodes:
        b, length = gather.shape
        flat = gather.view(-1)
        kd = torch.index_select(kc, 0, flat).view(b, length, kvh, dim).transpose(1, 2)  # [B, kvh, L, d]
        vd = torch.index_select(vc, 0, flat).view(b, length, kvh, dim).transpose(1, 2)
        if gqa and query.dtype != torch.float32:
            # The query heads sharing a KV head as rows of one query ([B, kvh, heads/kvh, d]): SDPA's own
            # grouped-query path in bfloat16 on a CPU ran ~5x slower than this; in float32 it is as fast.
            qd = q[:, rows].transpose(0, 1).reshape(b, kvh, heads // kvh, dim)
            o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, scale=scaling)
            out[rows] = o.reshape(b, heads, dim)
        else:
            qd = q[:, rows].transpose(0, 1).unsqueeze(2)                              # [B, h, 1, d]
            o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, scale=scaling, enable_gqa=gqa)
            out[rows] = o[:, :, 0]

    for start, end, gather, mask in step.prefills:
        qp = q[:, start:end].unsqueeze(0)                               # [1, h, n, d]
        if gather is None:
            kp = key[:, :, start:end]
            vp = value[:, :, start:end]
        else:
            n = gather.shape[0]
            kp = torch.index_select(kc, 0, gather).view(n, kvh, dim).transpose(0, 1).unsqueeze(0)
            vp = torch.index_select(vc, 0, gather).view(n, kvh, dim).transpose(0, 1).unsqueeze(0)
        o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, is_causal=mask is None,
                                           scale=scaling, enable_gqa=gqa)
        out[start:end] = o[0].transpose(0, 1)
    return out.unsqueeze(0), None


AttentionInterface.register(ATTN_NAME, paged_attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


class ModelRunner:
    def __init__(self, model: torch.nn.Module, pool: KvPool, constraints: ConstraintCompiler | None = None):
        self.model = model
        self.pool = pool
        self.device = pool.k.device
        self.vocab_size = model.config.vocab_size
        self.constraints = constraints
        model.set_attn_implementation(ATTN_NAME)
        if self.device.type == "cpu":
            cpu_linear.choose(model)
        # A prepared 4-D mask makes transformers' mask builder return at once;
        # our attention function ignores it.
        self._no_mask = torch.zeros((1, 1, 1, 1), dtype=torch.bool, device=self.device)

    def _positions(self, ctx: Context, upto: int) -> torch.Tensor:
        ps = self.pool.page_size
        slots = torch.tensor([p.slot for p in ctx.pages[:-(-upto // ps)]], dtype=torch.long)
        return (slots[:, None] * ps + torch.arange(ps)).flatten()[:upto]

    @torch.inference_mode()
    def step(self, chunks: list[Chunk], abort: threading.Event | None = None) -> list[Sample | None]:
        """Run one forward over all chunks. Pages must already be prepared (``KvPool.prepare_write``).

        ``abort`` set while it runs raises ``StepAborted`` at the next layer: the keys and values
        written so far are in slots of uncommitted positions, which the step's retry writes again.
        """
        ids: list[int] = []
        pos: list[int] = []
        slots: list[torch.Tensor] = []
        dec_rows: list[int] = []
        dec_gathers: list[torch.Tensor] = []
        prefills = []
        keep: list[int] = []
        sample_rows: list[int] = []      # per sampling chunk, its row among the kept logits
        score_rows: list[tuple[Chunk, int]] = []
        for ch in chunks:
            start = ch.ctx.length
            n = len(ch.tokens)
            kv_len = start + n
            at = len(ids)
            ids.extend(ch.tokens)
            pos.extend(range(start, kv_len))
            gather = self._positions(ch.ctx, kv_len)
            slots.append(gather[start:])
            if n == 1:
                dec_rows.append(at)
                dec_gathers.append(gather)
            elif start == 0:
                prefills.append((at, at + n, None, None))
            else:
                q_pos = torch.arange(start, kv_len)
                mask = torch.arange(kv_len)[None, :] <= q_pos[:, None]
                prefills.append((at, at + n, gather.to(self.device), mask.to(self.device)))
            if ch.score >= 0:
                score_rows.append((ch, len(keep)))
                keep.extend(range(at, at + n))
                if ch.sampler is not None:
                    sample_rows.append(len(keep) - 1)
            elif ch.sampler is not None:
                sample_rows.append(len(keep))
                keep.append(at + n - 1)

        dev = self.device
        decodes = []
        for group in decode_groups([len(g) for g in dec_gathers]):
            lmax = len(dec_gathers[group[0]])
            gidx = torch.zeros((len(group), lmax), dtype=torch.long)
            mask = torch.zeros((len(group), 1, 1, lmax), dtype=torch.bool)
            for r, i in enumerate(group):
                g = dec_gathers[i]
                gidx[r, :len(g)] = g
                mask[r, 0, 0, :len(g)] = True
            decodes.append((torch.tensor([dec_rows[i] for i in group], device=dev), gidx.to(dev), mask.to(dev)))
        meta = StepMeta(self.pool, torch.cat(slots).to(dev), decodes, prefills, abort)

        if not keep:
            keep_idx = torch.tensor([len(ids) - 1], device=dev)
        else:
            keep_idx = torch.tensor(keep, device=dev)
        out = self.model(
            input_ids=torch.tensor([ids], device=dev),
            position_ids=torch.tensor([pos], device=dev),
            attention_mask=self._no_mask,
            use_cache=False,
            logits_to_keep=keep_idx,
            potluck_step=meta,
        )
        results: list[Sample | None] = [None] * len(chunks)
        if not keep:
            return results
        logits = out.logits[0]
        for ch, row in score_rows:
            ch.scores = _score(logits[row:row + len(ch.tokens)], ch.tokens[1:] + [ch.next_token], ch.score)
        want = [i for i, ch in enumerate(chunks) if ch.sampler is not None]
        if want:
            rows = logits[torch.tensor(sample_rows, device=dev)] if score_rows else logits
            picked = [chunks[i] for i in want]
            allowed = None
            if self.constraints is not None:
                allowed = self.constraints.allowed_mask([c.constraint for c in picked], rows.shape[1], dev)
            histories = [(c.output or [], c.ctx.tokens + c.tokens) if c.sampler.penalized else None
                         for c in picked]
            samples = sample(rows, [c.sampler for c in picked], [c.generator for c in picked], allowed, histories)
            for i, s in zip(want, samples):
                results[i] = s
        return results


def decode_groups(lengths: list[int]) -> list[list[int]]:
    """Indices of ``lengths`` (each decode row's context), grouped for one padded attention call each.

    Longest first; a row starts a new group when its context is under half its group's longest and at
    least ``PAD_SPLIT_KEYS`` shorter, so no group pads a row to more than twice its keys plus that.
    """
    groups: list[list[int]] = []
    top = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        if groups and not (2 * n < top and top - n >= PAD_SPLIT_KEYS):
            groups[-1].append(i)
        else:
            groups.append([i])
            top = n
    return groups


def _score(rows: torch.Tensor, targets: list[int | None], top: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """Each position's log-probability of the token that follows it (the prompt's logprobs).

    A position whose next token is not known yet (the last of a chunk that samples) is left out.
    """
    known = [i for i, t in enumerate(targets) if t is not None]
    if not known:
        return []
    lp = torch.log_softmax(rows[torch.tensor(known, device=rows.device)].float(), dim=-1)
    chosen = lp.gather(1, torch.tensor([targets[i] for i in known], device=rows.device)[:, None])[:, 0].tolist()
    tops: list[list[tuple[int, float]]] = [[] for _ in known]
    if top:
        vals, ids = torch.topk(lp, top, dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(ids.tolist(), vals.tolist())]
    return list(zip(chosen, tops))


# ------------------------------------------------------------------ loading
@dataclass
class Runtime:
    """What the engine runs on, decided once at start on the batch-loop thread."""
    device: Device
    profile: Profile
    model_name: str
    tokenizer: object
    max_context: int
    eos_ids: set[int]
    pool: KvPool
    runner: ModelRunner


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


def load_runtime(cfg, loaded: LoadedModel | None = None) -> Runtime:
    """Detect the device, pick its profile, load the model and size the KV pool for it.

    ``cfg`` is the engine's ``EngineConfig``; ``loaded`` an already loaded model (tests, benchmarks).
    """
    _tune_malloc()
    device = detect_device()
    profile = choose_profile(device, cfg.profile, cfg.profile_overrides_with_page_size(), dict(cfg.extra_profiles))
    if device.kind == "cpu":
        torch.set_num_threads(max(1, device.cpu_count))
    if loaded is None:
        loaded = load_model(cfg.model, profile.torch_dtype, profile.device,
                            Path(cfg.cache_dir) if cfg.cache_dir else None)
    mc = loaded.model.config
    max_context = cfg.max_context_tokens or getattr(mc, "max_position_embeddings", 4096)
    eos = getattr(loaded.model.generation_config, "eos_token_id", None) or mc.eos_token_id
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) if eos is not None else set()
    head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
    kv_heads = getattr(mc, "num_key_value_heads", None) or mc.num_attention_heads
    dtype = next(loaded.model.parameters()).dtype
    page_bytes = 2 * mc.num_hidden_layers * profile.page_size * kv_heads * head_dim * dtype.itemsize
    slots, why = kv_pool_pages(device, profile, page_bytes, cfg.kv_pages)
    pool = KvPool(num_layers=mc.num_hidden_layers, num_slots=slots, page_size=profile.page_size,
                  kv_heads=kv_heads, head_dim=head_dim, dtype=dtype, device=profile.device,
                  host_pages=profile.host_swap_pages)
    log.info("engine ready: model %s on %s (%s), profile %s, KV pool %d pages of %d tokens = %d MB (%s)",
             loaded.name, device.name, profile.dtype, profile.name, slots, profile.page_size,
             slots * page_bytes >> 20, why)
    if slots * profile.page_size < max_context:
        # Every page of a context must be on the device for its step: one longer than the pool
        # could never run, and would wait forever. The window served is what the pool can hold.
        log.warning("context window cut from %d to %d tokens: the KV pool holds no more (set kv_pages to raise it)",
                    max_context, slots * profile.page_size)
        max_context = slots * profile.page_size
    return Runtime(device, profile, loaded.name, loaded.tokenizer, max_context, eos_ids, pool,
                   ModelRunner(loaded.model, pool, ConstraintCompiler(loaded.tokenizer, mc.vocab_size, eos_ids)))
