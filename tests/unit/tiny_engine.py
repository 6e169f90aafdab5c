"""A tiny random-weight Llama and an engine around it, for unit tests."""

from __future__ import annotations

import torch


def tiny_llama(seed: int = 0, vocab: int = 49152):
    """A 2-layer random Llama with grouped-query attention; weights large enough that argmax is decisive."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      initializer_range=0.2, eos_token_id=2, bos_token_id=1, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


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
