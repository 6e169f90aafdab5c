"""Who is calling: one identity interface, one implementation per deployment.

A request resolves to an ``Identity`` (tenant, groups, is_admin) or is refused
with 401. The tenant comes only from the credential: nothing else a client
sends (a header, a body field such as OpenAI's ``user``) can choose another
tenant, so every handler takes the tenant from ``Identity`` and from nowhere else.

Standalone, ``TokenAuthenticator`` checks local tokens (``potluck token
create``) against the store, where only their sha256 is kept. Under a
JupyterHub a second ``Authenticator`` (HubAuth: the token is the hub user's,
groups carry their ``potluck`` properties) plugs in through
``PotluckEngine.authenticator_class``.

This module never touches the engine, its pages or its quotas.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass, field

from tornado.httputil import HTTPServerRequest
from traitlets.config import LoggingConfigurable

from .errors import Unauthorized
from .store import Store


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


class TokenAuthenticator(Authenticator):
    """Standalone tokens from ``potluck token create``; the token's name is the tenant."""

    async def identify(self, token: str) -> Identity | None:
        # Looked up on every request (no cache), so `potluck token revoke` takes effect at once.
        found = await asyncio.get_running_loop().run_in_executor(self.executor, self.store.resolve_token, token)
        if found is None:
            return None
        name, is_admin = found
        return Identity(tenant=name, groups={}, is_admin=is_admin)
