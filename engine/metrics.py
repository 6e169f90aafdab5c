"""Prometheus metrics of one engine service.

Three sources, all wired to the engine by ``EngineMetrics``' constructor:
``on_step`` (an engine step listener) and ``on_generation`` (an engine
generation listener) run on the batch-loop thread, after every forward step
and at the end of every generation, so they only add to counters and
histograms: no I/O, no engine calls. ``_StatusCollector`` reads
``engine.status()`` and the per-tenant reports when Prometheus scrapes
(gauges: queue depth, KV pages, tenants). Each service has its own registry,
so two engines in one process (tests) never mix.

Some gauges are for routers: a gateway in front of several engines (llm-d's endpoint picker,
an Envoy load-balancing filter) picks an engine by requests waiting, KV cache use and step load
(``_StepLoad``: the share of the last seconds spent in forward steps, the last step's tokens
against the budget). They carry no labels at all: one number per engine.

What users feel (time to first token, time between tokens) is labelled by
priority class only, never by user name: a scraper learns how interactive
and batch work fare, not who was active when. Per-user percentiles are in
the admin API's tenant reports (``engine/latency.py``).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .scheduler import PRIORITIES

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Time to first token includes the queue and the whole prefill: from milliseconds on a GPU to
# tens of seconds for a long prompt on a busy CPU.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# measured / predicted step time: 1 is a calibrated cost model; the fit aims at relative error.
_RATIO_BUCKETS = (0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
_CLASS_OF = {level: name for name, level in PRIORITIES.items()}      # Sequence.priority -> label
_SEQ_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)
# Step load is the busy share of this many seconds: long enough to span many steps and the gaps
# between them, short enough that a router sees a burst while it lasts.
LOAD_WINDOW_SECONDS = 10.0


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
        self.ttft = Histogram("potluck_time_to_first_token_seconds",
                              "From a generation's submission to its first token, by priority class",
                              ["priority"], buckets=_TTFT_BUCKETS, registry=r)
        self.tbt = Histogram("potluck_time_between_tokens_seconds",
                             "Between consecutive tokens of one generation, by priority class",
                             ["priority"], buckets=_STEP_BUCKETS, registry=r)
        for name in PRIORITIES:         # both classes from the start, so a rate() over them never lacks a series
            self.ttft.labels(name)
            self.tbt.labels(name)
        self.step_predicted = Histogram("potluck_step_predicted_seconds",
                                        "The step composer's cost-model prediction of each step's time",
                                        buckets=_STEP_BUCKETS, registry=r)
        self.step_target = Histogram("potluck_step_target_seconds",
                                     "The latency target of steps held to one",
                                     buckets=_STEP_BUCKETS, registry=r)
        self.step_ratio = Histogram("potluck_step_measured_to_predicted_ratio",
                                    "Measured over predicted step time (near 1: the cost model is calibrated)",
                                    buckets=_RATIO_BUCKETS, registry=r)
        self.steps_limited = Counter("potluck_steps_latency_limited",
                                     "Steps held to a latency target (latency-sensitive work in them or just before)",
                                     registry=r)
        self.steps_over_target = Counter("potluck_steps_over_target",
                                         "Latency-limited steps whose measured time passed their target",
                                         registry=r)
        self.load = _StepLoad()
        self._status = _StatusCollector(engine, self.load)
        r.register(self._status)
        # process_resident_memory_bytes, process_open_fds, ... (Linux): what a leak shows up in.
        ProcessCollector(registry=r)
        engine.step_listeners.append(self.on_step)
        engine.generation_listeners.append(self.on_generation)

    def watch_runs(self, runs) -> None:
        """Report the inferlet ``RunManager``'s gauges too (it starts after the metrics)."""
        self._status.runs = runs

    def watch_groups(self, authenticator) -> None:
        """Report which Hub groups' quota values cannot be read (``Authenticator.group_report``)."""
        self._status.groups = authenticator

    def on_step(self, info: dict) -> None:
        """Engine step listener (batch-loop thread): counters only, no I/O, no engine calls."""
        self.load.step(info["seconds"], info["tokens"])
        self.step_seconds.observe(info["seconds"])
        self.batch_sequences.observe(info["seqs"])
        self.batch_tokens.observe(info["tokens"])
        for tenant, (prefill, decode) in info["usage"].items():
            if prefill:
                self.tokens.labels(tenant, "prefill").inc(prefill)
            if decode:
                self.tokens.labels(tenant, "decode").inc(decode)
        predicted = info.get("predicted_seconds")
        if predicted:
            self.step_predicted.observe(predicted)
            self.step_ratio.observe(info["seconds"] / predicted)
        target = info.get("target_seconds")
        if target is not None:
            self.steps_limited.inc()
            self.step_target.observe(target)
            if info["seconds"] > target:
                self.steps_over_target.inc()

    def on_generation(self, g) -> None:
        """Engine generation listener (batch-loop thread): what the generation's user felt, by class."""
        if g.first_token_at is None:
            return          # refused or cancelled before its first token: nothing was felt as latency
        cls = _CLASS_OF.get(g.seq.priority, "batch")
        self.ttft.labels(cls).observe(g.first_token_at - g.created)
        tbt = self.tbt.labels(cls)
        times = g.token_times
        for a, b in zip(times, times[1:]):
            tbt.observe(b - a)

    def generation_finished(self, tenant: str, reason: str) -> None:
        self.generations.labels(tenant, reason).inc()

    def observe_request(self, handler: str, method: str, status: int) -> None:
        self.http_requests.labels(handler, method, str(status)).inc()


class _StepLoad:
    """How busy the batch loop was lately: written by the loop after each step, read by scrapes."""

    def __init__(self, window: float = LOAD_WINDOW_SECONDS) -> None:
        self.window = window
        self.started = time.monotonic()
        self.last_tokens = 0
        self._steps: deque[tuple[float, float]] = deque()     # (end, seconds) of the steps in the window
        self._lock = threading.Lock()

    def step(self, seconds: float, tokens: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.last_tokens = tokens
            self._steps.append((now, seconds))
            while self._steps and self._steps[0][0] < now - self.window:
                self._steps.popleft()

    def busy_ratio(self) -> float:
        """The share of the last ``window`` seconds (or of the time since start) spent in steps."""
        now = time.monotonic()
        since = max(now - self.window, self.started)
        with self._lock:
            busy = sum(min(seconds, end - since) for end, seconds in self._steps if end > since)
        return min(1.0, busy / max(now - since, 1e-9))


class _StatusCollector:
    """Gauges read from the engine at scrape time."""

    def __init__(self, engine, load: _StepLoad) -> None:
        self.engine = engine
        self.load = load
        self.runs = None
        self.groups = None

    def describe(self):
        return []      # collected lazily: registering must not call into an engine that may not run yet

    def collect(self):
        s = self.engine.status()
        kv = s["kv"]
        yield gauge("potluck_queue_depth", "Forward requests waiting for the batch loop", s["queue_depth"])
        yield gauge("potluck_running_generations", "Generations in progress", s["running_generations"])
        yield gauge("potluck_active_tenants", "Tenants with work queued or running", s["active_tenants"])
        yield gauge("potluck_kv_pages_used", "KV pages in use on the device", kv["used_pages"])
        yield gauge("potluck_kv_pages_free", "KV pages free on the device", kv["free_pages"])
        yield gauge("potluck_kv_pages_total", "KV pages in the device pool", kv["total_pages"])
        yield gauge("potluck_kv_pages_on_host", "KV pages swapped out to host memory", kv["pages_on_host"])
        yield counter("potluck_steps_preempted", "Lone-flood steps abandoned for a light newcomer (redone after it)",
                      self.engine.stats["preempted_steps"])
        held = GaugeMetricFamily("potluck_tenant_kv_pages", "KV pages held, by tenant", labels=["tenant"])
        for report in self.engine.tenant_reports():
            held.add_metric([report["name"]], report["kv_pages"])
        yield held
        yield from self._router_gauges(s)
        yield gauge("potluck_threads", "Python threads in the engine process", threading.active_count())
        if self.groups is not None:
            bad = GaugeMetricFamily("potluck_group_quota_unreadable",
                                    "1 while a Hub group's potluck quota cannot be read (its last good one applies)",
                                    labels=["group"])
            for group, seen in self.groups.group_report().items():
                bad.add_metric([group], 1 if seen["error"] else 0)
            yield bad
        if self.runs is not None:
            st = self.runs.stats()
            yield gauge("potluck_runs_running", "Inferlet runs holding a thread", st["threads"])
            yield gauge("potluck_runs_queued", "Inferlet runs waiting for a thread", st["queued"])

    def _router_gauges(self, s: dict):
        """What a gateway routing between engines reads: one unlabelled number each."""
        kv = s["kv"]
        yield gauge("potluck_requests_waiting", "Prompts and forward calls queued that no step has started yet",
                    self.engine.loop.call(_waiting, self.engine.scheduler))
        yield gauge("potluck_kv_cache_usage_ratio", "KV pages in use over the device pool's pages (0 to 1)",
                    kv["used_pages"] / kv["total_pages"] if kv["total_pages"] else 0.0)
        yield gauge("potluck_step_busy_ratio",
                    f"Share of the last {LOAD_WINDOW_SECONDS:g} s the batch loop spent in forward steps (0 to 1)",
                    self.load.busy_ratio())
        yield gauge("potluck_step_tokens_last", "Tokens in the most recent forward step",
                    self.load.last_tokens)
        yield gauge("potluck_step_token_budget", "Most tokens one forward step may take (the profile's budget)",
                    s["profile"]["batch_token_budget"])


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c


def _waiting(scheduler) -> int:
    """On the loop: feeds not yet begun (a decode, or a prompt part-way in, is running, not waiting)."""
    return sum(1 for seq in scheduler.pending() if not seq.decode and seq.fed == 0)
