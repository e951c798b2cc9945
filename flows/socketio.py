"""Socket.IO endpoint for legacy frontends: ``/socket.io/`` (Engine.IO 4, websocket and polling).

The legacy service's contract: connect with ``auth: {token}`` (or a ``token`` query
parameter), hear the events of every flow the user may see, ``subscribe``
``{flowId}`` to join the room ``flow:{flowId}`` and hear that flow's subscriber-only
events (``flow:progress``) too, ``unsubscribe`` to leave it.

Thin, like the websocket consumers: each Socket.IO connection gets a channel of
the channel layer, joins the groups of ``flows.events`` through ``LiveConnection``,
and a reader task emits every event read from that channel to its sid. Every web
process thus hears, from Redis pub/sub, the groups its own clients joined; no
Socket.IO message queue is needed between processes. Engine.IO sessions live in
one process, though: with several web processes the long-polling transport needs
sticky sessions (or clients that use ``transports: ["websocket"]``).

Browsers may connect from the origins whose host is in ``ALLOWED_HOSTS`` (the rule
of the native websockets); clients that send no ``Origin`` (servers, scripts) are
not browsers and only need their token.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import socketio
from channels.layers import get_channel_layer
from channels.security.websocket import OriginValidator
from django.conf import settings

from accounts.websocket import token_from_query_string, user_for_token
from flows import events
from flows.streams import Frame, LiveConnection
from jobs.vocabulary import ClientAction, ClientEvent

logger = logging.getLogger(__name__)

SOCKETIO_PATH = "socket.io"


def origin_allowed(origin: str | None) -> bool:
    """Whether a browser page from ``origin`` may connect: its host is in ``ALLOWED_HOSTS``."""
    if not origin:
        return False
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
    return OriginValidator(None, allowed_hosts).valid_origin(urlparse(origin))


@dataclass
class _Client:
    live: LiveConnection
    reader: asyncio.Task[None] | None = None


class FlowNamespace(socketio.AsyncNamespace):
    """The default namespace: authentication, subscriptions, and the event feed of each sid."""

    def __init__(self, namespace: str = "/") -> None:
        super().__init__(namespace)
        self.clients: dict[str, _Client] = {}

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str):
            token = token_from_query_string(environ.get("QUERY_STRING", ""))
        user = await user_for_token(token) if token else None
        if user is None:
            raise socketio.exceptions.ConnectionRefusedError(
                "Authentication failed: connect with a valid API token as auth: {token}."
            )
        if settings.EMBEDDED:
            events.serve_here(asyncio.get_running_loop())
        layer = get_channel_layer()
        client = _Client(LiveConnection(
            user=user, layer=layer, channel_name=await layer.new_channel(), send=lambda frame: self._emit(sid, frame)
        ))
        self.clients[sid] = client
        await client.live.watch_all()
        # The reader first runs after this handler has returned and the CONNECT
        # packet is queued, so no event can overtake it.
        client.reader = asyncio.create_task(self._read(sid, client.live))

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        client = self.clients.pop(sid, None)
        if client is None:
            return
        if client.reader is not None and client.reader is not asyncio.current_task():
            client.reader.cancel()  # a reader cancelled in receive() drops the channel
        await client.live.close()

    async def on_subscribe(self, sid: str, data: Any = None) -> dict[str, Any] | None:
        reply = await self._perform(sid, ClientAction.SUBSCRIBE, data)
        if reply is not None and reply["event"] == ClientEvent.SUBSCRIBED:
            await self.enter_room(sid, events.legacy_room(reply["data"]["flowId"]))
        return self._ack(reply)

    async def on_unsubscribe(self, sid: str, data: Any = None) -> dict[str, Any] | None:
        reply = await self._perform(sid, ClientAction.UNSUBSCRIBE, data)
        if reply is not None and reply["event"] == ClientEvent.UNSUBSCRIBED:
            await self.leave_room(sid, events.legacy_room(reply["data"]["flowId"]))
        return self._ack(reply)

    async def on_snapshot(self, sid: str, data: Any = None) -> dict[str, Any] | None:
        return self._ack(await self._perform(sid, ClientAction.SNAPSHOT, data))

    async def on_ping(self, sid: str, data: Any = None) -> dict[str, Any] | None:
        return self._ack(await self._perform(sid, ClientAction.PING, data))

    async def _perform(self, sid: str, action: ClientAction, data: Any) -> Frame | None:
        """Do one action as the native websocket does; emit the reply event too."""
        client = self.clients.get(sid)
        if client is None:
            return None
        # Legacy clients send {flowId}; a bare flow id string is accepted as well.
        flow_id = data.get("flowId") if isinstance(data, dict) else data
        reply = await client.live.perform({"action": str(action), "flowId": flow_id})
        await self._emit(sid, reply)
        return reply

    async def _read(self, sid: str, live: LiveConnection) -> None:
        try:
            while True:
                await live.receive(await live.layer.receive(live.channel_name))
        except asyncio.CancelledError:
            raise
        except Exception:
            # Without its feed the client would hear nothing: let it reconnect and re-sync.
            logger.warning("Lost the event feed of a Socket.IO client; disconnecting it", exc_info=True)
            await self.disconnect(sid)

    async def _emit(self, sid: str, frame: Frame) -> None:
        await self.emit(frame["event"], frame["data"], to=sid)

    @staticmethod
    def _ack(reply: Frame | None) -> dict[str, Any] | None:
        """The acknowledgement of an action, for clients that pass a callback: the reply's data."""
        return None if reply is None else reply["data"]


# Handlers of one client run one after another (async_handlers=False), so its
# actions take effect in the order it sent them, as on the native websockets.
server = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=origin_allowed, async_handlers=False)
server.register_namespace(FlowNamespace("/"))
