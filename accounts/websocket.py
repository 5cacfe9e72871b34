"""Who a WebSocket is, and whether it may connect at all (DESIGN §7, §8).

Credentials, tried in the order of the REST API (`accounts.authentication`):

1. an API key: the `X-API-Key` header, or `?api_key=`;
2. a JWT access token: in `Sec-WebSocket-Protocol`, either as the pair of subprotocols
   `["bearer", "<token>"]` or as one subprotocol `access_token.<token>`, or in `?token=`;
3. the dashboard's session cookie.

A credential that is present but wrong (unknown, expired, revoked, of an inactive user) refuses
the socket; the next method is not tried. A browser cannot set headers on a WebSocket, hence
the subprotocol and query forms; prefer the subprotocol (query strings end up in access logs).

Refusals: the socket is accepted and closed at once with a 44xx code, before any data is sent.
(Closing before accepting would make the server answer the handshake with a bare HTTP 403 and
the client would never see the code.) When the client offered an auth subprotocol, the accept
echoes it — browsers drop a handshake whose answer lacks a subprotocol they offered, and the
client would see 1006 instead of the code:

- 4401 no credentials, or bad ones;
- 4403 a foreign `Origin`, or another user's feed;
- 4404 an object that does not exist for this user (another user's execution included), or an
  unknown path;
- 4400 a malformed parameter.

Origins: a browser's `Origin` must match `ALLOWED_HOSTS` or `CORS_ORIGINS` (read at each
connection). A connection without `Origin` is not a browser's, so it cannot be a cross-site
hijack of the session cookie, and is let through to authentication: CLIs and SDKs send none.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.middleware import BaseMiddleware
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from rest_framework.exceptions import AuthenticationFailed

from accounts import services
from accounts.authentication import BearerTokenAuthentication
from core.errors import Unauthenticated

CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404

BEARER_SUBPROTOCOL = "bearer"
TOKEN_SUBPROTOCOL_PREFIX = "access_token."


def query_params(scope) -> dict[str, str]:
    """The first value of each query parameter of the connection."""
    raw = scope.get("query_string", b"").decode("latin1")
    return {name: values[0] for name, values in parse_qs(raw).items()}


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin1")
    return None


def subprotocol_token(scope) -> tuple[str | None, str | None]:
    """(token, subprotocol to echo) from `Sec-WebSocket-Protocol`, or (None, None)."""
    offered = list(scope.get("subprotocols") or [])
    for index, protocol in enumerate(offered):
        if protocol.lower() == BEARER_SUBPROTOCOL:
            token = offered[index + 1] if index + 1 < len(offered) else None
            return token, protocol
        if protocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return protocol.removeprefix(TOKEN_SUBPROTOCOL_PREFIX), protocol
    return None, None


def _user_of_api_key(raw_key: str):
    try:
        return services.authenticate_api_key(raw_key.strip()).user
    except Unauthenticated:
        return None


def _user_of_token(raw_token: str):
    """The active owner of a valid, unexpired, unrevoked access token (the REST API's rules)."""
    authentication = BearerTokenAuthentication()
    try:
        token = authentication.get_validated_token(raw_token.strip())
        return authentication.get_user(token)
    except AuthenticationFailed:
        return None


@database_sync_to_async
def authenticate(scope):
    """(user or None, refused) for the credentials of the connection; `refused` is True when a
    credential was given and is not valid. Without any credential, the session's user."""
    params = query_params(scope)
    api_key = _header(scope, b"x-api-key") or params.get("api_key")
    if api_key:
        user = _user_of_api_key(api_key)
        return user, user is None
    token = subprotocol_token(scope)[0] or params.get("token")
    if token:
        user = _user_of_token(token)
        return user, user is None
    user = scope.get("user")
    if user is not None and user.is_authenticated and user.is_active:
        return user, False
    return None, False


class CredentialsMiddleware(BaseMiddleware):
    """Sets `scope["user"]` (AnonymousUser when unknown), `scope["auth_refused"]` and
    `scope["auth_subprotocol"]` (the subprotocol to echo when accepting)."""

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        user, refused = await authenticate(scope)
        scope["user"] = user or AnonymousUser()
        scope["auth_refused"] = refused
        scope["auth_subprotocol"] = subprotocol_token(scope)[1]
        return await super().__call__(scope, receive, send)


def WebsocketAuthStack(inner):  # noqa: N802 (named like Channels' AuthMiddlewareStack)
    """Session cookie (Channels), then API key and JWT on top (this module)."""
    return AuthMiddlewareStack(CredentialsMiddleware(inner))


class Refusal(AsyncJsonWebsocketConsumer):
    """Accepts and closes at once with `code`: the client learns why, and gets no data."""

    def __init__(self, code: int = CLOSE_FORBIDDEN, **kwargs) -> None:
        super().__init__(**kwargs)
        self.code = code

    async def connect(self):
        await self.accept(subprotocol_token(self.scope)[1])
        await self.close(self.code)


class AllowedOriginValidator(OriginValidator):
    """Channels' AllowedHostsOriginValidator, with `CORS_ORIGINS` allowed too, a missing
    `Origin` let through (see the module's docstring), and a refusal closing with 4403."""

    def __init__(self, application) -> None:
        self.application = application

    @property
    def allowed_origins(self) -> list[str]:
        hosts = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not hosts:
            hosts = ["localhost", "127.0.0.1", "[::1]"]
        return [*hosts, *settings.CORS_ALLOWED_ORIGINS]

    def valid_origin(self, parsed_origin) -> bool:
        if parsed_origin is None:
            return True
        return self.validate_origin(parsed_origin)

    async def __call__(self, scope, receive, send):
        origin = _header(scope, b"origin")
        if not self.valid_origin(urlparse(origin) if origin is not None else None):
            return await Refusal.as_asgi(code=CLOSE_FORBIDDEN)(scope, receive, send)
        return await self.application(scope, receive, send)


class AuthenticatedConsumer(AsyncJsonWebsocketConsumer):
    """A JSON consumer for known users only: `open()` runs with `self.user` set; anyone else
    is refused with 4401 before anything is sent. Subclasses call `admit()` to accept (echoing
    the auth subprotocol) or `refuse(code)`."""

    user = None

    async def connect(self):
        user = self.scope.get("user")
        if self.scope.get("auth_refused") or user is None or not user.is_authenticated:
            await self.refuse(CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        await self.open()

    async def open(self) -> None:
        await self.admit()

    async def admit(self) -> None:
        await self.accept(self.scope.get("auth_subprotocol"))

    async def refuse(self, code: int) -> None:
        await self.accept(self.scope.get("auth_subprotocol"))
        await self.close(code)
