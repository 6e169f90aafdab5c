"""The engine's settings: one set of traits, reached by keyword, config file and command line alike."""

from __future__ import annotations

import pytest
from traitlets import TraitError

from potluck.engine.app import PotluckEngine
from potluck.engine.config import EngineConfig
from potluck.engine.quota import Quota


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


def test_profile_fields_are_read_by_their_type_and_a_bad_one_is_one_line():
    # The command line gives strings: a number written as one is that number.
    assert EngineConfig(profile_overrides={"batch_token_budget": "32"}).profile_overrides == {"batch_token_budget": 32}
    with pytest.raises(TraitError) as e:
        EngineConfig(profile_overrides={"batch_token_budget": "lots"})
    assert str(e.value) == "EngineConfig.profile_overrides: batch_token_budget must be a whole number >= 1, got 'lots'"
    with pytest.raises(TraitError, match="dtype must be one of bfloat16, float16, float32"):
        EngineConfig(extra_profiles={"gpu": {"base": "cuda-sm80", "dtype": "fp8"}})
    with pytest.raises(TraitError, match="unknown profile field 'batch_budget'"):
        EngineConfig(profile_overrides={"batch_budget": 32})
    with pytest.raises(TraitError, match="kv_pages must be a whole number >= 0"):
        EngineConfig(kv_pages=-1)


def _engine(tmp_path, *args, env=None):
    import subprocess
    import sys
    from pathlib import Path
    potluck = Path(sys.executable).parent / "potluck"
    return subprocess.Popen([str(potluck), "engine", f"--data-dir={tmp_path}", *args], cwd=tmp_path,
                            env={**__import__("os").environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_a_bad_setting_standalone_exits_1_with_one_line_naming_it(tmp_path):
    proc = _engine(tmp_path, "--PotluckEngine.profile_overrides=batch_token_budget=lots", "--port=1")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert out.strip().splitlines()[-1].endswith(
        "bad setting: PotluckEngine.profile_overrides: batch_token_budget must be a whole number >= 1, got 'lots'"), out


@pytest.mark.parametrize("args, reason", [
    (("--model=/nonexistent/model.gguf",), "/nonexistent/model.gguf"),
    (("--PotluckEngine.profile_overrides=batch_token_budget=lots",), "batch_token_budget must be a whole number"),
    (('--HubAuthenticator.seed_groups={"students": {"tokens_per_mnute": 5}}',), "unknown quota field 'tokens_per_mnute'"),
    (("--db-url=sqlite:///{tmp}/corrupt.sqlite",), "corrupt.sqlite"),
])
def test_as_a_hub_service_an_engine_that_cannot_start_keeps_answering_why(tmp_path, args, reason):
    import signal
    import time

    import requests

    from support.engine_process import free_port
    port = free_port()
    (tmp_path / "corrupt.sqlite").write_bytes(b"this is not a database" * 500)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    env = {"JUPYTERHUB_SERVICE_PREFIX": "/services/potluck/", "JUPYTERHUB_API_TOKEN": "t",
           "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}", "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api"}
    proc = _engine(tmp_path, *args, env=env)
    try:
        url = f"http://127.0.0.1:{port}/services/potluck/"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                r = requests.get(url + "api/status", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        assert r.status_code == 503
        body = r.json()
        assert reason in body["model_error"] and "\n" not in body["model_error"] and body["ready"] is False
        r = requests.post(url + "api/generate", json={"prompt": "hi"}, timeout=10)
        assert r.status_code == 503 and reason in r.json()["error"]["message"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert any(reason in line and "could not start" in line for line in out.splitlines()), out


def test_a_batch_loop_that_dies_while_serving_stops_the_service():
    import asyncio

    from potluck.engine.service import watch_batch_loop

    class Engine:
        running = True

    async def scenario():
        engine, stop = Engine(), asyncio.Event()
        watch = asyncio.ensure_future(watch_batch_loop(engine, stop, interval=0.01))
        await asyncio.sleep(0.05)
        assert not stop.is_set()
        engine.running = False          # the loop thread ended without a stop
        await asyncio.wait_for(stop.wait(), 5)
        return await watch
    assert asyncio.run(scenario()) is True


def test_quotas_above_the_kv_pool_are_flagged_to_admins(tmp_path):
    from support.engine_process import EngineProcess
    proc = EngineProcess(tmp_path, kv_pages=64, args=('--PotluckEngine.default_quota={"kv_pages": 128}',))
    proc.start()
    try:
        admin = proc.client("root", admin=True)
        assert admin.put("/api/admin/quotas/users/bob", json={"kv_pages": 100}).status_code == 200
        assert admin.put("/api/admin/quotas/users/carol", json={"kv_pages": 8}).status_code == 200
        body = admin.get("/api/admin/tenants").json()
        assert body["warnings"] == [
            "the default quota: kv_pages 128 is above the engine's KV pool of 64 pages; the pool is the limit",
            "the override of user 'bob': kv_pages 100 is above the engine's KV pool of 64 pages; the pool is the limit"]
        assert body["groups"] == {}                       # standalone: no Hub groups
        assert proc.status()["kv"]["memory_bytes"] > 0
    finally:
        assert proc.stop() == 0, proc.log_tail()
    assert "the default quota: kv_pages 128 is above the engine's KV pool of 64 pages" in proc.log_path.read_text()
