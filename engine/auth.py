"""Who is calling: one identity interface, one implementation per deployment.

A request resolves to an ``Identity`` (tenant, groups, is_admin) or is refused
with 401. The tenant comes only from the credential: nothing else a client
sends (a header, a body field such as OpenAI's ``user``) can choose another
tenant, so every handler takes the tenant from ``Identity`` and from nowhere else.

Standalone, ``TokenAuthenticator`` checks local tokens (``potluck token
create``) against the store, where only their sha256 is kept. Under a
JupyterHub, ``HubAuthenticator`` asks the Hub who a token belongs to (with
``jupyterhub.services.auth.HubAuth``): the tenant is the hub user, the groups
carry their ``potluck`` properties (read fail-closed by ``hubgroups``; the
configured default quotas are seeded into groups that have none, at start).
``PotluckEngine.authenticator_class``
picks one (the Hub one by default when the engine runs as a Hub service).

This module never touches the engine, its pages or its quotas.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from urllib.parse import quote

from tornado.httputil import HTTPServerRequest
from traitlets import Dict, Float, Unicode
from traitlets.config import LoggingConfigurable

from .errors import EngineUnavailable, Forbidden, Unauthorized
from .hubgroups import GroupQuotaBook, flat_properties, has_quota
from .protocol import ADMIN_SCOPE, SERVICE_NAME
from .store import Store
from .quota import validate_quota_fields

# Seeding waits for a Hub that is still starting (a managed service may start before its API
# answers) this many times, SEED_RETRY_SECONDS apart.
SEED_TRIES = 30
SEED_RETRY_SECONDS = 2.0


@dataclass(frozen=True)
class Identity:
    tenant: str                                            # the user name; the only tenant this request may act as
    groups: dict[str, dict] = field(default_factory=dict)  # group name -> that group's potluck quota properties
    is_admin: bool = False


def token_from_header(authorization: str | None) -> str | None:
    """The token of ``Authorization: token X`` or ``Authorization: Bearer X``."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() not in ("token", "bearer"):
        return None
    return token.strip() or None


class Authenticator(LoggingConfigurable):
    """Turns a request's credential into an ``Identity``.

    Implementations must be safe to call from the IOLoop: ``identify`` is a
    coroutine and may use ``executor`` for blocking lookups.
    """

    def __init__(self, *, store: Store, executor: Executor, **kwargs):
        super().__init__(**kwargs)
        self.store = store
        self.executor = executor

    async def authenticate(self, request: HTTPServerRequest) -> Identity:
        """The caller's identity, or ``Unauthorized``."""
        header = request.headers.get("Authorization")
        token = token_from_header(header)
        if token is None:
            what = "missing credentials" if not header else "unsupported Authorization scheme"
            raise Unauthorized(f"{what}: send 'Authorization: Bearer <token>' or 'Authorization: token <token>' "
                               "(create a token with `potluck token create NAME`)")
        identity = await self.identify(token)
        if identity is None:
            raise Unauthorized("invalid or revoked token")
        return identity

    async def identify(self, token: str) -> Identity | None:
        raise NotImplementedError

    async def start(self, kv_pool_pages: int | None = None) -> None:
        """Once, when the service starts serving (may schedule background work)."""

    def group_report(self) -> dict[str, dict]:
        """Each group's quota in effect and its read error, for admins (none without a Hub)."""
        return {}

    async def group_members(self, name: str) -> list[str] | None:
        """The group's members as the Hub has them; None when unknown (no Hub here)."""
        return None


class TokenAuthenticator(Authenticator):
    """Standalone tokens from ``potluck token create``; the token's name is the tenant."""

    async def identify(self, token: str) -> Identity | None:
        # Looked up on every request (no cache), so `potluck token revoke` takes effect at once.
        found = await asyncio.get_running_loop().run_in_executor(self.executor, self.store.resolve_token, token)
        if found is None:
            return None
        name, is_admin = found
        return Identity(tenant=name, groups={}, is_admin=is_admin)


class HubAuthenticator(Authenticator):
    """Hub tokens: the hub user is the tenant, each group's ``potluck`` property its quota.

    A token is accepted when it carries ``access:services!service=<this service>``
    (users and their servers get it from ``potluck.hub_config``; hub admins have
    ``access:services``) or ``custom:potluck:admin``. Hub admins and holders of
    ``custom:potluck:admin`` are engine admins.

    The Hub's answers are cached for ``cache_seconds`` (token -> user, and each
    group's properties separately), so a quota edited in the Hub's admin page
    reaches the engine within twice that (20 s by default); a Hub that cannot be
    reached is a 503 for tokens not in the cache, never a wrong tenant.
    """

    service_name = Unicode(
        help="This service's name in the Hub. Default: $JUPYTERHUB_SERVICE_NAME, else potluck.",
    ).tag(config=True)

    api_url = Unicode(
        help="The Hub's API URL, e.g. http://127.0.0.1:8081/hub/api. Default: $JUPYTERHUB_API_URL.",
    ).tag(config=True)

    api_token = Unicode(
        help="""This service's Hub API token, for reading groups' properties (it needs read:groups).
        Default: $JUPYTERHUB_API_TOKEN, which the Hub gives a managed service.""",
    ).tag(config=True)

    cache_seconds = Float(
        10.0,
        help="""How long the Hub's answers (who a token is, a group's properties) are reused.
        A quota or group change reaches the engine within twice this.""",
    ).tag(config=True)

    scope_quotas = Dict(
        help="""Quota fields granted by holding a custom scope, e.g. a model tier:
        {"custom:potluck:tier:large": {"models": ["*"], "weight": 2}}. Merged like a group's
        properties (shown as "scope:<scope>" in /api/me).""",
    ).tag(config=True)

    seed_groups = Dict(
        help="""Default quotas, ``{"students": {"tokens_per_minute": 5000}}``: at start, each group
        that has no ``potluck`` value in the Hub gets these fields as flat properties
        (``potluck.tokens_per_minute`` = ``"5000"``, the form the Hub's admin page edits). A group
        that has one is left alone, so admins' edits survive restarts. Needs the ``groups`` scope
        on those groups (``potluck.hub_config.configure(groups=...)`` sets all of this).""",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        from jupyterhub.services.auth import HubAuth
        self.service_name = self.service_name or os.environ.get("JUPYTERHUB_SERVICE_NAME") or SERVICE_NAME
        # HubAuth's cache takes whole seconds and reads 0 as "forever": round up, and never
        # ask it to keep an answer longer than forever when caching is meant to be off.
        self._use_cache = self.cache_seconds > 0
        hub_kw = {"cache_max_age": max(1, math.ceil(self.cache_seconds))}
        if self.api_url:
            hub_kw["api_url"] = self.api_url
        if self.api_token:
            hub_kw["api_token"] = self.api_token
        self.hub_auth = HubAuth(parent=self, **hub_kw)
        self.access_scope = f"access:services!service={self.service_name}"
        for scope, fields in self.scope_quotas.items():
            validate_quota_fields(fields, where=f"HubAuthenticator.scope_quotas[{scope!r}]")
        for group, fields in self.seed_groups.items():
            validate_quota_fields(fields, where=f"HubAuthenticator.seed_groups[{group!r}]")
        self._groups: dict[str, tuple[float, dict]] = {}   # group -> (fetched at, quota in effect)
        self._members: dict[str, tuple[float, list[str] | None]] = {}   # group -> (fetched at, member names)
        self.book = GroupQuotaBook(self.store)
        self._seeding: asyncio.Task | None = None

    async def identify(self, token: str) -> Identity | None:
        from jupyterhub.services.auth import check_scopes
        from tornado.web import HTTPError
        try:
            user = await self.hub_auth.user_for_token(token, use_cache=self._use_cache, sync=False)
        except HTTPError as e:
            # Tokens the Hub vouched for in the last cache_seconds are answered from the cache
            # above and keep working; only a token not seen lately reaches here.
            self.log.error("cannot check a token with the Hub at %s: %s", self.hub_auth.api_url, e.log_message)
            raise EngineUnavailable(f"the engine cannot reach the JupyterHub at {self.hub_auth.api_url} to check "
                                    "your token; try again in a moment", code="hub_unreachable") from e
        if not user:
            return None
        if user.get("kind", "user") != "user":
            raise Forbidden(f"only hub users' tokens are accepted, not a {user.get('kind')}'s "
                            f"({user.get('name')!r}): the tenant is a hub user", code="not_a_user")
        scopes = set(user.get("scopes") or ())
        is_admin = bool(user.get("admin")) or ADMIN_SCOPE in scopes
        if not is_admin and not check_scopes({self.access_scope}, scopes):
            raise Forbidden(f"this token does not give access to the {self.service_name} service: it needs "
                            f"the scope {self.access_scope!r} (potluck.hub_config grants it to users and their "
                            "servers)", code="missing_scope", scope=self.access_scope)
        groups = await self.group_quotas(user.get("groups") or [])
        for scope, fields in self.scope_quotas.items():
            if check_scopes({scope}, scopes):
                groups[f"scope:{scope}"] = dict(fields)
        return Identity(tenant=user["name"], groups=groups, is_admin=is_admin)

    async def group_quotas(self, names: list[str]) -> dict[str, dict]:
        """Each group's ``potluck`` property (validated), fetched from the Hub or the cache."""
        values = await asyncio.gather(*(self._group_quota(g) for g in names))
        return dict(zip(names, values))

    async def _hub_request(self, url: str, body: dict | None = None) -> dict:
        """GET ``url`` of the Hub API (PUT ``body`` when given) with the service's own token."""
        from tornado.httpclient import AsyncHTTPClient, HTTPClientError
        hub = self.hub_auth
        kw = {}
        if hub.certfile or hub.keyfile:
            from jupyterhub.utils import make_ssl_context
            kw["ssl_options"] = make_ssl_context(hub.keyfile, hub.certfile, cafile=hub.client_ca)
        if body is not None:
            kw.update(method="PUT", body=json.dumps(body))
        try:
            r = await AsyncHTTPClient().fetch(url, headers={"Authorization": f"token {hub.api_token}"},
                                              request_timeout=10, **kw)
        except HTTPClientError as e:
            if e.code == 403:
                needs = "groups (on that group)" if body is not None else "read:groups"
                raise RuntimeError(f"403: the service's role needs the {needs} scope "
                                   "(potluck.hub_config.configure grants it)") from None
            raise
        return json.loads(r.body)

    def _group_url(self, name: str) -> str:
        return f"{self.hub_auth.api_url.rstrip('/')}/groups/{quote(name, safe='')}"

    async def _group_quota(self, name: str) -> dict:
        now = time.monotonic()
        cached = self._groups.get(name)
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        try:
            model = await self._hub_request(self._group_url(name))
        except Exception as e:
            # Keep the last good answer rather than drop a group's quota while the Hub is away,
            # and reuse it for another cache_seconds: a Hub that is down (or slow to refuse)
            # is not asked again on every request.
            self.log.warning("cannot read group %r from the Hub: %s", name, e)
            if cached is None:      # e.g. just after a restart: the last good quota from the store
                last = await asyncio.get_running_loop().run_in_executor(self.executor, self.book.last_good, name)
                cached = (now, last or {})
            self._groups[name] = (now, cached[1])
            return cached[1]
        self._note_members(name, model, now)
        props = (model or {}).get("properties") or {}
        # Fail closed: an unreadable value keeps the group's last good quota (see hubgroups).
        fields = await asyncio.get_running_loop().run_in_executor(self.executor, self.book.accept, name, props)
        self._groups[name] = (now, fields)
        return fields

    def group_report(self) -> dict[str, dict]:
        return self.book.report()

    async def group_members(self, name: str) -> list[str] | None:
        """The group's members as the Hub has them (from the group model ``identify`` reads too),
        reused for ``cache_seconds``. While the Hub cannot be read, the last list read; None when
        none was (or the Hub's answer had no ``users``: the service lacks ``read:groups``)."""
        now = time.monotonic()
        cached = self._members.get(name)
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        try:
            model = await self._hub_request(self._group_url(name))
        except Exception as e:
            self.log.warning("cannot read the members of group %r from the Hub: %s", name, e)
            members = cached[1] if cached is not None else None
            self._members[name] = (now, members)        # not asked again for cache_seconds
            return members
        return self._note_members(name, model, now)

    def _note_members(self, name: str, model: dict | None, now: float) -> list[str] | None:
        users = (model or {}).get("users")
        members = sorted(u for u in users if isinstance(u, str)) if isinstance(users, list) else None
        self._members[name] = (now, members)
        return members

    async def start(self, kv_pool_pages: int | None = None) -> None:
        self.book.pool_pages = kv_pool_pages       # groups' kv_pages above it are flagged to admins
        if self.seed_groups:
            self._seeding = asyncio.ensure_future(self.seed_group_quotas())

    async def seed_group_quotas(self) -> None:
        """Give each group of ``seed_groups`` that has no Potluck quota in the Hub its default one."""
        for name, fields in self.seed_groups.items():
            for attempt in range(SEED_TRIES):
                try:
                    props = (await self._hub_request(self._group_url(name))).get("properties") or {}
                    if has_quota(props):
                        self.log.info("group %r has a quota in the Hub: left as it is", name)
                    else:
                        await self._hub_request(self._group_url(name) + "/properties",
                                                {**props, **flat_properties(fields)})
                        self.log.info("group %r had no quota: seeded %s", name, json.dumps(fields))
                    break
                except Exception as e:
                    # Only a Hub that does not answer yet is worth waiting for; a refusal is final.
                    final = isinstance(e, RuntimeError) or getattr(e, "code", 599) < 599
                    if attempt == SEED_TRIES - 1 or final:
                        self.log.error("cannot seed the default quota of group %r: %s", name, e)
                        break
                    await asyncio.sleep(SEED_RETRY_SECONDS)
