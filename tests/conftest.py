"""Shared fixtures: a tiny random-weight model for unit tests, the real default model for e2e."""

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


def tiny_llama(seed: int = 0, vocab: int = 49152):
    """A 2-layer random Llama with grouped-query attention; weights large enough that argmax is decisive."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      initializer_range=0.2, eos_token_id=2, bos_token_id=1, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    return model


@pytest.fixture(scope="session")
def tiny_weights():
    return tiny_llama().state_dict()


@pytest.fixture
def reference_model(tiny_weights):
    """A plain HF model with the same weights, never touched by the engine."""
    m = tiny_llama()
    m.load_state_dict(tiny_weights)
    return m


def make_engine(tokenizer, tiny_weights, **cfg):
    from potluck.engine.engine import Engine, EngineConfig
    from potluck.engine.weights import LoadedModel
    m = tiny_llama()
    m.load_state_dict(tiny_weights)
    store = cfg.pop("store", None)
    ledger = cfg.pop("ledger", None)
    overrides = cfg.pop("profile_overrides", {})
    config = EngineConfig(profile="cpu", profile_overrides=overrides, **cfg)
    return Engine(config, loaded=LoadedModel("tiny", "test", m, tokenizer), store=store, ledger=ledger)


@pytest.fixture
def engine(tokenizer, tiny_weights):
    eng = make_engine(tokenizer, tiny_weights, kv_pages=256).start()
    yield eng
    eng.stop()
