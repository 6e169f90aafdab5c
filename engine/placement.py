"""Placement: which engine of the hub serves a tenant, and whether that is this one.

An engine of a pool (``PotluckEngine.pool``) serves a tenant when the tenant's pool is its own
and, among that pool's live engines, the rendezvous ranking (``pools.rendezvous_rank``) puts it
first. So a tenant is on one engine at a time, by enforcement: every other engine answers its
tenant endpoints with 421 naming the right one (``WrongEngine``), and rate quotas hold across
the pool because the engine a tenant comes to first seeds the tenant's token windows from the
shared usage ledger (the last minute's tokens and today's).

``Placement`` keeps a cached view of the hub's live engines per pool and of the per-user
overrides' pools. A daemon thread refreshes it every ``stale_seconds / 3``, writing this
engine's heartbeat (and load) in the same beat; the door (``admit``) and ``route`` read only
that view: no database query on a request's path. This engine always counts itself live.
A tenant's pool is ``pools.choose_pool`` over what their groups (``Identity.groups``, read
fail-closed by ``hubgroups``) and their override name, as ``quota.resolve_quota`` chooses it.

An engine not in a pool (``pool`` "") serves everyone, as before pools existed; it still
registers and beats, so the admin's list of engines shows it.

Clocks: liveness is judged by the database's clock (``store/engines.py``). Token windows are
seeded from the ledger's minute buckets, stamped by each engine's own clock: engines are assumed
to keep time within a second or two (NTP), which a 60-second window tolerates.

Run history: when an engine leaves the view (stopped, or stale), its unfinished runs in the shared
history are failed by name ("engine X stopped"), since nothing will finish them; at start, those of
every engine already gone. A stale engine that was only slow writes its runs' next state over that.

Known gaps (documented in docs/configuration.md): for up to one heartbeat after an engine joins
a pool, the engine that served a tenant until then may still admit it; tokens of generations cut
off by a clean stop reach the ledger after the engine is marked stopped.

What it must never do: query the database from ``admit``/``route`` (the request path), or know
HTTP (``http/base.py`` turns ``WrongEngine`` into the 421).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, time as dtime, timezone
from typing import Any, Callable, TypeVar

from .errors import PotluckError
from .pools import MISDIRECTED, WRONG_ENGINE, choose_pool, rendezvous_rank
from .quota import named_pools
from .tokenrates import TokenWindow

log = logging.getLogger("potluck.engine")

T = TypeVar("T")


@dataclass(frozen=True)
class Route:
    """Who serves a tenant now: the pool, and its engine (None when no engine of the pool is live)."""

    pool: str
    engine: str | None

    def to_json(self) -> dict:
        return {"pool": self.pool, "engine": self.engine}


class WrongEngine(PotluckError):
    """A tenant endpoint reached an engine that does not serve the caller (421, naming the one that does)."""

    status = MISDIRECTED
    code = WRONG_ENGINE


class Placement:
    """This engine's place in the hub: its heartbeat, the live engines it sees, the tenants it serves."""

    def __init__(self, store, *, name: str, pool: str = "", pools: tuple[str, ...] = (), default_pool: str = "",
                 accelerator: str = "", stale_seconds: float = 6.0, ledger=None,
                 load: Callable[[], dict[str, Any] | None] = lambda: None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.store, self.ledger = store, ledger
        self.name, self.pool, self.accelerator = name, pool, accelerator
        self.pools, self.default_pool = tuple(pools), default_pool
        self.stale_seconds = stale_seconds
        self._load = load
        self._clock = clock                 # None: the database's clock (tests pass a fake one)
        self._lock = threading.Lock()       # guards the view and the tenant sets below
        self._live: dict[str, tuple[str, ...]] = {pool: (name,)} if pool else {}
        self._override_pools: dict[str, str] = {}      # user -> the pool their override names
        self._served: dict[str, dict[str, dict]] = {}  # tenants admitted here since they became ours -> groups
        self._unseeded: set[str] = set()    # ... whose token windows are not yet seeded from the ledger
        # One seeding at a time: a moved tenant's concurrent first requests wait for its one seed.
        self._seed_lock = threading.Lock()
        self._stop = threading.Event()
        self._leaving = False
        self._beat_ok = time.monotonic()          # when this engine's heartbeat last reached the database
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None
        self._seen_live: set[str] | None = None     # every pool's live engines at the last beat (None: none yet)

    # ------------------------------------------------------------ what it says about itself
    def describe(self) -> dict:
        return {"name": self.name, "pool": self.pool, "accelerator": self.accelerator}

    def live(self, pool: str) -> tuple[str, ...]:
        """The pool's live engines as last seen (this engine included when it is the pool's)."""
        with self._lock:
            return self._live.get(pool, ())

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "Placement":
        """Register, read the hub once (so the first request sees a view), then beat in the background."""
        if self.store.register_engine(self.name, self.pool, self.accelerator, now=self._now()):
            log.warning("engine %r was still registered as alive: either it restarted within %g s, or another "
                        "engine has the same name (set PotluckEngine.engine_name)", self.name, self.stale_seconds)
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="potluck-placement", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and mark this engine stopped: its tenants move to their next engine at once."""
        with self._lock:
            # From now on a request that still reaches this engine (a kept-alive connection) gets a
            # 421 naming the tenant's next engine, instead of being admitted and cut off mid-shutdown.
            self._leaving = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            self.store.mark_engine_stopped(self.name, now=self._now())
        except Exception as e:      # the others then take its tenants after stale_seconds
            log.error("could not mark engine %s stopped (%s); its tenants move after %g s", self.name,
                      " ".join(str(e).split())[:200], self.stale_seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.stale_seconds / 3):
            try:
                self.refresh()
            except Exception as e:
                text = " ".join(str(e).split())[:300]
                if text != self._last_error:        # once per distinct error, not every beat
                    log.error("engine heartbeat failed (the view of the hub's engines is kept): %s", text)
                    self._last_error = text
            else:
                self._last_error = None

    def _now(self) -> datetime | None:
        return self._clock() if self._clock is not None else None

    def refresh(self) -> None:
        """One beat: write this engine's heartbeat and load, read every engine and override pool."""
        now = self._now()
        try:
            load = self._load()
        except Exception:       # the engine's counters mid-change: skip the load, never the heartbeat
            load = None
        self.store.engine_heartbeat(self.name, load, now=now)
        self._beat_ok = time.monotonic()
        engines = self.store.list_engines(self.stale_seconds, now=now)
        override_pools = {user: f["pool"] for user, f in self.store.list_overrides().items() if f.get("pool")}
        live: dict[str, set[str]] = {}
        for e in engines:
            if e["alive"]:
                live.setdefault(e["pool"], set()).add(e["name"])
        if self.pool:
            live.setdefault(self.pool, set()).add(self.name)
        view = {pool: tuple(sorted(names)) for pool, names in live.items()}
        with self._lock:
            before = self._live.get(self.pool)
            self._live, self._override_pools = view, override_pools
            # Tenants that are no longer ours are forgotten: if they come back, they are seeded again.
            for tenant, groups in list(self._served.items()):
                if self._route(tenant, groups).engine != self.name:
                    del self._served[tenant]
                    self._unseeded.discard(tenant)
        if self.pool and (before != view.get(self.pool) or self._thread is None):     # changed, or at start
            log.info("pool %r: live engines now %s", self.pool, ", ".join(view.get(self.pool, ())))
        self._fail_runs_of_gone(engines)        # last: a failure here leaves the new view in place

    def _fail_runs_of_gone(self, engines: list[dict]) -> None:
        """Fail the unfinished runs of engines gone since the last beat (at the first beat: all gone ones)."""
        alive = {e["name"] for e in engines if e["alive"]} | {self.name}
        gone = [e for e in engines if e["name"] not in alive
                and (self._seen_live is None or e["name"] in self._seen_live)]
        self._seen_live = alive
        for e in gone:
            how = "stopped" if e["stopped_at"] else f"stopped answering (no heartbeat for {self.stale_seconds:g} s)"
            n = self.store.fail_engine_runs(e["name"], f"engine {e['name']} {how} while this run was running")
            if n:
                log.warning("engine %s %s: %d of its runs marked failed", e["name"], how, n)

    # ------------------------------------------------------------ routing (no database here)
    def route(self, tenant: str, groups: dict[str, dict] | None = None) -> Route:
        """Who serves ``tenant`` (whose groups' quota properties are ``groups``) now, from the cached view."""
        with self._lock:
            return self._route(tenant, groups)

    def _route(self, tenant: str, groups: dict[str, dict] | None) -> Route:
        if not self.pool:
            return Route("", self.name)
        override = self._override_pools.get(tenant)
        pool = choose_pool(named_pools(groups, {"pool": override} if override else None), self.pools,
                           self.default_pool)
        live = self._live.get(pool, ())
        # Leaving, or its own heartbeat has not reached the database for stale_seconds (the others
        # have taken its tenants by now): it steps aside rather than serve them a second time.
        if self._leaving or time.monotonic() - self._beat_ok > self.stale_seconds:
            live = tuple(e for e in live if e != self.name)
        ranked = rendezvous_rank(tenant, live)
        return Route(pool, ranked[0] if ranked else None)

    def serves(self, tenant: str, groups: dict[str, dict] | None = None) -> bool:
        return self.route(tenant, groups).engine == self.name

    def admit(self, tenant: str, groups: dict[str, dict] | None = None) -> None:
        """The door of every tenant endpoint: ``WrongEngine`` unless this engine serves ``tenant``.

        A tenant admitted for the first time since it became this engine's is marked for seeding
        (``resolve``), so its token windows start from what it used on its previous engine.
        """
        with self._lock:
            r = self._route(tenant, groups)
            if r.engine == self.name:
                if tenant not in self._served:
                    self._unseeded.add(tenant)
                self._served[tenant] = groups or {}
                return
        here = f"this is {self.name}"
        if r.engine is None:
            msg = (f"your pool {r.pool!r} has no engine running now ({here}); try again shortly, or ask your "
                   "hub admin")
        else:
            msg = f"you are served by engine {r.engine} of pool {r.pool!r}; {here}"
        raise WrongEngine(msg, engine=r.engine, pool=r.pool)

    # ------------------------------------------------------------ seeding the token windows
    def resolve(self, tenant: str, resolve: Callable[[TokenWindow | None], T]) -> T:
        """``resolve(window)`` the tenant: with windows seeded from the ledger when it has just become
        this engine's, else with None (keep the windows it has). Called off the IOLoop and the loop."""
        if tenant not in self._unseeded or self.ledger is None:
            return resolve(None)
        with self._seed_lock:
            if tenant not in self._unseeded:
                return resolve(None)
            result = resolve(self.seeded_window(tenant))
            with self._lock:
                self._unseeded.discard(tenant)
            return result

    def seeded_window(self, tenant: str, now: float | None = None) -> TokenWindow:
        """The tenant's token windows as the shared ledger has them: the last minute's tokens (from its
        minute buckets, each counted until its whole minute has left the window: the safe side) and
        today's (since UTC midnight)."""
        now = time.time() if now is None else now
        since = datetime.fromtimestamp(now - 60, timezone.utc)
        minutes = self.ledger.history("minute", since).get(tenant, {})
        recent = sorted((min(int(m.timestamp()) + 59, int(now)), a["prefill_tokens"] + a["decode_tokens"])
                        for m, a in minutes.items() if a["prefill_tokens"] + a["decode_tokens"])
        midnight = datetime.combine(datetime.fromtimestamp(now, timezone.utc).date(), dtime(), tzinfo=timezone.utc)
        return TokenWindow(self.ledger.tokens_since(tenant, midnight), recent=tuple(recent))
