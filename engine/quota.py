"""What a tenant's quota is, and how its layers combine.

This module owns the quota's definition: every field of ``Quota`` is declared once here, with its
type, default and the largest value an admin may set; ``validate_quota_fields`` checks a partial
quota (an override, a group's ``potluck`` property, a setting) against those declarations, and
``resolve_quota`` combines the layers (the engine's defaults, then each of the user's groups'
properties by the most generous value, then a per-user override), remembering where each
effective value came from so ``/api/me`` can say "tokens_per_minute = 20000 (group: students)".
A tenant's pool is chosen here too (``named_pools``, ``pools.choose_pool``).

What it must never do: hold live state or enforce a limit (``tenants`` and ``tokenrates`` do), or
clip a value past its maximum (it is refused: a typo never becomes "unlimited").
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import BadRequest
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
