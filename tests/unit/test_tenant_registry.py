"""``TenantRegistry``: quotas resolved in layers, overrides, and counters owned by the batch loop."""

from __future__ import annotations

import threading
import time

from potluck.engine.quota import Quota
from potluck.engine.tenants import TenantRegistry


def test_quota_resolves_defaults_then_groups_then_the_user_override_and_tells_the_listener():
    told = []
    reg = TenantRegistry(Quota(tokens_per_minute=100, weight=1.0), on_quota=told.append)
    t = reg.resolve("alice", {"students": {"tokens_per_minute": 500, "weight": 2}})
    assert (t.quota.tokens_per_minute, t.quota.weight) == (500, 2)
    assert t.quota_source["tokens_per_minute"] == "group:students"
    fields = reg.set_override("alice", {"tokens_per_minute": 50}, actor="admin")
    reg.apply_override("alice", fields)
    assert t.quota.tokens_per_minute == 50 and t.quota_source["tokens_per_minute"] == "user"
    assert t.quota.weight == 2                                   # untouched fields keep their layer
    assert reg.delete_override("alice", actor="admin")
    reg.apply_override("alice", None)
    assert t.quota.tokens_per_minute == 500
    assert [x.name for x in told] == ["alice"] * 3


def test_step_usage_reaches_the_tenant_and_its_rate_window():
    reg = TenantRegistry(Quota())
    reg.resolve("bob")
    reg.charge_tokens({"bob": [30, 2]})
    r = reg.report("bob")
    assert r["usage"]["prefill_tokens"] == 30 and r["usage"]["decode_tokens"] == 2
    assert r["usage"]["tokens_last_minute"] == 32
    assert reg.report("nobody") is None


def test_run_counters_reported_from_run_threads_are_applied_by_the_loop(engine):
    engine.tenant("erin")
    loop_thread = engine.loop._thread
    applied_on = []
    set_active = engine.tenants.set_active_runs

    def spy(name, n):
        applied_on.append(threading.current_thread())
        set_active(name, n)
    engine.tenants.set_active_runs = spy
    worker = threading.Thread(target=lambda: (engine.note_active_runs("erin", 3), engine.charge_fuel("erin", 1234)))
    worker.start()
    worker.join()
    deadline = time.time() + 10
    while engine.tenant_report("erin")["usage"]["fuel"] != 1234 and time.time() < deadline:
        time.sleep(0.01)
    usage = engine.tenant_report("erin")["usage"]
    assert usage["active_runs"] == 3 and usage["fuel"] == 1234
    assert applied_on == [loop_thread]


def test_a_returning_tenant_whose_inputs_are_unchanged_is_not_resolved_on_the_loop(engine):
    groups = {"students": {"tokens_per_minute": 500}}
    first = engine.tenant("fay", groups)
    calls = []
    real_call = engine.loop.call

    def counting(fn, *args, **kw):
        calls.append(getattr(fn, "__name__", fn))
        return real_call(fn, *args, **kw)
    engine.loop.call = counting
    try:
        # the same groups, admin flag and override: answered without waiting for a step boundary
        assert engine.tenant("fay", groups) is first and calls == []
        # anything that changes the quota still goes through the loop, which owns the tenant
        again = engine.tenant("fay", {"students": {"tokens_per_minute": 900}})
        assert again.quota.tokens_per_minute == 900 and calls == ["_resolve_tenant"]
        assert engine.tenant("fay", {"students": {"tokens_per_minute": 900}}, is_admin=True).is_admin
        assert calls == ["_resolve_tenant"] * 2
    finally:
        engine.loop.call = real_call
