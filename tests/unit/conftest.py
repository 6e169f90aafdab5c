"""Unit-test fixtures: the tiny random model and an engine around it."""

from __future__ import annotations

import pytest

from tiny_engine import make_engine, tiny_llama


@pytest.fixture(scope="session")
def tiny_weights():
    return tiny_llama().state_dict()


@pytest.fixture
def reference_model(tiny_weights):
    """A plain HF model with the same weights, never touched by the engine."""
    m = tiny_llama()
    m.load_state_dict(tiny_weights)
    return m


@pytest.fixture
def engine(tokenizer, tiny_weights):
    eng = make_engine(tokenizer, tiny_weights, kv_pages=256).start()
    yield eng
    eng.stop()
