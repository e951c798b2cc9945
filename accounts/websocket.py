"""Who is on the other end of a websocket: API token or Django session.

A browser cannot set an ``Authorization`` header on a websocket, so the API token
travels in one of two places:

- the ``Sec-WebSocket-Protocol`` header: the client offers ``["flowsite", "<token>"]``
  and the server accepts with ``flowsite`` alone, so the token is never echoed;
- the ``token`` query parameter, for clients that cannot set subprotocols (a URL
  lands in access logs and proxies: prefer the header).

Without a token the Django session cookie is used (the admin's live pages). A token
that is presented but does not authenticate (unknown, revoked, expired, inactive
user) leaves the connection anonymous even if a session cookie is present, as the
REST API answers 401 for a bad ``Authorization`` header. Tokens are checked by
``accounts.authentication.BearerTokenAuthentication``, the REST API's own class.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from rest_framework.exceptions import AuthenticationFailed

from accounts.authentication import BearerTokenAuthentication

# The subprotocol a token-bearing client offers beside its token, and the one the server accepts.
SUBPROTOCOL = "flowsite"
TOKEN_QUERY_PARAMETER = "token"
# A knox token is 64 hex characters; anything much longer is not worth a database query.
MAX_TOKEN_LENGTH = 256


def token_from_subprotocols(subprotocols: list[str]) -> str | None:
    """The token offered beside ``flowsite`` in ``Sec-WebSocket-Protocol``, if any."""
    if SUBPROTOCOL not in subprotocols:
        return None
    return next((value for value in subprotocols if value != SUBPROTOCOL), None)


def token_from_query_string(query_string: bytes | str) -> str | None:
    """The ``token`` query parameter, if any."""
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    values = parse_qs(query_string).get(TOKEN_QUERY_PARAMETER)
    return values[0] if values else None


def _user_for_token(token: str) -> AbstractBaseUser | None:
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        user, _ = BearerTokenAuthentication().authenticate_credentials(token.encode())
    except AuthenticationFailed:
        return None
    return user


async def user_for_token(token: str) -> AbstractBaseUser | None:
    """The active user an API token belongs to, or None; expired tokens are deleted on the way."""
    return await database_sync_to_async(_user_for_token)(token)


class TokenAuthMiddleware(BaseMiddleware):
    """Sets ``scope["user"]`` from an API token when the client presents one.

    Runs inside ``AuthMiddlewareStack``: without a token, the session's user stays.
    The token is removed from ``scope["subprotocols"]`` so that nothing downstream
    can echo or log it.
    """

    async def __call__(self, scope: dict[str, Any], receive, send):
        scope = dict(scope)
        subprotocols = list(scope.get("subprotocols") or [])
        token = token_from_subprotocols(subprotocols)
        if token is not None:
            scope["subprotocols"] = [value for value in subprotocols if value != token]
        else:
            token = token_from_query_string(scope.get("query_string", b""))
        if token is not None:
            scope["user"] = await user_for_token(token) or AnonymousUser()
        return await super().__call__(scope, receive, send)


def TokenAuthMiddlewareStack(inner):  # noqa: N802 (named like Channels' AuthMiddlewareStack)
    """Session authentication, overridden by an API token when one is presented."""
    return AuthMiddlewareStack(TokenAuthMiddleware(inner))
