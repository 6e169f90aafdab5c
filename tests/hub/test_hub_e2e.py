"""End to end under a real JupyterHub: the example config, real servers, real kernels, the real model.

The Hub starts the engine as its managed service (``examples/jupyterhub_config.py``
through ``potluck.hub_config``). Users, groups and their quota properties are made
through the Hub REST API, as an admin would; alice's and bob's servers start
through it too, and each gets a "Python 3 (Potluck)" kernel, driven over the
kernel WebSocket like a notebook. Nothing in the kernels is set up by hand: the
server extension tells them where the engine is, and they reach it with the
server's own Hub token.
"""

from __future__ import annotations

import re
import time

import pytest
import requests

from hub_process import HubProcess

pytestmark = pytest.mark.timeout(900)

PROBE_GROUP = "students"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from potluck.jupyter_ext.install import install
    install()       # the kernelspec and server extension, as a wheel install would have them
    h = HubProcess(tmp_path_factory.mktemp("hub"))
    try:
        h.start()
    except Exception:
        h.stop()
        raise
    yield h
    h.stop()


def test_default_groups_are_seeded_as_flat_properties_the_admin_page_can_edit(hub):
    # configure(groups=...) gave the engine the example's defaults; it wrote them into the empty groups.
    deadline = time.monotonic() + 60
    while not (props := hub.api("GET", "groups/students").json()["properties"]):
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.5)
    assert props["potluck.tokens_per_minute"] == "5000" and props["potluck.max_runs"] == "2"
    assert all(isinstance(v, str) for v in props.values())


@pytest.fixture(scope="module")
def kernels(hub):
    """alice (researchers) and bob (students) with running servers and a Potluck kernel each."""
    for name in ("alice", "bob"):
        hub.create_user(name)
    hub.create_user("ada", admin=True)
    # The example config's default groups exist; set their quotas through the Hub API as an admin would.
    hub.api("POST", "groups/researchers/users", json={"users": ["alice"]})
    hub.api("POST", f"groups/{PROBE_GROUP}/users", json={"users": ["bob"]})
    hub.api("PUT", "groups/researchers/properties", json={"potluck": {"weight": 4, "tokens_per_minute": 100000}})
    hub.api("PUT", f"groups/{PROBE_GROUP}/properties",
            json={"potluck": {"weight": 1, "tokens_per_minute": 50000, "max_tokens_per_request": 64}})
    out = {}
    for name in ("alice", "bob"):
        hub.start_server(name)
        out[name] = hub.start_kernel(name)
    yield out
    for k in out.values():
        k.close()


def call(hub, token: str, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, f"{hub.engine_url}/{path}", headers={"Authorization": f"token {token}"},
                            timeout=120, **kw)


def test_kernels_generate_as_their_hub_user_with_no_setup(hub, kernels):
    for name, k in kernels.items():
        out, err = k.execute(
            "import os\n"
            "print('url', os.environ['POTLUCK_URL'])\n"
            "print('tenant', potluck.me()['name'])\n"
            "r = potluck.generate('The capital of France is', max_tokens=8)\n"
            "print('text', repr(str(r)), r.usage['completion_tokens'])\n")
        assert not err, err
        assert f"url http://127.0.0.1:{hub.engine_port}/services/potluck/" in out
        assert f"tenant {name}\n" in out
        assert "Paris" in out, out
    # The %%generate magic streams into the cell.
    out, err = kernels["alice"].execute("%%generate -n 6\nThe capital of Italy is")
    assert not err and "Rome" in out, (out, err)


def test_openai_with_no_arguments_in_a_kernel_answers_as_that_user(hub, kernels):
    out, err = kernels["bob"].execute(
        "import os\n"
        "from openai import OpenAI\n"
        "print('base', os.environ['OPENAI_BASE_URL'])\n"
        "before = potluck.me()['usage']['decode_tokens']\n"
        "client = OpenAI()\n"
        "r = client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=8,\n"
        "    messages=[{'role': 'user', 'content': 'What is the capital of France?'}])\n"
        "print('answer', repr(r.choices[0].message.content), r.usage.completion_tokens)\n"
        "print('counted to me', potluck.me()['usage']['decode_tokens'] - before >= r.usage.completion_tokens > 0)\n")
    assert not err, err
    assert f"base http://127.0.0.1:{hub.engine_port}/services/potluck/v1\n" in out, out
    assert re.search(r"^answer ['\"].+ [1-8]$", out, re.M) and "counted to me True" in out, out


def test_the_engine_saw_the_right_tenants(hub, kernels):
    ada = hub.user_token("ada")
    r = call(hub, ada, "GET", "api/admin/tenants")
    assert r.status_code == 200, r.text
    tenants = {t["name"]: t for t in r.json()["tenants"]}
    assert {"alice", "bob"} <= set(tenants)
    assert tenants["alice"]["groups"] == ["researchers"]
    assert tenants["bob"]["groups"] == [PROBE_GROUP]
    assert tenants["alice"]["quota"]["weight"] == 4 and tenants["alice"]["quota_source"]["weight"] == "group:researchers"
    assert tenants["bob"]["usage"]["decode_tokens"] > 0


def test_second_tenant_cannot_open_my_saved_context(hub, kernels):
    out, err = kernels["alice"].execute(
        "print(potluck.save_context('plan', 'Alice\\'s secret plan: bake a pie on Friday.'))\n"
        "print([c['name'] for c in potluck.contexts()])\n"
        "print(potluck.generate(' The pie will be', context='plan', max_tokens=4).usage['prompt_tokens'])\n")
    assert not err, err
    assert "'name': 'plan'" in out and "['plan']" in out
    # bob asks for the same name: 404 as if it never existed, one line, no traceback.
    out, err = kernels["bob"].execute("potluck.context('plan')\n")
    assert "potluck: no saved context named 'plan' in your namespace" in err, err
    assert "Traceback" not in err
    out, err = kernels["bob"].execute("print(potluck.contexts())\n")
    assert out.strip() == "[]", out
    bob = hub.user_token("bob")
    r = call(hub, bob, "POST", "api/generate", json={"context": "plan", "prompt": " x", "max_tokens": 1})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_group_property_change_reaches_the_engine_and_is_enforced(hub, kernels):
    bob = hub.user_token("bob")
    kernels["bob"].execute("potluck.generate('Hello', max_tokens=4)\n")       # some tokens in bob's minute
    hub.api("PUT", f"groups/{PROBE_GROUP}/properties",
            json={"potluck": {"weight": 1, "tokens_per_minute": 5, "max_tokens_per_request": 64}})
    changed = time.monotonic()
    deadline = changed + 30
    while True:
        me = call(hub, bob, "GET", "api/me").json()
        if me["quota"]["tokens_per_minute"] == 5:
            break
        assert time.monotonic() < deadline, f"bob's quota did not change within 30 s: {me['quota']}"
        time.sleep(1)
    print(f"the group change reached the engine in {time.monotonic() - changed:.1f} s")
    assert me["quota_source"]["tokens_per_minute"] == f"group:{PROBE_GROUP}"
    r = call(hub, bob, "POST", "api/generate", json={"prompt": "Hello again", "max_tokens": 4})
    assert r.status_code == 429, r.text
    assert r.json()["error"]["limit"] == "tokens_per_minute"
    out, err = kernels["bob"].execute("potluck.generate('Hello again', max_tokens=4)\n")
    assert "potluck: token rate limit" in err and "tokens_per_minute" in err and "Traceback" not in err, err
    out, err = kernels["bob"].execute("%potluck quota\n")
    assert re.search(rf"tokens_per_minute\s+5\s+\(group:{PROBE_GROUP}\)", out), out
    # alice is in another group: not limited.
    out, err = kernels["alice"].execute("print(len(potluck.generate('Hi', max_tokens=3).tokens))\n")
    assert not err and out.strip() == "3", (out, err)


def test_token_without_the_service_scope_is_refused(hub, kernels):
    narrow = hub.user_token("alice", scopes=["read:users:activity!user=alice"])
    r = call(hub, narrow, "GET", "api/me")
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "missing_scope"
    assert "access:services!service=potluck" in r.json()["error"]["message"]
    assert call(hub, "not-a-token", "GET", "api/me").status_code == 401
    assert call(hub, hub.user_token("alice"), "GET", "api/me").json()["name"] == "alice"


def test_hub_admins_see_both_tenants_and_users_do_not(hub, kernels):
    ada = hub.user_token("ada")
    r = call(hub, ada, "GET", "api/me")
    assert r.json()["is_admin"] is True
    names = {t["name"] for t in call(hub, ada, "GET", "api/admin/tenants").json()["tenants"]}
    assert {"alice", "bob"} <= names
    r = call(hub, hub.user_token("alice"), "GET", "api/admin/tenants")
    assert r.status_code == 403


def test_server_extension_serves_my_engine_view_with_the_servers_token(hub, kernels):
    # Asked as the e2e service, alice's server answers for alice: it calls the engine with its own token.
    r = hub.server("alice", "GET", "potluck/api/me")
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "alice"
    r = hub.server("alice", "GET", "potluck/api/contexts")
    assert [c["name"] for c in r.json()["contexts"]] == ["plan"]
    assert hub.server("bob", "GET", "potluck/api/contexts").json()["contexts"] == []
    r = hub.server("bob", "GET", "potluck/api/admin/tenants")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = hub.server("alice", "GET", "potluck/api/config")
    assert r.json()["engine_url"].endswith("/services/potluck/") and "token" not in r.json()
    assert requests.get(f"{hub.url}/user/alice/potluck/api/me", timeout=30).status_code in (302, 403)


def test_inferlet_runs_in_the_kernel_and_others_cannot_see_it(hub, kernels):
    probe = call(hub, hub.user_token("alice"), "GET", "api/runs")
    assert probe.status_code == 200, probe.text      # the engine, as a Hub service, loaded its sandbox
    out, err = kernels["alice"].execute(
        "%%inferlet -o res question=\"What is the capital of France?\"\n"
        "from potluck_inferlet import Context, args\n"
        "ctx = Context()\n"
        "ctx.fill_chat([{'role': 'user', 'content': args['question']}])\n"
        "print(ctx.generate(max_tokens=16))\n", timeout=300)
    assert "Paris" in out, (out, err)
    out, err = kernels["alice"].execute("print(res.state, res.id)\n")
    state, run_id = out.split()
    assert state == "finished"
    # The lab frontend follows a run through alice's server (same origin), which calls the engine as alice.
    import json

    import websocket
    ws = websocket.create_connection(f"ws://127.0.0.1:{hub.port}/user/alice/potluck/api/runs/{run_id}/events",
                                     header=[f"Authorization: token {hub.token}"], timeout=60)
    try:
        kinds = []
        while True:
            ev = json.loads(ws.recv())
            kinds.append(ev["type"])
            if ev["type"] == "status" and ev["state"] in ("finished", "failed", "cancelled"):
                break
    finally:
        ws.close()
    assert "output" in kinds and ev["state"] == "finished"
    assert hub.server("alice", "GET", f"potluck/api/runs/{run_id}").json()["state"] == "finished"
    bob = hub.user_token("bob")
    assert call(hub, bob, "GET", f"api/runs/{run_id}").status_code == 404
    assert call(hub, bob, "DELETE", f"api/runs/{run_id}").status_code == 404
    assert hub.server("bob", "GET", f"potluck/api/runs/{run_id}").status_code == 404
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"{hub.engine_url.replace('http', 'ws', 1)}/api/runs/{run_id}/events",
                                    header=[f"Authorization: token {bob}"], timeout=60)
    assert refused.value.status_code == 404
    out, err = kernels["bob"].execute("%potluck runs\n")
    assert run_id not in out and out.strip() == "no runs", (out, err)
    listed = call(hub, bob, "GET", "api/runs").json()
    listed = listed["runs"] if isinstance(listed, dict) else listed
    assert run_id not in {r["id"] for r in listed}


def admin_page_apply(hub, group: str, **typed: str) -> dict:
    """What the Hub's admin page sends on "Apply": every property, the typed values as strings."""
    props = hub.api("GET", f"groups/{group}").json()["properties"]
    props.update(typed)
    hub.api("PUT", f"groups/{group}/properties", json=props)
    return props


def wait_for(what, check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.5)
    return got


def test_a_quota_typed_in_the_admin_page_applies_and_an_unreadable_one_keeps_the_last_good(hub, kernels):
    bob = hub.user_token("bob")
    admin_page_apply(hub, PROBE_GROUP, **{"potluck.tokens_per_minute": "7000", "course": "ml101"})
    me = wait_for("bob's typed quota applies",
                  lambda: (m := call(hub, bob, "GET", "api/me").json())["quota"]["tokens_per_minute"] == 7000 and m)
    assert me["quota_source"]["tokens_per_minute"] == f"group:{PROBE_GROUP}"
    # A value the engine cannot read: bob keeps 7000 (never the more generous default), admins see why.
    admin_page_apply(hub, PROBE_GROUP, **{"potluck.tokens_per_minute": "7k"})
    ada = hub.user_token("ada")
    metric = f'potluck_group_quota_unreadable{{group="{PROBE_GROUP}"}} 1.0'

    def bob_still_7000_and_flagged():
        # The engine reads a group when a member's request comes: bob asks, then the admin looks.
        assert call(hub, bob, "GET", "api/me").json()["quota"]["tokens_per_minute"] == 7000
        return metric in call(hub, ada, "GET", "metrics").text
    wait_for("the unreadable value shows in /metrics", bob_still_7000_and_flagged)
    assert "unreadable quota of group 'students'" in hub.log_path.read_text()


def test_an_admin_edit_of_a_configured_group_survives_a_hub_restart(hub, kernels):
    # Last in this module: the restart ends every server and kernel.
    admin_page_apply(hub, "researchers", **{"potluck.tokens_per_minute": "12345", "course": "ml102"})
    before = hub.api("GET", "groups/researchers").json()["properties"]
    students = hub.api("GET", f"groups/{PROBE_GROUP}").json()["properties"]
    for k in kernels.values():
        k.close()
    hub.stop()
    hub.start()
    assert hub.api("GET", "groups/researchers").json()["properties"] == before
    assert hub.api("GET", f"groups/{PROBE_GROUP}").json()["properties"] == students
    alice = hub.user_token("alice")
    me = call(hub, alice, "GET", "api/me").json()
    assert me["quota"]["tokens_per_minute"] == 12345 and me["quota_source"]["tokens_per_minute"] == "group:researchers"
    # students' value is still unreadable: the restarted engine applies the last good one from its database.
    assert call(hub, hub.user_token("bob"), "GET", "api/me").json()["quota"]["tokens_per_minute"] == 7000
