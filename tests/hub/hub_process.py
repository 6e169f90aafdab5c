"""A real JupyterHub with Potluck for the Hub tests, and small clients for it.

``HubProcess`` starts ``jupyterhub`` (configurable-http-proxy from npm) with
``examples/jupyterhub_config.py`` loaded as it is, plus a small overlay that
only changes what a test run must: free ports, a temporary directory, servers
allowed to run as root, a small KV pool, a short cache of the Hub's answers, and one test service ``e2e`` whose
token may manage users, groups, servers and tokens (the Hub REST API is
how the test does everything an admin would).

``Kernel`` speaks the Jupyter messaging protocol over a server's kernel
WebSocket (``/user/NAME/api/kernels/ID/channels``), as JupyterLab does.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "examples" / "jupyterhub_config.py"
BIN = Path(sys.executable).parent
E2E_SCOPES = ["admin:users", "admin:groups", "admin:servers", "tokens", "access:servers", "list:users",
              "read:users", "list:services", "read:services"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chp() -> str | None:
    """configurable-http-proxy: the repository's npm install (make venv), else the PATH."""
    local = REPO / ".npm-tools" / "node_modules" / ".bin" / "configurable-http-proxy"
    return str(local) if local.exists() else shutil.which("configurable-http-proxy")


OVERLAY = '''
import os
load_subconfig({example!r})
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.should_start = True
c.JupyterHub.db_url = "sqlite:///{tmp}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{tmp}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{tmp}/jupyterhub.pid"
c.SimpleLocalProcessSpawner.home_dir_template = "{tmp}/home/{{username}}"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = ["--allow-root"]
c.Spawner.default_url = "/api"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
# A small KV pool for a shared 2-core machine; usage reaches the ledger quickly.
for svc in c.JupyterHub.services:
    if svc["name"].startswith("potluck") and "command" in svc:
        svc["command"] += ["--kv-pages=256", "--PotluckEngine.usage_flush_interval=1",
                           "--HubAuthenticator.cache_seconds=2", *{engine_args!r}]
c.JupyterHub.services.append({{"name": "e2e", "api_token": {token!r}}})
c.JupyterHub.load_roles.append({{"name": "e2e", "scopes": {scopes!r}, "services": ["e2e"]}})
'''


class HubProcess:
    def __init__(self, tmp: Path, engine_args: tuple[str, ...] = (), ready_status: int = 200,
                 example: Path = EXAMPLE_CONFIG, engine_service: str = "potluck", env: dict | None = None):
        self.tmp = tmp
        self.example = example                     # the jupyterhub_config.py under test
        self.extra_env = dict(env or {})
        self.engine_args = list(engine_args)       # more `potluck engine` options for this Hub's engine
        self.ready_status = ready_status           # what the engine's /api/status answers once it is up
        self.port = free_port()
        self.engine_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.engine_url = f"{self.url}/services/{engine_service}"     # the engine the start waits for
        self.hub_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.hub_port}/hub/api"
        self.token = secrets.token_hex(32)
        self.log_path = tmp / "jupyterhub.log"
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> Path:
        chp = find_chp()
        if chp is None:
            raise RuntimeError("configurable-http-proxy not found: run `make venv` (npm install into .npm-tools)")
        path = self.tmp / "jupyterhub_config.py"
        path.write_text(OVERLAY.format(example=str(self.example), hub_port=self.hub_port,
                                       proxy_api_port=free_port(), chp=chp, tmp=self.tmp,
                                       singleuser=str(BIN / "jupyterhub-singleuser"), token=self.token,
                                       scopes=E2E_SCOPES, engine_args=self.engine_args))
        return path

    def start(self, timeout: float = 240) -> None:
        config = self.write_config()
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               "POTLUCK_HUB_URL": self.url, "POTLUCK_ENGINE_URL": f"http://127.0.0.1:{self.engine_port}",
               "POTLUCK_DATA_DIR": str(self.tmp / "potluck-data"), **self.extra_env}
        for key in [k for k in env if k.startswith("JUPYTERHUB_") or k in ("POTLUCK_URL", "POTLUCK_TOKEN")]:
            del env[key]           # a test run inside a notebook must not leak its own Hub
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)],
                                     cwd=self.tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        # Ready when the engine answers through the Hub's proxy (the model loads in ~20 s).
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.engine_url + "/api/status", timeout=5).status_code == self.ready_status:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the engine did not answer through the Hub in {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        # The Hub stops its managed service and, with cleanup_servers, the users' servers.
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # ---------------------------------------------------------------- the Hub REST API, as the e2e service
    def api(self, method: str, path: str, ok=(200, 201, 204), **kw) -> requests.Response:
        r = requests.request(method, f"{self.url}/hub/api/{path}", headers={"Authorization": f"token {self.token}"},
                             timeout=60, **kw)
        assert r.status_code in ok, f"{method} /hub/api/{path}: {r.status_code} {r.text}"
        return r

    def create_user(self, name: str, admin: bool = False) -> None:
        self.api("POST", f"users/{name}", json={"admin": admin}, ok=(201, 409))

    def user_token(self, name: str, scopes: list[str] | None = None) -> str:
        body = {"note": "potluck e2e"}
        if scopes is not None:
            body["scopes"] = scopes
        return self.api("POST", f"users/{name}/tokens", json=body).json()["token"]

    def start_server(self, name: str, timeout: float = 180) -> None:
        self.api("POST", f"users/{name}/server", ok=(201, 202, 400))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = (self.api("GET", f"users/{name}").json().get("servers") or {}).get("")
            if server and server.get("ready"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{name}'s server did not become ready in {timeout} s:\n{self.log_tail()}")

    def server(self, name: str, method: str, path: str, **kw) -> requests.Response:
        """A request to NAME's single-user server, as the e2e service (it holds access:servers)."""
        return requests.request(method, f"{self.url}/user/{name}/{path}",
                                headers={"Authorization": f"token {self.token}"}, timeout=60, **kw)

    def start_kernel(self, user: str, kernel: str = "potluck") -> "Kernel":
        r = self.server(user, "POST", "api/kernels", json={"name": kernel})
        assert r.status_code == 201, r.text
        ws = f"ws://127.0.0.1:{self.port}/user/{user}/api/kernels/{r.json()['id']}/channels"
        return Kernel(ws, self.token)


def engine(url: str, token: str) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"token {token}"
    s.base = url
    return s


class Kernel:
    """A running kernel, driven over its WebSocket like a notebook does."""

    def __init__(self, ws_url: str, token: str):
        import websocket
        self.session = uuid.uuid4().hex
        self.ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=180)

    def execute(self, code: str, timeout: float = 180) -> tuple[str, str]:
        """Run a cell; returns (stdout, stderr), with an error's traceback in stderr."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "e2e", "session": self.session, "msg_type": "execute_request",
                       "version": "5.3", "date": datetime.now(timezone.utc).isoformat()},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        out, err = [], []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(1.0, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == "stream":
                (out if content["name"] == "stdout" else err).append(content["text"])
            elif kind in ("execute_result", "display_data"):
                text = content["data"].get("text/plain", "")
                if not text.startswith("\u23f3"):      # a progress note, cleared when its call ends
                    out.append(text + "\n")
            elif kind == "error":
                err.append("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out), "".join(err)
        raise TimeoutError(f"the cell did not finish in {timeout} s: {code[:80]!r}")

    def close(self) -> None:
        self.ws.close()
