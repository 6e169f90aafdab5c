"""Run history across the engines of a hub: an engine that stops or goes stale has its unfinished runs
failed by the others' placement ("engine X stopped"), and only its own (SQLite, a fake clock)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from potluck.engine.placement import Placement
from potluck.engine.store import Store

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'potluck.sqlite'}")
    yield s
    s.close()


def join(store, name: str, clock: Clock) -> Placement:
    """An engine of pool cpu, registered and with one beat done; the test drives every later beat."""
    store.register_engine(name, "cpu", now=clock())
    p = Placement(store, name=name, pool="cpu", pools=("cpu",), stale_seconds=6.0, clock=clock)
    p.refresh()
    return p


def run(run_id: str, state: str = "running") -> dict:
    return {"id": run_id, "owner": "alice", "state": state, "created": T0.isoformat()}


def states(store) -> dict[str, tuple[str, str | None]]:
    return {r["id"]: (r["state"], r["error"]) for r in store.list_runs(None)}


def test_an_engine_stopping_or_going_stale_has_its_unfinished_runs_failed_by_the_others(store):
    clock = Clock()
    a, b, c = (join(store, name, clock) for name in ("cpu-a", "cpu-b", "cpu-c"))
    try:
        store.save_run(run("a1"), engine="cpu-a")
        store.save_run(run("b1"), engine="cpu-b")
        store.save_run(run("b2", "finished"), engine="cpu-b")
        store.save_run(run("c1", "queued"), engine="cpu-c")
        a.refresh()                                         # everyone live: nothing changes
        assert {k: v[0] for k, v in states(store).items()} == {"a1": "running", "b1": "running",
                                                               "b2": "finished", "c1": "queued"}
        b.stop()                                            # a clean stop
        clock.t += timedelta(seconds=3)
        store.engine_heartbeat("cpu-c", None, now=clock())  # c's last heartbeat
        a.refresh()
        got = states(store)
        assert got["b1"] == ("failed", "engine cpu-b stopped while this run was running")
        assert got["b2"] == ("finished", None) and got["a1"][0] == "running" and got["c1"][0] == "queued"
        clock.t += timedelta(seconds=7)                     # c crashed: its heartbeat is 7 s old
        a.refresh()
        assert states(store)["c1"] == ("failed", "engine cpu-c stopped answering (no heartbeat for 6 s) "
                                                 "while this run was running")
        assert states(store)["a1"][0] == "running"
    finally:
        a.stop()
        c.stop()


def test_an_engine_starting_fails_the_runs_of_engines_already_gone_but_not_of_live_ones(store):
    clock = Clock()
    store.register_engine("cpu-old", "cpu", now=clock())
    store.mark_engine_stopped("cpu-old", now=clock())       # scaled down, never coming back
    store.register_engine("cpu-b", "cpu", now=clock())
    store.save_run(run("old1"), engine="cpu-old")
    store.save_run(run("b1"), engine="cpu-b")
    a = join(store, "cpu-a", clock)
    try:
        got = states(store)
        assert got["old1"] == ("failed", "engine cpu-old stopped while this run was running")
        assert got["b1"] == ("running", None)
    finally:
        a.stop()
