"""Prometheus metrics of one engine service.

Two sources: ``on_step`` is an engine step listener (it runs on the batch-loop
thread after every forward step, so it only adds to counters and histograms),
and ``_StatusCollector`` reads ``engine.status()`` and the per-tenant reports
when Prometheus scrapes (gauges: queue depth, KV pages, tenants). Each service
has its own registry, so two engines in one process (tests) never mix.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SEQ_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)


class EngineMetrics:
    def __init__(self, engine) -> None:
        self.registry = r = CollectorRegistry()
        self.tokens = Counter("potluck_tokens", "Tokens run through the model, by tenant and kind (prefill, decode)",
                              ["tenant", "kind"], registry=r)
        self.step_seconds = Histogram("potluck_step_seconds", "Time of one batched forward step",
                                      buckets=_STEP_BUCKETS, registry=r)
        self.batch_sequences = Histogram("potluck_batch_sequences", "Sequences in one forward step",
                                         buckets=_SEQ_BUCKETS, registry=r)
        self.batch_tokens = Histogram("potluck_batch_tokens", "Tokens in one forward step",
                                      buckets=_TOKEN_BUCKETS, registry=r)
        self.generations = Counter("potluck_generations", "API generations finished, by tenant and finish reason",
                                   ["tenant", "finish_reason"], registry=r)
        self.http_requests = Counter("potluck_http_requests", "HTTP requests, by handler, method and status",
                                     ["handler", "method", "status"], registry=r)
        self._status = _StatusCollector(engine)
        r.register(self._status)
        # process_resident_memory_bytes, process_open_fds, ... (Linux): what a leak shows up in.
        ProcessCollector(registry=r)

    def watch_runs(self, runs) -> None:
        """Report the inferlet ``RunManager``'s gauges too (it starts after the metrics)."""
        self._status.runs = runs

    def on_step(self, info: dict) -> None:
        """Engine step listener (batch-loop thread): counters only, no I/O, no engine calls."""
        self.step_seconds.observe(info["seconds"])
        self.batch_sequences.observe(info["seqs"])
        self.batch_tokens.observe(info["tokens"])
        for tenant, (prefill, decode) in info["usage"].items():
            if prefill:
                self.tokens.labels(tenant, "prefill").inc(prefill)
            if decode:
                self.tokens.labels(tenant, "decode").inc(decode)

    def generation_finished(self, tenant: str, reason: str) -> None:
        self.generations.labels(tenant, reason).inc()

    def observe_request(self, handler: str, method: str, status: int) -> None:
        self.http_requests.labels(handler, method, str(status)).inc()


class _StatusCollector:
    """Gauges read from the engine at scrape time."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.runs = None

    def describe(self):
        return []      # collected lazily: registering must not call into an engine that may not run yet

    def collect(self):
        s = self.engine.status()
        kv = s["kv"]

        def gauge(name, doc, value):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            return g
        yield gauge("potluck_queue_depth", "Forward requests waiting for the batch loop", s["queue_depth"])
        yield gauge("potluck_running_generations", "Generations in progress", s["running_generations"])
        yield gauge("potluck_active_tenants", "Tenants with work queued or running", s["active_tenants"])
        yield gauge("potluck_kv_pages_used", "KV pages in use on the device", kv["used_pages"])
        yield gauge("potluck_kv_pages_free", "KV pages free on the device", kv["free_pages"])
        yield gauge("potluck_kv_pages_total", "KV pages in the device pool", kv["total_pages"])
        yield gauge("potluck_kv_pages_on_host", "KV pages swapped out to host memory", kv["pages_on_host"])
        held = GaugeMetricFamily("potluck_tenant_kv_pages", "KV pages held, by tenant", labels=["tenant"])
        for report in self.engine.tenant_reports():
            held.add_metric([report["name"]], report["kv_pages"])
        yield held
        yield gauge("potluck_threads", "Python threads in the engine process", threading.active_count())
        if self.runs is not None:
            st = self.runs.stats()
            yield gauge("potluck_runs_running", "Inferlet runs holding a thread", st["threads"])
            yield gauge("potluck_runs_queued", "Inferlet runs waiting for a thread", st["queued"])
