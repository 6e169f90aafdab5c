"""One call in ``jupyterhub_config.py`` that plugs the Potluck engine into a JupyterHub.

    import potluck.hub_config
    potluck.hub_config.configure(c, admin_users={"ada"},
                                 groups={"students": {"tokens_per_minute": 20000}})

What it sets (each with the Hub's own traits, so ``jupyterhub --help-all`` explains them):

- ``c.JupyterHub.services``: the engine, either *managed* (the Hub starts and stops
  ``potluck engine`` at ``url``) or *external* (``engine_url`` of an engine the Hub must not
  restart, e.g. on a GPU host; give it ``api_token`` and run it with the same token as
  ``JUPYTERHUB_API_TOKEN``).
- ``c.JupyterHub.load_roles``: the service's role (``read:users``, ``read:groups``: the engine
  reads each group's ``potluck`` property to resolve quotas), and ``potluck-admins``
  (``custom:potluck:admin`` for ``admin_users``: engine admins who are not hub admins).
- ``c.JupyterHub.custom_scopes``: ``custom:potluck:admin`` and one
  ``custom:potluck:tier:<name>`` per model tier.
- ``access:services!service=potluck`` for every user (``c.JupyterHub.extra_user_scopes`` on
  JupyterHub 6, the ``user`` role before) and in ``c.Spawner.server_token_scopes``, so the
  ``JUPYTERHUB_API_TOKEN`` that servers and their kernels hold is accepted by the engine.
- ``c.Spawner.environment["POTLUCK_URL"]``: where servers and kernels reach the engine.
- ``c.JupyterHub.load_groups``: optional default groups, created with *no* properties (the Hub
  re-applies ``load_groups`` properties at every start, which would undo admins' edits). Their
  default quotas go to the managed engine (``--HubAuthenticator.seed_groups``), which writes
  them as flat ``potluck.<field>`` properties only into a group that has no Potluck quota yet;
  the service's role gets ``groups!group=<name>`` for exactly those groups.

Several engines (``pools=``): a hub that outgrows one GPU host groups its engines into pools,
one per accelerator class; engine *i* of pool *P* is the service ``potluck-P-i``, and a user's pool
is the ``pool`` field of their groups' Potluck quota (else ``default_pool``)::

    potluck.hub_config.configure(c, default_pool="cpu", db_url="postgresql+psycopg://potluck@db/potluck",
        pools={"h100": {"engines": ["http://gpu-1:8765", "http://gpu-2:8765"], "accelerator": "h100",
                        "external": True},
               "cpu": {"engines": ["http://127.0.0.1:8766"]}})

Every engine gets the same roles and scopes as the single one; servers and kernels get
``POTLUCK_POOLS`` (the pool map, ``potluck.engine.pools.PoolMap``) instead of one ``POTLUCK_URL``:
the server extension asks the engines which one serves its user and routes there (see
``docs/deploy.md``). All engines of a hub share one database (``db_url``, given to managed engines
as ``$POTLUCK_DB_URL`` so no password shows on a command line).

It never touches the engine's own state; per-user quota overrides live in the engine
(``PUT /api/admin/quotas/users/{name}``).
"""

from __future__ import annotations

import json
import sys
from urllib.parse import urlparse

from potluck.engine.pools import POOLS_ENV, PoolMap, check_pool_name, engine_service_name
from potluck.engine.protocol import ADMIN_SCOPE, SERVICE_NAME, TIER_SCOPE

DEFAULT_URL = "http://127.0.0.1:8765"
SERVER_TOKEN_DEFAULTS = ["users:activity!user", "access:servers!server"]   # the Hub's 'server' role


def access_scope(name: str = SERVICE_NAME) -> str:
    return f"access:services!service={name}"


def _jupyterhub_major() -> int:
    try:
        import jupyterhub
        return int(jupyterhub.__version__.split(".")[0])
    except Exception:
        return 0


def _get(section, key: str, default):
    """A config value if it was set (an unset one reads as a LazyConfigValue), else ``default``."""
    return section[key] if key in section else default


def _add_role(c, role: dict) -> None:
    roles = [r for r in _get(c.JupyterHub, "load_roles", []) if r.get("name") != role["name"]]
    roles.append(role)
    c.JupyterHub.load_roles = roles


def configure(c, *, engine_url: str | None = None, url: str = DEFAULT_URL, engine_args: list[str] | tuple = (),
              data_dir: str | None = None, model: str | None = None, api_token: str | None = None,
              name: str = SERVICE_NAME, admin_users: set[str] | list[str] = (),
              groups: dict[str, dict | None] | None = None, model_tiers: dict[str, dict] | None = None,
              kernel_url: str | None = None, display: bool = False,
              pools: dict[str, dict] | None = None, default_pool: str | None = None,
              db_url: str | None = None) -> None:
    """Register the Potluck engine (or pools of engines) with the Hub configured by ``c``.

    engine_url: an external engine's URL (the Hub only routes to it); None: a managed
        service the Hub starts at ``url`` with ``potluck engine`` (+ ``engine_args``).
    url: where the managed engine listens (host:port only; it serves under /services/<name>/).
    data_dir, model: shortcuts for ``--data-dir`` and ``--model`` of the managed engine(s); with
        pools each managed engine gets its own ``data_dir/<service name>``.
    api_token: the service's Hub API token (needed for an external engine; generated for a managed one).
    admin_users: users who are engine admins without being hub admins (hub admins always are).
    groups: default groups, ``{"students": {"tokens_per_minute": 20000}}``: each is created, and
        its quota seeded once, when the group has no Potluck quota (later edits in the Hub's
        admin page survive restarts; other properties are never touched). ``None``: only create it.
    model_tiers: ``{"large": {"models": ["*"], "weight": 2}}``: a custom scope
        ``custom:potluck:tier:large`` per tier; users holding it (through a role) get those
        quota fields, merged like a group's.
    kernel_url: the engine's URL as servers and kernels should reach it. Default: the engine's
        own URL (``url`` or ``engine_url``) plus the service prefix, direct rather than through
        the proxy (right when servers run on the Hub's host; give the Hub's internal host name
        for containers or Kubernetes). Not used with pools (each engine item has its own).
    display: show the service on the Hub's home page (its root is the admin dashboard, for engine
        admins; off by default).
    pools: ``{pool: {"engines": [URL or {"url", "kernel_url", "api_token", "external", "environment"}, ...],
        "accelerator": "h100", "external": False, "engine_args": [...], "model": ..., "environment": {...}}}``, in the
        hub's order of preference (a user whose groups name two pools gets the first). Engines
        are managed unless ``external``. Replaces ``engine_url``/``url``/``name``.
    default_pool: the pool of users whose groups name none (default: the only pool).
    db_url: the database every engine shares (PostgreSQL), given to the managed ones; required when
        the Hub starts any of several engines (external ones are configured where they run).
    """
    if pools is not None:
        single = {"engine_url": engine_url, "api_token": api_token, "kernel_url": kernel_url,
                  "name": name if name != SERVICE_NAME else None, "url": url if url != DEFAULT_URL else None}
        given = [k for k, v in single.items() if v is not None]
        if given:
            raise ValueError(f"with pools, {', '.join(given)} belong(s) to each engine of a pool "
                             "(engines: [{\"url\", \"api_token\", \"kernel_url\", ...}]), not to configure")
        engines, pool_map = _pool_engines(pools, default_pool, engine_args, data_dir, model, db_url)
    else:
        engines = [_single_engine(name, engine_url, url, engine_args, data_dir, model, api_token, kernel_url, db_url)]
        pool_map = None
    major = _jupyterhub_major()
    names = [e["service"]["name"] for e in engines]
    existing = {s.get("name"): s for s in _get(c.JupyterHub, "services", [])}
    services = []
    for e in engines:
        service = dict(e["service"], display=display)
        before = existing.get(service["name"]) or {}
        if "command" not in service and "api_token" not in service and before.get("api_token"):
            service["api_token"] = before["api_token"]     # e.g. z2jh's hub.services.<name>.apiToken
        services.append(service)
    c.JupyterHub.services = [s for s in existing.values() if s.get("name") not in names] + services

    # The engine reads who a token is with the token itself; its own token reads groups' quotas,
    # and may write the properties of the default groups it seeds (those groups only).
    seeds = {g: dict(q) for g, q in (groups or {}).items() if q is not None}
    role_name = f"{name}-service" if pools is None else f"{SERVICE_NAME}-service"
    _add_role(c, {"name": role_name, "description": "The Potluck engine: read users and group quotas",
                  "scopes": ["read:users", "read:groups", *(f"groups!group={g}" for g in sorted(seeds))],
                  "services": names})

    custom = dict(_get(c.JupyterHub, "custom_scopes", {}))
    custom[ADMIN_SCOPE] = {"description": "Administer the Potluck engine: every tenant's usage, quotas and runs"}
    tier_quotas = {}
    for tier, fields in (model_tiers or {}).items():
        scope = TIER_SCOPE.format(tier)
        custom[scope] = {"description": f"Use the Potluck model tier {tier!r}"}
        tier_quotas[scope] = dict(fields)
    c.JupyterHub.custom_scopes = custom
    if admin_users:
        _add_role(c, {"name": f"{SERVICE_NAME if pools is not None else name}-admins",
                      "description": "Potluck engine admins", "scopes": [ADMIN_SCOPE], "users": sorted(admin_users)})

    # What each engine must be told: managed ones on their command line, external ones by their admin.
    for service, e in zip(services, engines):
        settings = dict(e["settings"])
        if seeds:
            settings["HubAuthenticator.seed_groups"] = json.dumps(seeds)
        if tier_quotas:
            settings["HubAuthenticator.scope_quotas"] = json.dumps(tier_quotas)
        if "command" in service:
            service["command"] = service["command"] + [f"--{k}={v}" for k, v in settings.items()]
        elif settings:
            print(f"potluck.hub_config: the external engine {service['name']} needs, in its potluck_config.py "
                  "or command line: " + " ".join(f"--{k}={v}" for k, v in settings.items()), file=sys.stderr)

    # Every user may use the services, and their servers' tokens (inherited by kernels) carry it.
    scopes = [access_scope(n) for n in names]
    # The dashboard at /services/<name>/ logs admins in through the Hub's OAuth: its token may
    # read and write groups (quota edits with the admin's own rights) and carry the engine's admin
    # scope. A token only ever gets the subset its user already holds, so nobody gains a right.
    for service in services:
        service["oauth_client_allowed_scopes"] = [access_scope(service["name"]), "read:groups", "groups", ADMIN_SCOPE]
    _grant_users(c, major, scopes)
    _grant_server_tokens(c, scopes + [ADMIN_SCOPE] + list(tier_quotas))

    env = dict(_get(c.Spawner, "environment", {}))
    if pool_map is None:
        env.setdefault("POTLUCK_URL", engines[0]["kernel_url"])
    else:
        env[POOLS_ENV] = pool_map.to_json()
    c.Spawner.environment = env

    if groups:
        # No "properties" key: the Hub then leaves the group's properties as admins set them.
        load = dict(_get(c.JupyterHub, "load_groups", {}))
        for gname in groups:
            spec = dict(load.get(gname) or {})
            spec.setdefault("users", [])
            load[gname] = spec
        c.JupyterHub.load_groups = load


def _managed_command(args: list[str], data_dir: str | None, model: str | None) -> list[str]:
    args = list(args)
    if data_dir:
        args.append(f"--data-dir={data_dir}")
    if model:
        args.append(f"--model={model}")
    # A managed engine stops if the Hub is killed (else it holds the port the restarted Hub needs).
    return [sys.executable, "-m", "potluck.engine.app", "engine", "--PotluckEngine.exit_with_hub=True", *args]


def _bind_url(url: str, what: str) -> str:
    bind = urlparse(url)
    if bind.scheme not in ("http", "https") or not bind.hostname or not bind.port:
        raise ValueError(f"{what} must be http://HOST:PORT, got {url!r}")
    return f"{bind.scheme}://{bind.hostname}:{bind.port}"


def _single_engine(name, engine_url, url, engine_args, data_dir, model, api_token, kernel_url, db_url) -> dict:
    """One engine, as before pools: the service, the URL kernels use, settings it must be told."""
    if engine_url is None:
        service = {"name": name, "url": _bind_url(url, "url"),
                   "command": _managed_command(engine_args, data_dir, model)}
        if db_url:
            service["environment"] = {"POTLUCK_DB_URL": db_url}
    else:
        service = {"name": name, "url": engine_url.rstrip("/")}
    if api_token:
        service["api_token"] = api_token
    prefix = f"/services/{name}/"
    return {"service": service, "settings": {},
            "kernel_url": (kernel_url or service["url"]).rstrip("/") + prefix}


def _pool_engines(pools: dict, default_pool, engine_args, data_dir, model, db_url) -> tuple[list[dict], PoolMap]:
    """Each pool's engines as Hub services, and the pool map servers and kernels get."""
    if not pools:
        raise ValueError("pools is empty: give at least one pool with its engines")
    order = [check_pool_name(p) for p in pools]
    if default_pool is None:
        if len(order) > 1:
            raise ValueError(f"default_pool is required with several pools (one of {', '.join(order)})")
        default_pool = order[0]
    engines, urls, accelerators = [], {}, {}
    for pool, spec in pools.items():
        spec = dict(spec or {})
        unknown = set(spec) - {"engines", "accelerator", "external", "engine_args", "model", "environment"}
        if unknown:
            raise ValueError(f"pool {pool!r}: unknown key(s) {', '.join(sorted(unknown))} "
                             "(engines, accelerator, external, engine_args, model, environment)")
        items = spec.get("engines") or []
        if isinstance(items, str) or not items:
            raise ValueError(f"pool {pool!r} needs engines: a list of URLs")
        if spec.get("accelerator"):
            accelerators[pool] = str(spec["accelerator"])
        if not isinstance(spec.get("engine_args", []), (list, tuple)):
            raise ValueError(f"pool {pool!r}: engine_args must be a list of arguments")
        if not isinstance(spec.get("external", False), bool):
            raise ValueError(f"pool {pool!r}: external must be True or False, got {spec['external']!r}")
        urls[pool] = {}
        for i, item in enumerate(items):
            item = {"url": item} if isinstance(item, str) else dict(item)
            bad = set(item) - {"url", "kernel_url", "api_token", "external", "environment"}
            if bad:
                raise ValueError(f"pool {pool!r} engine {i}: unknown key(s) {', '.join(sorted(bad))} "
                                 "(url, kernel_url, api_token, external, environment)")
            for key, kind, what in (("environment", dict, "a mapping"), ("external", bool, "True or False")):
                if key in item and not isinstance(item[key], kind):
                    raise ValueError(f"pool {pool!r} engine {i}: {key} must be {what}")
            if not isinstance(spec.get("environment", {}), dict):
                raise ValueError(f"pool {pool!r}: environment must be a mapping")
            name = engine_service_name(pool, i)
            bind = _bind_url(item.get("url", ""), f"pool {pool!r} engine {i}'s url")
            if item.get("external", spec.get("external", False)):
                service = {"name": name, "url": bind}
            else:
                service = {"name": name, "url": bind,
                           "command": _managed_command([*engine_args, *spec.get("engine_args", [])],
                                                       data_dir and f"{data_dir.rstrip('/')}/{name}",
                                                       spec.get("model") or model)}
                # e.g. CUDA_VISIBLE_DEVICES: one managed engine per GPU of a multi-GPU host
                env = {**spec.get("environment", {}), **item.get("environment", {})}
                if db_url:
                    env["POTLUCK_DB_URL"] = db_url
                if env:
                    service["environment"] = env
            if item.get("api_token"):
                service["api_token"] = item["api_token"]
            settings = {"PotluckEngine.engine_name": name, "PotluckEngine.pool": pool,
                        "PotluckEngine.pools": json.dumps(order),
                        "PotluckEngine.default_pool": default_pool}
            if spec.get("accelerator"):
                settings["PotluckEngine.accelerator"] = str(spec["accelerator"])
            kernel = (item.get("kernel_url") or bind).rstrip("/") + f"/services/{name}/"
            engines.append({"service": service, "settings": settings, "kernel_url": kernel})
            urls[pool][name] = kernel
    # External engines read the database URL from their own settings; the Hub only passes it on.
    seen: dict[str, str] = {}
    for e in engines:
        u = e["service"]["url"]
        if u in seen:
            raise ValueError(f"engines {seen[u]} and {e['service']['name']} have the same url {u}: one engine per address")
        seen[u] = e["service"]["name"]
    if len(engines) > 1 and any("command" in e["service"] for e in engines) and not db_url:
        raise ValueError("several engines need db_url for the ones the Hub starts: every engine shares one "
                         "database (PostgreSQL) for tokens, quotas, usage and saved contexts")
    return engines, PoolMap(pools=urls, default_pool=default_pool, accelerators=accelerators)


def _grant_users(c, major: int, scopes: list[str]) -> None:
    if major >= 6:
        c.JupyterHub.extra_user_scopes = set(_get(c.JupyterHub, "extra_user_scopes", set())) | set(scopes)
        return
    roles = list(_get(c.JupyterHub, "load_roles", []))
    user_role = next((r for r in roles if r.get("name") == "user"), None)
    if user_role is None:
        _add_role(c, {"name": "user", "scopes": ["self", *scopes]})
        return
    have = user_role.setdefault("scopes", ["self"])
    have.extend(s for s in scopes if s not in have)
    c.JupyterHub.load_roles = roles


def _grant_server_tokens(c, extra: list[str]) -> None:
    """Servers' tokens (and so their kernels') carry the engines' scopes; the admin and tier scopes
    only where the user holds them (a token gets the subset its owner has)."""
    server_scopes = _get(c.Spawner, "server_token_scopes", None)
    if callable(server_scopes):
        inner = server_scopes

        async def with_potluck(spawner, _inner=inner):
            from jupyterhub.utils import maybe_future
            got = list(await maybe_future(_inner(spawner)))
            return got + [s for s in extra if s not in got]
        c.Spawner.server_token_scopes = with_potluck
    else:
        current = list(server_scopes or SERVER_TOKEN_DEFAULTS)
        c.Spawner.server_token_scopes = current + [s for s in extra if s not in current]
