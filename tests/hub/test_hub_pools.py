"""A real JupyterHub with two pools of engines sharing one PostgreSQL.

Pool ``small`` is one engine the Hub starts (managed, the default pool); pool ``large`` is two
replicas the test starts itself as external engines (as GPU hosts or Kubernetes pods would run
them), so the test can stop one for good. ``researchers`` are in the large pool through their
group's flat ``potluck.pool`` property; everybody else is in the small one. Users work through
real single-user servers and kernels; the engines are the real default model.

What must hold: users land in their group's pool (their kernel's ``/api/status`` names the
engine); within the large pool each researcher is on the engine rendezvous hashing picks, and a
request sent to another engine is a 421 naming theirs; quotas and usage read the same from every
engine; stopping a replica moves its researchers to the other with their saved contexts and one
line of notice, while the other replica's researchers notice nothing.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest
import requests

from hub_process import HubProcess
from potluck.engine.pools import rendezvous_rank
from support.engine_process import EngineProcess, free_port

pytestmark = pytest.mark.timeout(900)

LARGE = ["potluck-large-0", "potluck-large-1"]
SMALL = "potluck-small-0"
POOL_ARGS = ('--PotluckEngine.pools=["large", "small"]', "--PotluckEngine.default_pool=small")

CONFIG = '''
import os
import potluck.hub_config
c = get_config()
c.JupyterHub.bind_url = os.environ["POTLUCK_HUB_URL"]
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = "potluck-pools-test"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
potluck.hub_config.configure(
    c, default_pool="small", db_url=os.environ["POTLUCK_DB_URL"], data_dir=os.environ["POTLUCK_DATA_DIR"],
    pools={{"large": {{"engines": {large!r}, "external": True, "accelerator": "cpu-large"}},
            "small": {{"engines": [os.environ["POTLUCK_ENGINE_URL"]]}}}},
    groups={{"researchers": None}})
'''


def researchers() -> dict[str, str]:
    """One researcher pinned to each large replica (rendezvous is deterministic): {engine: user}."""
    out = {}
    for i in range(100):
        name = f"res{i}"
        out.setdefault(rendezvous_rank(name, LARGE)[0], name)
        if len(out) == 2:
            return out
    raise AssertionError("rendezvous never picked both replicas")


@pytest.fixture(scope="module")
def hub(tmp_path_factory, postgres):
    from potluck.jupyter_ext.install import install
    install()
    tmp = tmp_path_factory.mktemp("pools")
    db_url = postgres.create_database()
    ports = {name: free_port() for name in LARGE}
    tokens = {name: secrets.token_hex(32) for name in LARGE}
    large = [{"url": f"http://127.0.0.1:{ports[n]}", "api_token": tokens[n]} for n in LARGE]
    config = tmp / "pools_config.py"
    config.write_text(CONFIG.format(large=large))
    h = HubProcess(tmp, example=config, engine_service=SMALL, env={"POTLUCK_DB_URL": db_url})
    engines = {}
    try:
        h.start()
        for name in LARGE:
            data = tmp / name
            data.mkdir()
            prefix = f"/services/{name}/"
            engines[name] = EngineProcess(
                data, port=ports[name], port_on_command_line=False, prefix=prefix,
                args=("--PotluckEngine.pool=large", *POOL_ARGS, "--PotluckEngine.accelerator=cpu-large",
                      "--HubAuthenticator.cache_seconds=2"),
                env={"JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{ports[name]}", "JUPYTERHUB_SERVICE_PREFIX": prefix,
                     "JUPYTERHUB_SERVICE_NAME": name, "JUPYTERHUB_API_TOKEN": tokens[name],
                     "JUPYTERHUB_API_URL": h.api_url, "POTLUCK_DB_URL": db_url})
            engines[name].start()
    except Exception:
        for e in engines.values():
            e.stop()
        h.stop()
        raise
    h.engines = engines
    yield h
    for e in engines.values():
        e.stop()
    h.stop()


@pytest.fixture(scope="module")
def users(hub):
    """Two researchers (one per large replica) and bob (no group: the default pool), each with a kernel."""
    res = researchers()
    names = [*res.values(), "bob"]
    for name in names:
        hub.create_user(name)
    hub.api("POST", "groups/researchers/users", json={"users": list(res.values())})
    # The flat form the Hub's admin page writes: one text property per quota field.
    hub.api("PUT", "groups/researchers/properties", json={"potluck.pool": "large", "potluck.tokens_per_minute": "90000"})
    kernels = {}
    for name in names:
        hub.start_server(name)
        kernels[name] = hub.start_kernel(name)
    yield res, kernels
    for k in kernels.values():
        k.close()


def run(kernel, code: str) -> tuple[str, str]:
    out, err = kernel.execute(code)
    # a PotluckError shows as one "potluck: ..." line (the kernel extension), not a traceback
    assert "Traceback" not in err and "potluck: " not in err, err
    return out, err


def engine_of(kernel) -> dict:
    out, _ = run(kernel, "import json\nfrom potluck.kernel import client as potluck\n"
                         "print(json.dumps(potluck.status()['engine']))")
    return json.loads(out.strip().splitlines()[-1])


def test_users_land_in_their_groups_pool_and_on_their_rendezvous_engine(hub, users):
    res, kernels = users
    for engine, name in res.items():
        got = engine_of(kernels[name])
        assert got["name"] == engine and got["pool"] == "large" and got["accelerator"] == "cpu-large"
    assert engine_of(kernels["bob"])["name"] == SMALL
    # the OpenAI client a kernel makes with no arguments goes to the same engine
    name = res[LARGE[1]]
    out, _ = run(kernels[name], "import os\nprint(os.environ['OPENAI_BASE_URL'])")
    assert f"/services/{LARGE[1]}/v1" in out


def test_another_engine_answers_421_naming_yours(hub, users):
    res, _ = users
    name = res[LARGE[0]]
    token = hub.user_token(name)
    for other in (LARGE[1], SMALL):
        r = requests.post(f"{hub.url}/services/{other}/api/generate", headers={"Authorization": f"token {token}"},
                          json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
        assert r.status_code == 421, r.text
        err = r.json()["error"]
        assert err["code"] == "wrong_engine" and err["engine"] == LARGE[0] and LARGE[0] in err["message"]
        # ... while any engine says where the user is served
        me = requests.get(f"{hub.url}/services/{other}/api/me", headers={"Authorization": f"token {token}"},
                          timeout=60).json()
        assert me["route"] == {"pool": "large", "engine": LARGE[0]}


def test_quota_and_usage_are_the_same_from_every_engine(hub, users):
    res, kernels = users
    name = res[LARGE[0]]
    run(kernels[name], "potluck.generate('The capital of France is', max_tokens=6)")
    token = hub.user_token(name)
    deadline = time.monotonic() + 30
    while True:
        seen = [requests.get(f"{hub.url}/services/{e}/api/me", headers={"Authorization": f"token {token}"},
                             timeout=60).json() for e in (*LARGE, SMALL)]
        quotas = {json.dumps(m["quota"], sort_keys=True) for m in seen}
        usage = {(m["usage_total"]["prefill_tokens"], m["usage_total"]["decode_tokens"]) for m in seen}
        if len(quotas) == 1 and len(usage) == 1 or time.monotonic() > deadline:
            break
        time.sleep(1)       # the serving engine's ledger reaches the database every second here
    assert len(quotas) == 1 and seen[0]["quota"]["tokens_per_minute"] == 90000, seen
    assert len(usage) == 1 and seen[0]["usage_total"]["decode_tokens"] >= 6, [m["usage_total"] for m in seen]


def test_stopping_a_replica_moves_its_users_with_their_saved_contexts(hub, users):
    res, kernels = users
    leaving, staying = res[LARGE[0]], res[LARGE[1]]
    k = kernels[leaving]
    run(k, "potluck.save_context('notes', prompt='My cat is called Tibbles. ')")
    assert hub.engines[LARGE[0]].stop() == 0, hub.engines[LARGE[0]].log_tail()

    out, err = run(k, "c = potluck.generate('My cat is called', context='notes', max_tokens=4)\n"
                      "print(repr(str(c)))")
    lines = [line for line in err.splitlines() if line.startswith("Potluck:")]
    assert len(lines) == 1 and f"engine {LARGE[0]} is not answering" in lines[0] and LARGE[1] in lines[0], err
    assert engine_of(k)["name"] == LARGE[1]
    assert [c["name"] for c in json.loads(run(k, "print(json.dumps(potluck.contexts()))")[0].strip())] == ["notes"]
    # new OpenAI clients in that kernel follow the move
    out, _ = run(k, "import os\nprint(os.environ['OPENAI_BASE_URL'])")
    assert f"/services/{LARGE[1]}/v1" in out
    # the lab's same-origin proxy moves too
    r = hub.server(leaving, "GET", "potluck/api/status")
    assert r.status_code == 200 and r.json()["engine"]["name"] == LARGE[1], r.text
    # the other replica's user noticed nothing
    out, err = run(kernels[staying], "print(potluck.generate('Hello', max_tokens=2).finish_reason)")
    assert "Potluck:" not in err and engine_of(kernels[staying])["name"] == LARGE[1]
