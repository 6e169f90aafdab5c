"""Accelerator profiles: one configuration that adapts to the hardware.

At start the engine detects its device (CUDA name, compute capability, free
memory; else CPU) and picks a named profile: dtype, attention path, the share
of free memory given to KV pages, the batch token budget. Admins override any
field or add profiles in config (``EngineConfig.profile`` / ``profile_overrides``);
``check_profile_fields`` reads those values by each field's type, so a bad one
is refused at start with one line, never met by the batch loop. ``kv_pool_pages``
sizes the default KV pool for the model and the machine.

This module only reads the hardware; it never allocates model memory. torch is
imported only where the hardware is read, so the settings can check profile
fields without it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

# On a CPU the KV pool shares RAM with everything else on the machine (the model's weights,
# users' kernels on a small Hub): by default at most this much, and at most this share of RAM.
CPU_KV_MAX_BYTES = 1 << 30
CPU_KV_MAX_RAM_FRACTION = 0.10
MIN_KV_PAGES = 16


@dataclass(frozen=True)
class Device:
    kind: str                     # "cuda" or "cpu"
    name: str
    capability: tuple[int, int] | None
    total_bytes: int
    free_bytes: int
    cpu_count: int
    native_bf16: bool = False     # a CPU with bfloat16 arithmetic (AVX512-BF16 or AMX)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Profile:
    name: str
    device: str                   # torch device string
    dtype: str                    # "bfloat16" | "float16" | "float32"
    attention: str                # "sdpa" (the paged gather + SDPA path)
    kv_memory_fraction: float     # share of free memory after weights given to KV pages
    max_kv_pages: int             # hard cap on the pool size (0 = no cap)
    page_size: int                # tokens per KV page
    batch_token_budget: int       # tokens per forward step (prefill chunks + decodes)
    max_batch_seqs: int           # sequences per step
    host_swap_pages: int          # pages that may live in host memory when the device runs short

    @property
    def torch_dtype(self):
        import torch
        return getattr(torch, self.dtype)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# Named profiles. The CPU budget is small because a CPU step's time grows
# linearly with its tokens: a big prefill chunk would stall everyone's decode.
# A CPU with bfloat16 arithmetic runs the model in bfloat16 (the dtype the default model was trained
# and published in): on the 2-core AMD EPYC of our benchmarks, with oneDNN's prepacked weights
# (``cpu_linear``), a 256-token step's products take 132 ms against 253 in float32, one row 13 ms
# against 15, and the KV cache takes half the memory. Elsewhere bfloat16 is emulated and slower:
# float32.
PROFILES: dict[str, Profile] = {
    "cpu": Profile("cpu", "cpu", "float32", "sdpa", 0.25, 4096, 16, 256, 64, 4096),
    "cpu-bf16": Profile("cpu-bf16", "cpu", "bfloat16", "sdpa", 0.25, 4096, 16, 256, 64, 4096),
    "cuda-sm80": Profile("cuda-sm80", "cuda", "bfloat16", "sdpa", 0.85, 0, 16, 8192, 256, 16384),
    "cuda-legacy": Profile("cuda-legacy", "cuda", "float16", "sdpa", 0.80, 0, 16, 4096, 128, 8192),
}


DTYPES = ("bfloat16", "float16", "float32")
ATTENTIONS = ("sdpa",)
# What each field must be, for the one-line refusal (the field's type comes from Profile).
_FIELD_RULES = {
    "dtype": f"one of {', '.join(DTYPES)}",
    "attention": f"one of {', '.join(ATTENTIONS)}",
    "kv_memory_fraction": "a number above 0 and at most 1",
    "max_kv_pages": "a whole number >= 0 (0: no cap)",
    "page_size": "a whole number from 1 to 1024",
    "batch_token_budget": "a whole number >= 1",
    "max_batch_seqs": "a whole number >= 1",
    "host_swap_pages": "a whole number >= 0",
}


def check_profile_fields(fields, *, where: str, allow_base: bool = False) -> dict:
    """Profile fields from config, each read by its type (the command line gives strings: "32" -> 32).

    Raises ``ValueError`` with one line naming the setting, the field and what it must be.
    """
    if not isinstance(fields, dict):
        raise ValueError(f"{where} must be a dict of profile fields, got {type(fields).__name__}")
    known = {f.name: f for f in dataclasses.fields(Profile) if f.name not in ("name", "device")}
    out = {}
    for name, value in fields.items():
        if allow_base and name == "base":
            out[name] = value
            continue
        if name not in known:
            raise ValueError(f"{where}: unknown profile field {name!r}; known: {', '.join(known)}")
        kind = str(known[name].type)
        rule = f"{where}: {name} must be {_FIELD_RULES[name]}, got {value!r}"
        if kind in ("int", "float"):
            if isinstance(value, str):
                try:
                    value = int(value.strip()) if kind == "int" else float(value.strip())
                except ValueError:
                    raise ValueError(rule) from None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "int" and value != int(value)):
                raise ValueError(rule)
            value = int(value) if kind == "int" else float(value)
        ok = {
            "dtype": value in DTYPES, "attention": value in ATTENTIONS,
            "kv_memory_fraction": isinstance(value, float) and 0 < value <= 1,
            "max_kv_pages": isinstance(value, int) and value >= 0,
            "page_size": isinstance(value, int) and 1 <= value <= 1024,
            "batch_token_budget": isinstance(value, int) and value >= 1,
            "max_batch_seqs": isinstance(value, int) and value >= 1,
            "host_swap_pages": isinstance(value, int) and value >= 0,
        }[name]
        if not ok:
            raise ValueError(rule)
        out[name] = value
    return out


def kv_pool_pages(device: Device, profile: Profile, page_bytes: int, configured: int = 0) -> tuple[int, str]:
    """How many KV pages the pool gets, and why (for the start-up log line).

    ``configured`` (``--kv-pages``) wins. Otherwise the profile's share of free memory, capped by
    the profile's ``max_kv_pages``; on a CPU also by ``CPU_KV_MAX_BYTES`` and
    ``CPU_KV_MAX_RAM_FRACTION`` of the machine's RAM (the pool is RAM that no one else can use).
    """
    if configured:
        return configured, "set by kv_pages"
    if not device.free_bytes:
        return 256, "memory unknown: a small default"
    budget, why = device.free_bytes * profile.kv_memory_fraction, f"{profile.kv_memory_fraction:g} of free memory"
    if device.kind == "cpu":
        cap = min(CPU_KV_MAX_BYTES, CPU_KV_MAX_RAM_FRACTION * (device.total_bytes or device.free_bytes))
        if cap < budget:
            budget = cap
            why = (f"at most {CPU_KV_MAX_BYTES >> 20} MB and {CPU_KV_MAX_RAM_FRACTION:.0%} of RAM on a CPU")
    pages = int(budget // page_bytes)
    if profile.max_kv_pages and pages > profile.max_kv_pages:
        pages, why = profile.max_kv_pages, f"the profile's max_kv_pages {profile.max_kv_pages}"
    if pages < MIN_KV_PAGES:
        pages, why = MIN_KV_PAGES, f"the minimum of {MIN_KV_PAGES}"
    return pages, why


def detect_device() -> Device:
    import torch
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.cuda.is_available():
        idx = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(idx)
        return Device("cuda", torch.cuda.get_device_name(idx), torch.cuda.get_device_capability(idx),
                      total, free, cpus)
    total = free = 0
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        total = int(info["MemTotal"].split()[0]) * 1024
        free = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    cpu = getattr(torch, "cpu", None)
    native_bf16 = any(getattr(cpu, probe, lambda: False)()
                      for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return Device("cpu", "cpu", None, total, free, cpus, native_bf16)


def choose_profile(device: Device, name: str = "auto", overrides: dict | None = None,
                   extra_profiles: dict[str, dict] | None = None) -> Profile:
    """The profile for this device: ``name`` ("auto" picks by hardware), then ``overrides``."""
    profiles = dict(PROFILES)
    for pname, fields in (extra_profiles or {}).items():
        fields = check_profile_fields(fields, where=f"extra_profiles[{pname!r}]", allow_base=True)
        if fields.get("base", "cpu") not in profiles:
            raise ValueError(f"extra_profiles[{pname!r}]: base must name a profile ({', '.join(sorted(profiles))}), "
                             f"got {fields['base']!r}")
        base = profiles[fields.get("base", "cpu")]
        clean = {k: v for k, v in fields.items() if k != "base"}
        profiles[pname] = dataclasses.replace(base, name=pname, **clean)
    if name == "auto":
        if device.kind == "cuda":
            name = "cuda-sm80" if device.capability and device.capability >= (8, 0) else "cuda-legacy"
        else:
            name = "cpu-bf16" if device.native_bf16 else "cpu"
    if name not in profiles:
        raise ValueError(f"unknown accelerator profile {name!r}; known: {', '.join(sorted(profiles))}")
    profile = profiles[name]
    if overrides:
        profile = dataclasses.replace(profile, **check_profile_fields(overrides, where="profile_overrides"))
    return profile
