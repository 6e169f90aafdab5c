"""Placement: which engine of a pool serves a tenant, from the shared engines table (SQLite, a fake clock).

The engines table judges liveness by one clock (here a fake one, in production the database's):
a heartbeat older than ``stale_seconds`` or a clean stop takes an engine out. The placement's
view decides who serves whom by rendezvous over the live engines of the tenant's pool; stopping
one engine moves only its tenants; a tenant coming to an engine starts with the token windows
the shared ledger has for it.
"""

from __future__ import annotations

import time

from datetime import datetime, time as dtime, timedelta, timezone

import pytest
from traitlets import TraitError

from potluck.engine.config import EngineConfig
from potluck.engine.errors import BadRequest
from potluck.engine.placement import Placement, WrongEngine
from potluck.engine.pools import MISDIRECTED, WRONG_ENGINE, rendezvous_rank
from potluck.engine.store import Store, UsageLedger
from potluck.engine.quota import Quota, resolve_quota, validate_quota_fields

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
TENANTS = [f"user{i}" for i in range(60)]


class Clock:
    def __init__(self, t: datetime = T0) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def tick(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'potluck.sqlite'}")
    yield s
    s.close()


def placement(store, name: str, clock: Clock, **kwargs) -> Placement:
    kwargs.setdefault("pool", "cpu")
    kwargs.setdefault("pools", ("h100", "cpu"))
    kwargs.setdefault("default_pool", "cpu")
    return Placement(store, name=name, stale_seconds=6.0, clock=clock, **kwargs)


def register(store, clock: Clock, *names: str, pool: str = "cpu") -> None:
    for name in names:
        store.register_engine(name, pool, now=clock())


# ---------------------------------------------------------------- the engines table
def test_an_engine_is_live_until_its_heartbeat_is_stale_or_it_stops(store):
    clock = Clock()
    register(store, clock, "cpu-a", "cpu-b", "cpu-c")
    register(store, clock, "gpu-a", pool="h100")
    clock.tick(4)
    store.engine_heartbeat("cpu-b", {"queue_depth": 3}, now=clock())
    store.engine_heartbeat("cpu-c", None, now=clock())
    store.mark_engine_stopped("cpu-c", now=clock())
    clock.tick(3)       # cpu-a's heartbeat is 7 s old, cpu-b's 3 s
    assert store.live_engines("cpu", 6.0, now=clock()) == ["cpu-b"]
    assert store.live_engines("h100", 6.0, now=clock()) == []
    rows = {e["name"]: e for e in store.list_engines(6.0, now=clock())}
    assert rows["cpu-b"]["alive"] and rows["cpu-b"]["load"] == {"queue_depth": 3}
    assert not rows["cpu-a"]["alive"] and rows["cpu-a"]["heartbeat_age_seconds"] == 7.0
    assert not rows["cpu-c"]["alive"] and rows["cpu-c"]["stopped_at"] is not None
    # A restart makes the row live again, and says a live row by that name was there.
    assert store.register_engine("cpu-b", "cpu", now=clock()) is True
    assert store.register_engine("cpu-c", "cpu", now=clock()) is False
    assert store.live_engines("cpu", 6.0, now=clock()) == ["cpu-b", "cpu-c"]


def test_the_database_clock_judges_liveness_when_no_clock_is_given(store):
    store.register_engine("cpu-a", "cpu")
    store.engine_heartbeat("cpu-a", {"queue_depth": 0})
    assert store.live_engines("cpu", 6.0) == ["cpu-a"]
    store.mark_engine_stopped("cpu-a")
    assert store.live_engines("cpu", 6.0) == []


# ---------------------------------------------------------------- routing
def test_each_tenant_has_exactly_one_engine_and_every_engine_agrees(store):
    clock = Clock()
    register(store, clock, "cpu-a", "cpu-b", "cpu-c")
    views = [placement(store, n, clock) for n in ("cpu-a", "cpu-b", "cpu-c")]
    for v in views:
        v.refresh()
    for tenant in TENANTS:
        routes = {v.route(tenant).to_json()["engine"] for v in views}
        assert len(routes) == 1
        assert sum(v.serves(tenant) for v in views) == 1
        assert routes == {rendezvous_rank(tenant, ["cpu-a", "cpu-b", "cpu-c"])[0]}
    assert {views[0].route(t).engine for t in TENANTS} == {"cpu-a", "cpu-b", "cpu-c"}


def test_stopping_one_engine_moves_only_its_tenants(store):
    clock = Clock()
    register(store, clock, "cpu-a", "cpu-b", "cpu-c")
    a = placement(store, "cpu-a", clock)
    a.refresh()
    before = {t: a.route(t).engine for t in TENANTS}
    store.mark_engine_stopped("cpu-c", now=clock())
    a.refresh()
    after = {t: a.route(t).engine for t in TENANTS}
    moved = {t for t in TENANTS if before[t] != after[t]}
    assert moved == {t for t in TENANTS if before[t] == "cpu-c"} and moved
    assert "cpu-c" not in after.values()


def test_a_crashed_engine_drops_out_after_stale_seconds_and_this_engine_always_counts_itself(store):
    clock = Clock()
    register(store, clock, "cpu-a", "cpu-b")
    a = placement(store, "cpu-a", clock)
    a.refresh()
    assert a.live("cpu") == ("cpu-a", "cpu-b")
    clock.tick(5)
    a.refresh()                     # cpu-b's last heartbeat is 5 s old: still live
    assert a.live("cpu") == ("cpu-a", "cpu-b")
    clock.tick(2)
    a.refresh()                     # 7 s: gone; every tenant of the pool is cpu-a's
    assert a.live("cpu") == ("cpu-a",)
    assert all(a.serves(t) for t in TENANTS)
    # Even with its own row gone stale in the view (a slow beat), this engine counts itself.
    b = placement(store, "cpu-b", clock)
    b.refresh()
    assert "cpu-b" in b.live("cpu")


def test_the_door_names_the_tenants_engine_and_pool(store):
    clock = Clock()
    register(store, clock, "cpu-a", "cpu-b")
    register(store, clock, "gpu-a", pool="h100")
    a = placement(store, "cpu-a", clock)
    a.refresh()
    theirs = next(t for t in TENANTS if a.route(t).engine == "cpu-b")
    with pytest.raises(WrongEngine) as e:
        a.admit(theirs)
    err = e.value.to_json()["error"]
    assert e.value.status == MISDIRECTED == 421 and err["code"] == WRONG_ENGINE
    assert err["engine"] == "cpu-b" and err["pool"] == "cpu"
    assert err["message"] == "you are served by engine cpu-b of pool 'cpu'; this is cpu-a"
    # A tenant whose group names the h100 pool is served there, whatever the cpu ranking says.
    mine = next(t for t in TENANTS if a.route(t).engine == "cpu-a")
    a.admit(mine)
    with pytest.raises(WrongEngine) as e:
        a.admit(mine, {"gpu-users": {"pool": "h100"}})
    assert e.value.to_json()["error"]["engine"] == "gpu-a"
    # A pool with no live engine: 421 all the same, saying so.
    store.mark_engine_stopped("gpu-a", now=clock())
    a.refresh()
    with pytest.raises(WrongEngine) as e:
        a.admit(mine, {"gpu-users": {"pool": "h100"}})
    assert e.value.to_json()["error"]["engine"] is None and "no engine running" in e.value.message


def test_the_pool_is_the_first_of_the_hubs_pools_any_group_or_the_override_names(store):
    clock = Clock()
    register(store, clock, "cpu-a")
    register(store, clock, "gpu-a", pool="h100")
    a = placement(store, "cpu-a", clock)
    a.refresh()
    assert a.route("ann").pool == "cpu"                                             # nothing named: default
    assert a.route("ann", {"x": {"pool": "nope"}}).pool == "cpu"                   # unknown names ignored
    assert a.route("ann", {"x": {"pool": "cpu"}, "y": {"pool": "h100"}}).pool == "h100"   # hub's order
    store.set_override("bob", {"pool": "h100"}, "root")
    a.refresh()                     # overrides' pools are read with the heartbeat, not per request
    assert a.route("bob", {"x": {"pool": "cpu"}}).to_json() == {"pool": "h100", "engine": "gpu-a"}
    # The quota shows the same choice, and where it came from.
    q, source = resolve_quota(Quota(), {"x": {"pool": "cpu"}}, {"pool": "h100"}, pools=("h100", "cpu"),
                              default_pool="cpu")
    assert (q.pool, source["pool"]) == ("h100", "user")
    q, source = resolve_quota(Quota(), {"x": {"tokens_per_minute": 5}}, None, pools=("h100", "cpu"),
                              default_pool="cpu")
    assert (q.pool, source["pool"]) == ("cpu", "default")


def test_a_pool_in_a_quota_must_be_a_pool_name():
    assert validate_quota_fields({"pool": "h100"}) == {"pool": "h100"}
    assert validate_quota_fields({"pool": None}) == {"pool": ""}
    for bad in ("H100", "gpu pool", 5, "-x"):
        with pytest.raises(BadRequest) as e:
            validate_quota_fields({"pool": bad}, where="group gpu")
        assert e.value.message.startswith("group gpu: ") and "\n" not in e.value.message


def test_an_engine_without_a_pool_serves_everyone(store):
    clock = Clock()
    p = Placement(store, name="solo", clock=clock)
    p.start()
    try:
        assert p.route("anyone", {"g": {"pool": "h100"}}).to_json() == {"pool": "", "engine": "solo"}
        p.admit("anyone", {"g": {"pool": "h100"}})
        assert store.live_engines("", 6.0, now=clock()) == ["solo"]
    finally:
        p.stop()
    assert store.live_engines("", 6.0, now=clock()) == []


# ---------------------------------------------------------------- settings
def test_pool_settings_must_agree_with_each_other():
    assert EngineConfig(pool="cpu").pool_settings() == ("cpu", ("cpu",), "cpu")
    assert EngineConfig(pool="cpu", pools=["h100", "cpu"], default_pool="cpu").pool_settings() == (
        "cpu", ("h100", "cpu"), "cpu")
    assert EngineConfig().pool_settings() == ("", (), "")
    for kwargs, says in (({"pool": "cpu", "pools": ["h100"]}, "pool 'cpu' is not one of pools (h100)"),
                         ({"pool": "cpu", "default_pool": "h100"}, "default_pool 'h100' is not one of pools"),
                         ({"pools": ["cpu"]}, "pool is not")):
        with pytest.raises(TraitError, match=says.replace("(", r"\(").replace(")", r"\)")):
            EngineConfig(**kwargs).pool_settings()
    with pytest.raises(TraitError, match="lowercase"):
        EngineConfig(pool="CPU")
    with pytest.raises(TraitError, match="twice"):
        EngineConfig(pools=["cpu", "cpu"])


# ---------------------------------------------------------------- token windows across a move
def test_a_tenant_coming_to_this_engine_starts_with_the_ledgers_minute_and_day(store):
    clock = Clock()
    register(store, clock, "cpu-a", "cpu-b")
    ledger = UsageLedger(store)
    a = placement(store, "cpu-a", clock, ledger=ledger)
    a.refresh()
    tenant = next(t for t in TENANTS if a.route(t).engine == "cpu-b")
    now = datetime.now(timezone.utc)
    # Used on cpu-b: 40 tokens in the last seconds, 100 a few minutes ago, 7 on another tenant.
    store.add_usage(tenant, now - timedelta(seconds=5), prefill_tokens=30, decode_tokens=10)
    store.add_usage(tenant, now - timedelta(minutes=5), prefill_tokens=100)
    store.add_usage("someone-else", now, prefill_tokens=7)
    midnight = datetime.combine(now.date(), dtime(), tzinfo=timezone.utc)
    today = 40 + (100 if now - timedelta(minutes=5) >= midnight else 0)

    seen = []

    def resolve(window):
        seen.append(window)
        return "resolved"

    # Still cpu-b's: refused, nothing seeded.
    with pytest.raises(WrongEngine):
        a.admit(tenant)
    # cpu-b stops: the tenant is cpu-a's; its first resolve here gets the ledger's windows, later ones keep them.
    store.mark_engine_stopped("cpu-b", now=clock())
    a.refresh()
    a.admit(tenant)
    assert a.resolve(tenant, resolve) == "resolved"
    window = seen[-1]
    assert window is not None and window.minute() == 40 and window.day() == today
    a.admit(tenant)
    a.resolve(tenant, resolve)
    assert seen[-1] is None
    # It moves away (cpu-b is back) and comes back: seeded again, not counted from stale windows.
    store.register_engine("cpu-b", "cpu", now=clock())
    a.refresh()
    with pytest.raises(WrongEngine):
        a.admit(tenant)
    store.mark_engine_stopped("cpu-b", now=clock())
    a.refresh()
    a.admit(tenant)
    a.resolve(tenant, resolve)
    assert seen[-1] is not None and seen[-1].minute() == 40


def test_minute_buckets_count_until_their_whole_minute_has_left_the_window(store):
    ledger = UsageLedger(store)
    p = Placement(store, name="solo", ledger=ledger)
    minute = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    store.add_usage("ann", minute + timedelta(seconds=10), decode_tokens=25)
    now = (minute + timedelta(seconds=100)).timestamp()     # 90 s after the tokens, 40 s after their minute
    window = p.seeded_window("ann", now=now)
    assert window.minute(now=now) == 25                      # the safe side: the minute may hold recent ones
    assert window.minute(now=now + 20) == 0                   # the whole minute is over 60 s ago


def test_an_engine_that_is_stopping_sends_its_own_tenants_on_at_once(store):
    clock = Clock()
    register(store, clock, "cpu-a", "cpu-b")
    a = placement(store, "cpu-a", clock)
    a.refresh()
    mine = [t for t in TENANTS if a.route(t).engine == "cpu-a"]
    a.stop()      # a request still reaching it on a kept-alive connection must not be admitted
    assert mine and all(a.route(t).engine == "cpu-b" for t in mine)
    assert store.live_engines("cpu", 6.0, now=clock()) == ["cpu-b"]


def test_an_engine_whose_heartbeat_fails_steps_aside(store, monkeypatch):
    clock = Clock()
    register(store, clock, "cpu-a", "cpu-b")
    a = placement(store, "cpu-a", clock)
    a.refresh()
    mine = [t for t in TENANTS if a.route(t).engine == "cpu-a"]
    # its heartbeat has not reached the database for longer than stale_seconds: the others have
    # taken its tenants, so it must not serve them a second time (two token windows)
    real = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: real() + 7)
    assert mine and all(a.route(t).engine == "cpu-b" for t in mine)
