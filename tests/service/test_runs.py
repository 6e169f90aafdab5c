"""Inferlet runs over HTTP and the events WebSocket, against the real engine process.

Each test uses its own tenant names (``runs-*``), so quotas set here never leak
into other modules' tenants. The WebSocket side uses websocket-client, as the
kernel's client does.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
import websocket

from support.engine_process import error_of

pytestmark = pytest.mark.timeout(600)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = """
from potluck_inferlet import Context, args, send
ctx = Context()
ctx.fill_chat(args["messages"])
out = ctx.generate(max_tokens=args["max_tokens"])
print("generated", len(out.tokens), "tokens")
send({"text": out, "tokens": out.tokens, "finish": out.finish_reason})
"""
ECHO = """
from potluck_inferlet import receive, send
send("ready")
while True:
    msg = receive(timeout=120)
    if msg is None or msg == "stop":
        break
    send({"echo": msg})
"""
WAITS = "from potluck_inferlet import receive\nreceive(timeout=300)\n"
SPINS = "while True:\n    pass\n"
DONE = ("finished", "failed", "cancelled")


def ws_url(proc, run_id: str, query: str = "") -> str:
    return proc.url.replace("http", "ws", 1) + f"/api/runs/{run_id}/events" + query


def connect(proc, token: str, run_id: str, query: str = "") -> websocket.WebSocket:
    return websocket.create_connection(ws_url(proc, run_id, query), header=[f"Authorization: token {token}"],
                                       timeout=120)


def events_until_closed(ws: websocket.WebSocket) -> list[dict]:
    """Every frame until the server closes the socket (it does after the final status)."""
    out = []
    try:
        while True:
            try:
                text = ws.recv()
            except websocket.WebSocketConnectionClosedException:
                break
            if not text:
                break
            out.append(json.loads(text))
    finally:
        ws.close()
    return out


def start(client, source: str, args: dict | None = None, expect: int = 201) -> dict:
    r = client.post("/api/runs", json={"source": source, "args": args or {}})
    assert r.status_code == expect, r.text
    return r.json()


def wait_state(client, run_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = client.get(f"/api/runs/{run_id}").json()
        if info["state"] in DONE:
            return info
        assert time.monotonic() < deadline, info
        time.sleep(0.2)


def next_of_type(ws: websocket.WebSocket, kind: str) -> dict:
    while True:
        ev = json.loads(ws.recv())
        if ev["type"] == kind:
            return ev


def test_greedy_run_equals_generate_and_its_events_stream_over_the_websocket(engine_proc):
    alice = engine_proc.client("runs-alice")
    run = start(alice, GREEDY, {"messages": QUESTION, "max_tokens": 12})
    assert run["id"] and run["owner"] == "runs-alice" and run["state"] in ("queued", "running", "finished")
    events = events_until_closed(connect(engine_proc, alice.token, run["id"]))
    assert [e["seq"] for e in events] == list(range(len(events)))     # every event once, in order
    kinds = [e["type"] for e in events]
    assert kinds[0] == "status" and events[0]["state"] == "running"
    assert kinds[-2:] == ["usage", "status"] and events[-1]["state"] == "finished", events[-1]
    [msg] = [e["body"] for e in events if e["type"] == "message"]
    assert "".join(e["text"] for e in events if e["type"] == "output") == f"generated {len(msg['tokens'])} tokens\n"

    ref = alice.post("/api/generate", json={"messages": QUESTION, "max_tokens": 12, "temperature": 0})
    assert ref.status_code == 200, ref.text
    assert msg["tokens"] == ref.json()["tokens"]
    assert msg["text"] == ref.json()["text"] and "Paris" in msg["text"]

    info = alice.get(f"/api/runs/{run['id']}").json()
    assert info["state"] == "finished" and info["error"] is None
    assert info["usage"]["decode_tokens"] >= len(msg["tokens"]) and info["usage"]["fuel"] > 0
    assert info["events"] == len(events)
    listed = alice.get("/api/runs").json()["runs"]
    assert run["id"] in [r["id"] for r in listed]
    # A second follower of an ended run gets the whole history, then the close; ?since= skips.
    again = events_until_closed(connect(engine_proc, alice.token, run["id"]))
    assert again == events
    tail = events_until_closed(connect(engine_proc, alice.token, run["id"], f"?since={len(events) - 1}"))
    assert tail == events[-1:]


def test_messages_go_to_a_run_over_the_websocket_and_replies_come_back(engine_proc):
    gina = engine_proc.client("runs-gina")
    run = start(gina, ECHO)
    ws = connect(engine_proc, gina.token, run["id"])
    try:
        assert next_of_type(ws, "message")["body"] == "ready"
        ws.send(json.dumps({"q": [1, 2]}))
        assert next_of_type(ws, "message")["body"] == {"echo": {"q": [1, 2]}}
        ws.send(json.dumps("hello"))
        assert next_of_type(ws, "message")["body"] == {"echo": "hello"}
        ws.send("not json {")              # refused with an error frame; the socket stays open
        err = next_of_type(ws, "error")
        assert err["error"]["code"] == "invalid_json", err
        ws.send(json.dumps("stop"))
        rest = events_until_closed(ws)
    finally:
        ws.close()
    assert rest[-1]["type"] == "status" and rest[-1]["state"] == "finished", rest
    # The run has ended: a follower (even one asking for events past the end) gets its final status
    # and the socket closes; a message sent meanwhile is answered with an error frame, not delivered.
    ws = connect(engine_proc, gina.token, run["id"], "?since=1000")
    ws.send(json.dumps("too late"))
    frames = events_until_closed(ws)
    assert frames[0]["type"] == "status" and frames[0]["state"] == "finished", frames
    assert all(f["type"] == "error" and f["error"]["code"] == "run_ended" for f in frames[1:]), frames


def test_delete_cancels_a_run_and_its_follower_sees_the_end(engine_proc):
    carl = engine_proc.client("runs-carl")
    run = start(carl, SPINS)
    ws = connect(engine_proc, carl.token, run["id"])
    assert next_of_type(ws, "status")["state"] == "running"
    r = carl.delete(f"/api/runs/{run['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "cancelled" and r.json()["error"] is None
    rest = events_until_closed(ws)
    assert rest[-1]["type"] == "status" and rest[-1]["state"] == "cancelled", rest
    # Cancelling an ended run changes nothing.
    r = carl.delete(f"/api/runs/{run['id']}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"


def test_another_tenant_gets_404_for_my_run_everywhere(engine_proc):
    alice, bob = engine_proc.client("runs-alice2"), engine_proc.client("runs-bob")
    run = start(alice, WAITS)
    try:
        for method in ("GET", "DELETE"):
            r = bob.request(method, f"/api/runs/{run['id']}")
            assert r.status_code == 404, r.text
            assert error_of(r)["code"] == "not_found"
            assert run["id"] in error_of(r)["message"] and "runs-alice2" not in r.text
        never = bob.get("/api/runs/r000000000000")
        assert never.status_code == 404 and error_of(never)["message"].replace("r000000000000", run["id"]) \
            == error_of(bob.get(f"/api/runs/{run['id']}"))["message"]       # same answer as a run that never existed
        assert run["id"] not in [x["id"] for x in bob.get("/api/runs").json()["runs"]]
        with pytest.raises(websocket.WebSocketBadStatusException) as e:
            connect(engine_proc, bob.token, run["id"])
        assert e.value.status_code == 404
        with pytest.raises(websocket.WebSocketBadStatusException) as e:
            websocket.create_connection(ws_url(engine_proc, run["id"]), timeout=30)
        assert e.value.status_code == 401
        with pytest.raises(websocket.WebSocketBadStatusException) as e:       # no token in the URL
            websocket.create_connection(ws_url(engine_proc, run["id"], f"?token={alice.token}"), timeout=30)
        assert e.value.status_code == 401
        assert alice.get(f"/api/runs/{run['id']}").json()["state"] in ("queued", "running")   # bob changed nothing
    finally:
        assert alice.delete(f"/api/runs/{run['id']}").status_code == 200


def test_a_hostile_run_ends_with_one_line_while_others_generate(engine_proc):
    admin = engine_proc.client("runs-admin", admin=True)
    # Unlimited fuel, so the wall-clock deadline is what must stop the loop (on a quiet
    # machine the default fuel could run out first and the test would depend on speed).
    r = admin.put("/api/admin/quotas/users/runs-mallory", json={"max_run_seconds": 3, "fuel_per_run": None})
    assert r.status_code == 200, r.text
    mallory, olive = engine_proc.client("runs-mallory"), engine_proc.client("runs-olive")
    body = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    t0 = time.monotonic()
    assert olive.post("/api/generate", json=body).status_code == 200
    print(f"a generate alone took {time.monotonic() - t0:.2f} s")
    run = start(mallory, SPINS)
    ws = connect(engine_proc, mallory.token, run["id"])
    assert next_of_type(ws, "status")["state"] == "running"
    t0 = time.monotonic()
    r = olive.post("/api/generate", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["tokens"]) == 4
    print(f"a generate beside a spinning run took {time.monotonic() - t0:.2f} s")
    end = events_until_closed(ws)[-1]
    assert end["state"] == "failed" and end["error"] == mallory.get(f"/api/runs/{run['id']}").json()["error"]
    assert "\n" not in end["error"] and "max_run_seconds = 3" in end["error"], end["error"]
    # olive's runs are not affected by mallory's quota, and the engine still runs inferlets.
    ok = start(olive, "print('still here')\n")
    out = events_until_closed(connect(engine_proc, olive.token, ok["id"]))
    assert out[-1]["state"] == "finished" and any(e.get("text") == "still here\n" for e in out)


def test_max_runs_gives_429_naming_the_limit(engine_proc):
    admin = engine_proc.client("runs-admin", admin=True)
    assert admin.put("/api/admin/quotas/users/runs-quinn", json={"max_runs": 1}).status_code == 200
    quinn = engine_proc.client("runs-quinn")
    first = start(quinn, WAITS)
    r = quinn.post("/api/runs", json={"source": "print(1)\n"})
    assert r.status_code == 429, r.text
    err = error_of(r)
    assert err["limit"] == "max_runs" and err["value"] == 1 and "max_runs" in err["message"]
    assert quinn.delete(f"/api/runs/{first['id']}").json()["state"] == "cancelled"
    second = start(quinn, "print(1)\n")
    assert wait_state(quinn, second["id"])["state"] == "finished"


@pytest.mark.parametrize("body, code", [
    ({}, "missing_parameter"),
    ({"args": {}}, "missing_parameter"),
    ({"source": "print(1)", "component": "AAAA"}, "missing_parameter"),
    ({"source": 3}, "invalid_type"),
    ({"source": "print(1)", "args": [1]}, "invalid_type"),
    ({"source": "print(1)", "args": None}, "invalid_type"),
    ({"component": "not base64!"}, "invalid_component"),
    ({"source": "print(1)", "priority": "high"}, "unknown_parameter"),
])
def test_bad_run_requests_are_refused_with_the_field_named(engine_proc, body, code):
    r = engine_proc.client("runs-eve").post("/api/runs", json=body)
    assert r.status_code == 400, r.text
    assert error_of(r)["code"] == code


def test_a_component_that_is_not_one_fails_as_a_run(engine_proc):
    eve = engine_proc.client("runs-eve")
    run = start(eve, "")
    assert wait_state(eve, run["id"])["state"] == "finished"
    r = eve.post("/api/runs", json={"component": base64.b64encode(b"\0asm junk").decode()})
    assert r.status_code == 201 and r.json()["kind"] == "component"
    info = wait_state(eve, r.json()["id"])
    assert info["state"] == "failed" and info["error"].startswith("the component could not be compiled")


def test_admins_list_and_cancel_anyones_runs(engine_proc):
    admin = engine_proc.client("runs-admin", admin=True)
    zoe = engine_proc.client("runs-zoe")
    run = start(zoe, WAITS)
    r = admin.get("/api/admin/runs")
    assert r.status_code == 200, r.text
    assert run["id"] in {x["id"] for x in r.json()["runs"] if x["owner"] == "runs-zoe"}
    assert zoe.get("/api/admin/runs").status_code == 403
    assert zoe.delete(f"/api/admin/runs/runs-zoe/{run['id']}").status_code == 403
    assert admin.delete(f"/api/admin/runs/runs-alice/{run['id']}").status_code == 404
    r = admin.delete(f"/api/admin/runs/runs-zoe/{run['id']}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    assert zoe.get(f"/api/runs/{run['id']}").json()["state"] == "cancelled"


def test_many_followers_and_a_disconnecting_one_do_not_disturb_the_run(engine_proc):
    hal = engine_proc.client("runs-hal")
    src = "from potluck_inferlet import receive\nfor i in range(3):\n    print('tick', i)\n    receive(timeout=0.2)\n"
    run = start(hal, src)
    quitter = connect(engine_proc, hal.token, run["id"])
    quitter.close()                       # gone at once: its subscription must go with it
    results = []
    threads = [threading.Thread(target=lambda: results.append(events_until_closed(
        connect(engine_proc, hal.token, run["id"])))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 3 and all(r == results[0] for r in results)
    assert "".join(e["text"] for e in results[0] if e["type"] == "output") == "tick 0\ntick 1\ntick 2\n"
    assert results[0][-1]["state"] == "finished"


def test_the_events_websocket_refuses_with_the_apis_json_errors(engine_proc):
    """Before the upgrade the WebSocket answers like every endpoint: status, JSON error, Bearer challenge."""
    ruth = engine_proc.client("runs-ruth")
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        websocket.create_connection(ws_url(engine_proc, "r000000000000"), timeout=30)
    assert e.value.status_code == 401
    assert e.value.resp_headers["www-authenticate"] == 'Bearer realm="potluck"'
    assert json.loads(e.value.resp_body)["error"]["code"] == "unauthorized"
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        connect(engine_proc, ruth.token, "r000000000000")
    assert e.value.status_code == 404
    assert json.loads(e.value.resp_body) == ruth.get("/api/runs/r000000000000").json()     # the same answer as GET


@pytest.mark.parametrize("since", ["²", "١", "-1", "1.5", "9" * 30, ""])
def test_since_that_is_not_an_ascii_event_number_is_a_one_line_400(engine_proc, since):
    una = engine_proc.client("runs-una")
    run = start(una, "print(1)\n")
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        connect(engine_proc, una.token, run["id"], "?since=" + requests_quote(since))
    assert e.value.status_code == 400, e.value.resp_body
    err = json.loads(e.value.resp_body)["error"]
    assert err["param"] == "since" and "\n" not in err["message"] and "event number" in err["message"]


def test_since_past_the_end_of_an_ended_run_gets_the_final_status_then_close(engine_proc):
    una = engine_proc.client("runs-una")
    run = start(una, "print('hi')\n")
    assert wait_state(una, run["id"])["state"] == "finished"
    events = events_until_closed(connect(engine_proc, una.token, run["id"], "?since=5000"))
    assert [e["type"] for e in events] == ["status"] and events[0]["state"] == "finished", events


def test_since_past_the_end_of_a_live_run_still_gets_its_final_status(engine_proc):
    una = engine_proc.client("runs-una")
    run = start(una, ECHO)
    ws = connect(engine_proc, una.token, run["id"], "?since=100000")
    ws.send(json.dumps("stop"))
    events = events_until_closed(ws)
    assert events[-1]["type"] == "status" and events[-1]["state"] == "finished", events
    assert all(e["seq"] >= 100000 or e["type"] == "status" for e in events)


@pytest.mark.parametrize("frame", ["NaN", "[1, Infinity]", '{"x": -Infinity}', "1e999", "{not json", "[1,"])
def test_a_message_that_is_not_strict_json_is_a_one_line_error_frame_and_nothing_is_dropped(engine_proc, frame):
    una = engine_proc.client("runs-una")
    run = start(una, ECHO)
    ws = connect(engine_proc, una.token, run["id"])
    assert next_of_type(ws, "message")["body"] == "ready"
    ws.send(frame)
    err = next_of_type(ws, "error")["error"]
    assert err["code"] == "invalid_json" and "\n" not in err["message"] and "internal" not in err["message"], err
    ws.send(json.dumps({"n": 1}))
    assert next_of_type(ws, "message")["body"] == {"echo": {"n": 1}}       # the socket and the run go on
    ws.send(json.dumps("stop"))
    events = events_until_closed(ws)
    assert events[-1]["state"] == "finished"


def requests_quote(text: str) -> str:
    from urllib.parse import quote
    return quote(text, safe="")
