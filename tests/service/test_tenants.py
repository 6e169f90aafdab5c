"""Tenants through HTTP: each sees only its own usage, admins see everyone, overrides persist, tokens revoke."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from support.engine_process import Client, error_of, potluck


def test_two_tenants_generate_concurrently_and_each_sees_only_its_own_usage(engine_proc):
    carol, dave = engine_proc.client("carol"), engine_proc.client("dave")

    def generate(client, prompt):
        return client.post("/api/generate", json={"prompt": prompt, "max_tokens": 6, "ignore_eos": True})

    with ThreadPoolExecutor(2) as pool:
        rc, rd = pool.map(generate, (carol, dave), ("Carol's question:", "Dave asks something longer than Carol:"))
    assert rc.status_code == 200 and rd.status_code == 200, (rc.text, rd.text)
    assert len(rc.json()["tokens"]) == len(rd.json()["tokens"]) == 6

    me_c, me_d = carol.get("/api/me").json(), dave.get("/api/me").json()
    assert me_c["name"] == "carol" and me_d["name"] == "dave"
    assert me_c["usage"]["decode_tokens"] == 6 and me_d["usage"]["decode_tokens"] == 6
    assert me_c["usage"]["prefill_tokens"] == rc.json()["usage"]["prompt_tokens"]
    assert me_d["usage"]["prefill_tokens"] == rd.json()["usage"]["prompt_tokens"]
    assert me_c["usage"]["prefill_tokens"] != me_d["usage"]["prefill_tokens"]
    assert "dave" not in json.dumps(me_c) and "carol" not in json.dumps(me_d)
    assert me_c["quota_source"]["max_tokens_per_request"] == "default"

    tenants = {t["name"]: t for t in engine_proc.client("root", admin=True).get("/api/admin/tenants").json()["tenants"]}
    for name, me in (("carol", me_c), ("dave", me_d)):
        assert tenants[name]["usage"]["decode_tokens"] == 6
        assert tenants[name]["usage"]["prefill_tokens"] == me["usage"]["prefill_tokens"]
    assert tenants["carol"]["live"] and not tenants["carol"]["is_admin"]


def test_admin_endpoints_refuse_non_admins(engine_proc):
    carol = engine_proc.client("carol")
    for method, path in [("GET", "/api/admin/tenants"), ("PUT", "/api/admin/quotas/users/carol"),
                         ("DELETE", "/api/admin/quotas/users/dave"), ("GET", "/metrics")]:
        r = carol.request(method, path, json={"weight": 100} if method == "PUT" else None)
        assert r.status_code == 403, (path, r.text)
        assert error_of(r)["code"] == "forbidden"
    assert carol.get("/api/me").json()["quota"]["weight"] == 1.0


def test_the_openai_user_field_cannot_choose_another_tenant(engine_proc):
    erin, frank = engine_proc.client("erin"), engine_proc.client("frank")
    before = frank.get("/api/me").json()["usage"]
    r = erin.post("/v1/chat/completions", json={"model": "default", "messages": [{"role": "user", "content": "hi"}],
                                                "max_tokens": 2, "user": "frank"})
    assert r.status_code == 200, r.text
    assert frank.get("/api/me").json()["usage"] == before
    assert erin.get("/api/me").json()["usage"]["decode_tokens"] > 0


def test_quota_override_applies_at_once_and_survives_a_restart(engine_proc):
    admin, grace = engine_proc.client("root", admin=True), engine_proc.client("grace")
    r = admin.put("/api/admin/quotas/users/grace", json={"max_tokens_per_request": 3, "weight": 2.5})
    assert r.status_code == 200, r.text
    assert r.json()["override"] == {"max_tokens_per_request": 3, "weight": 2.5}

    r = grace.post("/api/generate", json={"prompt": "Hello", "max_tokens": 4})
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
    assert error_of(r)["limit"] == "max_tokens_per_request" and error_of(r)["value"] == 3
    # Leaving max_tokens out never trips the quota: the default is capped by it.
    r = grace.post("/api/generate", json={"prompt": "Hello", "ignore_eos": True})
    assert r.status_code == 200 and len(r.json()["tokens"]) == 3
    used = grace.get("/api/me").json()
    time.sleep(1.5)        # the usage ledger is flushed every second in these tests (and at shutdown)

    engine_proc.restart()

    grace = Client(engine_proc.url, engine_proc.token("grace"))
    me = grace.get("/api/me").json()
    assert me["quota"]["max_tokens_per_request"] == 3 and me["quota"]["weight"] == 2.5
    assert me["quota_source"]["max_tokens_per_request"] == "user"
    assert me["override"] == {"max_tokens_per_request": 3, "weight": 2.5}
    assert me["usage_total"]["decode_tokens"] >= used["usage"]["decode_tokens"] == 3
    assert grace.post("/api/generate", json={"prompt": "Hello", "max_tokens": 4}).status_code == 413

    admin = Client(engine_proc.url, engine_proc.token("root"))
    tenants = {t["name"]: t for t in admin.get("/api/admin/tenants").json()["tenants"]}
    assert tenants["grace"]["override"] == {"max_tokens_per_request": 3, "weight": 2.5}
    assert tenants["grace"]["usage_total"]["decode_tokens"] >= 3     # usage from before the restart

    assert admin.delete("/api/admin/quotas/users/grace").status_code == 204
    assert grace.get("/api/me").json()["quota"]["max_tokens_per_request"] == 4096
    r = admin.delete("/api/admin/quotas/users/grace")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"


def test_revoked_token_gets_401(engine_proc):
    heidi = engine_proc.client("heidi")
    assert heidi.get("/api/me").status_code == 200
    listed = potluck("token", "list", f"--data-dir={engine_proc.data_dir}").stdout
    assert "heidi" in listed and heidi.token not in listed      # tokens are never shown again

    out = potluck("token", "revoke", "heidi", f"--data-dir={engine_proc.data_dir}")
    assert "Revoked 1 token" in out.stdout
    engine_proc.forget("heidi")
    r = heidi.get("/api/me")
    assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert potluck("token", "revoke", "heidi", f"--data-dir={engine_proc.data_dir}", check=False).returncode == 1


def test_admin_token_from_the_cli_is_admin(engine_proc):
    me = engine_proc.client("root", admin=True).get("/api/me").json()
    assert me["is_admin"] is True
    listed = potluck("token", "list", f"--data-dir={engine_proc.data_dir}").stdout
    assert any(line.split()[:2] == ["root", "yes"] for line in listed.splitlines())


def test_public_status_hides_the_counters_that_would_time_another_tenants_prompts(engine_proc):
    import requests
    ivan = engine_proc.client("ivan")
    assert ivan.post("/api/generate", json={"prompt": "Ivan's private prompt", "max_tokens": 1}).status_code == 200
    anonymous = requests.get(engine_proc.url + "/api/status", timeout=30).json()
    as_tenant = ivan.get("/api/status").json()
    forged = requests.get(engine_proc.url + "/api/status", headers={"Authorization": "token nope"}, timeout=30)
    as_admin = engine_proc.client("root", admin=True).get("/api/status").json()
    # Everyone sees the load; only an admin sees the cumulative prefill / prefix-hit counters.
    for view in (anonymous, as_tenant, forged.json()):
        assert "stats" not in view and "queue_depth" in view and "kv" in view
    assert forged.status_code == 200
    assert as_admin["stats"]["prefill_tokens"] > 0 and "prefix_hit_tokens" in as_admin["stats"]


def test_status_for_anyone_but_an_admin_does_not_show_one_tenants_pages_or_activity(engine_proc):
    import requests
    kim = engine_proc.client("status-kim")
    r = kim.put("/api/contexts/footprint", json={"tokens": list(range(100, 148))})     # 3 pages held by kim
    assert r.status_code == 200, r.text
    admin = engine_proc.client("root", admin=True).get("/api/status").json()
    assert admin["coarse"] is False and admin["kv"]["used_pages"] >= 3 and "pages_on_host" in admin["kv"]
    for view in (requests.get(engine_proc.url + "/api/status", timeout=30).json(), kim.get("/api/status").json()):
        step = view["granularity"]
        assert view["coarse"] is True and step["kv_pages"] == admin["kv"]["total_pages"] // 8
        # Floored to steps one tenant's prompt or requests cannot move.
        assert view["kv"]["used_pages"] % step["kv_pages"] == 0 and view["kv"]["used_pages"] < step["kv_pages"] * 8
        assert view["queue_depth"] % step["requests"] == 0 and view["running_generations"] % step["requests"] == 0
        assert view["active_tenants"] % step["tenants"] == 0
        assert "pages_on_host" not in view["kv"] and "swaps_out" not in view["kv"] and "stats" not in view
        # The engine's description is whole: what the status bar and the readiness probe read.
        assert view["model"] == admin["model"] and view["kv"]["total_pages"] == admin["kv"]["total_pages"]
        assert view["kv"]["page_size"] == admin["kv"]["page_size"] and view["run_states"] == admin["run_states"]
    assert kim.delete("/api/contexts/footprint").status_code == 204


def test_admin_user_names_with_control_characters_are_a_400(engine_proc):
    admin = engine_proc.client("root", admin=True)
    for name in ("a%00b", "a%0Ab", "a%7Fb"):
        r = admin.put(f"/api/admin/quotas/users/{name}", json={"weight": 2})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_name", r.text
