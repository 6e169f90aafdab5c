"""The engine's settings: one set of traits, reached by keyword, config file and command line alike."""

from __future__ import annotations

import pytest
from traitlets import TraitError

from potluck.engine.app import PotluckEngine
from potluck.engine.config import EngineConfig
from potluck.engine.tenants import Quota


def test_engine_config_takes_its_settings_as_keywords():
    c = EngineConfig(kv_pages=64, scheduler="fcfs", forward_linger_ms=0, max_context_tokens=512)
    assert (c.kv_pages, c.scheduler, c.forward_linger_ms, c.max_context_tokens) == (64, "fcfs", 0, 512)
    assert EngineConfig().model == "default" and EngineConfig().default_quota_object() == Quota()


def test_a_quota_given_as_a_quota_is_kept_as_its_fields():
    q = Quota(max_concurrent_requests=None, max_tokens_per_request=None, models=("a",))
    c = EngineConfig(default_quota=q)
    assert c.default_quota["max_tokens_per_request"] is None
    assert c.default_quota_object() == q


def test_a_misspelt_or_invalid_setting_is_refused_not_ignored():
    with pytest.raises(TypeError, match="kv_page"):
        EngineConfig(kv_page=64)
    with pytest.raises(TraitError, match="weight must be a positive number"):
        EngineConfig(default_quota={"weight": -1})
    with pytest.raises(TraitError):
        EngineConfig(scheduler="random")


def test_page_size_is_a_shortcut_into_the_profile_overrides():
    c = EngineConfig(page_size=32, profile_overrides={"page_size": 16, "dtype": "float32"})
    assert c.profile_overrides_with_page_size() == {"page_size": 32, "dtype": "float32"}
    assert EngineConfig(profile_overrides={"page_size": 16}).profile_overrides_with_page_size() == {"page_size": 16}


def test_the_command_line_app_is_the_engine_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "potluck_config.py").write_text(
        'c.PotluckEngine.model = "from-config"\n'
        'c.PotluckEngine.kv_pages = 8\n'
        'c.PotluckEngine.default_quota = {"tokens_per_minute": 100}\n')
    app = PotluckEngine()
    app.initialize(["--kv-pages=32", "--scheduler=fcfs", "--page-size=64"])
    assert isinstance(app, EngineConfig)
    assert (app.model, app.kv_pages, app.scheduler) == ("from-config", 32, "fcfs")     # the command line wins
    assert app.default_quota_object().tokens_per_minute == 100
    assert app.profile_overrides_with_page_size() == {"page_size": 64}
