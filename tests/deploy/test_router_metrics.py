"""/metrics has what a router in front of several engines reads: requests waiting, KV cache use,
step load. Scraped from a real engine process while it works; none of them carries a label."""

from __future__ import annotations

import requests

ROUTER_GAUGES = ("potluck_requests_waiting", "potluck_queue_depth", "potluck_running_generations",
                 "potluck_kv_cache_usage_ratio", "potluck_step_busy_ratio", "potluck_step_tokens_last",
                 "potluck_step_token_budget")


def scrape(engine) -> dict[str, str]:
    """The unlabelled samples of /metrics, by name (value text)."""
    text = engine.client("root", admin=True).get("/metrics").text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line.split(" ", 1)[0]:
            name, value = line.rsplit(" ", 1)
            out[name] = value
    return out


def gauges(engine) -> dict[str, float]:
    got = scrape(engine)
    missing = [g for g in ROUTER_GAUGES if g not in got]
    assert not missing, f"router gauges missing or labelled: {missing}"
    return {g: float(got[g]) for g in ROUTER_GAUGES}


def test_router_gauges_show_an_engine_at_work_and_at_rest(router_engine):
    budget = router_engine.status()["profile"]["batch_token_budget"]
    client = router_engine.client("rosa")
    # A long streamed generation: once its first token arrives it is running and its next
    # decode is queued for the batch loop until we hang up.
    with client.post("/api/generate", json={"prompt": "Tell me a very long story.", "max_tokens": 2000,
                                            "ignore_eos": True, "stream": True}, stream=True) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert any(line.startswith(b"data:") for line in lines)
        busy = gauges(router_engine)
    assert busy["potluck_queue_depth"] >= 1
    assert busy["potluck_running_generations"] >= 1
    assert 0 < busy["potluck_kv_cache_usage_ratio"] <= 1
    assert 0 < busy["potluck_step_busy_ratio"] <= 1
    assert 1 <= busy["potluck_step_tokens_last"] <= busy["potluck_step_token_budget"] == budget


def test_a_saved_context_shows_in_kv_use(router_engine):
    client = router_engine.client("sven")
    before = gauges(router_engine)["potluck_kv_cache_usage_ratio"]
    r = client.put("/api/contexts/notes", json={"prompt": "A saved context for the router metrics. " * 20})
    assert r.status_code == 200, r.text
    after = gauges(router_engine)
    assert after["potluck_kv_cache_usage_ratio"] > before
    total = float(scrape(router_engine)["potluck_kv_pages_total"])
    assert after["potluck_kv_cache_usage_ratio"] * total >= 1


def test_router_gauges_need_the_metrics_token_like_the_rest(router_engine):
    assert requests.get(router_engine.url + "/metrics", timeout=30).status_code == 401
