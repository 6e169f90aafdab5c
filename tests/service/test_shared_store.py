"""Two real engine processes on one PostgreSQL behave as one hub (issue 16, shared state).

Engines ``a`` and ``b`` (``potluck engine``, unpooled: each admits everyone) share one database
through ``$POTLUCK_DB_URL``. Through HTTP only: a token made by ``potluck token create`` works on
both and its revocation is refused by both at once; a context saved on one is listed, opened and
continued on the other (re-filled from its tokens), replaced or deleted on one and never served
stale by the other; an admin's override set on one applies on the other at the tenant's next
request; usage, quotas and saved-context counts read the same from either; an inferlet's
key-value store and run history cross over; and both engines flushing one tenant's usage at
once lose no count. Skipped, with the reason, where PostgreSQL is not installed.
"""

from __future__ import annotations

import threading
import time

import pytest

from support.engine_process import EngineProcess, error_of, potluck

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def database(postgres):
    return postgres.create_database()


@pytest.fixture(scope="module")
def engines(database, tmp_path_factory):
    """Engines a and b on one database, started side by side (each start is ~20 s on 2 cores)."""
    procs = [EngineProcess(tmp_path_factory.mktemp(f"engine-{name}"), env={"POTLUCK_DB_URL": database},
                           args=(f"--PotluckEngine.engine_name=shared-{name}",))
             for name in ("a", "b")]
    failed = []

    def start(proc):
        try:
            proc.start()
        except Exception as e:
            failed.append(e)
    threads = [threading.Thread(target=start, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not failed, failed
        yield procs
    finally:
        for p in procs:
            assert p.stop() == 0, p.log_tail()


def token(database: str, name: str, admin: bool = False) -> str:
    """``potluck token create`` against the shared database (no engine involved)."""
    args = ["token", "create", name, f"--db-url={database}"] + (["--admin"] if admin else [])
    return potluck(*args).stdout.strip().splitlines()[-1]


def clients(engines, database: str, name: str, admin: bool = False):
    secret = token(database, name, admin)
    for proc in engines:
        proc._tokens[name] = secret
    return [proc.client(name) for proc in engines]


def eventually(check, what: str, timeout: float = 60):
    """Wait for ``check()`` to be truthy (another engine's flush is seconds away); its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.2)


def wait_run(client, run_id: str, timeout: float = 240) -> dict:
    return eventually(lambda: (lambda r: r if r["state"] in ("finished", "failed", "cancelled") else None)(
        client.get(f"/api/runs/{run_id}").json()), f"run {run_id} ended", timeout)


def test_a_token_made_once_works_on_both_engines_and_its_revocation_on_both_at_once(engines, database):
    on_a, on_b = clients(engines, database, "sh-tom")
    assert on_a.get("/api/me").json()["name"] == on_b.get("/api/me").json()["name"] == "sh-tom"
    potluck("token", "revoke", "sh-tom", f"--db-url={database}")
    for client in (on_a, on_b):
        r = client.get("/api/me")
        assert r.status_code == 401 and "revoked" in error_of(r)["message"], r.text


def test_a_context_saved_on_one_engine_is_continued_replaced_and_deleted_from_the_other(engines, database):
    on_a, on_b = clients(engines, database, "sh-ann")
    _, other_b = clients(engines, database, "sh-bea")
    assert on_a.put("/api/contexts/plan", json={"tokens": [504, 505, 506, 507]}).status_code == 200
    assert on_b.get("/api/contexts").json()["contexts"] == [{"name": "plan", "n_tokens": 4}]
    r = on_b.post("/api/generate", json={"context": "plan", "tokens": [508], "max_tokens": 2})
    assert r.status_code == 200, r.text           # b re-filled it from its tokens and continued it
    assert r.json()["usage"]["prompt_tokens"] == 5
    assert other_b.get("/api/contexts/plan").status_code == 404      # still ann's namespace alone

    assert on_a.put("/api/contexts/plan", json={"tokens": [601, 602]}).status_code == 200
    assert on_b.get("/api/contexts/plan").json()["n_tokens"] == 2    # b never serves its stale copy

    assert on_b.delete("/api/contexts/plan").status_code == 204
    assert on_a.get("/api/contexts").json()["contexts"] == []
    assert error_of(on_a.get("/api/contexts/plan"))["code"] == "not_found"
    assert on_a.post("/api/generate", json={"context": "plan", "tokens": [5], "max_tokens": 1}).status_code == 404


def test_an_override_set_on_one_engine_applies_on_the_other_at_the_next_request(engines, database):
    admin_a, admin_b = clients(engines, database, "sh-root", admin=True)
    on_a, on_b = clients(engines, database, "sh-cid")
    assert on_b.get("/api/me").json()["quota"]["saved_contexts"] == 256          # b knows cid's default
    r = admin_a.put("/api/admin/quotas/users/sh-cid", json={"max_tokens_per_request": 3, "saved_contexts": 1})
    assert r.status_code == 200, r.text
    r = on_b.post("/api/generate", json={"prompt": "Hi", "max_tokens": 5})
    assert r.status_code == 413 and error_of(r)["limit"] == "max_tokens_per_request", r.text
    me = on_b.get("/api/me").json()
    assert me["quota"]["max_tokens_per_request"] == 3 and me["quota_source"]["max_tokens_per_request"] == "user"
    assert on_a.put("/api/contexts/one", json={"tokens": [7, 8]}).status_code == 200
    r = on_b.put("/api/contexts/two", json={"tokens": [9]})                       # counted across engines
    assert r.status_code == 429 and error_of(r)["limit"] == "saved_contexts", r.text
    for admin in (admin_a, admin_b):
        row = next(t for t in admin.get("/api/admin/tenants").json()["tenants"] if t["name"] == "sh-cid")
        assert row["override"] == {"max_tokens_per_request": 3, "saved_contexts": 1}
        assert row["quota"]["max_tokens_per_request"] == 3 and row["saved_contexts"] == 1
    assert admin_b.delete("/api/admin/quotas/users/sh-cid").status_code == 204
    assert on_a.post("/api/generate", json={"prompt": "Hi", "max_tokens": 5}).status_code == 200


def test_usage_is_the_same_seen_from_either_engine_and_concurrent_flushes_lose_nothing(engines, database):
    admin_a, admin_b = clients(engines, database, "sh-root", admin=True)
    on_a, on_b = clients(engines, database, "sh-dot")
    errors = []

    def generate(client, n):
        for _ in range(n):
            r = client.post("/api/generate", json={"prompt": "Count:", "max_tokens": 2, "ignore_eos": True})
            if r.status_code != 200:
                errors.append(r.text)
    # Both engines write the same tenant's hour and minute rows at once.
    threads = [threading.Thread(target=generate, args=(c, 3)) for c in (on_a, on_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    def totals():
        seen = [c.get("/api/me").json()["usage_total"] for c in (on_a, on_b)]
        seen += [next(t for t in admin.get("/api/admin/tenants").json()["tenants"] if t["name"] == "sh-dot")[
            "usage_total"] for admin in (admin_a, admin_b)]
        return seen if all(s == seen[0] for s in seen) and seen[0]["requests"] == 6 else None
    usage = eventually(totals, "6 requests counted alike by both engines' /api/me and admin views")[0]
    assert usage["decode_tokens"] == 12
    history = [admin.get("/api/admin/usage", params={"resolution": "minute"}).json()["users"]["sh-dot"]
               for admin in (admin_a, admin_b)]
    assert history[0] == history[1] and sum(row[5] for row in history[0]) == 6     # the requests column
    for proc in engines:
        assert "UniqueViolation" not in proc.log_tail(200) and "usage flush failed" not in proc.log_tail(200)


def test_an_inferlets_key_value_store_and_run_history_cross_engines(engines, database):
    on_a, on_b = clients(engines, database, "sh-eve")
    src = "from potluck_inferlet import kv\nkv.put('note', 'from a')\n"
    run = on_a.post("/api/runs", json={"source": src}).json()
    assert wait_run(on_a, run["id"])["state"] == "finished"
    assert on_b.get(f"/api/runs/{run['id']}").json()["state"] == "finished"
    assert run["id"] in [r["id"] for r in on_b.get("/api/runs").json()["runs"]]
    src = "from potluck_inferlet import kv\nassert kv.get('note') == 'from a', kv.get('note')\nkv.delete('note')\n"
    again = on_b.post("/api/runs", json={"source": src}).json()
    assert wait_run(on_b, again["id"])["state"] == "finished"
    src = "from potluck_inferlet import kv\nassert kv.get('note') is None\n"
    last = on_a.post("/api/runs", json={"source": src}).json()
    assert wait_run(on_a, last["id"])["state"] == "finished"
