"""JupyterLab with the Potluck extension, in real headless Chromium, against a real engine.

One ``potluck engine`` process on the default model (tests/support/engine_process.py),
two real ``jupyter lab`` servers in front of it: one as the tenant ``labuser``, one as
an engine admin, each connected by POTLUCK_URL / POTLUCK_TOKEN as a standalone
deployment is. ``lab_driver.mjs`` drives Debian's Chromium through playwright-core
(both installed by ``make venv``; no browser is downloaded) and stops at checkpoints
where this test acts on the engine or checks the engine's own view:

- the status item shows the engine's numbers: tokens this minute rise after a
  generation made directly against the engine as that tenant;
- a ``%%inferlet`` cell run in a notebook on the "Python 3 (Potluck)" kernel appears
  in the panel as ``running`` with the output it prints, and the panel's cancel ends
  it (``cancelled`` in the panel and in ``GET /api/runs/ID``);
- a context saved through the engine is listed, and the panel's delete removes it;
- the user sees no admin view and no dashboard in the launcher; the admin gets a launcher item
  and a panel button that open the admin dashboard in the main area, which plots two users'
  usage over time (one line each, from ``GET /api/admin/usage``); a quota edited there is the
  engine's override, and another user's run cancelled there is cancelled (both checked through
  the engine's API);
- the engine's own dashboard page (its base URL, a plain browser with an admin's token) plots
  the same two users; with a user's token it says "admins only" and plots nothing;
- with the engine stopped, the panel says "engine unreachable: <reason>", not "No inferlet runs
  yet" / "No saved contexts".

Screenshots of each checkpoint go to $POTLUCK_TEST_ARTIFACTS, else tests/lab/artifacts/.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from support.engine_process import free_port, serve

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

CHROMIUM = os.environ.get("POTLUCK_CHROMIUM", "/usr/bin/chromium")
PLAYWRIGHT = REPO / ".npm-tools" / "node_modules" / "playwright-core"
NODE = shutil.which("node")
DRIVER = HERE / "lab_driver.mjs"
BIN = Path(sys.executable).parent
ARTIFACTS = Path(os.environ.get("POTLUCK_TEST_ARTIFACTS") or HERE / "artifacts")

USER, ADMIN = "labuser", "labadmin"
USER2 = "labuser2"                      # a second user whose usage the dashboard plots beside USER's
NEW_LIMIT = 4321                        # the tokens_per_minute the admin sets for USER2 in the dashboard
KERNEL = "potluck"                      # kernel/kernelspec, installed as "potluck"
MARKER = "LAB-E2E-STEP"
CONTEXT = "lab-e2e-notes"
NOTEBOOK = "potluck-e2e.ipynb"
# Prints a line every step and keeps generating (a few tokens a step, a pause between, so it
# neither ends nor hogs a shared CPU) until the panel cancels it.
INFERLET = f"""%%inferlet
import time
from potluck_inferlet import Context
ctx = Context()
ctx.fill("Count slowly from one to one thousand: one, two,")
for i in range(100000):
    piece = ctx.generate(max_tokens=4, stop_at_eos=False)
    print("{MARKER}", i, repr(str(piece)))
    if len(ctx) > 400:
        ctx.truncate(16)
    time.sleep(0.3)
"""

missing = [what for what, ok in [(f"chromium ({CHROMIUM})", os.access(CHROMIUM, os.X_OK)),
                                 (f"playwright-core ({PLAYWRIGHT})", PLAYWRIGHT.is_dir()),
                                 ("node", NODE is not None)] if not ok]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}: run `make venv`"),
]


class LabProcess:
    """A real ``jupyter lab`` (the extension enabled) connected to the engine as one token's owner."""

    def __init__(self, tmp: Path, engine_url: str, engine_token: str):
        self.tmp = tmp
        self.root = tmp / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "lab.log"
        settings = tmp / "settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        # No news / update toasts over the page.
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "POTLUCK_URL": engine_url, "POTLUCK_TOKEN": engine_token,
                    "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_DATA_DIR": str(tmp / "data"),
                    "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
                    "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
                    "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"), "IPYTHONDIR": str(tmp / "ipython")}
        for key in [k for k in self.env if k.startswith("JUPYTERHUB_")]:
            del self.env[key]       # a run inside a Hub must not point this server at that Hub
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [str(BIN / "jupyter"), "lab", "--no-browser", "--allow-root", f"--port={self.port}",
             "--ip=127.0.0.1", f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={self.root}",
             "--ServerApp.open_browser=False", "--ServerApp.port_retries=0"],
            cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.api("GET", "api/status").status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"jupyter lab did not answer /api/status in {timeout} s:\n{self.log_tail()}")

    def api(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, f"{self.url}/{path}", headers={"Authorization": f"token {self.token}"},
                                timeout=30, **kw)

    def lab_url(self, path: str = "lab") -> str:
        return f"{self.url}/{path}?token={self.token}"

    def stop(self) -> None:
        if self.proc is None:
            return
        try:        # the kernels first: they run in sessions of their own
            for k in self.api("GET", "api/kernels").json():
                self.api("DELETE", f"api/kernels/{k['id']}")
        except (requests.RequestException, ValueError):
            pass
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def notebook(source: str) -> dict:
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": "potluck-e2e-cell", "metadata": {},
                       "outputs": [], "source": source}],
            "metadata": {"kernelspec": {"name": KERNEL, "display_name": "Python 3 (Potluck)", "language": "python"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    yield from serve(tmp_path_factory.mktemp("lab-engine"))


@pytest.fixture(scope="module")
def labs(engine, tmp_path_factory):
    """The user's lab and the admin's lab, started side by side."""
    from potluck.jupyter_ext.install import install
    install()       # the kernelspec and server extension, as a wheel install would have them
    user = LabProcess(tmp_path_factory.mktemp("lab-user"), engine.url, engine.token(USER))
    admin = LabProcess(tmp_path_factory.mktemp("lab-admin"), engine.url, engine.token(ADMIN, admin=True))
    try:
        user.start()
        admin.start()
        user.wait_ready()
        admin.wait_ready()
        yield user, admin
    finally:
        user.stop()
        admin.stop()


def test_lab_in_chromium(engine, labs):
    user_lab, admin_lab = labs
    assert user_lab.api("GET", "api/kernelspecs").json()["kernelspecs"].get(KERNEL), "no Potluck kernelspec"
    page = user_lab.api("GET", "lab").text          # its page config names the prebuilt extensions
    assert "potluck" in page[page.find('"federated_extensions"'):][:20000].lower(), \
        "no Potluck labextension in this lab (`jupyter labextension list`)"
    # The server extension reaches the engine as the user (the same origin the frontend uses).
    me = user_lab.api("GET", "potluck/api/me")
    assert me.status_code == 200 and me.json()["name"] == USER, me.text
    assert admin_lab.api("GET", "potluck/api/me").json()["is_admin"] is True

    user = engine.client(USER)
    model_name = engine.status()["model"]
    r = user.put(f"/api/contexts/{CONTEXT}", json={"prompt": "Notes kept by the lab test."})
    assert r.status_code in (200, 201), r.text
    # A per-minute limit, so the status item has one to show next to the usage.
    r = engine.client(ADMIN, admin=True).put(f"/api/admin/quotas/users/{USER}", json={"tokens_per_minute": 100000})
    assert r.status_code == 200, r.text
    (user_lab.root / NOTEBOOK).write_text(json.dumps(notebook(INFERLET)))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()

    config = {"playwright": str(PLAYWRIGHT), "chromium": CHROMIUM, "artifacts": str(ARTIFACTS),
              "user_url": user_lab.lab_url(f"lab/tree/{NOTEBOOK}"), "admin_url": admin_lab.lab_url(),
              "marker": MARKER, "model": model_name, "context": CONTEXT, "tenant": USER, "timeout_ms": 60000,
              "tenants": [USER, USER2], "new_limit": NEW_LIMIT,
              "engine_page_url": f"{engine.url}/#token={engine.token(ADMIN, admin=True)}",
              "engine_page_user_url": f"{engine.url}/#token={engine.token(USER)}",
              "user_lab_url": user_lab.lab_url()}
    seen: dict = {}

    def at_status_before(msg):
        assert "tok/min" in msg["text"], msg
        seen["tokens_before"] = msg["tokens"]
        r = user.post("/api/generate", json={"prompt": "The capital of France is", "max_tokens": 8})
        assert r.status_code == 200, r.text
        seen["engine_tokens"] = user.get("/api/me").json()["usage"]["tokens_last_minute"]
        assert seen["engine_tokens"] > (msg["tokens"] or 0), (seen, msg)
        return {"engine_tokens": seen["engine_tokens"]}

    def at_run_running(msg):
        info = user.get(f"/api/runs/{msg['run_id']}").json()
        assert info["owner"] == USER and info["state"] == "running", info

    def at_run_cancelled(msg):
        deadline = time.monotonic() + 30
        while (info := user.get(f"/api/runs/{msg['run_id']}").json())["state"] == "running" \
                and time.monotonic() < deadline:
            time.sleep(0.3)
        assert info["state"] == "cancelled", info
        seen["run_final"] = info

    def at_context_deleted(msg):
        names = [c["name"] for c in user.get("/api/contexts").json()["contexts"]]
        assert CONTEXT not in names, names

    def at_two_users(msg):
        user2 = engine.client(USER2)
        for prompt in ("Two plus two is", "The sky is"):
            r = user2.post("/api/generate", json={"prompt": prompt, "max_tokens": 6})
            assert r.status_code == 200, r.text
        seen["user2_tokens"] = sum(user2.get("/api/me").json()["usage"][k] for k in ("prefill_tokens", "decode_tokens"))
        # A run of USER2's that only sleeps (no tokens: the chart's numbers stay as counted), for the
        # admin to cancel from the dashboard.
        r = user2.post("/api/runs", json={"source": "import time\nwhile True:\n    time.sleep(0.5)\n"})
        assert r.status_code in (200, 201, 202), r.text
        seen["user2_run"] = r.json()["id"]
        return {"run_id": seen["user2_run"]}

    def at_run_cancelled_by_admin(msg):
        deadline = time.monotonic() + 30
        while (info := engine.client(USER2).get(f"/api/runs/{msg['run_id']}").json())["state"] != "cancelled" \
                and time.monotonic() < deadline:
            time.sleep(0.3)
        assert info["state"] == "cancelled", info

    def at_quota_edited(msg):
        r = engine.client(ADMIN, admin=True).get(f"/api/admin/quotas/users/{msg['tenant']}")
        assert r.status_code == 200, r.text
        seen["override_after_edit"] = r.json()["override"]
        assert engine.client(USER2).get("/api/me").json()["quota"]["tokens_per_minute"] == NEW_LIMIT

    def at_stop_engine(msg):
        assert engine.stop() == 0, engine.log_tail()

    handlers = {"status_before": at_status_before, "run_running": at_run_running,
                "run_cancelled": at_run_cancelled, "context_deleted": at_context_deleted,
                "two_users_used_it": at_two_users, "quota_edited": at_quota_edited, "stop_engine": at_stop_engine,
                "run_cancelled_by_admin": at_run_cancelled_by_admin}

    started = time.monotonic()
    driver_log = user_lab.tmp / "driver.stderr"
    with open(driver_log, "w") as err:
        driver = subprocess.Popen([NODE, str(DRIVER)], cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=err, text=True, env={**os.environ, "LAB_E2E_CONFIG": json.dumps(config)})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in driver.stdout] + [lines.put(None)], daemon=True).start()
    result, screenshots = None, []
    try:
        while True:
            try:
                line = lines.get(timeout=max(1.0, 480 - (time.monotonic() - started)))
            except queue.Empty:
                pytest.fail(f"the browser driver did not finish in 480 s; last screenshot: {screenshots[-1:]}")
            if line is None:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "screenshot" in msg:
                screenshots.append(msg["screenshot"])
                print("screenshot:", msg["screenshot"])
            elif "checkpoint" in msg:
                try:
                    answer = {"ok": True, **(handlers[msg["checkpoint"]](msg) or {})}
                except AssertionError as e:
                    answer = {"error": f"engine check failed: {e}"}
                driver.stdin.write(json.dumps(answer) + "\n")
                driver.stdin.flush()
            elif "result" in msg:
                result = msg
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    stderr = driver_log.read_text(errors="replace")
    print(f"driver: {time.monotonic() - started:.1f} s; screenshots in {ARTIFACTS}")
    if result is not None:
        (ARTIFACTS / "result.json").write_text(json.dumps({**result, "engine_checks": seen}, indent=1, default=str))
    assert result is not None, f"the driver printed no result (exit {driver.returncode}):\n{stderr[-3000:]}"
    assert result["result"] == "ok", (
        f"at step {result.get('step')!r}: {result.get('message')}\n"
        f"observed: {json.dumps({k: v for k, v in result.items() if k not in ('message',)}, indent=1)[:4000]}\n"
        f"user lab log:\n{user_lab.log_tail(20)}")

    # The status item: the engine's numbers, and they moved with the engine.
    assert "tok/min" in result["status_after"], result
    assert re.search(r"/\s*(100000|100,000|100\s?[kK])\s*tok/min", result["status_after"]), \
        f"the status item does not show the tokens_per_minute limit set for {USER}: {result['status_after']!r}"
    assert result["status_level_after"] in ("ok", "warning", "critical", "error"), result
    assert seen["tokens_before"] is not None
    # The panel: the engine's model, the run with what the inferlet printed, cancelled for real.
    assert model_name and model_name in result["engine_text"], (model_name, result["engine_text"])
    assert MARKER in result["run_output"], result["run_output"]
    assert result["state_after_cancel"] == "cancelled"
    assert MARKER in (result.get("cell_output") or ""), f"the notebook cell did not show the run's output: {result}"
    assert result["cancel_button_after"] == 0, "an ended run still offers cancel"
    assert seen["run_final"]["state"] == "cancelled"
    assert result["context_listed"] and result["context_gone"]
    # Admin view: not for the user; for the admin, the dashboard from the launcher and the panel.
    assert result["user_admin_count"] == 0, "a non-admin sees .jp-Potluck-admin"
    assert result["user_launcher_open"] and result["user_dashboard_cards"] == 0, \
        "a non-admin's launcher offers the admin dashboard"
    assert result["launcher_card"], "the admin's launcher has no Potluck Admin Dashboard item"
    assert result["dashboard_in_main_area"], "the dashboard is not in the main area"
    assert {USER, USER2} <= set(result["admin_tenants"]), result["admin_tenants"]
    # Two users' usage over time: a line each, with the tokens the engine counted for them.
    lines = result["dashboard_lines"]
    assert lines[USER2]["total"] == seen["user2_tokens"], (lines, seen)
    assert lines[USER]["total"] > 0 and lines[USER]["points"] >= 60, lines     # the last hour, per minute
    # The quota edited in the dashboard is the engine's override, and the row shows it.
    assert seen["override_after_edit"] == {"tokens_per_minute": NEW_LIMIT}, seen
    assert f"/ {NEW_LIMIT}" in result["minute_cell_after_edit"], result["minute_cell_after_edit"]
    assert "user override: tokens_per_minute" in result["source_cell_after_edit"], result["source_cell_after_edit"]
    assert not result["dashboard_errors"], result["dashboard_errors"]
    # Everyone's runs: the admin cancels USER2's run from the dashboard (the engine says cancelled).
    assert result["admin_cancelled_state"] == "cancelled" and result["admin_cancel_buttons_after"] == 0, result
    # The engine's own page: the same two users for an admin; "admins only" and nothing for a user.
    assert result["engine_page_lines"][USER2]["total"] == seen["user2_tokens"], result["engine_page_lines"]
    assert "token=" not in result["engine_page_url_after"], "the token stayed in the address bar"
    assert "admins only" in result["engine_page_user_error"] and result["engine_page_user_lines"] == 0, result
    # The engine stopped: the panel says so with the reason, not "no runs" / "no saved contexts".
    assert result["down_error"].startswith("engine unreachable: "), result["down_error"]
    assert "cannot reach" in result["down_error"], result["down_error"]
    for text in (result["down_runs_text"], result["down_contexts_text"]):
        assert "unknown" in text and "unreachable" in text and not text.startswith("No "), text
    assert len(screenshots) == 8 and all(Path(p).is_file() for p in screenshots), screenshots
    if result.get("console_errors"):
        print("browser console errors:", *result["console_errors"][:20], sep="\n  ")
