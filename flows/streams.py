"""What one live connection hears: its subscriptions, and its events once each, in order.

Both live endpoints, the Channels websocket consumers (``flows.consumers``) and the
Socket.IO server for legacy frontends (``flows.socketio``), are thin adapters around
``LiveConnection``: it joins and leaves the channel-layer groups of ``flows.events``,
answers the client's actions, and passes every event message through one
``EventStream``.

Why a stream per connection: a connection can hear the same event twice (a flow's
group and its owner's group, or the owner's group and the staff group), and events
of one flow are published after commit by whichever process made the change, so
they can arrive slightly out of ``seq`` order. ``FlowEventOrder`` delivers each
(flowId, seq, event) once, in ``seq`` order, holding a later event up to
``HOLD_SECONDS`` for a missing one; if it never comes the later events go out
anyway and the client, seeing the gap, takes a snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth.models import AbstractBaseUser

from accounts import permissions
from flows import events, selectors
from flows.models import Flow
from jobs.vocabulary import ID_PATTERN, ClientAction, ClientEvent

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Frame = dict[str, Any]
Send = Callable[[Frame], Awaitable[None]]
# Sends an already encoded frame (JSON text) as it is.
SendText = Callable[[str], Awaitable[None]]

# How long a later event waits for a missing earlier one of the same flow.
HOLD_SECONDS = 0.3
# Flows whose order a connection remembers; the least recently heard is forgotten first.
MAX_TRACKED_FLOWS = 1000
# Flow ids become channel-layer group names (``^[a-zA-Z0-9\-_.]+$``, under 100 characters).
FLOW_ID_RE = re.compile(rf"^{ID_PATTERN}$")
# Events of one seq remembered to recognise copies (many progress events may share a seq).
COPIES_KEPT = 16
# Sequence number of a flow's first event: a connection that has not heard of the
# flow before may deliver it at once.
FIRST_SEQ = 1


# ORDER AND DUPLICATES
# ------------------------------------------------------------------------------


def _same(one: Message, other: Message) -> bool:
    """The same event: one message heard through two groups arrives as two equal copies."""
    return one.get("event") == other.get("event") and one.get("data") == other.get("data")


@dataclass
class _FlowOrder:
    last: int | None = None  # seq of the last event delivered
    at_last: list[Message] = field(default_factory=list)  # the events delivered with that seq
    all_at_last: bool = False  # every event of that seq is old (a baseline from ``expect``)
    held: list[tuple[int, float, Message]] = field(default_factory=list)  # (seq, arrived, message)

    def is_old(self, seq: int, message: Message) -> bool:
        if self.last is None or seq > self.last:
            return False
        if seq < self.last or self.all_at_last:
            return True
        return any(_same(message, delivered) for delivered in self.at_last)

    def is_held(self, seq: int, message: Message) -> bool:
        return any(held_seq == seq and _same(message, held) for held_seq, _, held in self.held)

    def is_next(self, seq: int) -> bool:
        return seq <= (FIRST_SEQ if self.last is None else self.last + 1)

    def mark(self, seq: int, message: Message) -> None:
        if seq != self.last:
            self.last, self.at_last, self.all_at_last = seq, [], False
        self.at_last.append(message)
        # A second copy arrives right after the first: the recent ones are enough.
        del self.at_last[:-COPIES_KEPT]


class FlowEventOrder:
    """Per connection: each event once, per flow in ``seq`` order; pure, the clock is passed in.

    An event is the channel-layer message of ``flows.events`` (``{"type", "event",
    "data": {"flowId", "seq", ...}}``). Within one flow:

    - a copy of an event delivered or held already (heard through a second group),
      or an event whose seq is below the last one delivered, is dropped (late after
      its gap was given up);
    - the next seq is delivered at once, and so is another event with the last
      delivered seq; then the held events they unblock;
    - a later seq is held until the gap fills, at most ``hold`` seconds after it
      arrived; then the held events go out in order, gap and all.

    A flow the connection has not heard of yet starts at seq 1, or after the baseline
    given by ``expect`` (the flow's seq when the connection subscribed). Events
    without an integer ``seq`` are delivered as they come.
    """

    def __init__(self, *, hold: float = HOLD_SECONDS, max_flows: int = MAX_TRACKED_FLOWS) -> None:
        self.hold = hold
        self.max_flows = max_flows
        self._flows: OrderedDict[str, _FlowOrder] = OrderedDict()
        self._holding: set[str] = set()  # flows with held events

    def expect(self, flow_id: str, seq: int) -> None:
        """Start a flow not heard of yet after ``seq``: events up to it are old news."""
        state = self._flows.get(flow_id)
        if state is None or (state.last is None and not state.held):
            self._flows[flow_id] = _FlowOrder(last=seq, all_at_last=True)
            self._flows.move_to_end(flow_id)

    def push(self, message: Message, now: float) -> list[Message]:
        """Take one event; return the events to deliver now, in order."""
        data = message.get("data")
        flow_id = data.get("flowId") if isinstance(data, dict) else None
        seq = data.get("seq") if isinstance(data, dict) else None
        if not isinstance(flow_id, str) or not isinstance(seq, int) or isinstance(seq, bool):
            return [message]
        ready: list[Message] = []
        state = self._state(flow_id, ready)
        if state.is_old(seq, message) or state.is_held(seq, message):
            return ready
        if not state.is_next(seq):
            state.held.append((seq, now, message))
            self._holding.add(flow_id)
            return ready
        state.mark(seq, message)
        ready.append(message)
        ready.extend(self._release(flow_id, state, force=False))
        return ready

    def due(self, now: float) -> list[Message]:
        """The held events whose wait is over (with those queued behind them), in order."""
        ready: list[Message] = []
        for flow_id in sorted(self._holding, key=self._deadline_of):
            if self._deadline_of(flow_id) <= now:
                ready.extend(self._release(flow_id, self._flows[flow_id], force=True))
        return ready

    def next_deadline(self) -> float | None:
        """When the earliest held event stops waiting; None if nothing is held."""
        return min(map(self._deadline_of, self._holding), default=None)

    def _deadline_of(self, flow_id: str) -> float:
        return min(arrived for _, arrived, _ in self._flows[flow_id].held) + self.hold

    def _state(self, flow_id: str, ready: list[Message]) -> _FlowOrder:
        state = self._flows.get(flow_id)
        if state is None:
            state = self._flows[flow_id] = _FlowOrder()
            while len(self._flows) > self.max_flows:
                forgotten_id, forgotten = next(iter(self._flows.items()))
                ready.extend(self._release(forgotten_id, forgotten, force=True))
                del self._flows[forgotten_id]
        self._flows.move_to_end(flow_id)
        return state

    def _release(self, flow_id: str, state: _FlowOrder, *, force: bool) -> list[Message]:
        """Deliver held events in order: those that became next, or (``force``) all of them."""
        state.held.sort(key=lambda held: held[:2])
        released = []
        while state.held and (force or state.is_next(state.held[0][0])):
            seq, _, message = state.held.pop(0)
            if not state.is_old(seq, message):
                state.mark(seq, message)
                released.append(message)
        if not state.held:
            self._holding.discard(flow_id)
        return released


class EventStream:
    """Feeds one connection's event messages through a ``FlowEventOrder`` to ``send``.

    ``send`` gets client frames (``{"event", "data"}``), one at a time and in order:
    a lock serialises the channel-layer reader and the timer that releases held events.
    """

    def __init__(self, send: Send, *, hold: float = HOLD_SECONDS, send_text: SendText | None = None) -> None:
        self._send = send
        self._send_text = send_text
        self._order = FlowEventOrder(hold=hold)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None

    def expect(self, flow_id: str, seq: int) -> None:
        self._order.expect(flow_id, seq)

    async def push(self, message: Message) -> None:
        async with self._lock:
            await self._deliver(self._order.push(message, asyncio.get_running_loop().time()))
        if self._order.next_deadline() is not None:
            if self._timer is None or self._timer.done():
                self._timer = asyncio.create_task(self._release_held())
            self._wake.set()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _release_held(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # No await between reading the deadline and clearing the flag: a push
            # cannot slip in between and go unnoticed.
            self._wake.clear()
            deadline = self._order.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            async with self._lock:
                try:
                    await self._deliver(self._order.due(loop.time()))
                except Exception:  # the connection is going away; its close() ends this task
                    logger.debug("Could not send held events", exc_info=True)

    async def _deliver(self, messages: list[Message]) -> None:
        for message in messages:
            if self._send_text is not None and "text" in message:
                await self._send_text(message["text"])  # encoded once by the publisher, not per client
            else:
                await self._send(events.client_frame(message))


# ONE CONNECTION
# ------------------------------------------------------------------------------


class ActionError(Exception):
    """A client action that cannot be done; the client gets an ``error`` event with the message."""

    def __init__(self, message: str, *, action: str | None = None, flow_id: str | None = None) -> None:
        super().__init__(message)
        self.message, self.action, self.flow_id = message, action, flow_id

    def frame(self) -> Frame:
        data: dict[str, Any] = {"message": self.message}
        if self.action is not None:
            data["action"] = self.action
        if self.flow_id is not None:
            data["flowId"] = self.flow_id
        return frame(ClientEvent.ERROR, data)


def frame(event: str, data: dict[str, Any]) -> Frame:
    """A server-to-client frame."""
    return {"event": str(event), "data": data}


def flow_id_of(value: Any, *, action: str | None = None) -> str:
    """A well-formed flow id from client input, or ``ActionError``."""
    if not isinstance(value, str) or not FLOW_ID_RE.match(value):
        raise ActionError("flowId must be a flow id (a string of letters, digits, - or _).", action=action)
    return value


def _visible_flow_seq(user: AbstractBaseUser, flow_id: str) -> int | None:
    return selectors.flow_list_for_user(user=user).filter(pk=flow_id).values_list("event_seq", flat=True).first()


def _visible_flow_snapshot(user: AbstractBaseUser, flow_id: str) -> dict[str, Any] | None:
    if _visible_flow_seq(user, flow_id) is None:
        return None
    return events.flow_snapshot(flow_id=flow_id)


visible_flow_seq = database_sync_to_async(_visible_flow_seq)
sees_all_flows = database_sync_to_async(lambda user: permissions.sees_all(user, Flow))
visible_flow_snapshot = database_sync_to_async(_visible_flow_snapshot)


class LiveConnection:
    """One authenticated client's channel: the groups it joined, its actions, its events.

    ``channel_name`` is a channel of ``layer`` that the caller reads, handing every
    event message to ``receive``. A user hears only the groups of flows they may
    see: their own user group (the staff group too if they see every flow) and the flows they
    subscribed to after the selector allowed it.
    """

    def __init__(
        self, *, user: AbstractBaseUser, layer: Any, channel_name: str, send: Send, send_text: SendText | None = None
    ) -> None:
        self.user = user
        self.layer = layer
        self.channel_name = channel_name
        self.stream = EventStream(send, send_text=send_text)
        self.groups: set[str] = set()
        self.present = False  # counted in ``events.presence``: workers publish while it is

    async def watch_all(self) -> None:
        """Hear every flow the user may see: their own, and every flow for those who see all
        (superusers, staff with ``flows.view_flow``: ``accounts.permissions``).

        Those join only the staff group, which carries their own flows' events too:
        in both groups, a connection would receive and drop a second copy of each.
        """
        await self._join(events.STAFF_GROUP if await sees_all_flows(self.user) else events.user_group(self.user.pk))

    async def perform(self, request: Any) -> Frame:
        """Do one client action (``{"action": ..., "flowId": ...}``); return the reply frame."""
        action = request.get("action") if isinstance(request, dict) else None
        try:
            if not isinstance(request, dict):
                raise ActionError('A message must be a JSON object such as {"action": "ping"}.')
            if action == ClientAction.PING:
                return frame(ClientEvent.PONG, {})
            if action not in ClientAction.values:
                choices = ", ".join(ClientAction.values)
                raise ActionError(f"Unknown action {action!r}; expected one of: {choices}.", action=_text(action))
            flow_id = flow_id_of(request.get("flowId"), action=action)
            if action == ClientAction.SUBSCRIBE:
                return frame(ClientEvent.SUBSCRIBED, {"flowId": flow_id, "seq": await self.subscribe(flow_id)})
            if action == ClientAction.UNSUBSCRIBE:
                await self.unsubscribe(flow_id)
                return frame(ClientEvent.UNSUBSCRIBED, {"flowId": flow_id})
            return frame(ClientEvent.SNAPSHOT, await self.snapshot(flow_id))
        except ActionError as error:
            return error.frame()

    async def subscribe(self, flow_id: str) -> int:
        """Hear every event of one flow, ``flow:progress`` included; return its current seq.

        The events delivered afterwards are those numbered after that seq.
        """
        if await visible_flow_seq(self.user, flow_id) is None:
            raise ActionError("Flow not found.", action=ClientAction.SUBSCRIBE, flow_id=flow_id)
        await self._join(events.flow_group(flow_id))
        await events.presence.settled()
        # Read again after joining: every change numbered after this reaches the group.
        seq = await visible_flow_seq(self.user, flow_id)
        if seq is None:  # deleted meanwhile
            await self.unsubscribe(flow_id)
            raise ActionError("Flow not found.", action=ClientAction.SUBSCRIBE, flow_id=flow_id)
        self.stream.expect(flow_id, seq)
        return seq

    async def unsubscribe(self, flow_id: str) -> None:
        """Stop the subscription to one flow (its broadcast events still come through the user group)."""
        group = events.flow_group(flow_id)
        if group in self.groups:
            self.groups.discard(group)
            await self.layer.group_discard(group, self.channel_name)

    async def snapshot(self, flow_id: str) -> dict[str, Any]:
        """The flow as the REST API shows it, with jobs and its current ``seq``."""
        await self._enter()
        await events.presence.settled()
        body = await visible_flow_snapshot(self.user, flow_id)
        if body is None:
            raise ActionError("Flow not found.", action=ClientAction.SNAPSHOT, flow_id=flow_id)
        return body

    async def receive(self, message: Message) -> None:
        """Handle one channel-layer message read from ``channel_name``."""
        if message.get("type") == events.MESSAGE_TYPE:
            await self.stream.push(message)

    async def close(self) -> None:
        """Leave every group and stop the stream's timer."""
        await self.stream.close()
        if self.present:
            self.present = False
            events.presence.leave()
        groups, self.groups = self.groups, set()
        for group in groups:
            await self.layer.group_discard(group, self.channel_name)

    async def _join(self, group: str) -> None:
        await self._enter()
        await self.layer.group_add(group, self.channel_name)
        self.groups.add(group)

    async def _enter(self) -> None:
        if not self.present:
            self.present = True
            await events.presence.enter()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
