"""Bad input at every door is one line naming the problem and the limit (issue 15, finding 4 and siblings).

Against the real engine process. The runs WebSocket's cases are in ``test_runs.py``; what an
inferlet hands its host calls is in ``tests/sandbox/test_sandbox_resources.py``.
"""

from __future__ import annotations

import pytest

from support.engine_process import error_of

pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize("body, field, maximum", [
    ('{"fuel_per_run": 1180591620717411303424}', "fuel_per_run", 1 << 62),
    ('{"kv_pages": 1e30}', "kv_pages", 1 << 31),
    ('{"memory_mb_per_run": 1048576}', "memory_mb_per_run", 4096),
    ('{"weight": 1e300}', "weight", 1e6),
    ('{"kv_store_bytes": 99999999999999999}', "kv_store_bytes", 1 << 40),
])
def test_admin_quota_values_past_their_maximum_are_a_400_naming_field_and_maximum(engine_proc, body, field, maximum):
    admin = engine_proc.client("root", admin=True)
    r = admin.put("/api/admin/quotas/users/hi-victim", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["param"] == field and err["maximum"] == maximum and "at most" in err["message"], err
    assert "\n" not in err["message"]
    assert admin.get("/api/admin/quotas/users/hi-victim").status_code == 404       # nothing was stored


def test_the_new_quota_fields_show_in_me_with_their_source(engine_proc):
    me = engine_proc.client("hi-me").get("/api/me").json()
    for name in ("run_output_bytes", "run_history_bytes", "kv_store_bytes", "saved_contexts"):
        assert isinstance(me["quota"][name], int) and me["quota_source"][name] == "default", name


@pytest.mark.parametrize("name", ["a%00b", "tab%09here", "%0A"])
def test_a_saved_context_name_with_control_characters_is_a_400(engine_proc, name):
    r = engine_proc.client("hi-ctx").put(f"/api/contexts/{name}", json={"tokens": [1, 2, 3]})
    assert r.status_code == 400, r.text
    assert error_of(r)["code"] == "invalid_name"


@pytest.mark.parametrize("raw", ['{"source": "pass", "args": {"x": NaN}}', '{"source": "pass", "args": {"x": 1e999}}',
                                 '{"source": "pass", "args": {"x": -Infinity}}'])
def test_run_args_that_are_not_strict_json_are_a_400(engine_proc, raw):
    r = engine_proc.client("hi-args").post("/api/runs", data=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert error_of(r)["code"] == "invalid_json"


def test_saving_more_contexts_than_saved_contexts_is_a_429_naming_the_limit(engine_proc):
    admin = engine_proc.client("root", admin=True)
    assert admin.put("/api/admin/quotas/users/hi-saver", json={"saved_contexts": 2}).status_code == 200
    saver = engine_proc.client("hi-saver")
    for name in ("one", "two"):
        assert saver.put(f"/api/contexts/{name}", json={"tokens": [5, 6, 7]}).status_code == 200
    r = saver.put("/api/contexts/three", json={"tokens": [5, 6, 7]})
    assert r.status_code == 429, r.text
    err = error_of(r)
    assert err["limit"] == "saved_contexts" and err["value"] == 2 and "\n" not in err["message"]
    assert saver.put("/api/contexts/two", json={"tokens": [8, 9]}).status_code == 200       # replacing is free
