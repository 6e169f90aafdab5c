"""The pool contract: rendezvous pinning, the pool a tenant gets, and how a client finds and follows its engine."""

from __future__ import annotations

import collections

import pytest

from potluck.engine.pools import EngineRouter, NoEngine, PoolMap, choose_pool, rendezvous_rank

ENGINES = [f"potluck-gpu-{i}" for i in range(4)]
TENANTS = [f"user{i}" for i in range(2000)]


def test_rendezvous_spreads_tenants_and_removing_an_engine_moves_only_its_own():
    first = {t: rendezvous_rank(t, ENGINES)[0] for t in TENANTS}
    counts = collections.Counter(first.values())
    assert set(counts) == set(ENGINES) and min(counts.values()) > len(TENANTS) / len(ENGINES) * 0.8
    after = {t: rendezvous_rank(t, ENGINES[1:])[0] for t in TENANTS}
    moved = {t for t in TENANTS if first[t] != after[t]}
    assert moved == {t for t in TENANTS if first[t] == ENGINES[0]}
    # ... each to its own second choice, so a failed engine's tenants spread over the rest
    assert all(after[t] == rendezvous_rank(t, ENGINES)[1] for t in moved)
    assert len(set(after[t] for t in moved)) == 3


def test_the_first_pool_in_the_hubs_order_wins_and_unknown_names_fall_to_the_default():
    order = ["h100", "a10", "cpu"]
    assert choose_pool({"cpu", "a10"}, order, "cpu") == "a10"
    assert choose_pool({"h200-typo"}, order, "cpu") == "cpu"
    assert choose_pool((), order, "cpu") == "cpu"


def test_pool_map_round_trips_and_refuses_a_bad_one():
    m = PoolMap({"gpu": {"potluck-gpu-0": "http://a/", "potluck-gpu-1": "http://b/"},
                 "cpu": {"potluck-cpu-0": "http://c/"}}, "cpu")
    assert PoolMap.from_json(m.to_json()) == m
    assert m.engine_at("http://b/") == "potluck-gpu-1" and m.pool_of("potluck-cpu-0") == "cpu"
    assert m.first_contacts("ada")[0] == "potluck-cpu-0"      # the default pool is asked first
    with pytest.raises(ValueError, match="POTLUCK_POOLS is not a Potluck pool map"):
        PoolMap.from_json('{"pools": 3}')
    with pytest.raises(ValueError, match="default_pool 'tpu' is not one of the pools"):
        PoolMap({"cpu": {"e": "u"}}, "tpu")


class Hub:
    """Engines as the router sees them over HTTP: who answers, and whom each names as the tenant's
    (``views``: an engine whose view of who is alive lags names someone else)."""

    def __init__(self, pools: PoolMap):
        self.pools = pools
        self.up = {e for engines in pools.pools.values() for e in engines}
        self.owner: dict[str, str] = {}
        self.views: dict[str, str] = {}
        self.asked: list[str] = []

    def get(self, url: str, timeout: float):
        engine = next(e for p in self.pools.pools.values() for e, u in p.items() if url.startswith(u))
        self.asked.append(engine)
        if engine not in self.up:
            raise OSError("connection refused")
        owner = self.views.get(engine, self.owner["ada"])
        return 200, {"route": {"pool": self.pools.pool_of(owner), "engine": owner}}


@pytest.fixture
def hub():
    m = PoolMap({"gpu": {"potluck-gpu-0": "http://a/", "potluck-gpu-1": "http://b/"},
                 "cpu": {"potluck-cpu-0": "http://c/"}}, "cpu")
    h = Hub(m)
    h.owner["ada"] = "potluck-gpu-1"
    return h


def test_a_router_goes_where_the_engines_say_and_moves_with_one_notice(hub, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    notices = []
    r = EngineRouter(hub.pools, "ada", hub.get, notice=notices.append, wait=5)
    assert r.url() == "http://b/" and r.pool == "gpu" and notices == []
    hub.up.discard("potluck-gpu-1")
    hub.owner["ada"] = "potluck-gpu-0"          # the live engines noticed and took ada over
    assert r.failed("connection refused") == "potluck-gpu-0"
    assert len(notices) == 1 and "potluck-gpu-1 is not answering" in notices[0] and "potluck-gpu-0" in notices[0]


def test_while_the_engines_still_count_a_dead_engine_as_the_tenants_the_router_waits_then_says_so(hub, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])
    monkeypatch.setattr("time.sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    r = EngineRouter(hub.pools, "ada", hub.get, wait=3)
    r.url()
    hub.up.discard("potluck-gpu-1")              # gone, but not yet stale in the engines' view
    with pytest.raises(NoEngine, match="not answering: potluck-gpu-1"):
        r.failed()
    assert 3 <= clock[0] <= 4                    # bounded by wait: never a hang


def test_the_router_moves_only_once_the_new_engine_itself_agrees(hub, monkeypatch):
    ticks = []
    monkeypatch.setattr("time.sleep", lambda s: (ticks.append(s), hub.views.clear()))
    r = EngineRouter(hub.pools, "ada", hub.get, wait=5)
    r.url()
    hub.up.discard("potluck-gpu-1")
    hub.owner["ada"] = "potluck-gpu-0"                 # the cpu engine has seen the departure ...
    hub.views["potluck-gpu-0"] = "potluck-gpu-1"       # ... gpu-0 not yet (it would answer 421)
    assert r.failed() == "potluck-gpu-0" and len(ticks) == 1
