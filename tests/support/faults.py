"""What the fault tests and the soak share: reading an engine process's resources, and clients
that open a stream, take the first chunk and drop the connection without a goodbye.

Used by ``tests/faults/`` and ``benchmarks/soak.py``; it never starts or stops an engine itself.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from urllib.parse import urlparse

import requests
import websocket

# A run that says one thing and then waits a moment for a message: the events socket has a
# live subscription when it is dropped, and the run still ends by itself.
WAITING_RUN = "from potluck_inferlet import receive, send\nsend('ready')\nreceive(timeout=1)\n"
# A run that listens for a long time: many sockets come and go on it.
LISTENING_RUN = "from potluck_inferlet import receive, send\nsend('listening')\nreceive(timeout=600)\n"
LONG_STORY = {"prompt": "Once upon a time", "max_tokens": 64, "ignore_eos": True, "stream": True}
LONG_CHAT = {"model": "default", "messages": [{"role": "user", "content": "Tell me a long story."}],
             "max_tokens": 64, "ignore_eos": True, "stream": True}


def proc_stats(pid: int) -> dict:
    """The process's threads, open fds and resident memory (KiB), from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return {"threads": int(fields["Threads"][0]), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "rss_kb": int(fields["VmRSS"][0])}


def _abort(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0): the client vanishes mid-response."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


def stream_and_drop(url: str, token: str, path: str, body: dict, timeout: float = 60) -> None:
    """POST a streaming request over a raw socket, read up to the first SSE ``data:`` line, reset."""
    u = urlparse(url)
    data = json.dumps(body).encode()
    head = (f"POST {u.path.rstrip('/')}{path} HTTP/1.1\r\nHost: {u.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
    try:
        sock.sendall(head + data)
        buf = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"the engine closed the stream before its first event: {buf[:300]!r}")
            buf += chunk
            headers, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                if not headers.startswith(b"HTTP/1.1 200"):
                    raise AssertionError(f"{path} answered {headers.splitlines()[0]!r}: {rest[:300]!r}")
                if b"data: " in rest:
                    return
    finally:
        _abort(sock)


def events_and_drop(url: str, token: str, run_id: str, timeout: float = 60) -> dict:
    """Open a run's events WebSocket, read the first frame, drop the TCP connection (no close frame)."""
    ws_url = url.replace("http", "ws", 1) + f"/api/runs/{run_id}/events"
    ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=timeout)
    try:
        return json.loads(ws.recv())
    finally:
        _abort(ws.sock)


class Storm:
    """Clients hanging up mid-stream, over and over: /api/generate, the OpenAI chat stream, run events.

    Half the events sockets go to a fresh run (a thread and a wasm instance that come and go),
    half to one long-lived run that is listening (its subscriber list must not grow).
    """

    KINDS = ("generate", "openai", "events")

    def __init__(self, url: str, token: str):
        self.url, self.token = url, token
        self.session = requests.Session()       # for starting runs
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.done = {k: 0 for k in self.KINDS}
        self.listener: str | None = None

    def start_run(self, source: str) -> str:
        r = self.session.post(self.url + "/api/runs", json={"source": source}, timeout=60)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def one(self, kind: str) -> None:
        if kind == "generate":
            stream_and_drop(self.url, self.token, "/api/generate", LONG_STORY)
        elif kind == "openai":
            stream_and_drop(self.url, self.token, "/v1/chat/completions", LONG_CHAT)
        else:
            if self.done[kind] % 2:
                if self.listener is None:
                    self.listener = self.start_run(LISTENING_RUN)
                run_id = self.listener
            else:
                run_id = self.start_run(WAITING_RUN)
            ev = events_and_drop(self.url, self.token, run_id)
            assert ev["type"] == "status", ev
        self.done[kind] += 1

    def run(self, n: int) -> None:
        """``n`` disconnects, the kinds taking turns."""
        for i in range(n):
            self.one(self.KINDS[i % len(self.KINDS)])

    def close(self) -> None:
        """Cancel the long-lived run."""
        if self.listener is not None:
            self.session.delete(self.url + f"/api/runs/{self.listener}", timeout=60)
            self.listener = None


def runs_idle(admin) -> bool:
    """No run holds a thread or waits for one (``admin``: a Client with an admin token)."""
    st = admin.get("/api/admin/runs").json()["stats"]
    return st["threads"] == 0 and st["queued"] == 0


def settle(engine_status, pid: int, idle, baseline: dict | None = None, *, thread_slack: int = 0,
           fd_slack: int = 0, timeout: float = 60) -> tuple[dict, dict]:
    """Wait until the engine is quiet: no generation running, no KV page used, ``idle()`` true,
    and (given a ``baseline``) threads and fds within the slack of it. The last (stats, status)."""
    deadline = time.monotonic() + timeout
    while True:
        st, status = proc_stats(pid), engine_status()
        quiet = status["running_generations"] == 0 and status["kv"]["used_pages"] == 0 and idle()
        if quiet and baseline is not None:
            quiet = st["threads"] <= baseline["threads"] + thread_slack and st["fds"] <= baseline["fds"] + fd_slack
        if quiet or time.monotonic() > deadline:
            return st, status
        time.sleep(0.25)
