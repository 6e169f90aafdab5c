"""What the engine says about itself and its tenants: status, load summary, tenant reports, the admin's view.

``EngineReports`` is the part of ``Engine`` (a base class of it) that builds the JSON answers of
``/api/status``, the heartbeat's load summary, ``/api/me`` and ``/api/admin/tenants``. Kept apart
from the engine's work (generate, forward, contexts) because it only reads: live counters are
read on the batch loop (``loop.call``), lasting ones from the store and ledger, off the loop.

It uses these attributes of ``Engine``: ``loop``, ``rt`` (``pool``, ``model_name``, ``device``,
``profile``, ``max_context``), ``scheduler``, ``_generations``, ``stats``, ``tenants``,
``contexts``, ``latency``, ``store``, ``ledger`` and ``get_user_override``.

What it must never do: change state (an admin view refreshes overrides through the registry, which
owns them), or block the batch loop on the database (lasting data is read off the loop).
"""

from __future__ import annotations

from . import __version__
from .protocol import DONE_STATES, LIVE_STATES


class EngineReports:
    """The read-only answers of ``Engine`` (see the module's docstring for what it uses of it)."""

    def status(self) -> dict:
        def snapshot():
            pool = self.pool
            active = sorted({s.tenant for s in self.scheduler.pending()} |
                            {g.tenant for g in self._generations.values()})
            return {
                "version": __version__,
                "model": self.model_name,
                "device": self.device.to_json(),
                "profile": self.profile.to_json(),
                "scheduler": self.scheduler.policy,
                "kv": {"page_size": pool.page_size, "total_pages": pool.num_slots, "free_pages": pool.free_slots,
                       "used_pages": pool.used_slots, "pages_on_host": pool.pages_on_host,
                       "swaps_out": pool.swaps_out, "swaps_in": pool.swaps_in},
                "active_tenants": len(active),
                "queue_depth": self.scheduler.depth(),
                "running_generations": len(self._generations),
                "max_context_tokens": self.max_context,
                "run_states": {"live": list(LIVE_STATES), "done": list(DONE_STATES)},
                "stats": dict(self.stats),
            }
        return self.loop.call(snapshot)

    def load(self) -> dict:
        """The load summary each heartbeat carries (the admin's list of engines), read off the loop:
        plain counters, because a heartbeat must never wait behind a long step."""
        pool = self.rt.pool if self.rt is not None else None
        return {"queue_depth": self.scheduler.depth(), "requests_active": len(self._generations),
                "kv_pages_used": pool.used_slots if pool is not None else 0,
                "kv_pages_total": pool.num_slots if pool is not None else 0}

    def tenant_report(self, name: str) -> dict | None:
        return self.loop.call(self._report, name)

    def tenant_reports(self) -> list[dict]:
        """Every tenant the engine has seen since it started, in one loop call (the admin view)."""
        return self.loop.call(lambda: [self._report(name) for name in self.tenants.names()])

    def _report(self, name: str) -> dict | None:
        r = self.tenants.report(name)
        if r is not None:
            open_, saved = self.contexts.counts(name)
            r.update(kv_pages=self.pool.held_by(name), saved_contexts=saved, open_contexts=open_,
                     latency=self.latency.report(name))
        return r

    def me(self, tenant: str) -> dict:
        """My report, with ``usage_total`` (the ledger's, across restarts) and my ``override``."""
        report = self.tenant_report(tenant)
        report["usage_total"] = self.ledger.totals(tenant) if self.ledger is not None else None
        report["override"] = self.get_user_override(tenant)
        if self.store is not None:      # every engine of the hub counts the same saved contexts
            report["saved_contexts"] = self.store.count_contexts(tenant).get(tenant, 0)
        return report

    def admin_tenants(self) -> list[dict]:
        """Every tenant live or known to the store and ledger: report, override, lasting usage."""
        read = self.tenants.read_overrides()
        # Another engine of the hub may have changed overrides: live quotas are shown as they now apply.
        self.loop.call(self.tenants.refresh_overrides, read)
        live = {r["name"]: r for r in self.tenant_reports()}
        overrides = read[1] if self.store is not None else {}
        totals = self.ledger.totals_all() if self.ledger is not None else {}
        saved = self.store.count_contexts() if self.store is not None else None
        out = []
        for name in sorted(set(live) | set(overrides) | set(totals)):
            r = live.get(name) or {"name": name, "groups": None, "is_admin": None, "quota": None,
                                   "quota_source": None, "usage": None, "kv_pages": 0,
                                   "latency": None}
            r["live"] = name in live
            r["override"] = overrides.get(name)
            r["usage_total"] = totals.get(name)
            if saved is not None:
                r["saved_contexts"] = saved.get(name, 0)
            out.append(r)
        return out
