"""SIGKILL the engine in the middle of work: clients get an error (not a hang, not a short answer
passed off as whole), and a restart on the same data dir finds everything it promised to keep.

Kept: the usage of every request that ended before the kill (written to the database when a
request ends, not only every ``usage_flush_interval`` seconds: this engine's interval is an hour,
so only the write at request end can make the test pass), saved contexts, quota overrides, and
the run history, where runs the kill cut off are ``failed`` with a line saying why.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import httpx
import openai
import pytest
import requests
import websocket

from potluck.kernel.client import Client as KernelClient
from potluck.kernel.client import PotluckError
from support.engine_process import EngineProcess

pytestmark = pytest.mark.timeout(600)

LONG = {"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True}
WAITS = "from potluck_inferlet import receive, send\nsend('waiting')\nreceive(timeout=300)\n"
QUICK = "print('quick')\n"
DONE = ("finished", "failed", "cancelled")


def db_usage(proc, tenant: str) -> tuple[int, int, int]:
    """(prefill, decode, requests) of a tenant as the database has them, read beside the engine."""
    with sqlite3.connect(proc.data_dir / "potluck.sqlite", timeout=10) as db:
        row = db.execute("SELECT COALESCE(SUM(prefill_tokens), 0), COALESCE(SUM(decode_tokens), 0), "
                         "COALESCE(SUM(requests), 0) FROM usage WHERE tenant = ?", (tenant,)).fetchone()
    return tuple(int(x) for x in row)


def wait_for(check, timeout: float = 60, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def in_thread(fn) -> dict:
    """Run ``fn`` in a thread; the dict gets its 'result' or 'error', and 'thread'."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:         # noqa: BLE001 - the test looks at what was raised
            box["error"] = e
    box["thread"] = t = threading.Thread(target=target, daemon=True)
    t.start()
    return box


def test_sigkill_mid_generation_then_restart(tmp_path):
    proc = EngineProcess(tmp_path, usage_flush_interval=3600)
    proc.start()
    try:
        _kill_and_restart(proc)
    finally:
        proc.stop()


def _kill_and_restart(proc: EngineProcess) -> None:
    ann, bob, admin = proc.client("ann"), proc.client("bob"), proc.client("root", admin=True)

    # ---- what must survive
    done = ann.post("/api/generate", json={"prompt": "The capital of France is", "max_tokens": 5})
    assert done.status_code == 200, done.text
    used = done.json()["usage"]
    # The ledger's interval is an hour here: only the write at request end puts it in the database.
    expected = (used["prompt_tokens"], used["completion_tokens"], 1)
    assert wait_for(lambda: db_usage(proc, "ann") == expected, timeout=10), (db_usage(proc, "ann"), expected)

    saved = bob.put("/api/contexts/notes", json={"prompt": "Potluck notes: the engine is shared."})
    assert saved.status_code in (200, 201), saved.text
    assert admin.put("/api/admin/quotas/users/bob", json={"tokens_per_minute": 12345}).status_code == 200

    quick = bob.post("/api/runs", json={"source": QUICK}).json()["id"]
    assert wait_for(lambda: bob.get(f"/api/runs/{quick}").json()["state"] in DONE)
    waiting = bob.post("/api/runs", json={"source": WAITS}).json()["id"]
    assert wait_for(lambda: bob.get(f"/api/runs/{waiting}").json()["state"] == "running")

    # ---- work in flight when the engine dies
    raw = requests.post(proc.url + "/api/generate", json={**LONG, "stream": True}, stream=True, timeout=60,
                        headers={"Authorization": f"Bearer {proc.token('cal')}"})
    raw_lines = raw.iter_lines()
    assert next(line for line in raw_lines if line.startswith(b"data: "))

    kernel = KernelClient(proc.url, proc.token("dee"), timeout=120)
    kernel_stream = iter(kernel.stream(**LONG))
    assert next(kernel_stream) is not None

    oai = openai.OpenAI(base_url=proc.url + "/v1", api_key=proc.token("eve"), max_retries=0, timeout=60)
    oai_stream = oai.chat.completions.create(model="default", stream=True, max_tokens=400,
                                             messages=[{"role": "user", "content": "Tell me a long story."}],
                                             extra_body={"ignore_eos": True})
    oai_chunks = iter(oai_stream)
    next(oai_chunks)

    kernel_plain = KernelClient(proc.url, proc.token("fay"), timeout=120)
    plain = in_thread(lambda: kernel_plain.generate(**LONG))
    follower = in_thread(lambda: KernelClient(proc.url, proc.token("bob"), timeout=120).follow(waiting))
    assert wait_for(lambda: proc.status()["running_generations"] == 4, timeout=60), proc.status()
    time.sleep(0.3)       # the follower's socket is open and the plain request is being generated

    proc.kill()
    killed_at = time.monotonic()

    # ---- every client hears about it at once, as an error
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for _ in raw_lines:
            pass
    with pytest.raises(PotluckError) as e:
        for _ in kernel_stream:
            pass
    message = str(e.value)
    assert proc.url in message and "incomplete" in message and "\n" not in message, message
    # The openai package passes httpx's error through: the body ended before its last chunk.
    with pytest.raises((openai.APIConnectionError, httpx.RemoteProtocolError)):
        for _ in oai_chunks:
            pass
    for box in (plain, follower):
        box["thread"].join(timeout=30)
        assert not box["thread"].is_alive(), "a client hung after the engine died"
    assert isinstance(plain.get("error"), PotluckError), plain
    assert proc.url in str(plain["error"]) and "stopped or restarted" in str(plain["error"]), plain["error"]
    assert isinstance(follower.get("error"), PotluckError), follower     # it asks for the end: unreachable
    assert proc.url in str(follower["error"]), follower["error"]
    assert time.monotonic() - killed_at < 30

    # ---- restart on the same data dir
    proc.start()

    assert wait_for(lambda: ann.get("/api/me").json()["usage_total"]["requests"] >= 1)
    total = ann.get("/api/me").json()["usage_total"]
    assert (total["prefill_tokens"], total["decode_tokens"], total["requests"]) == expected, total

    me = bob.get("/api/me").json()
    assert me["quota"]["tokens_per_minute"] == 12345 and me["override"] == {"tokens_per_minute": 12345}, me
    ctx = bob.get("/api/contexts/notes")
    assert ctx.status_code == 200 and "Potluck notes" in ctx.json()["text"], ctx.text
    cont = bob.post("/api/generate", json={"context": "notes", "prompt": " In short,", "max_tokens": 3})
    assert cont.status_code == 200 and cont.json()["usage"]["cached_tokens"] >= 0, cont.text

    cut = bob.get(f"/api/runs/{waiting}").json()
    assert cut["state"] == "failed", cut
    assert cut["error"].startswith("the engine stopped while this run was running (restarted at "), cut
    assert cut["finished"] is not None
    assert bob.get(f"/api/runs/{quick}").json()["state"] == "finished"
    listed = {r["id"]: r["state"] for r in bob.get("/api/runs").json()["runs"]}
    assert listed == {quick: "finished", waiting: "failed"}, listed
    # Past runs stay private: another tenant gets 404, exactly as for a run that never existed.
    assert ann.get(f"/api/runs/{waiting}").status_code == 404
    assert ann.delete(f"/api/runs/{waiting}").status_code == 404
    assert all(r["owner"] != "bob" for r in ann.get("/api/runs").json()["runs"])
    everyone = {r["id"]: r for r in admin.get("/api/admin/runs").json()["runs"]}
    assert everyone[waiting]["state"] == "failed" and everyone[waiting]["owner"] == "bob"
    assert admin.get(f"/api/admin/runs/bob/{waiting}").json()["state"] == "failed"
    # Cancelling a run that has ended answers its record; following it gives the final word.
    assert bob.delete(f"/api/runs/{waiting}").json()["state"] == "failed"
    ws = websocket.create_connection(proc.url.replace("http", "ws", 1) + f"/api/runs/{waiting}/events",
                                     header=[f"Authorization: token {proc.token('bob')}"], timeout=30)
    try:
        final = json.loads(ws.recv())
    finally:
        ws.close()
    assert final["type"] == "status" and final["state"] == "failed" and "engine stopped" in final["error"]
    result = KernelClient(proc.url, proc.token("bob")).follow(waiting)
    assert result.state == "failed" and "engine stopped" in result.error

    # Nothing of the killed engine's work lingers, and the engine works.
    status = proc.status()
    assert status["running_generations"] == 0 and status["kv"]["used_pages"] == proc.client("bob").get(
        "/api/me").json()["kv_pages"]
    again = ann.post("/api/generate", json={"prompt": "Hello", "max_tokens": 3})
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 3
