"""Tenants: who is using the engine now, their live counters, and the checks at the door.

The tenant is the hub user name. ``Tenant`` holds one tenant's resolved quota (``quota.py``
says what a quota is and how its layers combine), their token windows (``tokenrates.py``), the
tokens promised to their running generations, and their usage counters; its checks admit or
refuse a request, each refusal naming the quota field and its value. ``TenantRegistry`` keeps
every tenant seen, applies per-user overrides (in the store when there is one) and records usage
to the ledger.

What it must never do: touch tensors or pages, or run off the batch-loop thread (the engine's
facade calls it there); an unreadable override is a 503, never "no override".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time as dtime, timezone
from typing import Callable

from .errors import EngineUnavailable, QuotaExceeded, RequestTooLarge
from .quota import Quota, resolve_quota, validate_quota_fields
from .scheduler import PRIORITIES
from .tokenrates import TokenWindow, check_token_rates, token_room


def _store_unreadable(what: str, e: Exception) -> EngineUnavailable:
    # Fail closed: without the override the quota could be more generous than an admin set.
    reason = " ".join(str(getattr(e, "orig", None) or e).split())[:200] or type(e).__name__
    return EngineUnavailable(f"the engine cannot read {what} from its database ({reason}); try again in a moment",
                             code="store_unavailable")


@dataclass
class Tenant:
    """One tenant as the engine knows it now: resolved quota, token windows, promises, usage counters."""

    name: str
    groups: tuple[str, ...] = ()
    is_admin: bool = False
    quota: Quota = field(default_factory=Quota)
    quota_source: dict[str, str] = field(default_factory=dict)
    group_quotas: dict[str, dict] | None = None   # each group's potluck properties, as last seen
    override: dict | None = None                  # the per-user override, as last read from the store
    window: TokenWindow = field(default_factory=TokenWindow)
    active_requests: int = 0
    active_runs: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    page_seconds: float = 0.0
    fuel: int = 0
    # Tokens promised to running generations: {generation id: (prompt + max_tokens, tokens it has made)}.
    reservations: dict[int, tuple[int, Callable[[], int]]] = field(default_factory=dict)

    @property
    def priority(self) -> int:
        return PRIORITIES[self.quota.priority]

    # --- checks at the door: each names the limit it enforces ----------------
    def check_model(self, model: str) -> None:
        if "*" not in self.quota.models and model not in self.quota.models:
            raise QuotaExceeded("models", list(self.quota.models),
                                f"your quota does not include model {model!r}; allowed: {', '.join(self.quota.models)}",
                                status=403)

    def check_request(self, prompt_tokens: int, max_tokens: int) -> int:
        """Admit a generation: the ``max_tokens`` it may make (clipped to the token rates' room left).

        A generation is admitted only when its prompt and at least one new token fit in what is left
        of ``tokens_per_minute``/``tokens_per_day`` after the tokens used and those promised to this
        tenant's running generations; its ``max_tokens`` is cut to the rest (it ends with "length"
        there). The caller reserves ``prompt + returned max_tokens`` (``reserve``), so concurrent
        requests cannot together pass the limit: usage stays within it, where a check at the start
        alone let a tenant limited to 60 use 88.
        """
        q = self.quota
        if q.max_tokens_per_request is not None and max_tokens > q.max_tokens_per_request:
            raise RequestTooLarge("max_tokens_per_request", q.max_tokens_per_request,
                                  f"max_tokens {max_tokens} is over your max_tokens_per_request limit "
                                  f"{q.max_tokens_per_request}; ask for fewer tokens")
        if q.max_concurrent_requests is not None and self.active_requests >= q.max_concurrent_requests:
            raise QuotaExceeded("max_concurrent_requests", q.max_concurrent_requests,
                                f"you already have {self.active_requests} requests running, your "
                                f"max_concurrent_requests limit; wait for one to finish")
        self.check_rate(prompt_tokens + 1)
        room = self.rate_room()
        return max_tokens if room is None else max(1, min(max_tokens, room - prompt_tokens))

    def reserve(self, key: int, tokens: int, made: Callable[[], int]) -> None:
        """Promise ``tokens`` to a running generation until ``release(key)``; ``made()`` of them are used."""
        if self.quota.tokens_per_minute is not None or self.quota.tokens_per_day is not None:
            self.reservations[key] = (tokens, made)

    def release(self, key: int) -> None:
        self.reservations.pop(key, None)

    def reserved(self) -> int:
        """Tokens promised and not yet used (a generation's prompt stays counted until it ends: the safe side)."""
        return sum(max(0, n - made()) for n, made in self.reservations.values())

    def rate_room(self) -> int | None:
        """Tokens this tenant may still use now under its token rates (None: no rate limit)."""
        return token_room(self.quota, self.window, self.reserved)

    def check_rate(self, tokens: int = 0) -> None:
        check_token_rates(self.quota, self.window, self.reserved, tokens)

    def usage_json(self) -> dict:
        return {
            "prefill_tokens": self.prefill_tokens,
            "decode_tokens": self.decode_tokens,
            "page_seconds": round(self.page_seconds, 3),
            "fuel": self.fuel,
            "tokens_last_minute": self.window.minute(),
            "tokens_today": self.window.day(),
            "active_requests": self.active_requests,
            "active_runs": self.active_runs,
        }


class TenantRegistry:
    """Every tenant the engine has seen: quotas resolved in layers, live counters, usage to the ledger.

    Runs on the batch-loop thread only (the engine's facade calls it there),
    so the counters need no lock. ``on_quota`` is told every (re)resolved
    tenant, so the scheduler's weights and the pool's soft shares follow the
    quota without this class knowing either. Per-user overrides live in the
    store when there is one (they survive restarts), else in memory.
    """

    def __init__(self, defaults: Quota, *, store=None, ledger=None,
                 on_quota: Callable[[Tenant], None] = lambda t: None,
                 pools: tuple[str, ...] = (), default_pool: str = ""):
        self.defaults = defaults
        self.pools, self.default_pool = tuple(pools), default_pool     # how a tenant's pool is chosen
        self.store = store
        self.ledger = ledger
        self.on_quota = on_quota
        self.tenants: dict[str, Tenant] = {}
        self._overrides: dict[str, dict] = {}     # without a store, the overrides; with one, this engine's last change
        self._override_versions: dict[str, int] = {}   # changes applied by this engine, per user

    def __getitem__(self, name: str) -> Tenant:
        return self.tenants[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tenants

    def __iter__(self):
        return iter(self.tenants)

    def get(self, name: str) -> Tenant | None:
        return self.tenants.get(name)

    def names(self) -> list[str]:
        return sorted(self.tenants)

    def resolve(self, name: str, groups: dict[str, dict] | None = None, is_admin: bool = False,
                override: tuple[int, dict | None] | None = None, window: TokenWindow | None = None) -> Tenant:
        """The tenant ``name`` with its quota resolved (defaults <- groups <- user override).

        ``override`` is what ``read_override`` found (read off the loop); without it, it is read here.
        ``window``: token windows seeded from the shared ledger (the tenant just came to this
        engine from another of its pool), replacing what this engine counted so far.
        """
        version, fields = override if override is not None else self.read_override(name)
        if version != self._override_versions.get(name, 0):
            fields = self._overrides.get(name)    # this engine changed it after that read: the change is newer
        t = self.tenants.get(name)
        if window is not None:
            if t is None:
                t = self.tenants[name] = Tenant(name=name, window=window)
            t.window = window
        elif t is None:
            day_tokens = 0
            if self.ledger is not None:
                midnight = datetime.combine(datetime.now(timezone.utc).date(), dtime(), tzinfo=timezone.utc)
                day_tokens = self.ledger.tokens_since(name, midnight)
            t = self.tenants[name] = Tenant(name=name, window=TokenWindow(day_tokens))
        if groups is not None:
            t.groups = tuple(sorted(groups))
            t.group_quotas = groups
        t.is_admin = is_admin
        t.override = fields
        self._resolve(t)
        return t

    def unchanged(self, name: str, groups: dict[str, dict] | None, is_admin: bool,
                  override: tuple[int, dict | None]) -> Tenant | None:
        """The live tenant ``name`` if ``resolve`` with these inputs would change nothing, else None.

        Read off the loop: a returning tenant whose groups, admin flag and override are as they
        were need not wait for a step boundary (a loop call) to learn what it already is; beside a
        flood that wait was a whole step of every request's time to first token.
        """
        t = self.tenants.get(name)
        version, fields = override
        if t is None or version != self._override_versions.get(name, 0):
            return None
        if t.is_admin != is_admin or t.override != fields or (groups is not None and t.group_quotas != groups):
            return None
        return t

    def _resolve(self, t: Tenant) -> None:
        t.quota, t.quota_source = resolve_quota(self.defaults, t.group_quotas, t.override,
                                                pools=self.pools, default_pool=self.default_pool)
        self.on_quota(t)

    # ------------------------------------------------------------ overrides
    def get_override(self, name: str) -> dict | None:
        """The user's override as the store has it now (a 503 when it cannot be read: never "none")."""
        if self.store is None:
            return self._overrides.get(name)
        try:
            return self.store.get_override(name)
        except Exception as e:
            raise _store_unreadable("your quota override", e) from e

    def read_override(self, name: str) -> tuple[int, dict | None]:
        """(version, override) for ``resolve``: off the loop, since it reads the database."""
        version = self._override_versions.get(name, 0)     # first: a change after it wins over this read
        return version, self.get_override(name)

    def read_overrides(self) -> tuple[dict[str, int], dict[str, dict]]:
        """(versions, every override) for ``refresh_overrides``: off the loop."""
        versions = dict(self._override_versions)
        if self.store is None:
            return versions, dict(self._overrides)
        try:
            return versions, self.store.list_overrides()
        except Exception as e:
            raise _store_unreadable("the quota overrides", e) from e

    def refresh_overrides(self, read: tuple[dict[str, int], dict[str, dict]]) -> None:
        """On the loop: every known tenant's override as ``read_overrides`` found it (another engine may have
        changed some), unless this engine changed it since."""
        versions, overrides = read
        for name, t in self.tenants.items():
            if versions.get(name, 0) == self._override_versions.get(name, 0) and overrides.get(name) != t.override:
                t.override = overrides.get(name)
                self._resolve(t)

    def set_override(self, name: str, fields: dict, actor: str) -> dict:
        """Store a validated per-user override (off the loop: it writes the database)."""
        fields = validate_quota_fields(fields, where=f"quota override for {name}")
        if self.store is not None:
            self.store.set_override(name, fields, actor)
        return fields

    def delete_override(self, name: str, actor: str) -> bool:
        if self.store is not None:
            return self.store.delete_override(name, actor)
        return name in self._overrides

    def apply_override(self, name: str, fields: dict | None) -> None:
        """On the loop: the new override takes effect for a live tenant at once."""
        if fields is None:
            self._overrides.pop(name, None)
        else:
            self._overrides[name] = fields
        self._override_versions[name] = self._override_versions.get(name, 0) + 1
        t = self.tenants.get(name)
        if t is not None:
            t.override = fields
            self._resolve(t)

    # ---------------------------------------------------------------- usage
    def charge_tokens(self, usage: dict[str, list[int]]) -> None:
        """One step's ``{tenant: [prefill tokens, decode tokens]}``."""
        for name, (pre, dec) in usage.items():
            t = self.tenants[name]
            t.prefill_tokens += pre
            t.decode_tokens += dec
            t.window.add(pre + dec)
            if self.ledger is not None:
                self.ledger.record(name, prefill_tokens=pre, decode_tokens=dec)

    def charge_pages(self, held: dict[str, int], seconds: float) -> None:
        for name, pages in held.items():
            t = self.tenants.get(name)
            if t is not None:
                t.page_seconds += pages * seconds
                if self.ledger is not None:
                    self.ledger.record(name, page_seconds=pages * seconds)

    def charge_fuel(self, name: str, fuel: int) -> None:
        t = self.tenants.get(name)
        if t is not None:
            t.fuel += fuel
        if self.ledger is not None and fuel:
            self.ledger.record(name, fuel=fuel)
            self.ledger.flush_soon()

    def request_finished(self, name: str, key: int | None = None) -> None:
        t = self.tenants[name]
        t.active_requests -= 1
        if key is not None:
            t.release(key)
        if self.ledger is not None:
            self.ledger.record(name, requests=1)
            self.ledger.flush_soon()     # a finished request's usage reaches the database at once

    def set_active_runs(self, name: str, n: int) -> None:
        t = self.tenants.get(name)
        if t is not None:
            t.active_runs = n

    # -------------------------------------------------------------- reports
    def report(self, name: str) -> dict | None:
        t = self.tenants.get(name)
        if t is None:
            return None
        return {"name": t.name, "groups": list(t.groups), "is_admin": t.is_admin,
                "quota": t.quota.to_json(), "quota_source": dict(t.quota_source), "usage": t.usage_json()}
