"""Accelerator profiles: one configuration that adapts to the hardware.

At start the engine detects its device (CUDA name, compute capability, free
memory; else CPU) and picks a named profile: dtype, attention path, the share
of free memory given to KV pages, the batch token budget. Admins override any
field or add profiles in config (``EngineConfig.profile`` / ``profile_overrides``).

This module only reads the hardware; it never allocates model memory.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Device:
    kind: str                     # "cuda" or "cpu"
    name: str
    capability: tuple[int, int] | None
    total_bytes: int
    free_bytes: int
    cpu_count: int

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
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# Named profiles. The CPU budget is small because a CPU step's time grows
# linearly with its tokens: a big prefill chunk would stall everyone's decode.
PROFILES: dict[str, Profile] = {
    "cpu": Profile("cpu", "cpu", "float32", "sdpa", 0.25, 4096, 16, 256, 64, 4096),
    "cuda-sm80": Profile("cuda-sm80", "cuda", "bfloat16", "sdpa", 0.85, 0, 16, 8192, 256, 16384),
    "cuda-legacy": Profile("cuda-legacy", "cuda", "float16", "sdpa", 0.80, 0, 16, 4096, 128, 8192),
}


def detect_device() -> Device:
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
    return Device("cpu", "cpu", None, total, free, cpus)


def choose_profile(device: Device, name: str = "auto", overrides: dict | None = None,
                   extra_profiles: dict[str, dict] | None = None) -> Profile:
    """The profile for this device: ``name`` ("auto" picks by hardware), then ``overrides``."""
    profiles = dict(PROFILES)
    for pname, fields in (extra_profiles or {}).items():
        base = profiles.get(fields.get("base", ""), PROFILES["cpu"])
        clean = {k: v for k, v in fields.items() if k != "base"}
        profiles[pname] = dataclasses.replace(base, name=pname, **clean)
    if name == "auto":
        if device.kind == "cuda":
            name = "cuda-sm80" if device.capability and device.capability >= (8, 0) else "cuda-legacy"
        else:
            name = "cpu"
    if name not in profiles:
        raise ValueError(f"unknown accelerator profile {name!r}; known: {', '.join(sorted(profiles))}")
    profile = profiles[name]
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(Profile)}
        if unknown:
            raise ValueError(f"unknown profile field(s) {sorted(unknown)}")
        profile = dataclasses.replace(profile, **overrides)
    return profile
