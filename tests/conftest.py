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


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server for the whole run (Debian's package; ``create_database()`` per
    test); tests that need it are skipped with the reason when it is not installed."""
    from support.postgres import PostgresServer, skip_reason
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh database on SQLite (the default) and on PostgreSQL (what hubs with several engines use)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'potluck.sqlite'}"
    return request.getfixturevalue("postgres").create_database()
