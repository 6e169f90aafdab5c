"""The real engine process (a ``potluck engine`` subprocess), and small helpers to talk to it.

The service tests share one process on the real default model for the whole session
(starting one costs ~20 s of imports on a small CPU); the fault and lab tests and the
benchmarks start their own. Tokens are made with the real ``potluck token create``. Tests use
their own tenant names so they never depend on each other's usage, and may restart the process
(same port, same data dir) to check what survives. It never imports the engine: what it knows of
it is the command line and the HTTP API.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

POTLUCK = shutil.which("potluck", path=str(Path(sys.executable).parent)) or "potluck"
# Small enough for a shared 2-core machine; the limits the bad-input tests probe.
KV_PAGES = 256
MAX_BODY = 256 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def potluck(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([POTLUCK, *args], capture_output=True, text=True, timeout=120, check=check)


class EngineProcess:
    def __init__(self, data_dir: Path, *, port: int | None = None, port_on_command_line: bool = True,
                 prefix: str = "", env: dict | None = None, args: tuple = (), kv_pages: int = KV_PAGES,
                 max_body: int = MAX_BODY, usage_flush_interval: float = 1):
        self.data_dir = data_dir
        self.usage_flush_interval = usage_flush_interval
        self.kv_pages = kv_pages        # the benchmarks start bigger engines with the same launcher
        self.max_body = max_body
        self.port = port or free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + prefix.rstrip("/")
        self.env = {**os.environ, **(env or {})}
        self.args = [*args, f"--port={self.port}"] if port_on_command_line else list(args)
        self.log_path = data_dir / "engine.log"
        self.proc: subprocess.Popen | None = None
        self._tokens: dict[str, str] = {}

    def start(self, timeout: float = 240) -> None:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [POTLUCK, "engine", *self.args, f"--data-dir={self.data_dir}",
             f"--kv-pages={self.kv_pages}", f"--max-body-size={self.max_body}", f"--PotluckEngine.usage_flush_interval={self.usage_flush_interval}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the engine exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/api/status", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the engine did not answer /api/status in {timeout} s:\n{self.log_tail()}")

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: the engine gets no chance to flush, cancel or close anything (a crash)."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the engine is not running"
        return self.proc.pid

    def restart(self) -> None:
        assert self.stop() == 0, self.log_tail()
        self.start()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""

    # ---------------------------------------------------------------- clients
    def token(self, name: str, admin: bool = False) -> str:
        """A token for ``name`` made by ``potluck token create`` (once per name)."""
        if name not in self._tokens:
            args = ["token", "create", name, f"--data-dir={self.data_dir}"] + (["--admin"] if admin else [])
            self._tokens[name] = potluck(*args).stdout.strip().splitlines()[-1]
        return self._tokens[name]

    def forget(self, name: str) -> None:
        self._tokens.pop(name, None)

    def client(self, name: str, admin: bool = False) -> "Client":
        return Client(self.url, self.token(name, admin))

    def status(self) -> dict:
        """``/api/status`` as an admin (``root``), so it includes the engine's ``stats`` counters."""
        return self.client("root", admin=True).get("/api/status", timeout=30).json()


def serve(data_dir: Path, **kwargs):
    """A fixture's body: start an engine, yield it, then stop it and require a clean shutdown."""
    proc = EngineProcess(data_dir, **kwargs)
    proc.start()
    yield proc
    code = proc.stop()
    assert code == 0, f"the engine did not shut down cleanly ({code}):\n{proc.log_tail()}"


class Client(requests.Session):
    """requests, with the engine URL as base and the token as a Bearer header."""

    def __init__(self, base: str, token: str | None):
        super().__init__()
        self.base = base
        self.token = token
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("timeout", 120)
        return super().request(method, self.base + url, *args, **kwargs)


def error_of(r: requests.Response) -> dict:
    """The ``error`` object of a JSON error response (asserting the shape)."""
    assert r.headers["Content-Type"].startswith("application/json"), r.text
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body
    return body["error"]
