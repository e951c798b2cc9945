"""The one event point: every public flow event is built and published here.

The engine and the services call the ``*_event`` builders after their state
changes; the events go out after the database commit, from whichever process
made the change (web process, worker, embedded worker). Consumers of the events
(the Channels websocket consumers, the Socket.IO endpoint, the admin console)
receive them through the channel layer and never build payloads or group names
themselves.

Delivery:

- Service mode uses channels-redis's pub/sub layer. Sync code (a worker) does not
  pay an event loop per event: the events of one transaction go out in one Redis
  pipeline of ``PUBLISH`` commands, in the layer's own wire format, and every web
  process receives them for the groups its consumers joined.
- Embedded mode uses the in-memory layer of the server process. Events made in
  that process (the API, the embedded worker) reach its consumers; events made in
  another process (``manage.py submit_flow`` from a second terminal) do not (see
  README "Live events").

Events are notifications; the database is the truth. Each event's ``data``
carries ``seq``, the flow's event sequence number (``Flow.event_seq``), taken in
the same transaction as the change it reports, so for one flow the numbers follow
commit order without holes. A client that sees a gap asks for a snapshot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from jobs.vocabulary import FlowEvent

logger = logging.getLogger(__name__)

# Channel-layer message type of every event (handled by ``flow_event`` on consumers).
MESSAGE_TYPE = "flow.event"
# Every staff member's consumers join this group: staff see every flow.
STAFF_GROUP = "flows.staff"


def flow_group(flow_id: str) -> str:
    """The group of one flow's subscribers (``/ws/flows/{flowId}/``, ``subscribe``)."""
    return f"flows.flow.{flow_id}"


def user_group(user_id: int) -> str:
    """The group of every connection of one user that watches all their flows."""
    return f"flows.user.{user_id}"


def legacy_room(flow_id: str) -> str:
    """The Socket.IO room of one flow, as the legacy service named it."""
    return f"flow:{flow_id}"


@dataclass(frozen=True)
class Event:
    """One public event: its name, its payload, and who may hear it.

    ``broadcast`` events go to the flow's owner and to staff as well as to the
    flow's own subscribers; the others (``flow:progress``) only to the latter.
    """

    name: FlowEvent
    data: dict[str, Any]
    flow_id: str
    owner_id: int
    broadcast: bool = True

    def message(self) -> dict[str, Any]:
        return {"type": MESSAGE_TYPE, "event": str(self.name), "data": self.data}

    def groups(self) -> list[str]:
        if not self.broadcast:
            return [flow_group(self.flow_id)]
        return [flow_group(self.flow_id), user_group(self.owner_id), STAFF_GROUP]


def client_frame(message: dict[str, Any]) -> dict[str, Any]:
    """The frame a websocket client receives for a channel-layer event message."""
    return {"event": message["event"], "data": message["data"]}


# TRANSPORT
# ------------------------------------------------------------------------------


class _RedisPublisher:
    """Publishes group messages from sync code, in the pub/sub layer's wire format.

    ``RedisPubSubChannelLayer.group_send`` is ``PUBLISH {prefix}__group__{group}
    <serialized message>``; doing the same from a plain Redis client costs a
    pipelined ``PUBLISH`` (about 0.01 ms) instead of an event loop per event.
    """

    def __init__(self) -> None:
        import redis
        from channels.layers import get_channel_layer

        config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
        self.prefix = config["prefix"]
        self.layer = get_channel_layer()
        self.client = redis.Redis.from_url(config["hosts"][0])

    def send(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for group, message in batch:
            pipe.publish(f"{self.prefix}__group__{group}", self.layer.serialize(message))
        pipe.execute()


class _LocalPublisher:
    """Hands group messages to the in-memory layer on the server's event loop (embedded mode).

    The in-memory layer is not thread-safe: messages from worker threads are
    scheduled onto the loop that serves the consumers, in order.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def send(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return  # no consumer in this process: nobody to tell
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(_send_all(batch))
        else:
            asyncio.run_coroutine_threadsafe(_send_all(batch), loop)


async def _send_all(batch: list[tuple[str, dict[str, Any]]]) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    for group, message in batch:
        await layer.group_send(group, message)


_publisher: _RedisPublisher | _LocalPublisher | None = None
_publisher_lock = threading.Lock()


def _get_publisher() -> _RedisPublisher | _LocalPublisher:
    global _publisher
    if _publisher is None:
        with _publisher_lock:
            if _publisher is None:
                _publisher = _LocalPublisher() if settings.EMBEDDED else _RedisPublisher()
    return _publisher


def serve_here(loop: asyncio.AbstractEventLoop) -> None:
    """Declare that this process's consumers run on ``loop`` (embedded mode; no-op otherwise).

    Consumers call it when they connect, so the embedded worker's threads know
    where to hand their events.
    """
    publisher = _get_publisher()
    if isinstance(publisher, _LocalPublisher):
        publisher.loop = loop


def publish(events: Iterable[Event]) -> None:
    """Send events now, in order. Call after the commit of the change they report.

    A broken channel layer never breaks the engine: the failure is logged, and
    clients notice the gap in ``seq`` and take a snapshot.
    """
    batch = [(group, event.message()) for event in events for group in event.groups()]
    if not batch:
        return
    try:
        _get_publisher().send(batch)
    except Exception:
        logger.warning("Could not publish %d flow event messages", len(batch), exc_info=True)


# SNAPSHOT
# ------------------------------------------------------------------------------


def flow_snapshot(*, flow_id: str) -> dict[str, Any] | None:
    """The flow as ``GET /api/flows/{flowId}`` returns it, plus its current ``seq``.

    Read in one transaction, so ``seq`` is the number of the last event whose
    change the snapshot includes. None if the flow does not exist.
    """
    from django.db import transaction

    from flows import selectors
    from flows.models import Flow

    with transaction.atomic():
        # A share lock on the flow row holds back every change that takes a seq
        # (they all update this row) until the snapshot is read: nothing can commit
        # between reading ``seq`` and reading the jobs.
        flow = Flow.objects.filter(pk=flow_id).first()
        if flow is None:
            return None
        _lock_for_share(flow_id)
        flow.refresh_from_db()
        body = {**selectors.flow_payload_of(flow), "jobStructure": flow.job_structure}
        body["jobs"] = json.loads(selectors.flow_job_states_json(flow=flow))
        body["seq"] = flow.event_seq
    return body


def _lock_for_share(flow_id: str) -> None:
    from django.db import connection

    from flows.models import Flow

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT 1 FROM {Flow._meta.db_table} WHERE id = %s FOR SHARE", [flow_id])
