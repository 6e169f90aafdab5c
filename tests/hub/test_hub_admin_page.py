"""A quota typed into JupyterHub's own admin page, in real Chromium, is the quota the engine applies.

A real Hub (the example config: the engine as a managed service, default groups seeded with flat
``potluck.<field>`` properties) and Debian's Chromium driven by playwright-core (``make venv``;
no browser download): the hub admin logs in, opens *Admin -> Groups -> students*, changes
``potluck.tokens_per_minute`` to ``7000`` and applies, exactly as a person would. The engine then
gives the group's members 7000 from ``group:students``; a value the engine cannot read typed the
same way keeps 7000.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from hub_process import REPO, HubProcess

pytestmark = pytest.mark.timeout(600)

CHROMIUM = os.environ.get("POTLUCK_CHROMIUM", "/usr/bin/chromium")
PLAYWRIGHT = REPO / ".npm-tools" / "node_modules" / "playwright-core"
DRIVER = Path(__file__).resolve().parent / "admin_page_driver.mjs"
ADMIN_PASSWORD = "potluck-demo-admin-password-change-me"      # the example config's default


def type_in_admin_page(hub: HubProcess, artifacts: Path, group: str, key: str, value: str) -> dict:
    cfg = {"playwright": str(PLAYWRIGHT), "chromium": CHROMIUM, "hub": hub.url, "user": "ada",
           "password": ADMIN_PASSWORD, "group": group, "key": key, "value": value, "artifacts": str(artifacts)}
    r = subprocess.run([shutil.which("node"), str(DRIVER)], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "ADMIN_PAGE_CONFIG": json.dumps(cfg)})
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"the driver said nothing:\n{r.stdout}\n{r.stderr}"
    result = json.loads(lines[-1])
    assert result["result"] == "ok", result
    return result


def bob_tokens_per_minute(hub: HubProcess, token: str) -> tuple[int, str]:
    me = requests.get(f"{hub.engine_url}/api/me", headers={"Authorization": f"token {token}"}, timeout=60).json()
    return me["quota"]["tokens_per_minute"], me["quota_source"]["tokens_per_minute"]


def wait_until(what, check, timeout=30):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


@pytest.mark.skipif(not (Path(CHROMIUM).exists() and PLAYWRIGHT.exists() and shutil.which("node")),
                    reason="needs Chromium and playwright-core (make venv)")
def test_a_quota_typed_in_the_hubs_admin_page_applies_and_an_unreadable_one_keeps_the_last(tmp_path):
    env_password = os.environ.get("POTLUCK_DEMO_ADMIN_PASSWORD")
    assert env_password in (None, ADMIN_PASSWORD), "the test logs in with the example config's admin password"
    hub = HubProcess(tmp_path)
    hub.start()
    try:
        hub.create_user("ada", admin=True)
        hub.create_user("bob")
        hub.api("POST", "groups/students/users", json={"users": ["bob"]})
        wait_until("the engine seeds the students' default quota",
                   lambda: "potluck.tokens_per_minute" in hub.api("GET", "groups/students").json()["properties"])
        bob = hub.user_token("bob")
        assert bob_tokens_per_minute(hub, bob) == (5000, "group:students")
        shown = type_in_admin_page(hub, tmp_path, "students", "potluck.tokens_per_minute", "7000")["shown"]
        assert shown == "5000"                                  # the page shows the seeded value as text
        wait_until("the typed quota applies", lambda: bob_tokens_per_minute(hub, bob) == (7000, "group:students"))
        props = hub.api("GET", "groups/students").json()["properties"]
        assert props["potluck.tokens_per_minute"] == "7000" and props["potluck.max_runs"] == "2"
        type_in_admin_page(hub, tmp_path, "students", "potluck.tokens_per_minute", "7k")
        time.sleep(3)                                           # past the engine's cache of the group (2 s here)
        assert bob_tokens_per_minute(hub, bob) == (7000, "group:students")
        ada = hub.user_token("ada")
        groups = requests.get(f"{hub.engine_url}/api/admin/tenants", headers={"Authorization": f"token {ada}"},
                              timeout=60).json()["groups"]
        assert groups["students"]["quota"]["tokens_per_minute"] == 7000
        assert "must be a whole number" in groups["students"]["error"]
    finally:
        hub.stop()
