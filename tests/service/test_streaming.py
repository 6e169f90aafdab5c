"""Server-sent events from /api/generate, and what a client that hangs up leaves behind (nothing)."""

from __future__ import annotations

import json
import time

import requests


def events(response: requests.Response):
    """(event, data) pairs of an SSE response, as they arrive."""
    kind = None
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, json.loads(line[6:])
            kind = None


def test_stream_sends_each_token_then_done_with_the_same_text(engine_proc):
    judy = engine_proc.client("judy")
    body = {"prompt": "A haiku about autumn:", "max_tokens": 6}
    with judy.post("/api/generate", json={**body, "stream": True}, stream=True) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        got = list(events(r))
    tokens = [d for kind, d in got if kind == "token"]
    kinds = [kind for kind, _ in got]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"token"}
    done = got[-1][1]
    assert "".join(t["text"] for t in tokens) == done["text"]
    assert [t["token"] for t in tokens if t["token"] is not None] == done["tokens"]
    assert done["usage"]["completion_tokens"] == len(done["tokens"])
    assert judy.post("/api/generate", json=body).json()["text"] == done["text"]


def test_client_disconnect_mid_stream_frees_its_pages(engine_proc):
    kim = engine_proc.client("kim")
    r = kim.post("/api/generate", stream=True,
                 json={"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True, "stream": True})
    assert r.status_code == 200
    stream = events(r)
    for _ in range(3):
        kind, _data = next(stream)
        assert kind == "token"
    during = engine_proc.status()
    assert during["running_generations"] == 1 and during["kv"]["used_pages"] > 0

    r.close()      # hang up mid-stream

    # kim's own pages: other tests' tenants may keep saved contexts (which hold pages) in this engine.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = engine_proc.status()
        held = kim.get("/api/me").json()["kv_pages"]
        if s["running_generations"] == 0 and held == 0:
            break
        time.sleep(0.1)
    assert s["running_generations"] == 0 and held == 0, s
    assert s["queue_depth"] == 0
    assert kim.get("/api/me").json()["usage"]["decode_tokens"] < 400


def test_openai_stream_disconnect_also_cancels(engine_proc):
    kim = engine_proc.client("kim")
    r = kim.post("/v1/chat/completions", stream=True,
                 json={"model": "default", "messages": [{"role": "user", "content": "Tell me a long story."}],
                       "max_tokens": 400, "ignore_eos": True, "stream": True})
    lines = r.iter_lines()
    assert next(line for line in lines if line.startswith(b"data: "))
    r.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and engine_proc.status()["running_generations"]:
        time.sleep(0.1)
    s = engine_proc.status()
    assert s["running_generations"] == 0 and kim.get("/api/me").json()["kv_pages"] == 0, s
