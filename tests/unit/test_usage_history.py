"""The usage history: per-minute and per-hour buckets that the admin dashboard plots."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from potluck.engine.store import Store, UsageLedger
from potluck.engine.store.usage import sum_history

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'potluck.sqlite'}")
    yield s
    s.close()


def test_usage_is_kept_per_minute_and_per_hour(store):
    store.add_usage("alice", T0 + timedelta(seconds=5), prefill_tokens=10, requests=1)
    store.add_usage("alice", T0 + timedelta(seconds=50), decode_tokens=3)
    store.add_usage("alice", T0 + timedelta(minutes=2, seconds=1), decode_tokens=7)
    store.add_usage("bob", T0 + timedelta(minutes=61), prefill_tokens=100)

    minutes = store.usage_history("minute", T0)
    assert list(minutes["alice"]) == [T0, T0 + timedelta(minutes=2)]
    assert minutes["alice"][T0]["prefill_tokens"] == 10 and minutes["alice"][T0]["decode_tokens"] == 3
    assert minutes["alice"][T0 + timedelta(minutes=2)]["decode_tokens"] == 7
    assert list(minutes["bob"]) == [T0 + timedelta(minutes=61)]

    hours = store.usage_history("hour", T0)
    assert hours["alice"] == {T0: {"prefill_tokens": 10, "decode_tokens": 10, "page_seconds": 0.0, "fuel": 0,
                                   "requests": 1}}
    assert list(hours["bob"]) == [T0 + timedelta(hours=1)]
    # The hour rows stay the accounting record: totals are unchanged by the minute rows.
    assert store.usage_totals("alice")["decode_tokens"] == 10


def test_history_starts_at_the_bucket_since_falls_in_and_stops_at_until(store):
    for m in range(5):
        store.add_usage("alice", T0 + timedelta(minutes=m), decode_tokens=1)
    got = store.usage_history("minute", T0 + timedelta(minutes=1, seconds=30), until=T0 + timedelta(minutes=3))
    assert list(got["alice"]) == [T0 + timedelta(minutes=m) for m in (1, 2, 3)]


def test_old_minutes_are_pruned_and_hours_kept(store):
    store.add_usage("alice", T0, decode_tokens=5)
    store.add_usage("alice", T0 + timedelta(days=3), decode_tokens=1)
    assert store.prune_minutes(T0 + timedelta(days=1)) == 1
    assert list(store.usage_history("minute", T0)["alice"]) == [T0 + timedelta(days=3)]
    assert sum(a["decode_tokens"] for a in store.usage_history("hour", T0)["alice"].values()) == 6


def test_ledger_history_includes_pending_usage_once(store):
    ledger = UsageLedger(store)
    now = datetime.now(timezone.utc)
    ledger.record("alice", decode_tokens=4)
    before = ledger.history("minute", now - timedelta(minutes=5))
    assert sum(a["decode_tokens"] for a in before["alice"].values()) == 4      # not flushed yet
    assert ledger.flush()
    after = ledger.history("minute", now - timedelta(minutes=5))
    assert sum(a["decode_tokens"] for a in after["alice"].values()) == 4      # flushed: not twice
    hours = ledger.history("hour", now - timedelta(hours=2))
    assert sum(a["decode_tokens"] for a in hours["alice"].values()) == 4


def test_the_flush_thread_prunes_minutes_past_the_retention(store):
    store.add_usage("alice", datetime.now(timezone.utc) - timedelta(hours=3), decode_tokens=2)
    ledger = UsageLedger(store, flush_interval=0.01, minute_retention=timedelta(hours=1))
    ledger.start()
    try:
        ledger.record("alice", decode_tokens=1)
        ledger.flush_soon()
        # Until the new minute is written and the old one pruned (the old one alone is also one row:
        # waiting for "one row" could stop before the thread did anything).
        for _ in range(500):
            minutes = store.usage_history("minute", datetime.now(timezone.utc) - timedelta(hours=4))["alice"]
            if [a["decode_tokens"] for a in minutes.values()] == [1]:
                break
            ledger._stop.wait(0.01)
    finally:
        ledger.close()
    minutes = store.usage_history("minute", datetime.now(timezone.utc) - timedelta(hours=4))["alice"]
    assert [a["decode_tokens"] for a in minutes.values()] == [1]


def test_a_groups_history_is_the_sum_of_its_members():
    a = {T0: {"prefill_tokens": 1, "decode_tokens": 2, "page_seconds": 0.5, "fuel": 0, "requests": 1}}
    b = {T0: {"prefill_tokens": 10, "decode_tokens": 20, "page_seconds": 0.0, "fuel": 3, "requests": 1},
         T0 + timedelta(minutes=1): {"prefill_tokens": 5, "decode_tokens": 0, "page_seconds": 0, "fuel": 0,
                                     "requests": 0}}
    got = sum_history({"alice": a, "bob": b, "carol": a}, ["alice", "bob", "nobody"])
    assert got[T0] == {"prefill_tokens": 11, "decode_tokens": 22, "page_seconds": 0.5, "fuel": 3, "requests": 2}
    assert list(got) == [T0, T0 + timedelta(minutes=1)]
