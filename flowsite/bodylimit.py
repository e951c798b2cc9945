"""Refuse oversized and anonymous request bodies before they are read (ASGI, HTTP only).

Django's ASGI handler reads a whole request body (spooling it to disk) before any
view, authentication or size check runs: an anonymous client could make the
server read and store hundreds of megabytes only to be answered 401. This
middleware answers first:

- ``413`` when ``Content-Length`` says more than ``FLOWSITE_MAX_BODY_BYTES``, without
  reading anything; a body sent without a length (``Transfer-Encoding: chunked``) is
  read up to that limit and no further;
- ``401`` for an API request with a body but without credentials (no
  ``Authorization`` header, no session cookie), except the token endpoint, before
  reading the body;
- a chunked body within the limit is handed to Django with its length, so it is
  parsed (Django's ASGI request reads no more than ``Content-Length`` says, and
  without one it would take the body as empty).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

API_PREFIX = "/api/"
# API paths that take a body from anonymous clients.
ANONYMOUS_BODY_PATHS = ("/api/auth/token",)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestBodyGuard:
    """ASGI middleware around the HTTP application (see the module docstring)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        headers = {name.lower(): value for name, value in scope.get("headers", [])}
        length = headers.get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return await _answer(send, 400, "Invalid Content-Length header.")
            if int(length) > limit:
                return await _answer(send, 413, f"Request body is too large (at most {limit} bytes).")
        if _anonymous_api_body(scope, headers):
            return await _answer(
                send, 401, "Authentication credentials were not provided.", extra_headers=[(b"www-authenticate", b"Bearer")]
            )
        if length is None and scope.get("method") in BODY_METHODS:
            body = await _read_capped(receive, limit)
            if body is None:
                return await _answer(send, 413, f"Request body is too large (at most {limit} bytes).")
            scope = {**scope, "headers": [
                *((name, value) for name, value in scope.get("headers", []) if name.lower() != b"transfer-encoding"),
                (b"content-length", str(len(body)).encode()),
            ]}
            receive = _replay(body, receive)
        return await self.app(scope, receive, send)


def _anonymous_api_body(scope: Scope, headers: dict[bytes, bytes]) -> bool:
    path = scope.get("path", "")
    if scope.get("method") not in BODY_METHODS or not path.startswith(API_PREFIX):
        return False
    if path.rstrip("/") in ANONYMOUS_BODY_PATHS:
        return False
    if b"authorization" in headers:
        return False
    cookie = headers.get(b"cookie", b"")
    return f"{settings.SESSION_COOKIE_NAME}=".encode() not in cookie


async def _read_capped(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is longer than ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # a disconnect, later

    return replay


async def _answer(send: Send, status: int, message: str, *, extra_headers: list | None = None) -> None:
    from flowsite.api import error_body  # at request time: Django is set up

    body = json.dumps(error_body(message)).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *(extra_headers or []),
        ],
    })
    await send({"type": "http.response.body", "body": body})
