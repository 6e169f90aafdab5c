"""Pools of engines: which pool a tenant is in, and which engine of that pool serves them.

A hub that outgrows one GPU host runs several engines, grouped into *pools* (one per accelerator
class: "h100", "cpu"). Each engine is a Hub service named ``potluck-<pool>-<index>``. A tenant's
pool comes from the ``pool`` field of their quota (a group's Potluck property or a user
override), else the hub's default pool. Within a pool a tenant is pinned to one engine by
rendezvous (highest-random-weight) hashing of the tenant and the engine names, so their open
contexts and prefix cache stay in one place, and when that engine is gone only its own tenants
move, each to their next engine, while everyone else stays put.

Everyone who routes agrees through this module: ``hub_config`` (names the services, exports the
map), the engine (admits only the tenants it serves, answers ``route`` in ``/api/me``), and the
clients (``jupyter_ext``, the kernel client: ``EngineRouter`` finds the engine and moves on
failure with one line of notice). It imports only the standard library and ``requests``, so the
light user-side packages can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .protocol import SERVICE_NAME

POOLS_ENV = "POTLUCK_POOLS"                  # the hub's pool map, JSON (PoolMap.to_json)
POOL_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")   # a DNS label: also a Kubernetes name
WRONG_ENGINE = "wrong_engine"                # the error code of a request sent to another tenant's engine
MISDIRECTED = 421                            # its HTTP status (RFC 9110: Misdirected Request)


def check_pool_name(name: str) -> str:
    if not isinstance(name, str) or not POOL_NAME.match(name):
        raise ValueError(f"pool name {name!r} must be 1-32 lowercase letters, digits or '-' "
                         "(a DNS label: it names Hub services and Kubernetes objects)")
    return name


def engine_service_name(pool: str, index: int) -> str:
    """The Hub service name of a pool's ``index``-th engine (also its StatefulSet pod name on Kubernetes)."""
    return f"{SERVICE_NAME}-{pool}-{index}"


def rendezvous_rank(tenant: str, engines: Iterable[str]) -> list[str]:
    """Engine names in ``tenant``'s order of preference: highest random weight first.

    Each (engine, tenant) pair gets a weight from a hash; a tenant's engine is the live one with
    the highest weight. Removing an engine moves only the tenants it served; adding one takes
    ~1/n of everyone's. Names, not URLs, are hashed, so moving an engine to another host keeps
    its tenants.
    """
    def weight(engine: str) -> int:
        digest = hashlib.blake2b(f"{engine}\x00{tenant}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")
    return sorted(set(engines), key=lambda e: (-weight(e), e))


def choose_pool(named: Iterable[str], pools: Sequence[str], default_pool: str) -> str:
    """The tenant's pool: the first of ``pools`` (the hub's order of preference) that any of the
    tenant's groups or their override names; else ``default_pool``. Unknown names are ignored:
    a typo in a group's property never sends anyone to a pool that does not exist."""
    wanted = set(named)
    return next((p for p in pools if p in wanted), default_pool)


@dataclass(frozen=True)
class PoolMap:
    """The hub's pools as the clients see them: ``{pool: {engine name: URL}}`` in preference order."""

    pools: dict[str, dict[str, str]]
    default_pool: str
    accelerators: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.default_pool not in self.pools:
            raise ValueError(f"default_pool {self.default_pool!r} is not one of the pools "
                             f"({', '.join(self.pools) or 'none'})")
        for pool, engines in self.pools.items():
            check_pool_name(pool)
            if not engines:
                raise ValueError(f"pool {pool!r} has no engines")

    def to_json(self) -> str:
        return json.dumps({"default_pool": self.default_pool, "pools": self.pools,
                           "accelerators": self.accelerators}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PoolMap:
        try:
            raw = json.loads(text)
            return cls(pools={str(p): {str(n): str(u) for n, u in e.items()} for p, e in raw["pools"].items()},
                       default_pool=str(raw["default_pool"]), accelerators=dict(raw.get("accelerators") or {}))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"${POOLS_ENV} is not a Potluck pool map: {e}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> PoolMap | None:
        text = environ.get(POOLS_ENV)
        return cls.from_json(text) if text else None

    def pool_of(self, engine: str) -> str | None:
        return next((p for p, engines in self.pools.items() if engine in engines), None)

    def url(self, engine: str) -> str:
        pool = self.pool_of(engine)
        if pool is None:
            raise KeyError(f"no engine named {engine!r} in the hub's pools")
        return self.pools[pool][engine]

    def engine_at(self, url: str) -> str | None:
        return next((e for engines in self.pools.values() for e, u in engines.items() if u == url), None)

    def ranked(self, tenant: str, pool: str) -> list[str]:
        return rendezvous_rank(tenant, self.pools[pool])

    def first_contacts(self, tenant: str) -> list[str]:
        """Engines to ask "where am I served?": the default pool's first, in this tenant's order,
        then every other pool's (any live engine of the hub can answer for any tenant)."""
        order = [self.default_pool] + [p for p in self.pools if p != self.default_pool]
        return [e for p in order for e in self.ranked(tenant, p)]


def http_probe(session):
    """``EngineRouter``'s ``get`` over a ``requests.Session`` that carries the caller's token."""
    import requests

    def get(url: str, timeout: float) -> tuple[int, dict | None]:
        try:
            r = session.get(url, timeout=timeout)
        except requests.RequestException as e:
            raise OSError(str(e)) from None
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, None
    return get


class NoEngine(RuntimeError):
    """No engine of the tenant's pool answers (the message says which were tried)."""


class EngineRouter:
    """Finds the engine that serves this tenant, and moves on when it stops answering.

    ``get(url, timeout)`` is the caller's HTTP GET (so the caller's auth and session apply); it
    returns ``(status, json body)`` or raises ``OSError`` when the engine cannot be reached.
    ``notice`` receives one line when the tenant moves (the kernel prints it, the server logs
    it and shows it in the lab). An engine that is up but not the tenant's answers 421 naming
    the right one; an engine that just died keeps its tenants for at most the engines'
    ``engine_stale_seconds`` (the others then take them over), so ``wait`` bounds the move.
    """

    def __init__(self, pools: PoolMap, tenant: str, get, notice=lambda line: None, wait: float = 15.0):
        self.pools, self.tenant, self._get, self._notice, self.wait = pools, tenant, get, notice, wait
        self.engine: str | None = None
        self.pool: str | None = None

    def url(self) -> str:
        """The current engine's URL (found on first use)."""
        if self.engine is None:
            self.find()
        return self.pools.url(self.engine)

    def _ask(self, engine: str) -> dict | None:
        try:
            status, body = self._get(self.pools.url(engine) + "api/me", 5.0)
        except OSError:
            return None
        if status != 200 or not isinstance(body, dict):
            return None
        return body.get("route") or {}

    def find(self, avoid: str | None = None) -> str:
        """Ask the engines which one serves this tenant; ``avoid`` is one that just failed.

        The first engine that answers names the tenant's engine (``route`` in ``/api/me``, from
        the engines' shared view of who is alive), which must answer and agree. While that is
        still ``avoid``, or does not answer or agree, the engines have not all noticed the change
        yet: ask again every quarter second, up to ``wait``.
        """
        deadline = time.monotonic() + self.wait
        while True:
            silent = []
            for engine in self.pools.first_contacts(self.tenant):
                if engine == avoid:
                    continue
                route = self._ask(engine)
                if route is None:
                    silent.append(engine)
                    continue
                # None: no engine of the tenant's pool is live in the engines' view (yet)
                target = route.get("engine") if "engine" in route else engine
                known = target is not None and self.pools.pool_of(target) is not None
                # ``avoid`` again only once it answers for itself (it restarted within the wait)
                if known and (target == engine or self._serves_itself(target)):
                    self.engine, self.pool = target, self.pools.pool_of(target)
                    return target
                break
            if time.monotonic() >= deadline:
                names = ", ".join([avoid] * bool(avoid) + silent) or "none"
                raise NoEngine(f"no Potluck engine serves you now (not answering: {names}); "
                               "ask your hub admin")
            time.sleep(0.25)

    def _serves_itself(self, engine: str) -> bool:
        """``engine`` answers and its own view names itself: each engine refreshes its view of who
        is alive on its own beat, so the one that told us may have seen a departure before it did
        (it would answer 421 naming the engine that just left)."""
        route = self._ask(engine)
        return route is not None and route.get("engine", engine) == engine

    def failed(self, reason: str = "") -> str:
        """The current engine stopped answering (or named another): find the next, say so once."""
        old = self.engine
        new = self.find(avoid=old)
        if new != old:
            why = f" ({reason})" if reason else ""
            self._notice(f"Potluck: engine {old} is not answering{why}; your work moved to {new} "
                         "(saved contexts come along, open contexts and running inferlets were lost)")
        return new

    def follow(self, engine: str) -> str:
        """An engine answered 421 naming ``engine`` as this tenant's: go there once it agrees (the
        engines' views of who is alive may differ for a heartbeat), else ask them all again."""
        if engine == self.engine or self.pools.pool_of(engine) is None:
            return self.find()
        old = self.engine
        if self._serves_itself(engine):
            self.engine, self.pool = engine, self.pools.pool_of(engine)
        else:
            self.find()
        if self.engine != old:
            self._notice(f"Potluck: you are now served by engine {self.engine} (was {old})")
        return self.engine
