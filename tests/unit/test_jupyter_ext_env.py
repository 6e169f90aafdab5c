"""What the server extension exports to kernels: the engine, and an OpenAI endpoint and key as this user."""

from __future__ import annotations

import pytest

from potluck.jupyter_ext.extension import PotluckExtension


@pytest.fixture
def env(monkeypatch):
    for key in ("POTLUCK_URL", "POTLUCK_TOKEN", "OPENAI_BASE_URL", "OPENAI_API_KEY", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("POTLUCK_URL", "http://127.0.0.1:8765/services/potluck/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "server-token")
    import os
    return os.environ


def test_kernels_get_the_engines_v1_and_the_servers_token_for_openai(env):
    PotluckExtension().export_for_kernels()
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:8765/services/potluck/v1"
    assert env["OPENAI_API_KEY"] == "server-token"


def test_a_users_own_openai_key_is_never_sent_to_the_engine(env):
    env["OPENAI_API_KEY"] = "sk-users-own"
    PotluckExtension().export_for_kernels()
    assert env["OPENAI_API_KEY"] == "sk-users-own" and "OPENAI_BASE_URL" not in env


def test_another_openai_endpoint_is_left_alone_and_the_export_can_be_turned_off(env):
    env["OPENAI_BASE_URL"] = "https://api.example.com/v1"
    PotluckExtension().export_for_kernels()
    assert env["OPENAI_BASE_URL"] == "https://api.example.com/v1" and "OPENAI_API_KEY" not in env
    del env["OPENAI_BASE_URL"]
    PotluckExtension(openai_env=False).export_for_kernels()
    assert "OPENAI_BASE_URL" not in env
