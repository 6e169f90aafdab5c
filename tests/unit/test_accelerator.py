"""Accelerator profiles: chosen by hardware, overridable by name and field."""

from __future__ import annotations

import pytest

from potluck.engine.accelerator import Device, choose_profile

CPU = Device("cpu", "cpu", None, 24 << 30, 20 << 30, 2)
H100 = Device("cuda", "NVIDIA H100", (9, 0), 80 << 30, 79 << 30, 16)
T4 = Device("cuda", "Tesla T4", (7, 5), 16 << 30, 15 << 30, 8)


def test_auto_picks_dtype_by_hardware():
    assert choose_profile(CPU).dtype == "float32"
    assert choose_profile(H100).dtype == "bfloat16"
    assert choose_profile(T4).dtype == "float16"


def test_admin_overrides_a_field_and_adds_a_named_profile():
    p = choose_profile(CPU, overrides={"batch_token_budget": 64})
    assert p.batch_token_budget == 64 and p.name == "cpu"
    p = choose_profile(H100, "lab-gpu", extra_profiles={"lab-gpu": {"base": "cuda-sm80", "page_size": 32}})
    assert p.page_size == 32 and p.dtype == "bfloat16" and p.name == "lab-gpu"


def test_unknown_profile_or_field_is_refused_by_name():
    with pytest.raises(ValueError, match="nope"):
        choose_profile(CPU, "nope")
    with pytest.raises(ValueError, match="bogus"):
        choose_profile(CPU, overrides={"bogus": 1})
