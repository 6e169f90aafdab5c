"""The engine's HTTP service: what the handlers share, and the routes.

``Service`` holds the one engine, its store and ledger, the authenticator and
the thread pool for calls that wait on the batch loop. ``make_app`` builds the
tornado application under a base URL (``/`` standalone, the Hub service
prefix such as ``/services/potluck/`` under a Hub). Starting and stopping the
process is ``app.py``'s; this module only wires.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tornado import web

from .auth import Authenticator
from .engine import Engine
from .handlers.admin import QuotaOverrideHandler, TenantsHandler
from .handlers.base import NotFoundHandler
from .handlers.contexts import ContextHandler, ContextListHandler
from .handlers.generate import GenerateHandler
from .handlers.me import MeHandler
from .handlers.metrics import MetricsHandler
from .handlers.openai import ChatCompletionsHandler, CompletionsHandler, ModelsHandler
from .handlers.runs import AdminRunHandler, AdminRunsHandler, RunEventsHandler, RunHandler, RunsHandler
from .handlers.status import SpecHandler, StatusHandler
from .metrics import EngineMetrics
from .store import Store, UsageLedger

# Bodies over max_body_size are read and dropped up to this multiple before the 413, so the
# client sees the answer; past it the connection is answered and closed at once.
DRAIN_FACTOR = 16

ROUTES = [
    (r"api/status", StatusHandler),
    (r"api/spec.yaml", SpecHandler),
    (r"api/me", MeHandler),
    (r"api/generate", GenerateHandler),
    (r"api/contexts", ContextListHandler),
    (r"api/contexts/([^/]+)", ContextHandler),
    (r"api/runs", RunsHandler),
    (r"api/runs/([^/]+)", RunHandler),
    (r"api/runs/([^/]+)/events", RunEventsHandler),
    (r"api/admin/tenants", TenantsHandler),
    (r"api/admin/runs", AdminRunsHandler),
    (r"api/admin/runs/([^/]+)/([^/]+)", AdminRunHandler),
    (r"api/admin/quotas/users/([^/]+)", QuotaOverrideHandler),
    (r"v1/chat/completions", ChatCompletionsHandler),
    (r"v1/completions", CompletionsHandler),
    (r"v1/models", ModelsHandler),
    (r"metrics", MetricsHandler),
]


@dataclass
class Service:
    engine: Engine
    store: Store
    ledger: UsageLedger
    authenticator: Authenticator
    executor: ThreadPoolExecutor
    metrics: EngineMetrics
    max_body_size: int = 1 << 20
    authenticate_prometheus: bool = True
    runs: Any = None                    # the sandbox's RunManager; None when it could not load
    runs_error: str | None = None       # why not (the runs endpoints answer 503 with it)
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
    return web.Application(handlers, service=service, default_handler_class=NotFoundHandler,
                           compress_response=False, serve_traceback=False,
                           websocket_ping_interval=30)
