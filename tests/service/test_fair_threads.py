"""One tenant's blocking requests never hold the request threads another tenant's request needs.

The measured problem: 48 concurrent ``PUT /api/contexts/{name}`` from one tenant held every
request thread, and another tenant's ``GET /api/me`` waited behind all of them (23 s instead of
0.01 s). These tests assert orders and counts, never times: the other tenant is answered while
most of the flood is still in flight, and a tenant at its ``max_concurrent_requests`` is refused at
the door with the usual 429.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from support.engine_process import error_of

FLOOD = 48
STILL_IN_FLIGHT = FLOOD // 2
NAMES = 4                      # the flood replaces a few saved contexts, so the KV pool stays small
PROMPT = "The quick brown fox jumps over the lazy dog. " * 15     # ~150 tokens: a few hundred ms of CPU prefill
GUARD = 1200                   # polls give up after this many tries (a hang fails, never a slow run)
POLL = 0.05                    # seconds between polls


def _admin_view(admin, name: str) -> dict:
    tenants = admin.get("/api/admin/tenants").json()["tenants"]
    return next((t for t in tenants if t["name"] == name), {})


def test_another_tenants_me_is_answered_while_most_of_a_flood_is_still_in_flight(engine_proc):
    admin = engine_proc.client("root", admin=True)
    flooder, other = "fair-flooder", "fair-other"
    # Let the whole flood in (max_concurrent_requests is checked in its own test).
    r = admin.put(f"/api/admin/quotas/users/{flooder}", json={"max_concurrent_requests": FLOOD + 16})
    assert r.status_code == 200, r.text
    engine_proc.token(flooder), engine_proc.token(other)     # made before the flood: the CLI is slow

    lock = threading.Lock()
    done: list[int] = []
    answers: list = []

    def fill(i: int):
        r = engine_proc.client(flooder).put(f"/api/contexts/fair-{i % NAMES}", json={"prompt": PROMPT},
                                            timeout=600)
        with lock:
            done.append(i)
            answers.append(r)

    with ThreadPoolExecutor(FLOOD) as senders:
        for i in range(FLOOD):
            senders.submit(fill, i)
        # Wait until the flood holds request threads: its fills are in the engine.
        for _ in range(GUARD):
            view = _admin_view(admin, flooder)
            if (view.get("open_contexts") or 0) >= 2:
                break
            time.sleep(POLL)
        else:
            raise AssertionError(f"the flood never reached the engine: {view}")
        with lock:
            done_before = len(done)
        me = engine_proc.client(other).get("/api/me", timeout=600)
        with lock:
            in_flight_at_answer = FLOOD - len(done)
    assert me.status_code == 200, me.text
    assert me.json()["name"] == other
    assert in_flight_at_answer >= STILL_IN_FLIGHT, (
        f"{other}'s GET /api/me was answered only after {FLOOD - in_flight_at_answer} of {flooder}'s "
        f"{FLOOD} requests (done when it was sent: {done_before})")
    # Nothing of the flood was lost: every fill was served.
    assert len(answers) == FLOOD
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200][:3]
    n_tokens = {r.json()["n_tokens"] for r in answers}
    assert len(n_tokens) == 1 and n_tokens.pop() > 100
    flood = engine_proc.client(flooder)
    for i in range(NAMES):
        assert flood.delete(f"/api/contexts/fair-{i}").status_code == 204


def test_a_tenant_at_max_concurrent_requests_is_refused_at_the_door_until_one_ends(engine_proc):
    admin = engine_proc.client("root", admin=True)
    name = "fair-limited"
    r = admin.put(f"/api/admin/quotas/users/{name}", json={"max_concurrent_requests": 2})
    assert r.status_code == 200, r.text
    client = engine_proc.client(name)
    assert client.get("/api/me").status_code == 200          # the engine knows the tenant and its quota

    # Two generations that run until their clients hang up fill the limit ...
    streams = []
    for _ in range(2):
        session = engine_proc.client(name)
        s = session.post("/api/generate", json={"prompt": "Count:", "max_tokens": 1000, "ignore_eos": True,
                                                "stream": True}, stream=True)
        assert s.status_code == 200, s.text
        lines = s.iter_lines()      # kept: dropping a half-read line iterator closes the connection
        assert any(line.startswith(b"event: token") for line in lines)    # it is generating
        streams.append((session, s, lines))
    # ... so the next request, of any kind, is refused before it takes a thread.
    for method, path, body in [("PUT", "/api/contexts/fair-limited", {"prompt": PROMPT}), ("GET", "/api/me", None)]:
        r = client.request(method, path, json=body)
        assert r.status_code == 429, r.text
        err = error_of(r)
        assert err["code"] == "quota_exceeded"
        assert err["limit"] == "max_concurrent_requests" and err["value"] == 2
        assert "max_concurrent_requests" in err["message"]
    # Another tenant is not affected.
    assert engine_proc.client("fair-bystander").get("/api/me").status_code == 200

    for session, s, _ in streams:
        s.close()                  # the clients hang up: the generations are cancelled, the count drops
        session.close()
    for _ in range(GUARD):
        r = client.get("/api/me")
        if r.status_code == 200 and r.json()["usage"]["active_requests"] == 0:
            break
        time.sleep(POLL)
    else:
        raise AssertionError(f"the limit was never freed: {r.status_code} {json.dumps(r.json())[:300]}")
    r = client.put("/api/contexts/fair-limited", json={"prompt": PROMPT})
    assert r.status_code == 200, r.text
    assert client.delete("/api/contexts/fair-limited").status_code == 204
