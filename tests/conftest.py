"""Fixtures shared by every test directory: the default model's files and tokenizer."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol_dir():
    from potluck.engine.weights import resolve_model_dir
    # First use de-quantizes the default GGUF into the cache (~20 s once).
    return resolve_model_dir("default")[1]


@pytest.fixture(scope="session")
def tokenizer(smol_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smol_dir)
