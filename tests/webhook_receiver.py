"""A real HTTP receiver for webhook tests: a ``ThreadingHTTPServer`` in a thread on 127.0.0.1.

Each path answers from a script of replies (``status``, or ``hang`` seconds before
answering, or a redirect ``location``), then ``200`` once the script is used up,
and records every request it received (headers and raw body).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Reply:
    status: int = 200
    hang: float = 0.0
    location: str = ""


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    scripts: dict[str, list[Reply]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        with self.lock:
            self.scripts[path] = list(replies)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [request for request in self.received if request.path == path]

    def _reply(self, path: str) -> Reply:
        with self.lock:
            replies = self.scripts.get(path) or []
            return replies.pop(0) if replies else Reply()


def start_receiver() -> Receiver:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with receiver.lock:
                receiver.received.append(Received(self.path, dict(self.headers.items()), body, time.monotonic()))
            reply = receiver._reply(self.path)
            if reply.hang:
                receiver.stopping.wait(reply.hang)
            self.send_response(reply.status)
            if reply.location:
                self.send_header("Location", reply.location)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(f"reply {reply.status}".encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver = Receiver(server=server)
    threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True).start()
    return receiver


def stop_receiver(receiver: Receiver) -> None:
    receiver.stopping.set()
    receiver.server.shutdown()
    receiver.server.server_close()
