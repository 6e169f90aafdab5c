"""The usage history through HTTP (``GET /api/admin/usage``) and the dashboard page the engine serves.

A real engine process (the session's, tests/service/conftest.py): two tenants of this file only
generate, and an admin reads their usage per minute and per hour, after a restart too.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import requests

from support.engine_process import error_of

COLUMNS = ["start", "prefill_tokens", "decode_tokens", "page_seconds", "fuel", "requests"]


def tokens_in(series: list[list]) -> int:
    return sum(row[1] + row[2] for row in series)


def since(**ago) -> str:
    return (datetime.now(timezone.utc) - timedelta(**ago)).isoformat()


@pytest.fixture(scope="module")
def two_users_used_it(engine_proc):
    """hist-ann and hist-ben generate; their usage as the engine counts it (tokens)."""
    used = {}
    for name, n in (("hist-ann", 5), ("hist-ben", 9)):
        c = engine_proc.client(name)
        r = c.post("/api/generate", json={"prompt": f"{name} says hello", "max_tokens": n, "ignore_eos": True})
        assert r.status_code == 200, r.text
        u = c.get("/api/me").json()["usage"]
        used[name] = u["prefill_tokens"] + u["decode_tokens"]
    return used


def test_admins_see_each_users_usage_per_minute_and_per_hour(engine_proc, two_users_used_it):
    admin = engine_proc.client("root", admin=True)
    for resolution, bucket in (("minute", 60), ("hour", 3600)):
        r = admin.get("/api/admin/usage", params={"resolution": resolution, "since": since(minutes=30)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["resolution"] == resolution and body["bucket_seconds"] == bucket
        assert body["columns"] == COLUMNS
        for name, tokens in two_users_used_it.items():
            series = body["users"][name]
            assert tokens_in(series) == tokens, (resolution, name, series)
            assert sum(row[5] for row in series) == 1          # one request each
            starts = [datetime.fromisoformat(row[0]) for row in series]
            assert starts == sorted(starts) and all(t.timestamp() % bucket == 0 for t in starts), starts
        assert body["groups"] == {}                             # a standalone engine knows no Hub groups


def test_history_is_persisted_across_a_restart(engine_proc, two_users_used_it):
    engine_proc.restart()
    r = engine_proc.client("root", admin=True).get("/api/admin/usage", params={"since": since(minutes=30)})
    assert r.status_code == 200, r.text
    for name, tokens in two_users_used_it.items():
        assert tokens_in(r.json()["users"][name]) == tokens


def test_the_history_is_for_admins_only(engine_proc, two_users_used_it):
    ann = engine_proc.client("hist-ann")
    r = ann.get("/api/admin/usage", params={"resolution": "hour"})
    assert r.status_code == 403 and error_of(r)["code"] == "forbidden"
    assert "hist-ben" not in r.text
    r = requests.get(engine_proc.url + "/api/admin/usage", timeout=30)
    assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
    # One user's history has no address of its own: nothing to find there, for anyone.
    for client in (ann, engine_proc.client("root", admin=True)):
        r = client.get("/api/admin/usage/hist-ben")
        assert r.status_code == 404 and error_of(r)["code"] == "not_found"


def test_bad_parameters_get_one_line_naming_the_limit(engine_proc):
    admin = engine_proc.client("root", admin=True)
    r = admin.get("/api/admin/usage", params={"resolution": "second"})
    assert r.status_code == 400 and "resolution must be one of minute, hour" in error_of(r)["message"]
    r = admin.get("/api/admin/usage", params={"since": "yesterday"})
    assert r.status_code == 400 and "ISO 8601" in error_of(r)["message"]
    r = admin.get("/api/admin/usage", params={"resolution": "minute", "since": since(hours=72)})
    err = error_of(r)
    assert r.status_code == 400 and "reaches back 48 h" in err["message"] and "resolution=hour" in err["message"]
    r = admin.get("/api/admin/usage", params={"resolution": "hour", "since": since(hours=72)})
    assert r.status_code == 200, r.text
    r = admin.get("/api/admin/usage", params={"since": since(minutes=5), "until": since(minutes=10)})
    assert r.status_code == 400 and error_of(r)["param"] == "until"


def test_the_engine_serves_the_dashboard_page_at_its_base_url(engine_proc):
    r = requests.get(engine_proc.url + "/", timeout=30)
    if r.status_code == 503:
        pytest.skip(r.text.strip())             # the lab extension (and its bundle) is not built here
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/html")
    assert "no-store" in r.headers["Cache-Control"] and r.headers["X-Frame-Options"] == "DENY"
    # Standalone: no token in the page (it asks for one); the bundle and its styles are served.
    assert '"token": null' in r.text and 'src="/dashboard/potluck-dashboard.js"' in r.text
    js = requests.get(engine_proc.url + "/dashboard/potluck-dashboard.js", timeout=30)
    assert js.status_code == 200 and js.headers["Content-Type"].startswith("text/javascript") and len(js.content) > 1000
    assert requests.get(engine_proc.url + "/dashboard/potluck-dashboard.css", timeout=30).status_code == 200
    assert requests.get(engine_proc.url + "/dashboard/other.js", timeout=30).status_code == 404
