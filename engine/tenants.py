"""Tenants and their quotas.

The tenant is the hub user name. A tenant's effective quota is resolved in
layers: the engine's defaults, then each of the user's groups' ``potluck``
properties (combined by the most generous value), then a per-user override
set by an admin. Every effective value remembers where it came from, so
``/api/me`` can say "tokens_per_minute = 20000 (group: students)".

Enforcement lives here too: the token-rate windows and the per-request and
concurrency limits. Every refusal names the quota field and its value.
``TenantRegistry`` keeps every tenant seen, their overrides and live usage.
Nothing here touches tensors or pages.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, time as dtime, timezone
from typing import Callable

from .errors import BadRequest, EngineUnavailable, QuotaExceeded, RequestTooLarge
from .pools import check_pool_name, choose_pool
from .scheduler import PRIORITIES


def _limit(default, maximum):
    """A quota field's default and the largest value an admin may set (bigger is refused, never clipped)."""
    return field(default=default, metadata={"max": maximum})


@dataclass(frozen=True)
class Quota:
    """A tenant's limits. Each field is declared once here: its type and maximum drive validation."""

    weight: float = _limit(1.0, 1e6)                          # share of the accelerator relative to others
    priority: str = "interactive"                             # "interactive" or "batch"
    kv_pages: int | None = _limit(4096, 1 << 31)             # hard cap on KV pages held (None: no cap)
    kv_pages_soft: int | None = _limit(None, 1 << 31)        # share kept on the device before swapping
    max_runs: int | None = _limit(4, 10_000)                 # concurrent inferlet runs
    max_concurrent_requests: int | None = _limit(32, 100_000)  # concurrent generation requests
    tokens_per_minute: int | None = _limit(None, 10**12)
    tokens_per_day: int | None = _limit(None, 10**15)
    max_tokens_per_request: int | None = _limit(4096, 10**9)
    fuel_per_run: int | None = _limit(20_000_000_000, 1 << 62)   # wasmtime's fuel is a u64
    max_run_seconds: float | None = _limit(600.0, 30 * 86400.0)
    memory_mb_per_run: int | None = _limit(256, 4096)         # wasm32 memory ends at 4 GiB
    models: tuple[str, ...] = ("*",)
    # Which pool of engines serves the tenant ("": the hub's default pool). Every group's and the
    # override's pool is kept, and the first of the hub's pools (its order) that any names wins.
    pool: str = ""
    # What a tenant can make the engine hold besides KV pages (issue 15: every byte counts somewhere).
    run_output_bytes: int | None = _limit(1 << 20, 1 << 30)   # what one run prints, sends and publishes
    run_history_bytes: int | None = _limit(8 << 20, 1 << 34)  # ended runs' events kept in memory, all together
    kv_store_bytes: int | None = _limit(16 << 20, 1 << 40)    # keys + values in the key-value store
    saved_contexts: int | None = _limit(256, 1_000_000)       # named saved contexts

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["models"] = list(self.models)
        return d


QUOTA_FIELDS = {f.name: f for f in dataclasses.fields(Quota)}
QUOTA_MAX = {f.name: f.metadata["max"] for f in QUOTA_FIELDS.values() if "max" in f.metadata}


def _fields_typed(kind: str) -> set[str]:
    # A quota field is declared once, in Quota: how it is validated follows its annotation.
    return {f.name for f in QUOTA_FIELDS.values() if str(f.type).split(" |")[0] == kind}


_INT_FIELDS = _fields_typed("int")
_FLOAT_FIELDS = _fields_typed("float")


def _too_big(where: str, name: str, value) -> BadRequest:
    top = QUOTA_MAX[name]
    shown = int(top) if isinstance(top, float) and top.is_integer() else top
    return BadRequest(f"{where}: {name} is at most {shown}, got {value!r}", code="invalid_quota", param=name,
                      maximum=top)


def validate_quota_fields(fields: dict, *, where: str = "quota") -> dict:
    """Check a partial quota (an override or a group's properties); return it normalised.

    Numbers are bounded by each field's declared maximum: a value past it is refused (never
    clipped), so an admin's typo cannot turn into "unlimited" or overflow a limit downstream.
    """
    if not isinstance(fields, dict):
        raise BadRequest(f"{where} must be a JSON object of quota fields", code="invalid_quota")
    out = {}
    for name, value in fields.items():
        if name not in QUOTA_FIELDS:
            raise BadRequest(f"{where}: unknown quota field {name!r}; known: {', '.join(QUOTA_FIELDS)}",
                             code="invalid_quota")
        if name in _INT_FIELDS:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise BadRequest(f"{where}: {name} must be a non-negative integer or null (no limit), got {value!r}",
                                 code="invalid_quota", param=name)
            if value is not None and value > QUOTA_MAX[name]:
                raise _too_big(where, name, value)
        elif name in _FLOAT_FIELDS:
            ok = value is None and name != "weight"
            ok = ok or (isinstance(value, (int, float)) and not isinstance(value, bool)
                        and math.isfinite(value) and value > 0)
            if not ok:
                raise BadRequest(f"{where}: {name} must be a positive number, got {value!r}", code="invalid_quota",
                                 param=name)
            if value is not None and value > QUOTA_MAX[name]:
                raise _too_big(where, name, value)
        elif name == "priority":
            if value not in PRIORITIES:
                raise BadRequest(f"{where}: priority must be one of {sorted(PRIORITIES)}, got {value!r}",
                                 code="invalid_quota", param=name)
        elif name == "models":
            if not isinstance(value, (list, tuple)) or not all(isinstance(m, str) for m in value):
                raise BadRequest(f"{where}: models must be a list of model names (or ['*'])", code="invalid_quota",
                                 param=name)
            value = tuple(value)
        elif name == "pool":
            value = "" if value is None else value      # null: no pool named, as ""
            try:
                if value != "":
                    check_pool_name(value)
            except ValueError as e:
                raise BadRequest(f"{where}: {e}", code="invalid_quota", param=name) from None
        out[name] = value
    return out


def _more_generous(name: str, a, b):
    if name == "models":
        return tuple(sorted(set(a) | set(b)))
    if name == "priority":
        return "interactive" if "interactive" in (a, b) else a
    if a is None or b is None:          # None = no limit, the most generous
        return None
    return max(a, b)


def named_pools(groups: dict[str, dict] | None, override: dict | None) -> dict[str, str]:
    """Every pool the tenant's groups and override name, and who named it (``group:NAME`` or ``user``)."""
    named: dict[str, str] = {}
    for gname in sorted(groups or {}):
        pool = (groups[gname] or {}).get("pool")
        if pool:
            named.setdefault(pool, f"group:{gname}")
    pool = (override or {}).get("pool")
    if pool:
        named[pool] = "user"
    return named


def resolve_quota(defaults: Quota, groups: dict[str, dict] | None = None,
                  override: dict | None = None, combine: str = "max", *,
                  pools: tuple[str, ...] = (), default_pool: str = "") -> tuple[Quota, dict[str, str]]:
    """Effective quota and, per field, where its value came from.

    ``pool`` is not combined like the limits: of the pools any group or the override names, the
    first in ``pools`` (the hub's order of preference) is the tenant's, else ``default_pool``
    (``pools.choose_pool``, as the placement and the clients choose it).
    """
    values = dataclasses.asdict(defaults)
    source = {name: "default" for name in values}
    group_vals: dict[str, tuple] = {}
    for gname in sorted(groups or {}):
        for name, value in (groups[gname] or {}).items():
            if name == "pool":
                continue
            if name not in group_vals:
                group_vals[name] = (value, f"group:{gname}")
            elif combine == "max":
                merged = _more_generous(name, group_vals[name][0], value)
                if merged != group_vals[name][0]:
                    group_vals[name] = (merged, f"group:{gname}")
    for name, (value, src) in group_vals.items():
        values[name], source[name] = value, src
    for name, value in (override or {}).items():
        if name != "pool":
            values[name], source[name] = value, "user"
    named = named_pools(groups, override)
    values["pool"] = choose_pool(named, pools, default_pool or defaults.pool)
    source["pool"] = named.get(values["pool"], "default")
    values["models"] = tuple(values["models"])
    return Quota(**values), source


def _store_unreadable(what: str, e: Exception) -> EngineUnavailable:
    # Fail closed: without the override the quota could be more generous than an admin set.
    reason = " ".join(str(getattr(e, "orig", None) or e).split())[:200] or type(e).__name__
    return EngineUnavailable(f"the engine cannot read {what} from its database ({reason}); try again in a moment",
                             code="store_unavailable")


class TokenWindow:
    """Tokens used in the last minute (1-second buckets) and in the current UTC day.

    A window can start from usage recorded elsewhere (another engine of the pool, before a
    restart): ``day_start_tokens`` today's, ``recent`` the last minute's as (second, tokens)
    pairs, oldest first.
    """

    def __init__(self, day_start_tokens: int = 0, recent: tuple[tuple[int, int], ...] = ()):
        self._buckets: deque[tuple[int, int]] = deque(recent)
        self._minute = sum(n for _, n in recent)
        self._day = datetime.now(timezone.utc).date()
        self._day_tokens = day_start_tokens

    def _roll(self, now: float) -> None:
        sec = int(now)
        while self._buckets and self._buckets[0][0] <= sec - 60:
            self._minute -= self._buckets.popleft()[1]
        today = datetime.now(timezone.utc).date()
        if today != self._day:
            self._day, self._day_tokens = today, 0

    def add(self, n: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._roll(now)
        sec = int(now)
        if self._buckets and self._buckets[-1][0] == sec:
            self._buckets[-1] = (sec, self._buckets[-1][1] + n)
        else:
            self._buckets.append((sec, n))
        self._minute += n
        self._day_tokens += n

    def minute(self, now: float | None = None) -> int:
        self._roll(time.time() if now is None else now)
        return self._minute

    def day(self) -> int:
        self._roll(time.time())
        return self._day_tokens

    def seconds_until_minute_frees(self, need: int, limit: int, now: float | None = None) -> int:
        """How long until ``need`` more tokens fit under a per-minute ``limit`` (what Retry-After says)."""
        now = time.time() if now is None else now
        self._roll(now)
        used = self._minute
        if used + need <= limit:
            return 1
        for sec, n in self._buckets:
            used -= n
            if used + need <= limit:
                return max(1, math.ceil(sec + 60 - now))
        return 60

    @staticmethod
    def seconds_until_day_ends() -> int:
        now = datetime.now(timezone.utc)
        return max(1, 86400 - (now.hour * 3600 + now.minute * 60 + now.second))


@dataclass
class Tenant:
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
        q = self.quota
        if q.tokens_per_minute is None and q.tokens_per_day is None:
            return None
        reserved = self.reserved()
        rooms = []
        if q.tokens_per_minute is not None:
            rooms.append(q.tokens_per_minute - self.window.minute() - reserved)
        if q.tokens_per_day is not None:
            rooms.append(q.tokens_per_day - self.window.day() - reserved)
        return min(rooms)

    def check_rate(self, tokens: int = 0) -> None:
        q = self.quota
        if q.tokens_per_minute is None and q.tokens_per_day is None:
            return
        reserved = self.reserved()
        if q.tokens_per_minute is not None:
            used = self.window.minute() + reserved
            if tokens > q.tokens_per_minute:
                raise RequestTooLarge("tokens_per_minute", q.tokens_per_minute,
                                      f"this request needs {tokens} tokens (its prompt and one new token) but your "
                                      f"tokens_per_minute limit is {q.tokens_per_minute}: it can never fit, "
                                      f"retrying will not help; send a shorter prompt")
            if used + tokens > q.tokens_per_minute:
                err = QuotaExceeded("tokens_per_minute", q.tokens_per_minute,
                                    f"token rate limit: {used} tokens used or promised to running requests in "
                                    f"the last minute (+{tokens} asked) against your tokens_per_minute limit "
                                    f"{q.tokens_per_minute}; try again in a minute")
                err.retry_after = self.window.seconds_until_minute_frees(tokens + reserved, q.tokens_per_minute)
                raise err
        if q.tokens_per_day is not None:
            used = self.window.day() + reserved
            if tokens > q.tokens_per_day:
                raise RequestTooLarge("tokens_per_day", q.tokens_per_day,
                                      f"this request needs {tokens} tokens (its prompt and one new token) but your "
                                      f"tokens_per_day limit is {q.tokens_per_day}: it can never fit")
            if used + tokens > q.tokens_per_day:
                err = QuotaExceeded("tokens_per_day", q.tokens_per_day,
                                    f"daily token limit: {used} tokens used or promised today (UTC) against "
                                    f"your tokens_per_day limit {q.tokens_per_day}")
                err.retry_after = self.window.seconds_until_day_ends()
                raise err

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
