"""``GET /metrics``: Prometheus exposition of the engine's metrics.

Metrics carry tenant names and usage, so by default only admins may scrape
(``PotluckEngine.authenticate_prometheus``, as JupyterHub's own /metrics).
The collector itself is ``engine/metrics.py``; this module only serves it.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import Forbidden
from .base import APIHandler


class MetricsHandler(APIHandler):
    """``GET metrics``."""

    @property
    def public(self) -> bool:
        return not self.service.authenticate_prometheus

    async def get(self) -> None:
        if self.identity is not None and not self.identity.is_admin:
            raise Forbidden("metrics are for admins (or set PotluckEngine.authenticate_prometheus = False)")
        # Collecting reads the engine's status from the batch loop: off the IOLoop.
        body = await self.blocking(generate_latest, self.service.metrics.registry)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(body)


default_handlers = [
    (r"metrics", MetricsHandler),
]
