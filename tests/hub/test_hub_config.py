"""``potluck.hub_config.configure`` writes the Hub settings the integration relies on (no Hub started)."""

from __future__ import annotations

import json
import re

import pytest
from traitlets.config import Config

import potluck.hub_config as hub_config


def configured(**kw) -> Config:
    c = Config()
    hub_config.configure(c, **kw)
    return c


def test_managed_engine_is_a_service_the_hub_starts_under_its_prefix():
    c = configured(url="http://127.0.0.1:9999", data_dir="/srv/potluck", engine_args=["--kv-pages=64"])
    (svc,) = c.JupyterHub.services
    assert svc["name"] == "potluck" and svc["url"] == "http://127.0.0.1:9999"
    assert svc["command"][1:4] == ["-m", "potluck.engine.app", "engine"]
    assert "--kv-pages=64" in svc["command"] and "--data-dir=/srv/potluck" in svc["command"]
    assert c.Spawner.environment["POTLUCK_URL"] == "http://127.0.0.1:9999/services/potluck/"


def test_external_engine_is_only_routed_to():
    c = configured(engine_url="http://gpu-host:8765/", api_token="s3cret")
    (svc,) = c.JupyterHub.services
    assert "command" not in svc and svc["url"] == "http://gpu-host:8765" and svc["api_token"] == "s3cret"
    assert c.Spawner.environment["POTLUCK_URL"] == "http://gpu-host:8765/services/potluck/"


def test_service_role_reads_users_and_groups_and_users_may_access_it():
    c = configured(admin_users={"teacher"})
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert set(roles["potluck-service"]["scopes"]) == {"read:users", "read:groups"}
    assert roles["potluck-service"]["services"] == ["potluck"]
    assert roles["potluck-admins"] == {"name": "potluck-admins", "description": "Potluck engine admins",
                                       "scopes": ["custom:potluck:admin"], "users": ["teacher"]}
    assert "custom:potluck:admin" in c.JupyterHub.custom_scopes
    scopes = c.Spawner.server_token_scopes
    assert {"users:activity!user", "access:servers!server", "access:services!service=potluck"} <= set(scopes)


@pytest.mark.parametrize("major", [5, 6])
def test_every_user_gets_access_on_jupyterhub_5_and_6(monkeypatch, major):
    monkeypatch.setattr(hub_config, "_jupyterhub_major", lambda: major)
    c = configured()
    if major >= 6:
        assert c.JupyterHub.extra_user_scopes == {"access:services!service=potluck"}
    else:
        user = next(r for r in c.JupyterHub.load_roles if r["name"] == "user")
        assert user["scopes"] == ["self", "access:services!service=potluck"]


def test_default_groups_are_created_without_properties_and_their_quota_seeded_by_the_engine():
    c = configured(groups={"students": {"tokens_per_minute": 5000}, "staff": None})
    # No "properties": the Hub would re-apply them at every start, over admins' edits.
    assert c.JupyterHub.load_groups == {"students": {"users": []}, "staff": {"users": []}}
    arg = next(a for a in c.JupyterHub.services[0]["command"] if a.startswith("--HubAuthenticator.seed_groups="))
    assert json.loads(arg.split("=", 1)[1]) == {"students": {"tokens_per_minute": 5000}}
    role = next(r for r in c.JupyterHub.load_roles if r["name"] == "potluck-service")
    assert set(role["scopes"]) == {"read:users", "read:groups", "groups!group=students"}


def test_model_tiers_are_custom_scopes_the_engine_maps_to_quota():
    c = configured(model_tiers={"large": {"models": ["*"], "weight": 2}})
    assert "custom:potluck:tier:large" in c.JupyterHub.custom_scopes
    assert "custom:potluck:tier:large" in c.Spawner.server_token_scopes
    arg = next(a for a in c.JupyterHub.services[0]["command"] if a.startswith("--HubAuthenticator.scope_quotas="))
    assert json.loads(arg.split("=", 1)[1]) == {"custom:potluck:tier:large": {"models": ["*"], "weight": 2}}


def test_configure_keeps_what_the_config_already_had():
    c = Config()
    c.JupyterHub.services = [{"name": "other", "url": "http://127.0.0.1:1"}]
    c.Spawner.server_token_scopes = ["users:activity!user"]
    c.Spawner.environment = {"FOO": "1"}
    hub_config.configure(c)
    assert [s["name"] for s in c.JupyterHub.services] == ["other", "potluck"]
    assert c.Spawner.server_token_scopes[0] == "users:activity!user"
    assert c.Spawner.environment["FOO"] == "1"
    hub_config.configure(c)                          # twice: still one service, one role
    assert [s["name"] for s in c.JupyterHub.services] == ["other", "potluck"]
    assert [r["name"] for r in c.JupyterHub.load_roles].count("potluck-service") == 1


POOLS = {"h100": {"engines": ["http://gpu-1:8765", {"url": "http://gpu-2:8765", "api_token": "t2"}],
                  "accelerator": "h100", "external": True},
         "cpu": {"engines": ["http://127.0.0.1:8766"], "engine_args": ["--kv-pages=64"]}}
DB = "postgresql+psycopg://potluck@db/potluck"


def test_pools_make_one_service_per_engine_named_by_pool_and_index():
    c = configured(pools=POOLS, default_pool="cpu", db_url=DB, data_dir="/srv/potluck")
    svcs = {s["name"]: s for s in c.JupyterHub.services}
    assert list(svcs) == ["potluck-h100-0", "potluck-h100-1", "potluck-cpu-0"]
    # external: only routed to, never started; managed: started with its pool settings and own data dir
    assert "command" not in svcs["potluck-h100-0"] and svcs["potluck-h100-1"]["api_token"] == "t2"
    cmd = svcs["potluck-cpu-0"]["command"]
    assert {"--kv-pages=64", "--data-dir=/srv/potluck/potluck-cpu-0", "--PotluckEngine.pool=cpu",
            "--PotluckEngine.default_pool=cpu", '--PotluckEngine.pools=["h100", "cpu"]'} <= set(cmd)
    # the password-bearing URL is in the environment, not on the command line (ps shows that)
    assert svcs["potluck-cpu-0"]["environment"] == {"POTLUCK_DB_URL": DB} and not any(DB in a for a in cmd)
    role = next(r for r in c.JupyterHub.load_roles if r["name"] == "potluck-service")
    assert role["services"] == list(svcs)
    assert {f"access:services!service={n}" for n in svcs} <= set(c.Spawner.server_token_scopes)


def test_pools_give_servers_the_pool_map_not_one_url():
    from potluck.engine.pools import PoolMap
    c = configured(pools=POOLS, default_pool="cpu", db_url=DB)
    assert "POTLUCK_URL" not in c.Spawner.environment
    m = PoolMap.from_json(c.Spawner.environment["POTLUCK_POOLS"])
    assert m.default_pool == "cpu" and m.accelerators == {"h100": "h100"}
    assert m.pools == {"h100": {"potluck-h100-0": "http://gpu-1:8765/services/potluck-h100-0/",
                                "potluck-h100-1": "http://gpu-2:8765/services/potluck-h100-1/"},
                       "cpu": {"potluck-cpu-0": "http://127.0.0.1:8766/services/potluck-cpu-0/"}}


def test_an_external_engine_keeps_the_token_z2jh_already_registered():
    c = Config()
    c.JupyterHub.services = [{"name": "potluck-h100-0", "api_token": "from-z2jh"}]
    hub_config.configure(c, pools=POOLS, default_pool="cpu", db_url=DB)
    svc = next(s for s in c.JupyterHub.services if s["name"] == "potluck-h100-0")
    assert svc["api_token"] == "from-z2jh" and svc["url"] == "http://gpu-1:8765"


@pytest.mark.parametrize("kw, message", [
    ({"pools": POOLS}, "default_pool is required"),
    ({"pools": POOLS, "default_pool": "tpu", "db_url": DB}, "default_pool 'tpu' is not one of the pools"),
    ({"pools": POOLS, "default_pool": "cpu"}, "several engines need db_url"),
    ({"pools": {"cpu": {"engines": ["http://a:1", "http://b:1"]}}}, "several engines need db_url"),
    ({"pools": {"H100!": {"engines": ["http://a:1"]}}}, "pool name 'H100!'"),
    ({"pools": {"cpu": {"engines": "http://a:1"}}}, "needs engines: a list of URLs"),
    ({"pools": {"cpu": {"engines": ["gpu-1"]}}}, "must be http://HOST:PORT"),
    ({"pools": {"cpu": {"engines": ["http://a:1"], "gpus": 2}}}, "unknown key(s) gpus"),
    ({"pools": {"cpu": {"engines": ["http://a:1"]}}, "engine_url": "http://b:2"}, "engine_url belong(s) to each engine"),
    ({"pools": {"cpu": {"engines": ["http://a:1"]}}, "api_token": "t"}, "api_token belong(s) to each engine"),
    ({"pools": {"cpu": {"engines": ["http://a:1", "http://a:1"]}}, "db_url": DB}, "have the same url http://a:1"),
    ({"pools": {"cpu": {"engines": [{"url": "http://a:1", "kernel-url": "x"}]}}}, "unknown key(s) kernel-url"),
    ({"pools": {"cpu": {"engines": ["http://a:1"], "engine_args": "--kv-pages=8"}}}, "engine_args must be a list"),
    ({"pools": {"cpu": {"engines": ["http://a:1"], "external": "false"}}}, "external must be True or False"),
    ({"pools": {"cpu": {"engines": [{"url": "http://a:1", "environment": "X=1"}]}}}, "environment must be a mapping"),
])
def test_a_bad_pool_spec_is_one_clear_error(kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        configured(**kw)


def test_the_pools_example_configures_a_hub(monkeypatch, capsys):
    from pathlib import Path
    monkeypatch.setenv("POTLUCK_DB_URL", DB)
    monkeypatch.setenv("POTLUCK_GPU_TOKEN_0", "t0")
    c = Config()
    path = Path(__file__).resolve().parents[2] / "examples" / "jupyterhub_config_pools.py"
    exec(compile(path.read_text(), str(path), "exec"), {"get_config": lambda: c, "__file__": str(path)})
    assert [s["name"] for s in c.JupyterHub.services] == ["potluck-gpu-0", "potluck-gpu-1", "potluck-cpu-0"]
    assert c.JupyterHub.services[0]["api_token"] == "t0"
    # external engines are told, once each, what they must be started with
    err = capsys.readouterr().err
    assert "potluck-gpu-1 needs" in err and "--PotluckEngine.pool=gpu" in err


def test_external_engines_alone_need_no_db_url_and_managed_ones_get_their_environment():
    c = configured(pools={"h100": {"engines": ["http://gpu-1:8765", "http://gpu-2:8765"], "external": True}})
    assert all("command" not in s for s in c.JupyterHub.services)
    c = configured(pools={"gpu": {"engines": [{"url": "http://127.0.0.1:8766", "environment": {"CUDA_VISIBLE_DEVICES": "0"}},
                                              {"url": "http://127.0.0.1:8767", "environment": {"CUDA_VISIBLE_DEVICES": "1"}}]}},
                   db_url=DB)
    envs = [s["environment"] for s in c.JupyterHub.services]
    assert envs == [{"CUDA_VISIBLE_DEVICES": "0", "POTLUCK_DB_URL": DB}, {"CUDA_VISIBLE_DEVICES": "1", "POTLUCK_DB_URL": DB}]
