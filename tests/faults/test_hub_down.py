"""The engine under a JupyterHub that goes away: identities it checked lately keep working for
the cache time, a token it has not seen gets a one-line 503 naming the Hub, and when the Hub is
back everything works again. A stand-in Hub API (``GET /hub/api/user``, ``/hub/api/groups/X``)
runs in this process; the engine is the real process with ``HubAuthenticator``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from support.engine_process import EngineProcess, error_of, free_port

pytestmark = pytest.mark.timeout(300)

CACHE_SECONDS = 8
ACCESS = "access:services!service=potluck"
USERS = {"alice-token": {"kind": "user", "name": "alice", "admin": False, "groups": ["students"], "scopes": [ACCESS]},
         "bob-token": {"kind": "user", "name": "bob", "admin": False, "groups": [], "scopes": [ACCESS]}}


class HubAPI(BaseHTTPRequestHandler):
    def do_GET(self):
        token = self.headers.get("Authorization", "").split(" ", 1)[-1]
        if self.path == "/hub/api/user" and token in USERS:
            body = USERS[token]
        elif self.path.startswith("/hub/api/groups/") and token == "service-token":
            body = {"kind": "group", "name": "students", "properties": {"potluck": {"tokens_per_minute": 777}}}
        else:
            self.send_error(403)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class FakeHub:
    def __init__(self, port: int):
        self.port = port
        self.server = None

    def start(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), HubAPI)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()      # the port refuses connections from now on


@pytest.fixture(scope="module")
def hub_and_engine(tmp_path_factory):
    hub = FakeHub(free_port())
    hub.start()
    api_url = f"http://127.0.0.1:{hub.port}/hub/api"
    proc = EngineProcess(tmp_path_factory.mktemp("potluck-hub-down"), args=(
        "--PotluckEngine.authenticator_class=potluck.engine.auth.HubAuthenticator",
        f"--HubAuthenticator.api_url={api_url}", "--HubAuthenticator.api_token=service-token",
        f"--HubAuthenticator.cache_seconds={CACHE_SECONDS}"))
    proc.start()
    yield hub, proc, api_url
    assert proc.stop() == 0, proc.log_tail()
    if hub.server is not None:
        hub.stop()


def me(proc, token: str) -> requests.Response:
    return requests.get(proc.url + "/api/me", headers={"Authorization": f"token {token}"}, timeout=60)


def test_cached_identities_keep_working_new_tokens_get_a_clear_503(hub_and_engine):
    hub, proc, api_url = hub_and_engine
    r = me(proc, "alice-token")
    checked = time.monotonic()       # the Hub vouched for alice (and her group) about now
    assert r.status_code == 200 and r.json()["name"] == "alice", r.text
    assert r.json()["quota"]["tokens_per_minute"] == 777      # from her group, read from the Hub

    hub.stop()
    hub.server = None
    r = me(proc, "alice-token")
    assert time.monotonic() - checked < CACHE_SECONDS, "the machine was too slow to test within the cache time"
    assert r.status_code == 200 and r.json()["name"] == "alice", r.text
    gen = requests.post(proc.url + "/api/generate", headers={"Authorization": "token alice-token"}, timeout=120,
                        json={"prompt": "Hi", "max_tokens": 2})
    assert gen.status_code == 200, gen.text

    r = me(proc, "bob-token")
    assert r.status_code == 503, r.text
    err = error_of(r)
    assert err["code"] == "hub_unreachable" and api_url in err["message"] and "\n" not in err["message"], err

    # Past the cache time, alice's token has to be checked again: 503 as well, never a stale tenant.
    time.sleep(max(0.0, CACHE_SECONDS + 1.5 - (time.monotonic() - checked)))
    r = me(proc, "alice-token")
    assert r.status_code == 503 and api_url in error_of(r)["message"], r.text

    # The Hub is back: everyone is served again.
    hub.start()
    for token, name in (("bob-token", "bob"), ("alice-token", "alice")):
        r = me(proc, token)
        assert r.status_code == 200 and r.json()["name"] == name, r.text
