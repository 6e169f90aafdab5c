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

It never touches the engine's own state; per-user quota overrides live in the engine
(``PUT /api/admin/quotas/users/{name}``).
"""

from __future__ import annotations

import json
import sys
from urllib.parse import urlparse

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
              kernel_url: str | None = None, display: bool = False) -> None:
    """Register the Potluck engine with the Hub configured by ``c``.

    engine_url: an external engine's URL (the Hub only routes to it); None: a managed
        service the Hub starts at ``url`` with ``potluck engine`` (+ ``engine_args``).
    url: where the managed engine listens (host:port only; it serves under /services/<name>/).
    data_dir, model: shortcuts for ``--data-dir`` and ``--model`` of the managed engine.
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
        for containers or Kubernetes).
    display: show the service on the Hub's home page (its root is the admin dashboard, for engine
        admins; off by default).
    """
    major = _jupyterhub_major()
    prefix = f"/services/{name}/"
    service: dict = {"name": name, "display": display}
    if engine_url is None:
        bind = urlparse(url)
        if not bind.hostname or not bind.port:
            raise ValueError(f"url must be http://HOST:PORT, got {url!r}")
        args = list(engine_args)
        if data_dir:
            args.append(f"--data-dir={data_dir}")
        if model:
            args.append(f"--model={model}")
        service["url"] = f"{bind.scheme}://{bind.hostname}:{bind.port}"
        service["command"] = [sys.executable, "-m", "potluck.engine.app", "engine", *args]
        engine_base = service["url"]
    else:
        service["url"] = engine_url.rstrip("/")
        if api_token:
            service["api_token"] = api_token
        engine_base = service["url"]
    if api_token and engine_url is None:
        service["api_token"] = api_token
    c.JupyterHub.services = [s for s in _get(c.JupyterHub, "services", []) if s.get("name") != name] + [service]

    # The engine reads who a token is with the token itself; its own token reads groups' quotas,
    # and may write the properties of the default groups it seeds (those groups only).
    seeds = {g: dict(q) for g, q in (groups or {}).items() if q is not None}
    _add_role(c, {"name": f"{name}-service", "description": "The Potluck engine: read users and group quotas",
                  "scopes": ["read:users", "read:groups", *(f"groups!group={g}" for g in sorted(seeds))],
                  "services": [name]})
    if seeds:
        if engine_url is not None:
            print(f"potluck.hub_config: set c.HubAuthenticator.seed_groups = {seeds!r} "
                  "in the external engine's potluck_config.py", file=sys.stderr)
        else:
            service["command"].append(f"--HubAuthenticator.seed_groups={json.dumps(seeds)}")

    custom = dict(_get(c.JupyterHub, "custom_scopes", {}))
    custom[ADMIN_SCOPE] = {"description": "Administer the Potluck engine: every tenant's usage, quotas and runs"}
    tier_quotas = {}
    for tier, fields in (model_tiers or {}).items():
        scope = TIER_SCOPE.format(tier)
        custom[scope] = {"description": f"Use the Potluck model tier {tier!r}"}
        tier_quotas[scope] = dict(fields)
    c.JupyterHub.custom_scopes = custom
    if admin_users:
        _add_role(c, {"name": f"{name}-admins", "description": "Potluck engine admins",
                      "scopes": [ADMIN_SCOPE], "users": sorted(admin_users)})
    if tier_quotas:
        if engine_url is not None:
            # An external engine reads this from its own config; say what it must hold.
            print(f"potluck.hub_config: set c.HubAuthenticator.scope_quotas = {tier_quotas!r} "
                  "in the external engine's potluck_config.py", file=sys.stderr)
        else:
            service["command"].append(f"--HubAuthenticator.scope_quotas={json.dumps(tier_quotas)}")

    # Every user may use the service, and their servers' tokens (inherited by kernels) carry it.
    scope = access_scope(name)
    # The dashboard at /services/<name>/ logs admins in through the Hub's OAuth: its token may
    # read and write groups (quota edits with the admin's own rights) and carry the engine's admin
    # scope. A token only ever gets the subset its user already holds, so nobody gains a right.
    service["oauth_client_allowed_scopes"] = [scope, "read:groups", "groups", ADMIN_SCOPE]
    if major >= 6:
        c.JupyterHub.extra_user_scopes = set(_get(c.JupyterHub, "extra_user_scopes", set())) | {scope}
    else:
        roles = list(_get(c.JupyterHub, "load_roles", []))
        user_role = next((r for r in roles if r.get("name") == "user"), None)
        if user_role is None:
            _add_role(c, {"name": "user", "scopes": ["self", scope]})
        elif scope not in user_role.setdefault("scopes", ["self"]):
            user_role["scopes"].append(scope)
            c.JupyterHub.load_roles = roles
    server_scopes = _get(c.Spawner, "server_token_scopes", None)
    if callable(server_scopes):
        inner = server_scopes

        async def with_potluck(spawner, _inner=inner):
            from jupyterhub.utils import maybe_future
            got = list(await maybe_future(_inner(spawner)))
            return got + [s for s in (scope, ADMIN_SCOPE) if s not in got]
        c.Spawner.server_token_scopes = with_potluck
    else:
        current = list(server_scopes or SERVER_TOKEN_DEFAULTS)
        # custom:potluck:admin is only granted where the user holds it (the token gets the subset).
        extra = [scope, ADMIN_SCOPE] + list(tier_quotas)
        c.Spawner.server_token_scopes = current + [s for s in extra if s not in current]

    env = dict(_get(c.Spawner, "environment", {}))
    env.setdefault("POTLUCK_URL", (kernel_url or engine_base).rstrip("/") + prefix)
    c.Spawner.environment = env

    if groups:
        # No "properties" key: the Hub then leaves the group's properties as admins set them.
        load = dict(_get(c.JupyterHub, "load_groups", {}))
        for gname in groups:
            spec = dict(load.get(gname) or {})
            spec.setdefault("users", [])
            load[gname] = spec
        c.JupyterHub.load_groups = load

