"""Accelerator profiles: chosen by hardware, overridable by name and field."""

from __future__ import annotations

import pytest

from potluck.engine.accelerator import Device, choose_profile

CPU = Device("cpu", "cpu", None, 24 << 30, 20 << 30, 2)
CPU_BF16 = Device("cpu", "cpu", None, 24 << 30, 20 << 30, 2, native_bf16=True)
H100 = Device("cuda", "NVIDIA H100", (9, 0), 80 << 30, 79 << 30, 16)
T4 = Device("cuda", "Tesla T4", (7, 5), 16 << 30, 15 << 30, 8)


def test_auto_picks_dtype_by_hardware():
    assert choose_profile(CPU).dtype == "float32"
    assert choose_profile(CPU_BF16).dtype == "bfloat16" and choose_profile(CPU_BF16).name == "cpu-bf16"
    assert choose_profile(CPU_BF16, "cpu").dtype == "float32"          # an admin can ask for float32 by name
    assert choose_profile(H100).dtype == "bfloat16"
    assert choose_profile(T4).dtype == "float16"


def test_admin_overrides_a_field_and_adds_a_named_profile():
    p = choose_profile(CPU, overrides={"batch_token_budget": 64})
    assert p.batch_token_budget == 64 and p.name == "cpu"
    p = choose_profile(H100, "lab-gpu", extra_profiles={"lab-gpu": {"base": "cuda-sm80", "page_size": 32}})
    assert p.page_size == 32 and p.dtype == "bfloat16" and p.name == "lab-gpu"


def test_the_device_says_whether_its_cpu_has_bfloat16_arithmetic():
    import torch
    from potluck.engine.accelerator import detect_device
    device = detect_device()
    if device.kind == "cpu":
        assert device.native_bf16 == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def test_unknown_profile_or_field_is_refused_by_name():
    with pytest.raises(ValueError, match="nope"):
        choose_profile(CPU, "nope")
    with pytest.raises(ValueError, match="bogus"):
        choose_profile(CPU, overrides={"bogus": 1})


# SmolLM2-135M in float32: 30 layers x 3 KV heads x 64 x 16 tokens x (K and V) x 4 bytes per page.
SMOL_PAGE_BYTES = 2 * 30 * 16 * 3 * 64 * 4


def test_the_default_cpu_pool_takes_at_most_1_gb_and_10_percent_of_ram():
    from potluck.engine.accelerator import kv_pool_pages
    pages, why = kv_pool_pages(CPU, choose_profile(CPU), SMOL_PAGE_BYTES)        # 24 GB RAM, 20 GB free
    assert pages * SMOL_PAGE_BYTES <= 1 << 30 and pages > 1000 and "1024 MB" in why
    small = Device("cpu", "cpu", None, 4 << 30, 3 << 30, 2)                        # a 4 GB machine
    pages, why = kv_pool_pages(small, choose_profile(small), SMOL_PAGE_BYTES)
    assert pages * SMOL_PAGE_BYTES <= 0.1 * (4 << 30) and "10% of RAM" in why


def test_kv_pages_set_by_the_admin_wins_and_a_gpu_takes_its_share_up_to_the_cap():
    from potluck.engine.accelerator import kv_pool_pages
    assert kv_pool_pages(CPU, choose_profile(CPU), SMOL_PAGE_BYTES, configured=8192) == (8192, "set by kv_pages")
    pages, _ = kv_pool_pages(H100, choose_profile(H100), SMOL_PAGE_BYTES)
    assert pages * SMOL_PAGE_BYTES > 10 << 30                                      # a GPU is not held to the CPU cap
    pages, why = kv_pool_pages(CPU, choose_profile(CPU, overrides={"max_kv_pages": 100}), SMOL_PAGE_BYTES)
    assert pages == 100 and "max_kv_pages" in why
