"""Two real engines of one pool sharing one PostgreSQL: a tenant is on one engine at a time.

Both ``potluck engine`` processes run with ``--pool=cpu`` and their own ``--engine-name``, and
find the database through ``$POTLUCK_DB_URL``. A tenant's requests on the engine that does not
serve them get 421 ``wrong_engine`` naming the one that does (the OpenAI door in its own error
shape); ``/api/me`` on either engine names the same route. When one engine stops (SIGTERM) the
other serves its tenants at once, and a ``tokens_per_minute`` limit used up on the stopped
engine still binds on the other (the shared ledger seeds the tenant's windows there).
"""

from __future__ import annotations

import threading
import time

import pytest

from potluck.engine.pools import rendezvous_rank
from support.engine_process import EngineProcess, error_of

pytestmark = pytest.mark.timeout(900)

ENGINES = ("potluck-cpu-0", "potluck-cpu-1")
ADMIN = "pool-root"
TENANTS = [f"pool-user{i}" for i in range(16)]


def tenant_of(engine: str, skip: tuple[str, ...] = ()) -> str:
    """A tenant name whose rendezvous ranking puts ``engine`` first among ENGINES."""
    return next(n for n in TENANTS if rendezvous_rank(n, ENGINES)[0] == engine and n not in skip)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, postgres):
    url = postgres.create_database()
    procs = {}
    for name in ENGINES:
        data = tmp_path_factory.mktemp(name)
        procs[name] = EngineProcess(data, env={"POTLUCK_DB_URL": url},
                                    args=(f"--engine-name={name}", "--pool=cpu", "--accelerator=cpu"))
    # One database, so the tokens are the same on both engines.
    from potluck.engine.store import Store
    store = Store(url)
    try:
        tokens = {n: store.create_token(n) for n in TENANTS}
        tokens[ADMIN] = store.create_token(ADMIN, is_admin=True)
    finally:
        store.close()
    for proc in procs.values():
        proc._tokens = dict(tokens)
    # Both start at once: two model loads on two cores take about as long as one after the other,
    # but the imports overlap.
    errors = []

    def start(proc):
        try:
            proc.start()
        except Exception as e:          # reported below, with the log
            errors.append(e)
    threads = [threading.Thread(target=start, args=(p,)) for p in procs.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        # An engine sees one that started after it at its next heartbeat: wait until both see both.
        deadline = time.monotonic() + 30
        for name, proc in procs.items():
            for owner in ENGINES:
                me = proc.client(tenant_of(owner))
                while me.get("/api/me").json()["route"]["engine"] != owner:
                    assert time.monotonic() < deadline, f"{name} never saw {owner}:\n{proc.log_tail()}"
                    time.sleep(0.2)
        yield procs
    finally:
        codes = {name: proc.stop() for name, proc in procs.items()}
        assert set(codes.values()) == {0}, {n: procs[n].log_tail() for n in procs}


def test_each_engine_says_who_it_is_and_lists_the_other(pair):
    for name, proc in pair.items():
        status = proc.client(ADMIN, admin=True).get("/api/status").json()
        assert status["engine"] == {"name": name, "pool": "cpu", "accelerator": "cpu"}
        listed = proc.client(ADMIN, admin=True).get("/api/admin/engines").json()
        alive = {e["name"]: e["alive"] for e in listed["engines"]}
        assert alive == {n: True for n in ENGINES}, listed
        assert all(e["pool"] == "cpu" and e["load"] is not None for e in listed["engines"]), listed
        # Every engine's own metrics, whoever the admin is "served" by.
        assert proc.client(ADMIN, admin=True).get("/metrics").status_code == 200
    # Not for tenants.
    r = pair[ENGINES[0]].client(tenant_of(ENGINES[0])).get("/api/admin/engines")
    assert r.status_code == 403


def test_a_tenant_on_the_wrong_engine_gets_421_naming_the_right_one(pair):
    a, b = ENGINES
    tenant = tenant_of(a)
    wrong = pair[b].client(tenant)
    r = wrong.post("/api/generate", json={"prompt": "Hello", "max_tokens": 2})
    assert r.status_code == 421, r.text
    err = error_of(r)
    assert err["code"] == "wrong_engine" and err["engine"] == a and err["pool"] == "cpu"
    assert err["message"] == f"you are served by engine {a} of pool 'cpu'; this is {b}"
    for method, path in (("GET", "/api/contexts"), ("GET", "/api/runs"), ("GET", "/v1/models"),
                         ("GET", "/api/runs/nope/events")):
        assert wrong.request(method, path).status_code == 421, path
    # The OpenAI door: OpenAI's error shape, the same code and names.
    r = wrong.post("/v1/chat/completions", json={"model": "any", "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 421
    err = r.json()["error"]
    assert err["code"] == "wrong_engine" and err["engine"] == a and "message" in err and "type" in err
    # The right engine serves it.
    r = pair[a].client(tenant).post("/api/generate", json={"prompt": "Hello", "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_api_me_names_the_same_route_on_both_engines(pair):
    for owner in ENGINES:
        tenant = tenant_of(owner)
        routes = [pair[name].client(tenant).get("/api/me").json()["route"] for name in ENGINES]
        assert routes == [{"pool": "cpu", "engine": owner}] * 2


def test_stopping_an_engine_moves_its_tenants_at_once_with_their_rate_limit(pair):
    a, b = ENGINES
    tenant = tenant_of(a, skip=(tenant_of(a),))     # not the one the other tests used
    admin = pair[b].client(ADMIN, admin=True)        # admin endpoints: any engine
    r = admin.put(f"/api/admin/quotas/users/{tenant}", json={"tokens_per_minute": 40})
    assert r.status_code == 200, r.text
    on_a = pair[a].client(tenant)
    used = 0
    while True:         # use the minute's tokens up on engine A
        r = on_a.post("/api/generate", json={"prompt": "Count: one, two,", "max_tokens": 8, "ignore_eos": True})
        if r.status_code == 429:
            break
        assert r.status_code == 200, r.text
        used += r.json()["usage"]["prompt_tokens"] + r.json()["usage"]["completion_tokens"]
        assert used <= 40
    assert error_of(r)["limit"] == "tokens_per_minute"

    assert pair[a].stop() == 0, pair[a].log_tail()
    # Engine B takes the tenant at its next beat (a clean stop is seen at once, not after
    # engine_stale_seconds): meanwhile it may still name A.
    on_b = pair[b].client(tenant)
    deadline = time.monotonic() + 15
    while (route := on_b.get("/api/me").json()["route"])["engine"] != b:
        assert route["engine"] == a and time.monotonic() < deadline, route
        time.sleep(0.2)
    r = on_b.post("/api/generate", json={"prompt": "Count: one, two,", "max_tokens": 8, "ignore_eos": True})
    assert r.status_code == 429, r.text
    err = error_of(r)
    assert err["limit"] == "tokens_per_minute" and err["value"] == 40
    # Everyone else of A's is B's now too, and A is listed as not alive.
    other = tenant_of(a)
    assert pair[b].client(other).post("/api/generate", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200
    listed = {e["name"]: e for e in admin.get("/api/admin/engines").json()["engines"]}
    assert not listed[a]["alive"] and listed[a]["stopped_at"] and listed[b]["alive"]
