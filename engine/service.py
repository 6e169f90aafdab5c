"""The engine service: what the handlers share, how it is assembled, and the order it stops in.

``Service`` holds the one engine, its store and usage ledger, the
authenticator, the request threads (``http.fairpool.FairPool``: calls that
wait on the batch loop, the database or a tokenizer, handed out round-robin
between tenants, each held to ``request_threads_per_tenant``), the metrics,
the inferlet run manager and the request limits. ``serve`` assembles
it from the command line's settings (``PotluckEngine``, which is also the
engine's ``EngineConfig``), listens, and on SIGTERM or SIGINT stops in the
one safe order: HTTP server, the ledger's pending usage, the engine's place in
the hub (``placement``: marked stopped, so its tenants move at once, with their
usage already in the shared ledger), runs, engine, open connections, ledger, store.

``make_app`` builds the tornado application under a base URL (``/``
standalone, the Hub service prefix such as ``/services/potluck/`` under a
Hub), its routes joined from each ``http`` module's ``default_handlers``.

Failures stay local. An engine that cannot start (a missing model, a setting
that cannot be read) exits 1 standalone; as a Hub service
(``PotluckEngine.serve_errors``) it keeps answering instead, ``/api/status``
with a 503 whose ``model_error`` is the one-line reason, every other API path
with a 503 saying the same (its home page too, as text with a 200), because a managed service that exits while the Hub
starts takes the whole Hub down. A batch loop that dies while serving is never
served around: the process exits 1 (the Hub restarts a managed service).
This module wires and orders; it decides nothing about requests, and the
command line (parsing, config files, ``main``) stays in ``app.py``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import secrets
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tornado import web
from tornado.httpserver import HTTPServer

from . import __version__
from .auth import Authenticator
from .engine import Engine
from .http import (admin, completions, contexts, dashboard, engines, generate, me, metrics, openai, responses, runs,
                   status)
from .http.base import NotFoundHandler
from .http.fairpool import FairPool
from .hubgroups import kv_pool_warnings
from .metrics import EngineMetrics
from .placement import Placement
from .store import Store, StoreError, UsageLedger

if TYPE_CHECKING:
    from .app import PotluckEngine

log = logging.getLogger("potluck.engine")

# Bodies over max_body_size are read and dropped up to this multiple before the 413, so the
# client sees the answer; past it the connection is answered and closed at once.
DRAIN_FACTOR = 16

ROUTES: list[tuple[str, type[web.RequestHandler]]] = [
    *status.default_handlers,
    *me.default_handlers,
    *generate.default_handlers,
    *contexts.default_handlers,
    *runs.default_handlers,
    *admin.default_handlers,
    *engines.default_handlers,
    *openai.default_handlers,
    *completions.default_handlers,
    *responses.default_handlers,
    *metrics.default_handlers,
    *dashboard.default_handlers,
]


@dataclass
class Service:
    engine: Engine
    store: Store
    ledger: UsageLedger
    authenticator: Authenticator
    executor: FairPool                  # the request threads; an Executor, lanes per tenant
    metrics: EngineMetrics
    max_body_size: int = 1 << 20
    authenticate_prometheus: bool = True
    runs: Any = None                    # the sandbox's RunManager; None when it could not load
    runs_error: str | None = None       # why not (the runs endpoints answer 503 with it)
    placement: Placement | None = None  # which tenants this engine serves (None: everyone, no heartbeat)
    started: float = field(default_factory=time.time)

    @property
    def body_discard_limit(self) -> int:
        return self.max_body_size * DRAIN_FACTOR

    def uptime(self) -> float:
        return time.time() - self.started


def normalize_base_url(base_url: str) -> str:
    """``services/potluck`` -> ``/services/potluck/``."""
    return "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"


def make_app(service: Service, base_url: str = "/") -> web.Application:
    base = normalize_base_url(base_url)
    handlers = [(re.escape(base) + path, cls) for path, cls in ROUTES]
    # cookie_secret: the dashboard page's Hub OAuth cookie (a new one per process: a restart
    # means one more trip through the Hub's login, never a cookie that outlives the engine).
    return web.Application(handlers, service=service, default_handler_class=NotFoundHandler,
                           potluck_any_engine=ANY_ENGINE,
                           compress_response=False, serve_traceback=False,
                           websocket_ping_interval=30, potluck_base_url=base,
                           cookie_secret=secrets.token_bytes(32), log_function=log_request)


# Tenant endpoints that every engine of a pool answers, for any tenant (besides public and admin-only
# ones): /api/me says where the caller is served ("route"), /metrics is every engine's own.
ANY_ENGINE = (me.MeHandler, metrics.MetricsHandler)

# What the lab extension and notebooks poll every few seconds. Answered, they are logged at
# debug (three users' labs made ~540 INFO lines in 20 minutes); failures stay visible.
ROUTINE_POLLS = (status.StatusHandler, me.MeHandler, runs.RunsHandler, runs.AdminRunsHandler,
                 contexts.ContextListHandler, admin.TenantsHandler, metrics.MetricsHandler)
access_log = logging.getLogger("tornado.access")


def log_request(handler: web.RequestHandler) -> None:
    """tornado's access line, at debug for answered routine polls (as jupyter_server does for successes)."""
    code = handler.get_status()
    if code < 400:
        routine = handler.request.method == "GET" and isinstance(handler, ROUTINE_POLLS)
        level = logging.DEBUG if routine else logging.INFO
    else:
        level = logging.WARNING if code < 500 else logging.ERROR
    if access_log.isEnabledFor(level):
        access_log.log(level, "%d %s %.2fms", code, handler._request_summary(),
                       1000.0 * handler.request.request_time())


def start_runs(engine: Engine, store: Store) -> tuple[Any, str | None]:
    """The inferlet ``RunManager`` (loads the cached runner; builds it the first time, ~35 s).

    A sandbox that cannot load (no runner and no componentize-py to build it) does not stop
    the engine: generation is served, and the runs endpoints answer 503 saying why.
    """
    try:
        from .sandbox import RunManager
        return RunManager(engine, store), None
    except Exception as e:
        log.error("inferlet runs are disabled: the sandbox could not be loaded: %s", e, exc_info=True)
        return None, " ".join(f"{type(e).__name__}: {e}".split())[:300]


async def serve(settings: PotluckEngine) -> int:
    """Assemble the service, serve until SIGTERM or SIGINT, stop in order; the process's exit status."""
    loop = asyncio.get_running_loop()
    # Starting and stopping run in the pool's service lane (no request has set a lane here).
    executor = FairPool(settings.request_threads, settings.request_threads_per_tenant, name="potluck-http")
    try:
        store = Store(settings.db_url)         # as settings.open_store, but a failure here may be served
    except StoreError as e:
        return await start_failed(settings, executor, one_line(e))
    ledger = UsageLedger(store, flush_interval=settings.usage_flush_interval)
    ledger.start()
    # The settings object is the engine's EngineConfig itself: no copy to drift from the traits.
    engine = Engine(settings, store=store, ledger=ledger)
    try:
        # The authenticator first: its settings (seed_groups, scope_quotas) are checked as it is made.
        authenticator = settings.authenticator_class(parent=settings, store=store, executor=executor)
        await loop.run_in_executor(executor, engine.start)
    except Exception as e:
        ledger.close()
        store.close()
        return await start_failed(settings, executor, one_line(e))
    engine_metrics = EngineMetrics(engine)      # listens to the engine's steps and generations itself
    run_manager, runs_error = await loop.run_in_executor(executor, start_runs, engine, store)
    if run_manager is not None:
        engine_metrics.watch_runs(run_manager)
    pool, pools, default_pool = settings.pool_settings()
    placement = Placement(store, name=settings.engine_name, pool=pool, pools=pools, default_pool=default_pool,
                          accelerator=settings.accelerator, stale_seconds=settings.engine_stale_seconds,
                          ledger=ledger, load=engine.load)
    try:
        # Registered (and the hub's engines read once) before listening: the first request finds a view.
        await loop.run_in_executor(executor, placement.start)
    except Exception as e:
        if run_manager is not None:
            await loop.run_in_executor(executor, run_manager.shutdown)
        await loop.run_in_executor(executor, engine.stop)
        ledger.close()
        store.close()
        return await start_failed(settings, executor, "cannot register in the hub's engines: " + one_line(e))
    engine.placement = placement
    service = Service(engine=engine, store=store, ledger=ledger,
                      authenticator=authenticator,
                      executor=executor, metrics=engine_metrics, max_body_size=settings.max_body_size,
                      authenticate_prometheus=settings.authenticate_prometheus,
                      runs=run_manager, runs_error=runs_error, placement=placement)
    engine_metrics.watch_groups(service.authenticator)
    # e.g. seeds default group quotas into the Hub, in the background
    await service.authenticator.start(kv_pool_pages=engine.pool.num_slots)
    for line in kv_pool_warnings(engine.pool.num_slots, default=settings.default_quota,
                                 groups=getattr(service.authenticator, "seed_groups", None),
                                 overrides=await loop.run_in_executor(executor, store.list_overrides)):
        log.warning("%s", line)
    base = normalize_base_url(settings.base_url)
    server = HTTPServer(make_app(service, base), max_body_size=service.body_discard_limit, xheaders=True)
    try:
        server.listen(settings.port, settings.ip)
    except OSError as e:
        log.critical("cannot listen on %s:%s: %s", settings.ip, settings.port, e)
        await loop.run_in_executor(executor, placement.stop)
        if run_manager is not None:
            await loop.run_in_executor(executor, run_manager.shutdown)
        await loop.run_in_executor(executor, engine.stop)
        ledger.close()
        store.close()
        return 1
    # Everything loaded so far (the model, transformers, the app: ~500,000 objects) lives as long as
    # the process. Left to the collector, each full collection walks all of it: ~250 ms with the
    # default model on a 2-core CPU, a stall of every user's step at random moments (one light
    # request of ~40 beside a decode flood took 3x its usual time for it). Frozen, they are not scanned;
    # collected first, so start-up's garbage is not frozen with them.
    gc.collect()
    gc.freeze()
    log.info("Potluck engine %s serving %s at http://%s:%d%s", __version__, engine.model_name,
             settings.ip, settings.port, base)
    if pool:
        log.info("engine %s of pool %r (pools: %s; default %r)", settings.engine_name, pool, ", ".join(pools),
                 default_pool)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog = asyncio.ensure_future(watch_batch_loop(engine, stop))
    orphan = asyncio.ensure_future(watch_hub(stop)) if settings.exit_with_hub else None
    await stop.wait()
    died = watchdog.done() and watchdog.result()
    watchdog.cancel()
    if orphan is not None:
        orphan.cancel()

    log.info("shutting down")
    await shutdown(service, server)
    return 1 if died else 0


async def start_failed(settings: PotluckEngine, executor: FairPool, reason: str) -> int:
    """The engine could not start: one line, then exit 1, or serve that line (``serve_errors``)."""
    log.critical("the engine could not start: %s", reason)
    executor.shutdown(wait=False)
    if settings.serve_errors:
        return await serve_failure(settings, reason)
    return 1


async def watch_batch_loop(engine: Engine, stop: asyncio.Event, interval: float = 1.0) -> bool:
    """Set ``stop`` if the batch loop dies while serving (True): an engine never serves without it."""
    while not stop.is_set():
        await asyncio.sleep(interval)
        if not engine.running and not stop.is_set():
            log.critical("the batch loop stopped unexpectedly (its error is logged above); exiting with status 1 "
                         "so that the engine is restarted (a Hub restarts its managed service)")
            stop.set()
            return True
    return False


async def watch_hub(stop: asyncio.Event, interval: float = 2.0) -> None:
    """A managed engine stops when the Hub that started it is gone (killed, not stopped: a Hub that
    stops stops its services). Left running, it would hold the port, so the restarted Hub's new
    engine could not listen and the Hub would restart that one again and again, while this one
    served with the old Hub's token and settings."""
    hub = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(interval)
        if os.getppid() != hub:
            log.warning("the JupyterHub that started this engine (pid %d) is gone: stopping "
                        "(a restarted Hub starts a fresh engine)", hub)
            stop.set()
            return


def one_line(e: BaseException) -> str:
    """An exception as the one line an admin reads in the log and in /api/status."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 500 else text[:497] + "..."


async def serve_failure(settings: PotluckEngine, reason: str) -> int:
    """Answer every request with why the engine could not start, until SIGTERM; exit status 1."""
    from . import __version__ as version

    base = normalize_base_url(settings.base_url)

    class Failed(web.RequestHandler):
        def prepare(self) -> None:
            path = self.request.path
            if path in (base, base.rstrip("/")):
                # The home page, for people; and a Hub waits for a managed service's URL to answer
                # below 500 before it goes on starting: the Hub must come up to show this at all.
                self.set_header("Content-Type", "text/plain; charset=utf-8")
                self.finish(f"The Potluck engine could not start: {reason}\n")
                return
            body = {"error": {"code": "engine_failed", "message": f"the engine could not start: {reason}"}}
            if path.rstrip("/").endswith("/api/status"):   # the readiness probe and the lab's status item
                body.update(version=version, model=settings.model, ready=False, model_error=reason)
            self.set_status(503)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(body))

    server = HTTPServer(web.Application([(".*", Failed)]))
    try:
        server.listen(settings.port, settings.ip)
    except OSError as e:
        log.critical("cannot listen on %s:%s: %s", settings.ip, settings.port, e)
        return 1
    log.critical("serving only the error at http://%s:%d%sapi/status (503) until stopped: %s", settings.ip,
                 settings.port, base, reason)
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orphan = asyncio.ensure_future(watch_hub(stop)) if settings.exit_with_hub else None
    await stop.wait()
    if orphan is not None:
        orphan.cancel()
    server.stop()
    return 1


async def shutdown(service: Service, server: HTTPServer) -> None:
    """Stop taking requests, end runs and generations, then close the ledger and the store."""
    loop = asyncio.get_running_loop()
    executor = service.executor
    server.stop()
    if service.placement is not None:
        # Usage so far into the shared ledger first: the engine its tenants move to seeds their
        # token windows from it. Then marked stopped: they move now, not after engine_stale_seconds.
        await loop.run_in_executor(executor, service.ledger.flush)
        await loop.run_in_executor(executor, service.placement.stop)
    if service.runs is not None:
        # Cancels every run and waits for their threads; followers get the final status event.
        await loop.run_in_executor(executor, service.runs.shutdown)
    # Stopping the engine ends every generation (503 to their clients), so streams finish.
    await loop.run_in_executor(executor, service.engine.stop)
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=5)
    except asyncio.TimeoutError:
        pass
    service.ledger.close()        # the last usage reaches the database: a restart loses no accounting
    service.store.close()
    executor.shutdown(wait=False, cancel_futures=True)
