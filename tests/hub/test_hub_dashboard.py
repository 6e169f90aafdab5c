"""The admin dashboard page at ``/services/potluck/`` under a real JupyterHub, as a browser reaches it.

A real Hub with the example config starts the engine as its managed service. A browser session
(requests, with cookies, as a browser keeps them) logs in on the Hub's login page, asks for
``/services/potluck/``, goes through the Hub's OAuth (authorizing the service on first use) and
lands on the page: a hub admin gets the dashboard, whose embedded token reads the usage history
with the admin's rights (a user's tokens and group per minute, the group's quota from the Hub);
a user who is not an engine admin gets a one-line 403 and no token. In real Chromium, the page's
Engines section lists every engine of the hub's database: the Hub's own (unpooled) engine as this
engine, alive, and one of another pool that ran and stopped, each linked to its own page under
``/services/``; and a hub admin edits a group's quota on the page: the Hub's group properties change (other
properties kept) and the engine applies the new quota to the group's members.

The service's OAuth client may give its tokens ``groups``, ``read:groups`` and
``custom:potluck:admin`` (``potluck.hub_config.configure`` sets it): a token
gets only those its user holds, so the page edits groups with the admin's own rights, and an
engine admin by ``custom:potluck:admin`` (``teacher``) gets the page too.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from potluck.engine.store import Store

from hub_process import HubProcess

pytestmark = pytest.mark.timeout(600)

USER_PASSWORD = os.environ.get("POTLUCK_DEMO_PASSWORD", "potluck-demo")
ADMIN_PASSWORD = os.environ.get("POTLUCK_DEMO_ADMIN_PASSWORD", "potluck-demo-admin-password-change-me")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHROMIUM = os.environ.get("POTLUCK_CHROMIUM", "/usr/bin/chromium")
PLAYWRIGHT = REPO / ".npm-tools" / "node_modules" / "playwright-core"
NODE = shutil.which("node")
DRIVER = HERE / "hub_dashboard_driver.mjs"
ARTIFACTS = Path(os.environ.get("POTLUCK_TEST_ARTIFACTS") or REPO / "tests" / "lab" / "artifacts")

@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = HubProcess(tmp_path_factory.mktemp("hub-dashboard"))
    try:
        h.start()
    except Exception:
        h.stop()
        raise
    yield h
    h.stop()


def browser_login(hub: HubProcess, name: str, password: str) -> requests.Session:
    """A session logged in on the Hub's login page (its form and _xsrf cookie, as a browser sends them)."""
    s = requests.Session()
    s.get(f"{hub.url}/hub/login", timeout=30).raise_for_status()
    r = s.post(f"{hub.url}/hub/login?next=/hub/home",
               data={"username": name, "password": password, "_xsrf": s.cookies.get("_xsrf", "")},
               timeout=60, allow_redirects=False)
    assert r.status_code == 302, f"login as {name} failed: {r.status_code} {r.text[:300]}"
    return s


def open_dashboard(s: requests.Session, hub: HubProcess) -> requests.Response:
    """GET /services/potluck/ through the Hub's OAuth, submitting the authorize form if the Hub shows it."""
    r = s.get(f"{hub.url}/services/potluck/", timeout=60)
    if r.status_code == 200 and 'name="scopes"' in r.text and "/oauth2/authorize" in r.url:
        fields = dict(re.findall(r'<input type="hidden" name="(_xsrf)" value="([^"]*)"', r.text))
        scopes = [html.unescape(v) for v in re.findall(r'<input type="hidden" name="scopes" value="([^"]*)"', r.text)]
        r = s.post(r.url, data={"_xsrf": html.unescape(fields.get("_xsrf", "")), "scopes": scopes}, timeout=60)
    return r


def page_config(page: str) -> dict:
    m = re.search(r'<script id="potluck-dashboard-config" type="application/json">(.*?)</script>', page, re.S)
    assert m, page[:500]
    return json.loads(m.group(1))


def test_a_hub_admin_gets_the_dashboard_with_their_own_rights(hub):
    hub.create_user("alice")
    # alice (group researchers in the example config) uses the engine, so there is usage to see.
    alice = requests.Session()
    alice.headers["Authorization"] = f"token {hub.user_token('alice')}"
    r = alice.post(f"{hub.engine_url}/api/generate", json={"prompt": "Hello, I am", "max_tokens": 5}, timeout=120)
    assert r.status_code == 200, r.text

    s = browser_login(hub, "ada", ADMIN_PASSWORD)
    r = open_dashboard(s, hub)
    assert r.status_code == 200, (r.url, r.text[:500])
    assert r.url == f"{hub.url}/services/potluck/" and r.headers["Content-Type"].startswith("text/html")
    cfg = page_config(r.text)
    assert cfg["base_url"] == "/services/potluck/" and cfg["token"], cfg
    assert cfg["hub_admin_url"].endswith("/hub/admin"), cfg
    assert s.get(f"{hub.url}/services/potluck/dashboard/potluck-dashboard.js", timeout=30).status_code == 200

    # What the page's script does: the engine's admin API with the token the page holds.
    api = requests.Session()
    api.headers["Authorization"] = f"token {cfg['token']}"
    deadline = time.monotonic() + 60
    while True:
        usage = api.get(f"{hub.engine_url}/api/admin/usage", params={"resolution": "minute"}, timeout=60)
        assert usage.status_code == 200, usage.text
        body = usage.json()
        if "alice" in body["users"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert sum(row[1] + row[2] for row in body["users"]["alice"]) > 0, body
    researchers = body["groups"]["researchers"]
    assert "alice" in researchers["members"], researchers
    assert researchers["quota"]["tokens_per_minute"] == 100000, researchers      # read from the Hub's group
    assert sum(row[1] + row[2] for row in researchers["series"]) == sum(row[1] + row[2] for row in body["users"]["alice"])


def test_a_user_who_is_not_an_engine_admin_gets_one_line_403(hub):
    hub.create_user("bob")
    s = browser_login(hub, "bob", USER_PASSWORD)
    r = open_dashboard(s, hub)
    assert r.status_code == 403, (r.status_code, r.url, r.text[:300])
    assert r.text.count("\n") == 1 and "engine admins" in r.text and "bob" in r.text, r.text
    assert "potluck-dashboard-config" not in r.text and "token" not in r.text.lower().replace("custom:potluck:admin", "")


def test_an_engine_admin_by_scope_gets_the_page_too(hub):
    hub.create_user("teacher")          # custom:potluck:admin through the example's potluck-admins role
    r = open_dashboard(browser_login(hub, "teacher", USER_PASSWORD), hub)
    assert r.status_code == 200 and page_config(r.text)["token"], (r.status_code, r.text[:300])


@pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and PLAYWRIGHT.is_dir() and NODE),
                    reason="needs chromium, playwright-core and node: run `make venv`")
def test_a_hub_admin_sees_the_engines_and_edits_a_group_quota_on_the_page(hub):
    group, value = "researchers", 54321
    alice = requests.Session()
    alice.headers["Authorization"] = f"token {hub.user_token('alice')}"
    assert alice.get(f"{hub.engine_url}/api/me", timeout=60).status_code == 200      # the engine sees the group
    before = hub.api("GET", f"groups/{group}").json()["properties"]
    hub.api("PUT", f"groups/{group}/properties", json={**before, "course": "ml102"})  # an admin's own property
    # An engine of another pool that used this database and stopped cleanly (as its own process would).
    store = Store(f"sqlite:///{hub.tmp / 'potluck-data' / 'potluck.sqlite'}")
    try:
        store.register_engine("potluck-gpu-0", "gpu", "h100")
        store.mark_engine_stopped("potluck-gpu-0")
    finally:
        store.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    config = {"playwright": str(PLAYWRIGHT), "chromium": CHROMIUM, "artifacts": str(ARTIFACTS), "hub_url": hub.url,
              "user": "ada", "password": ADMIN_PASSWORD, "group": group, "field": "tokens_per_minute",
              "value": value, "timeout_ms": 60000}
    done = subprocess.run([NODE, str(DRIVER)], cwd=HERE, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HUB_DASHBOARD_CONFIG": json.dumps(config)})
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    result = lines[-1] if lines else {"result": "none", "stderr": done.stderr[-3000:]}
    assert result["result"] == "ok", result
    # The Engines section: the example's engine (not pooled) is the one the page talks to; the
    # other pool's stopped engine is listed too, each linked to its own service's page.
    engines = result["engines"]
    assert [(e["name"], e["this"], e["state"], e["pool"], e["href"]) for e in engines] == [
        ("potluck", "true", "alive", "not pooled", "/services/potluck/"),
        ("potluck-gpu-0", "false", "stopped", "gpu", "/services/potluck-gpu-0/")], engines
    assert "(this engine)" in engines[0]["text"] and "(this engine)" not in engines[1]["text"], engines
    assert "h100" in engines[1]["text"], engines
    assert result["form_value_before"] == "100000", result          # the group's quota as the engine read it
    assert f"Saved the quota of group {group}" in result["notice"] and not result["errors"], result
    # The Hub holds the edit as the admin page's flat key; the admin's other property is kept.
    props = hub.api("GET", f"groups/{group}").json()["properties"]
    assert props["potluck.tokens_per_minute"] == str(value) and props["course"] == "ml102", props
    assert "potluck" not in props, props
    # The engine applies it to the group's members (it rereads a group within its cache time).
    deadline = time.monotonic() + 60
    while (quota := alice.get(f"{hub.engine_url}/api/me", timeout=60).json()["quota"])["tokens_per_minute"] != value:
        assert time.monotonic() < deadline, quota
        time.sleep(1)
