"""The notebook side against a stand-in engine: run events, errors as one line, magics' arguments.

The stand-in speaks the documented runs contract (``POST /api/runs`` -> id,
``WS /api/runs/{id}/events``: status, output, message, usage events) so the
client's run path is checked without the sandbox; the end-to-end test runs
the real one under a Hub.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from contextlib import redirect_stderr, redirect_stdout

import pytest
from tornado import web, websocket
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from potluck.kernel.client import Client, PotluckError
from potluck.kernel.magics import format_quota, parse_run_args

TOKEN = "alice-token"


class StandIn:
    def __init__(self):
        self.started: list[dict] = []
        self.cancelled: list[str] = []
        me = self

        class Runs(web.RequestHandler):
            def get(self):
                self.finish({"runs": [{"id": "r1", "state": "finished", "auth": self.request.headers.get("Authorization")}]})

            def post(self):
                if self.request.headers.get("Authorization") != f"token {TOKEN}":
                    self.set_status(401)
                    return self.finish({"error": {"code": "unauthorized", "message": "invalid or revoked token"}})
                me.started.append(json.loads(self.request.body))
                self.set_status(201)
                self.finish({"id": "r1", "state": "queued"})

        class Run(web.RequestHandler):
            def get(self, run_id):
                self.finish({"id": run_id, "state": "finished", "error": None})

            def delete(self, run_id):
                me.cancelled.append(run_id)
                self.set_status(204)

        class Events(websocket.WebSocketHandler):
            async def open(self, run_id):
                assert self.request.headers["Authorization"] == f"token {TOKEN}"
                for ev in [{"seq": 0, "type": "status", "state": "running"},
                           {"seq": 1, "type": "output", "stream": "stdout", "text": "Paris\n"},
                           {"seq": 2, "type": "message", "body": {"answer": "Paris"}},
                           {"seq": 3, "type": "usage", "decode_tokens": 3, "fuel": 10},
                           {"seq": 4, "type": "status", "state": "finished"}]:
                    await self.write_message(json.dumps(ev))

        class Generate(web.RequestHandler):
            def post(self):
                self.set_status(429)
                self.finish({"error": {"code": "quota_exceeded", "limit": "tokens_per_minute", "value": 5,
                                       "message": "token rate limit: 9 tokens used in the last minute (+2 asked) "
                                                  "against your tokens_per_minute limit 5; try again in a minute"}})

        class AdminRuns(web.RequestHandler):
            def get(self):
                self.finish({"runs": [{"id": "r9", "owner": "bob", "state": "running"}], "stats": {}})

        class AdminRun(web.RequestHandler):
            def get(self, tenant, run_id):
                self.finish({"id": run_id, "owner": tenant, "state": "running"})

            def delete(self, tenant, run_id):
                me.cancelled.append(f"{tenant}/{run_id}")
                self.finish({"id": run_id, "owner": tenant, "state": "cancelled"})

        self.app = web.Application([(r"/api/runs", Runs), (r"/api/runs/([^/]+)", Run),
                                    (r"/api/runs/([^/]+)/events", Events), (r"/api/generate", Generate),
                                    (r"/api/admin/runs", AdminRuns),
                                    (r"/api/admin/runs/([^/]+)/([^/]+)", AdminRun)])


@pytest.fixture(scope="module")
def standin():
    s = StandIn()
    sock, port = bind_unused_port()
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    def serve():
        asyncio.set_event_loop(loop)
        server = HTTPServer(s.app)
        server.add_sockets([sock])
        ready.set()
        loop.run_forever()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ready.wait()
    s.url = f"http://127.0.0.1:{port}/"
    yield s
    loop.call_soon_threadsafe(loop.stop)


def test_run_streams_output_and_collects_messages_and_usage(standin):
    out = io.StringIO()
    with redirect_stdout(out):
        res = Client(standin.url, TOKEN).run("print('Paris')", question="capital?", n=2)
    assert standin.started[-1] == {"source": "print('Paris')", "args": {"question": "capital?", "n": 2}}
    assert res.ok and res.output == "Paris\n" and res.messages == [{"answer": "Paris"}]
    assert res.usage == {"decode_tokens": 3, "fuel": 10}
    assert "Paris\n" in out.getvalue() and '[message] {"answer": "Paris"}' in out.getvalue()


def test_a_quota_error_is_one_line_naming_the_limit(standin):
    with pytest.raises(PotluckError) as e:
        Client(standin.url, TOKEN).generate("Hello", max_tokens=2)
    assert e.value.status == 429 and e.value.limit == "tokens_per_minute"
    assert "\n" not in str(e.value) and "tokens_per_minute limit 5" in str(e.value)


def test_errors_without_an_engine_or_a_token_say_what_to_do():
    with pytest.raises(PotluckError, match="cannot reach the Potluck engine at http://127.0.0.1:9/"):
        Client("http://127.0.0.1:9", "t").status()
    with pytest.raises(PotluckError, match="no token"):
        Client("http://127.0.0.1:9", "").me()


def test_the_magics_show_errors_as_one_line(standin):
    from IPython.testing.globalipapp import get_ipython
    ip = get_ipython()
    ip.run_line_magic("load_ext", "potluck.kernel")
    ip.run_line_magic("potluck", f"connect {standin.url} {TOKEN}")
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        ip.run_cell_magic("generate", "-n 2", "Hello")
    assert err.getvalue().strip().startswith("potluck: token rate limit") and "Traceback" not in err.getvalue()
    with redirect_stdout(io.StringIO()):
        ip.run_cell_magic("inferlet", "-o res question=\"Why?\" n=3", "print('Paris')")
    assert ip.user_ns["res"].state == "finished"
    assert standin.started[-1]["args"] == {"question": "Why?", "n": 3}


def test_inferlet_arguments_parse_as_json_when_they_can():
    assert parse_run_args('n=4 question="What now?" flag=true -o out') == (
        {"n": 4, "question": "What now?", "flag": True}, "out")
    assert parse_run_args("""--args '{"a": [1, 2]}' b=x""") == ({"a": [1, 2], "b": "x"}, None)
    with pytest.raises(ValueError):
        parse_run_args("not-a-pair")


def test_quota_shows_where_each_value_came_from():
    text = format_quota({"name": "bob", "quota": {"tokens_per_minute": 5, "weight": 1.0},
                         "quota_source": {"tokens_per_minute": "group:students"}})
    assert "tokens_per_minute  5" in text and "(group:students)" in text and "(default)" in text


def test_a_plain_jupyter_server_proxies_my_runs_to_a_standalone_engine(standin, tmp_path):
    """No Hub: the server extension is configured with the engine's URL and a token (for the lab frontend)."""
    import os
    import subprocess
    import sys
    import time

    import requests
    import websocket
    from tornado.testing import bind_unused_port as _bind

    sock, port = _bind()
    sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "POTLUCK_"))}
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser",
                             f"--port={port}", "--IdentityProvider.token=server-token", f"--ServerApp.root_dir={tmp_path}",
                             f"--PotluckExtension.engine_url={standin.url}", f"--PotluckExtension.token={TOKEN}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "token server-token"}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(base + "/api/status", headers=auth, timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "jupyter server did not start"
            time.sleep(0.3)
        assert requests.get(base + "/potluck/api/runs", timeout=10).status_code == 403     # the server's login first
        runs = requests.get(base + "/potluck/api/runs", headers=auth, timeout=10).json()["runs"]
        assert runs[0]["auth"] == f"token {TOKEN}"        # the engine sees the configured token, never the browser's
        r = requests.post(base + "/potluck/api/runs", headers=auth, json={"source": "print(1)", "args": {}}, timeout=10)
        assert r.status_code == 201 and r.json()["id"] == "r1"
        assert requests.delete(base + "/potluck/api/runs/r1", headers=auth, timeout=10).status_code == 204
        assert standin.cancelled[-1] == "r1"
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/potluck/api/runs/r1/events",
                                         header=["Authorization: token server-token"], timeout=30)
        try:
            kinds = []
            while not kinds or kinds[-1] != "status:finished":
                ev = json.loads(ws.recv())
                kinds.append(ev["type"] + (":" + ev["state"] if ev["type"] == "status" else ""))
        finally:
            ws.close()
        assert kinds == ["status:running", "output", "message", "usage", "status:finished"]
        # The admin runs endpoints (the lab's admin view): everyone's runs, look at and cancel any.
        assert requests.get(base + "/potluck/api/admin/runs", timeout=10).status_code == 403
        assert requests.get(base + "/potluck/api/admin/runs", headers=auth, timeout=10).json()["runs"][0]["id"] == "r9"
        r = requests.get(base + "/potluck/api/admin/runs/bob/r9", headers=auth, timeout=10)
        assert r.status_code == 200 and r.json()["owner"] == "bob"
        r = requests.delete(base + "/potluck/api/admin/runs/bob/r9", headers=auth, timeout=10)
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert standin.cancelled[-1] == "bob/r9"
        cfg = requests.get(base + "/potluck/api/config", headers=auth, timeout=10).json()
        assert cfg == {"engine_url": standin.url, "found_by": "PotluckExtension.engine_url", "has_token": True,
                       "pool": None, "engine": None, "notice": ""}     # one engine: no pool map
    finally:
        proc.terminate()
        proc.wait(timeout=30)
