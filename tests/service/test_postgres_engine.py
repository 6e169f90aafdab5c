"""The real engine on a real PostgreSQL (``db_url``), across a restart (issue 15, finding 6).

The store's own tests run on both databases (``tests/unit/test_store.py``); here the whole
``potluck engine`` process runs on PostgreSQL: tokens, a quota override, usage, a saved context,
an inferlet's key-value store and the run history all survive a restart.
"""

from __future__ import annotations

import time

import pytest

from support.engine_process import EngineProcess

pytestmark = pytest.mark.timeout(900)


def make_tokens(url: str, proc: EngineProcess, names: dict[str, bool]) -> None:
    from potluck.engine.store import Store
    store = Store(url)
    try:
        for name, admin in names.items():
            proc._tokens[name] = store.create_token(name, is_admin=admin)
    finally:
        store.close()


def wait_run(client, run_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = client.get(f"/api/runs/{run_id}").json()
        if info["state"] in ("finished", "failed", "cancelled"):
            return info
        assert time.monotonic() < deadline, info
        time.sleep(0.3)


def test_the_engine_keeps_everything_on_postgresql_across_a_restart(postgres, tmp_path):
    url = postgres.create_database()
    (tmp_path / "potluck_config.py").write_text(f"c.PotluckApp.db_url = {url!r}\n")
    proc = EngineProcess(tmp_path)
    make_tokens(url, proc, {"pg-alice": False, "pg-root": True})
    proc.start()
    try:
        admin, alice = proc.client("pg-root", admin=True), proc.client("pg-alice")
        assert admin.put("/api/admin/quotas/users/pg-alice", json={"kv_store_bytes": 5000}).status_code == 200
        r = alice.post("/api/generate", json={"prompt": "Hello", "max_tokens": 3})
        assert r.status_code == 200, r.text
        assert alice.put("/api/contexts/kept", json={"tokens": [5, 6, 7, 8]}).status_code == 200
        src = "from potluck_inferlet import kv\nkv.put('note', 'on postgres')\nkv.put('big', 'x' * 6000)\n"
        run = alice.post("/api/runs", json={"source": src}).json()
        info = wait_run(alice, run["id"])
        assert info["state"] == "failed" and "kv_store_bytes" in info["error"], info     # the first put stayed
    finally:
        assert proc.stop() == 0, proc.log_tail()
    proc.start()
    try:
        me = alice.get("/api/me").json()
        assert me["quota"]["kv_store_bytes"] == 5000 and me["quota_source"]["kv_store_bytes"] == "user"
        assert me["usage_total"]["decode_tokens"] >= 2 and me["usage_total"]["requests"] >= 1
        assert alice.get("/api/contexts/kept").json()["n_tokens"] == 4
        assert alice.get(f"/api/runs/{run['id']}").json()["state"] == "failed"
        src = "from potluck_inferlet import kv\nassert kv.get('note') == 'on postgres', kv.get('note')\n"
        again = alice.post("/api/runs", json={"source": src}).json()
        assert wait_run(alice, again["id"])["state"] == "finished"
    finally:
        assert proc.stop() == 0, proc.log_tail()
