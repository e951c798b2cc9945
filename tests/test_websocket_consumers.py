"""Native websockets (/ws/flows/, /ws/flows/{flowId}/) through the whole ASGI application.

Real things: ``flowsite.asgi.application`` (origin check, session and token
authentication, routing), the Redis pub/sub channel layer, and events sent by
``flows.events.publish`` as the engine sends them.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from accounts.services import api_token_create
from flows import events
from flows.consumers import CloseCode
from flows.models import Flow
from flowsite.asgi import application
from jobs.vocabulary import ClientEvent, FlowEvent
from tests.live import WebsocketCommunicator, publish, unsubscribed_groups, until_subscribed

pytestmark = pytest.mark.anyio

ORIGIN = (b"origin", b"http://localhost:3000")
RECEIVE_TIMEOUT = 3.0
QUIET = 0.3  # how long "receives nothing" listens, after a barrier showed the event went out


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def flow(alice):
    return Flow.objects.create(owner=alice, flowname="ws-flow", name="test-sum", queue_name="default")


@pytest.fixture
def other_flow(mallory):
    return Flow.objects.create(owner=mallory, flowname="other-flow", name="test-sum", queue_name="default")


@pytest.fixture
async def sockets(transactional_db):
    """Connect websockets; every one is disconnected at the end of the test (before the database goes)."""
    opened: list[WebsocketCommunicator] = []

    async def connect(path: str, *, token: str | None = None, headers: list | None = None):
        communicator = WebsocketCommunicator(
            application, path, headers=[ORIGIN, *(headers or [])],
            subprotocols=["flowsite", token] if token else None,
        )
        opened.append(communicator)
        connected, subprotocol = await communicator.connect(timeout=RECEIVE_TIMEOUT)
        assert connected
        communicator.subprotocol = subprotocol
        return communicator

    yield connect
    for communicator in opened:
        await communicator.disconnect()


async def in_db(query):
    """Run ORM code from an async test, in a thread whose connection is closed afterwards."""
    return await database_sync_to_async(query)()


async def receive(communicator: WebsocketCommunicator) -> dict:
    return await communicator.receive_json_from(timeout=RECEIVE_TIMEOUT)


async def close_code(communicator: WebsocketCommunicator) -> int:
    output = await communicator.receive_output(timeout=RECEIVE_TIMEOUT)
    assert output["type"] == "websocket.close", output
    return output["code"]


async def action(communicator: WebsocketCommunicator, **request) -> dict:
    await communicator.send_json_to(request)
    return await receive(communicator)


# AUTHENTICATION
# ------------------------------------------------------------------------------


async def test_token_in_subprotocol_authenticates_and_is_never_echoed(sockets, alice, flow):
    socket = await sockets("/ws/flows/", token=alice.token)
    assert socket.subprotocol == "flowsite"
    await until_subscribed(events.user_group(alice.pk))
    publish(flow, 1, status="running")
    frame = await receive(socket)
    assert frame == {"event": FlowEvent.UPDATED, "data": {"flowId": flow.pk, "seq": 1, "status": "running"}}


async def test_token_in_query_authenticates(sockets, alice, flow):
    socket = await sockets(f"/ws/flows/?token={alice.token}")
    assert socket.subprotocol is None
    assert (await action(socket, action="ping"))["event"] == ClientEvent.PONG


@pytest.fixture
def session_cookie(alice):
    client = Client()
    client.force_login(alice)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


async def test_session_cookie_authenticates(sockets, alice, flow, session_cookie):
    socket = await sockets(f"/ws/flows/{flow.pk}/", headers=[session_cookie])
    await until_subscribed(events.flow_group(flow.pk))
    publish(flow, 1)
    assert (await receive(socket))["data"]["seq"] == 1


async def test_anonymous_is_closed_with_4401(sockets, flow):
    assert await close_code(await sockets("/ws/flows/")) == CloseCode.UNAUTHORIZED
    assert await close_code(await sockets(f"/ws/flows/{flow.pk}/")) == CloseCode.UNAUTHORIZED


async def test_invalid_token_is_closed_with_4401_even_with_a_session(sockets, alice, session_cookie):
    socket = await sockets("/ws/flows/", token="0" * 64, headers=[session_cookie])
    assert await close_code(socket) == CloseCode.UNAUTHORIZED
    assert await close_code(await sockets("/ws/flows/?token=nonsense")) == CloseCode.UNAUTHORIZED


async def test_expired_token_is_closed_with_4401_and_deleted(sockets, alice):
    from knox.models import AuthToken

    instance, token = await in_db(lambda: api_token_create(user=alice, ttl=timedelta(seconds=-1)))
    assert await close_code(await sockets("/ws/flows/", token=token)) == CloseCode.UNAUTHORIZED
    assert not await in_db(lambda: AuthToken.objects.filter(pk=instance.pk).exists())


async def test_inactive_user_is_closed_with_4401(sockets, alice):
    await in_db(lambda: type(alice).objects.filter(pk=alice.pk).update(is_active=False))
    assert await close_code(await sockets("/ws/flows/", token=alice.token)) == CloseCode.UNAUTHORIZED


async def test_a_missing_origin_is_refused():
    communicator = WebsocketCommunicator(application, "/ws/flows/")
    connected, _ = await communicator.connect(timeout=RECEIVE_TIMEOUT)
    assert not connected


async def test_a_foreign_origin_is_refused(alice):
    communicator = WebsocketCommunicator(
        application, "/ws/flows/", headers=[(b"origin", b"https://evil.example")], subprotocols=["flowsite", alice.token]
    )
    connected, _ = await communicator.connect(timeout=RECEIVE_TIMEOUT)
    assert not connected


# AUTHORIZATION
# ------------------------------------------------------------------------------


async def test_another_users_flow_is_closed_with_4404(sockets, mallory, flow):
    assert await close_code(await sockets(f"/ws/flows/{flow.pk}/", token=mallory.token)) == CloseCode.NOT_FOUND


@pytest.mark.parametrize("flow_id", ["0" * 32, "not!an:id", "x" * 65])
async def test_an_unknown_or_malformed_flow_is_closed_with_4404(sockets, alice, flow_id):
    assert await close_code(await sockets(f"/ws/flows/{flow_id}/", token=alice.token)) == CloseCode.NOT_FOUND


async def test_an_unknown_path_is_closed_with_4404(sockets, alice):
    assert await close_code(await sockets("/ws/nothing/", token=alice.token)) == CloseCode.NOT_FOUND


async def test_staff_who_view_all_flows_hear_every_flow(sockets, viewer, flow, other_flow):
    everything = await sockets("/ws/flows/", token=viewer.token)
    one = await sockets(f"/ws/flows/{flow.pk}/", token=viewer.token)
    await until_subscribed(events.STAFF_GROUP, events.flow_group(flow.pk))
    publish(flow, 1)
    publish(other_flow, 1)
    heard = {(f["data"]["flowId"], f["data"]["seq"]) for f in [await receive(everything), await receive(everything)]}
    assert heard == {(flow.pk, 1), (other_flow.pk, 1)}
    assert (await receive(one))["data"]["flowId"] == flow.pk
    assert await one.receive_nothing(QUIET)


async def test_staff_without_the_view_permission_hear_and_subscribe_to_only_their_own_flows(sockets, operator, flow):
    """A staff member without ``flows.view_flow`` is like any user for another's flow: 4404, an error, nothing heard."""
    assert await close_code(await sockets(f"/ws/flows/{flow.pk}/", token=operator.token)) == CloseCode.NOT_FOUND
    socket = await sockets("/ws/flows/", token=operator.token)
    reply = await action(socket, action="subscribe", flowId=flow.pk)
    snapshot = await action(socket, action="snapshot", flowId=flow.pk)
    assert reply == {"event": ClientEvent.ERROR, "data": {"message": "Flow not found.", "action": "subscribe", "flowId": flow.pk}}
    assert snapshot["event"] == ClientEvent.ERROR
    await until_subscribed(events.user_group(operator.pk))
    publish(flow, 1)
    assert await socket.receive_nothing(QUIET)  # sent to the flow's owner and to those who see all flows


async def test_a_user_never_hears_another_users_flows(sockets, alice, mallory, flow):
    watcher = await sockets("/ws/flows/", token=alice.token)
    outsider = await sockets("/ws/flows/", token=mallory.token)
    await until_subscribed(events.user_group(alice.pk), events.user_group(mallory.pk))
    for seq, name in enumerate([FlowEvent.CREATED, FlowEvent.UPDATED, FlowEvent.JOB_UPDATED, FlowEvent.COMPLETED], 1):
        publish(flow, seq, name)
    publish(flow, 5, FlowEvent.JOB_PROGRESS, broadcast=False)  # subscribers only
    assert [(await receive(watcher))["data"]["seq"] for _ in range(4)] == [1, 2, 3, 4]
    assert await outsider.receive_nothing(QUIET)
    assert await watcher.receive_nothing(QUIET)  # not subscribed to the flow itself
    reply = await action(outsider, action="subscribe", flowId=flow.pk)
    assert reply == {
        "event": ClientEvent.ERROR,
        "data": {"message": "Flow not found.", "action": "subscribe", "flowId": flow.pk},
    }
    assert (await action(outsider, action="snapshot", flowId=flow.pk))["event"] == ClientEvent.ERROR


# ACTIONS
# ------------------------------------------------------------------------------


async def test_subscribe_adds_subscriber_events_and_unsubscribe_removes_them(sockets, alice, flow):
    socket = await sockets("/ws/flows/", token=alice.token)
    reply = await action(socket, action="subscribe", flowId=flow.pk)
    assert reply == {"event": ClientEvent.SUBSCRIBED, "data": {"flowId": flow.pk, "seq": 0}}
    await until_subscribed(events.flow_group(flow.pk))
    publish(flow, 1, FlowEvent.JOB_PROGRESS, broadcast=False)
    assert (await receive(socket))["data"]["seq"] == 1

    reply = await action(socket, action="unsubscribe", flowId=flow.pk)
    assert reply == {"event": ClientEvent.UNSUBSCRIBED, "data": {"flowId": flow.pk}}
    publish(flow, 2, FlowEvent.JOB_PROGRESS, broadcast=False)
    publish(flow, 3, FlowEvent.UPDATED)  # still heard through the user's group
    assert (await receive(socket))["data"]["seq"] == 3
    assert await socket.receive_nothing(QUIET)


async def test_subscribe_reports_the_current_seq_and_earlier_events_are_not_repeated(sockets, alice, flow):
    await in_db(lambda: Flow.objects.filter(pk=flow.pk).update(event_seq=7))
    socket = await sockets("/ws/flows/", token=alice.token)
    reply = await action(socket, action="subscribe", flowId=flow.pk)
    assert reply["data"]["seq"] == 7
    publish(flow, 7)  # a late copy of an event the subscription already includes
    publish(flow, 8)
    assert (await receive(socket))["data"]["seq"] == 8


async def test_snapshot_replies_with_the_flow_and_its_seq(sockets, alice, flow):
    await in_db(lambda: Flow.objects.filter(pk=flow.pk).update(event_seq=4))
    socket = await sockets(f"/ws/flows/{flow.pk}/", token=alice.token)
    reply = await action(socket, action="snapshot", flowId=flow.pk)
    assert reply["event"] == ClientEvent.SNAPSHOT
    snapshot = reply["data"]
    assert snapshot["flowId"] == flow.pk
    assert snapshot["seq"] == 4
    assert snapshot["flowname"] == "ws-flow"
    assert snapshot["jobs"] == []
    assert {"status", "progress", "createdAt", "jobStructure"} <= set(snapshot)


async def test_ping_replies_pong(sockets, alice):
    socket = await sockets("/ws/flows/", token=alice.token)
    assert await action(socket, action="ping") == {"event": ClientEvent.PONG, "data": {}}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not json", "A message must be JSON text."),
        ("[1, 2]", 'A message must be a JSON object such as {"action": "ping"}.'),
        ('"ping"', 'A message must be a JSON object such as {"action": "ping"}.'),
        ("{}", "Unknown action None; expected one of: subscribe, unsubscribe, snapshot, ping."),
        ('{"action": "explode"}', "Unknown action 'explode'; expected one of: subscribe, unsubscribe, snapshot, ping."),
        ('{"action": "subscribe"}', "flowId must be a flow id (a string of letters, digits, - or _)."),
        ('{"action": "snapshot", "flowId": 12}', "flowId must be a flow id (a string of letters, digits, - or _)."),
        ('{"action": "unsubscribe", "flowId": "a b"}', "flowId must be a flow id (a string of letters, digits, - or _)."),
        ('{"action": "subscribe", "flowId": "00000000000000000000000000000000"}', "Flow not found."),
    ],
)
async def test_malformed_input_gets_an_error_event_and_the_socket_stays_open(sockets, alice, payload, message):
    socket = await sockets("/ws/flows/", token=alice.token)
    await socket.send_to(text_data=payload)
    reply = await receive(socket)
    assert reply["event"] == ClientEvent.ERROR
    assert reply["data"]["message"] == message
    assert (await action(socket, action="ping"))["event"] == ClientEvent.PONG


async def test_a_binary_message_gets_an_error_event(sockets, alice):
    socket = await sockets("/ws/flows/", token=alice.token)
    await socket.send_to(bytes_data=json.dumps({"action": "ping"}).encode())
    assert (await receive(socket))["event"] == ClientEvent.ERROR
    assert (await action(socket, action="ping"))["event"] == ClientEvent.PONG


# ORDER AND DUPLICATES
# ------------------------------------------------------------------------------


async def test_an_event_heard_through_two_groups_is_delivered_once(sockets, alice, flow):
    socket = await sockets("/ws/flows/", token=alice.token)
    await action(socket, action="subscribe", flowId=flow.pk)
    await until_subscribed(events.user_group(alice.pk), events.flow_group(flow.pk))
    publish(flow, 1)
    publish(flow, 2, FlowEvent.JOB_UPDATED)
    assert [(await receive(socket))["data"]["seq"] for _ in range(2)] == [1, 2]
    assert await socket.receive_nothing(QUIET)


async def test_a_staff_owner_hears_their_flow_once(sockets, viewer):
    own = await in_db(
        lambda: Flow.objects.create(owner=viewer, flowname="mine", name="test-sum", queue_name="default")
    )
    socket = await sockets("/ws/flows/", token=viewer.token)
    await until_subscribed(events.STAFF_GROUP)
    # The staff group carries their own flows too: the user group would only add copies.
    assert unsubscribed_groups((events.user_group(viewer.pk),))
    publish(own, 1)
    assert (await receive(socket))["data"]["seq"] == 1
    assert await socket.receive_nothing(QUIET)


async def test_events_out_of_order_are_delivered_in_seq_order(sockets, alice, flow):
    socket = await sockets(f"/ws/flows/{flow.pk}/", token=alice.token)
    await until_subscribed(events.flow_group(flow.pk))
    publish(flow, 3, FlowEvent.COMPLETED)
    publish(flow, 1, FlowEvent.UPDATED)
    publish(flow, 2, FlowEvent.JOB_UPDATED)
    frames = [await receive(socket) for _ in range(3)]
    assert [(f["event"], f["data"]["seq"]) for f in frames] == [
        (FlowEvent.UPDATED, 1), (FlowEvent.JOB_UPDATED, 2), (FlowEvent.COMPLETED, 3),
    ]


async def test_a_gap_that_never_fills_is_delivered_after_the_hold(sockets, alice, flow):
    socket = await sockets(f"/ws/flows/{flow.pk}/", token=alice.token)
    await until_subscribed(events.flow_group(flow.pk))
    publish(flow, 1)
    publish(flow, 3)
    assert (await receive(socket))["data"]["seq"] == 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await receive(socket))["data"]["seq"] == 3
    assert loop.time() - started >= 0.2  # held for the missing event, then let go


# WHO IS LISTENING
# ------------------------------------------------------------------------------


def listening_key_ttl_ms() -> int:
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]).pttl(events._listening_key())


def forget_listeners() -> None:
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]).delete(events._listening_key())
    events._gate.forget()


async def test_a_connection_opens_the_listening_key_and_its_first_seq_waits_until_every_change_is_numbered(
    sockets, alice, flow
):
    await asyncio.to_thread(forget_listeners)
    assert not await asyncio.to_thread(events.live)  # nobody connected: the engine numbers nothing
    socket = await sockets("/ws/flows/", token=alice.token)
    assert 0 < await asyncio.to_thread(listening_key_ttl_ms) <= events.LISTENING_TTL_MS
    events._gate.forget()
    assert await asyncio.to_thread(events.live)
    settled_at = events.presence._settled_at
    assert settled_at > 0  # the key was new: changes in flight elsewhere may still be unnumbered
    reply = await action(socket, action="subscribe", flowId=flow.pk)
    assert reply["event"] == ClientEvent.SUBSCRIBED
    assert asyncio.get_running_loop().time() >= settled_at  # the seq was read once every process numbers


async def test_the_last_connection_to_leave_stops_renewing_the_key(sockets, alice, flow):
    first = await sockets("/ws/flows/", token=alice.token)
    second = await sockets(f"/ws/flows/{flow.pk}/", token=alice.token)
    assert events.presence._count == 2
    await first.disconnect()
    assert events.presence._count == 1 and events.presence._renewer is not None
    await second.disconnect()
    assert events.presence._count == 0 and events.presence._renewer is None
