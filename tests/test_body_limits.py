"""Request bodies against the real server: refused before they are read, chunked ones parsed.

Raw sockets, so that the test controls exactly what is sent: a request whose body is
never sent can only be answered if the server decided without reading it.
"""

from __future__ import annotations

import json
import socket

import pytest
from django.conf import settings

from flows.models import Flow

pytestmark = pytest.mark.usefixtures("transactional_db")

ANSWER_TIMEOUT = 10.0  # a server that waits for the body never answers within it


def request(server, head: str, body: bytes = b"", *, chunks: list[bytes] | None = None) -> tuple[int, dict]:
    """Send ``head`` (and a body, or chunks); return the status and the JSON answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=ANSWER_TIMEOUT) as conn:
        try:
            conn.sendall(head.encode() + b"\r\n" + body)
            if chunks is not None:
                for chunk in chunks:
                    conn.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                conn.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading it all: its answer is waiting
        answer = b""
        while b"\r\n\r\n" not in answer or not _complete(answer):
            data = conn.recv(65536)
            if not data:
                break
            answer += data
    head_part, _, payload = answer.partition(b"\r\n\r\n")
    status = int(head_part.split()[1])
    return status, json.loads(payload or b"{}")


def _complete(answer: bytes) -> bool:
    head, _, payload = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(payload) >= int(line.split(b":")[1])
    return False


def post_head(path: str, *, length: int | None = None, token: str | None = None, chunked: bool = False) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return "\r\n".join(lines) + "\r\n"


def test_a_body_declared_too_large_is_refused_before_it_is_read(live_asgi_server, alice):
    status, body = request(live_asgi_server, post_head("/api/flows", length=300_000_000, token=alice.token))
    assert status == 413
    assert str(settings.DATA_UPLOAD_MAX_MEMORY_SIZE) in body["error"]


def test_an_anonymous_body_is_refused_with_401_before_it_is_read(live_asgi_server):
    status, body = request(live_asgi_server, post_head("/api/flows", length=100_000))
    assert status == 401
    assert body["error"] == "Authentication credentials were not provided."


def test_a_chunked_body_is_parsed(live_asgi_server, alice):
    spec = json.dumps({"flowname": "chunked", "name": "test-value", "queueName": "default", "data": {"value": 1}})
    encoded = spec.encode()
    status, body = request(live_asgi_server, post_head("/api/flows", token=alice.token, chunked=True),
                           chunks=[encoded[:10], encoded[10:]])
    assert status == 201, body
    assert Flow.objects.get(pk=body["flowId"]).flowname == "chunked"


def test_a_chunked_body_is_read_no_further_than_the_limit(live_asgi_server, alice):
    piece = b" " * 65536
    count = settings.DATA_UPLOAD_MAX_MEMORY_SIZE // len(piece) + 2
    status, body = request(live_asgi_server, post_head("/api/flows", token=alice.token, chunked=True),
                           chunks=[b"{"] + [piece] * count)
    assert status == 413
