"""Native websockets: ``/ws/flows/`` (every flow the user may see) and ``/ws/flows/{flowId}/``.

Thin on purpose: authenticate on connect, join groups through ``LiveConnection``,
turn client JSON into actions and channel-layer messages into frames. The user
comes from ``accounts.websocket.TokenAuthMiddlewareStack``.

A refused connection is accepted first and then closed, so that browsers see the
close code (a refused handshake only shows as a failed connection).
"""

from __future__ import annotations

import asyncio
import json
from enum import IntEnum
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from accounts.websocket import SUBPROTOCOL
from flows import events
from flows.streams import ActionError, LiveConnection, flow_id_of


class CloseCode(IntEnum):
    """Websocket close codes of the live endpoints (4000-4999 are the application's)."""

    UNAUTHORIZED = 4401  # no user, or a token that does not authenticate
    NOT_FOUND = 4404  # the flow does not exist or belongs to someone else, or an unknown path


class FlowEventsConsumer(AsyncJsonWebsocketConsumer):
    """Events of every flow the user may see, or of one flow when the URL names it."""

    live: LiveConnection | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            return await self._refuse(CloseCode.UNAUTHORIZED)
        if settings.EMBEDDED:
            events.serve_here(asyncio.get_running_loop())
        self.live = LiveConnection(
            user=user, layer=self.channel_layer, channel_name=self.channel_name, send=self.send_json,
            send_text=self._send_text,
        )
        flow_id = self.scope["url_route"]["kwargs"].get("flow_id")
        try:
            if flow_id is None:
                await self.live.watch_all()
            else:
                await self.live.subscribe(flow_id_of(flow_id))
        except ActionError:
            await self.live.close()
            return await self._refuse(CloseCode.NOT_FOUND)
        await self.accept(self._subprotocol())

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        if self.live is None:
            return
        if text_data is None:
            return await self.send_json(ActionError("A message must be JSON text, not binary.").frame())
        try:
            request = json.loads(text_data)
        except ValueError:
            return await self.send_json(ActionError("A message must be JSON text.").frame())
        await self.send_json(await self.live.perform(request))

    async def _send_text(self, text: str) -> None:
        await self.send(text_data=text)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale database connections before every message, through a
        # thread hop (``aclose_old_connections``): a third of a web process's time when
        # events stream to many clients. Event messages touch no database: skip it.
        if message.get("type") == events.MESSAGE_TYPE:
            return await self.flow_event(message)
        return await super().dispatch(message)

    async def flow_event(self, message: dict[str, Any]) -> None:
        """A ``flows.events`` message from one of the joined groups."""
        if self.live is not None:
            await self.live.receive(message)

    async def disconnect(self, code: int) -> None:
        if self.live is not None:
            await self.live.close()

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        # Payloads are JSON already (times as ISO text): the plain encoder is several
        # times faster than DjangoJSONEncoder, and this runs once per event per client.
        return json.dumps(content, default=str)

    async def _refuse(self, code: CloseCode) -> None:
        await self.accept(self._subprotocol())
        await self.close(code=int(code))

    def _subprotocol(self) -> str | None:
        """``flowsite`` if the client offered it (a token-bearing client did); never the token."""
        return SUBPROTOCOL if SUBPROTOCOL in self.scope.get("subprotocols", []) else None


class NotFoundConsumer(AsyncJsonWebsocketConsumer):
    """Any other websocket path: accepted and closed with 4404, not a server error."""

    async def connect(self) -> None:
        await self.accept()
        await self.close(code=int(CloseCode.NOT_FOUND))
