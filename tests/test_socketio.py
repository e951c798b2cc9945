"""The Socket.IO endpoint for legacy frontends (/socket.io/), end to end against ``manage.py up``.

Clients: python-socketio's ``socketio.Client`` over long-polling (its websocket
transport needs the websocket-client package, not installed here), and for the
websocket transport a small Engine.IO client made of the ``websockets`` library and
python-socketio's own packet codecs.
"""

from __future__ import annotations

import json
import queue

import engineio
import pytest
import requests
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet
from websockets.sync.client import connect as ws_connect

from flows import events
from flows.models import Flow
from jobs.vocabulary import ClientEvent, FlowEvent
from tests.live import publish, wait_subscribed

RECEIVE_TIMEOUT = 5.0
QUIET = 0.3  # how long "receives nothing" listens, after a barrier showed the event went out


class _EngineIOClient(engineio.Client):
    """Does not wait for its pending long-poll when it disconnects, as browsers do not.

    After a client's close packet, python-engineio's server answers that GET only
    at its next ping (25 s); a browser aborts the request instead.
    """

    def disconnect(self, abort: bool = False, reason=None) -> None:
        super().disconnect(abort=True, reason=reason)


class Client(socketio.Client):
    """python-socketio's client, long-polling, that leaves without waiting."""

    def __init__(self) -> None:
        super().__init__(reconnection=False)

    def _engineio_client_class(self):
        return _EngineIOClient


class Listener:
    """A connected ``socketio.Client`` and every event it received, in order."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.received: queue.Queue[tuple[str, object]] = queue.Queue()
        client.on("*", lambda event, data: self.received.put((event, data)))

    def next(self) -> tuple[str, dict]:
        return self.received.get(timeout=RECEIVE_TIMEOUT)

    def nothing(self) -> bool:
        try:
            event = self.received.get(timeout=QUIET)
        except queue.Empty:
            return True
        pytest.fail(f"Unexpected event {event}")


@pytest.fixture
def flow(alice):
    return Flow.objects.create(owner=alice, flowname="sio-flow", name="test-sum", queue_name="default")


@pytest.fixture
def other_flow(mallory):
    return Flow.objects.create(owner=mallory, flowname="other-flow", name="test-sum", queue_name="default")


@pytest.fixture
def clients(live_asgi_server, transactional_db):
    """Connect Socket.IO clients (long-polling); all are disconnected at the end of the test."""
    opened: list[Client] = []

    def connect(*, auth: dict | None = None, query: str = "") -> Listener:
        client = Client()
        opened.append(client)
        listener = Listener(client)
        client.connect(
            live_asgi_server.url + query, auth=auth, transports=["polling"], wait_timeout=RECEIVE_TIMEOUT
        )
        return listener

    yield connect
    for client in opened:
        client.disconnect()


def refusal(live_asgi_server, **connect_kwargs) -> object:
    """Connect and expect a refusal; return what the ``connect_error`` handler received."""
    client = Client()
    errors: queue.Queue = queue.Queue()
    client.on("connect_error", errors.put)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(live_asgi_server.url, transports=["polling"], wait_timeout=RECEIVE_TIMEOUT, **connect_kwargs)
    return errors.get(timeout=RECEIVE_TIMEOUT)


# CONNECTING
# ------------------------------------------------------------------------------


def test_a_client_without_a_token_is_refused(live_asgi_server, transactional_db):
    error = refusal(live_asgi_server)
    assert error == {"message": "Authentication failed: connect with a valid API token as auth: {token}."}


def test_a_client_with_a_bad_token_is_refused(live_asgi_server, alice):
    assert "Authentication failed" in refusal(live_asgi_server, auth={"token": "0" * 64})["message"]
    assert "Authentication failed" in refusal(live_asgi_server, auth={"token": 42})["message"]


def test_the_token_may_come_as_a_query_parameter(clients, alice, flow):
    listener = clients(query=f"?token={alice.token}")
    assert listener.client.call("ping", timeout=RECEIVE_TIMEOUT) == {}
    assert listener.next() == (ClientEvent.PONG, {})


def test_browser_origins_are_those_of_allowed_hosts(live_asgi_server):
    url = f"{live_asgi_server.url}/socket.io/?EIO=4&transport=polling"
    allowed = requests.get(url, headers={"Origin": "http://localhost:3000"}, timeout=RECEIVE_TIMEOUT)
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    foreign = requests.get(url, headers={"Origin": "https://evil.example"}, timeout=RECEIVE_TIMEOUT)
    assert foreign.status_code == 400
    assert "Access-Control-Allow-Origin" not in foreign.headers


# EVENTS
# ------------------------------------------------------------------------------


def test_a_client_hears_the_events_of_its_flows(clients, alice, flow):
    listener = clients(auth={"token": alice.token})
    wait_subscribed(events.user_group(alice.pk))
    publish(flow, 1, FlowEvent.CREATED)
    publish(flow, 2, FlowEvent.UPDATED, status="running")
    assert listener.next() == (FlowEvent.CREATED, {"flowId": flow.pk, "seq": 1})
    assert listener.next() == (FlowEvent.UPDATED, {"flowId": flow.pk, "seq": 2, "status": "running"})


def test_subscribe_joins_the_flow_room_and_adds_its_progress_events(clients, alice, flow):
    listener = clients(auth={"token": alice.token})
    publish(flow, 1, FlowEvent.JOB_PROGRESS, broadcast=False)  # not subscribed yet
    ack = listener.client.call("subscribe", {"flowId": flow.pk}, timeout=RECEIVE_TIMEOUT)
    assert ack == {"flowId": flow.pk, "seq": 0}
    assert listener.next() == (ClientEvent.SUBSCRIBED, {"flowId": flow.pk, "seq": 0})
    wait_subscribed(events.flow_group(flow.pk))
    publish(flow, 2, FlowEvent.JOB_PROGRESS, broadcast=False, progress=50)
    publish(flow, 3, FlowEvent.UPDATED)  # heard through the user group and the room: once
    assert listener.next() == (FlowEvent.JOB_PROGRESS, {"flowId": flow.pk, "seq": 2, "progress": 50})
    assert listener.next()[1]["seq"] == 3
    assert listener.nothing()

    listener.client.emit("unsubscribe", {"flowId": flow.pk})
    assert listener.next() == (ClientEvent.UNSUBSCRIBED, {"flowId": flow.pk})
    publish(flow, 4, FlowEvent.JOB_PROGRESS, broadcast=False)
    publish(flow, 5, FlowEvent.UPDATED)
    assert listener.next()[1]["seq"] == 5


def test_a_client_never_hears_another_users_flows(clients, alice, mallory, flow):
    owner = clients(auth={"token": alice.token})
    outsider = clients(auth={"token": mallory.token})
    wait_subscribed(events.user_group(alice.pk), events.user_group(mallory.pk))
    ack = outsider.client.call("subscribe", {"flowId": flow.pk}, timeout=RECEIVE_TIMEOUT)
    assert ack == {"message": "Flow not found.", "action": "subscribe", "flowId": flow.pk}
    assert outsider.next()[0] == ClientEvent.ERROR
    publish(flow, 1, FlowEvent.UPDATED)
    publish(flow, 2, FlowEvent.JOB_PROGRESS, broadcast=False)
    assert owner.next()[1]["seq"] == 1
    assert outsider.nothing()


def test_staff_who_view_all_flows_hear_every_flow(clients, viewer, flow, other_flow):
    listener = clients(auth={"token": viewer.token})
    wait_subscribed(events.STAFF_GROUP)
    publish(flow, 1)
    publish(other_flow, 1)
    heard = {listener.next()[1]["flowId"], listener.next()[1]["flowId"]}
    assert heard == {flow.pk, other_flow.pk}


def test_snapshot_and_bad_requests(clients, alice, flow):
    listener = clients(auth={"token": alice.token})
    snapshot = listener.client.call("snapshot", {"flowId": flow.pk}, timeout=RECEIVE_TIMEOUT)
    assert snapshot["flowId"] == flow.pk
    assert snapshot["seq"] == 0
    assert listener.next() == (ClientEvent.SNAPSHOT, snapshot)
    assert listener.client.call("subscribe", {"flowId": 7}, timeout=RECEIVE_TIMEOUT)["message"].startswith("flowId")
    assert listener.next()[0] == ClientEvent.ERROR
    assert listener.client.call("subscribe", flow.pk, timeout=RECEIVE_TIMEOUT) == {"flowId": flow.pk, "seq": 0}


# THE WEBSOCKET TRANSPORT
# ------------------------------------------------------------------------------


def send_packet(ws, packet_type: int, data=None, *, id: int | None = None) -> None:
    ws.send(eio_packet.Packet(eio_packet.MESSAGE, sio_packet.Packet(packet_type, data, id=id).encode()).encode())


def receive_packet(ws) -> sio_packet.Packet:
    """The next Socket.IO packet (Engine.IO pings are answered on the way)."""
    while True:
        engine = eio_packet.Packet(encoded_packet=ws.recv(timeout=RECEIVE_TIMEOUT))
        if engine.packet_type == eio_packet.PING:
            ws.send(eio_packet.Packet(eio_packet.PONG).encode())
        elif engine.packet_type == eio_packet.MESSAGE:
            return sio_packet.Packet(encoded_packet=engine.data)


def test_the_websocket_transport_carries_events_and_actions(live_asgi_server, alice, flow):
    with ws_connect(f"{live_asgi_server.ws_url}/socket.io/?EIO=4&transport=websocket") as ws:
        opened = eio_packet.Packet(encoded_packet=ws.recv(timeout=RECEIVE_TIMEOUT))
        assert opened.packet_type == eio_packet.OPEN
        assert opened.data["upgrades"] == []  # already on websocket
        send_packet(ws, sio_packet.CONNECT, {"token": alice.token})
        connected = receive_packet(ws)
        assert connected.packet_type == sio_packet.CONNECT and "sid" in connected.data

        wait_subscribed(events.user_group(alice.pk))
        publish(flow, 2, FlowEvent.JOB_UPDATED, jobId="j1")
        publish(flow, 1, FlowEvent.UPDATED)  # out of order: delivered in seq order
        first, second = receive_packet(ws), receive_packet(ws)
        assert (first.packet_type, first.data) == (sio_packet.EVENT, [FlowEvent.UPDATED, {"flowId": flow.pk, "seq": 1}])
        assert second.data == [FlowEvent.JOB_UPDATED, {"flowId": flow.pk, "seq": 2, "jobId": "j1"}]

        send_packet(ws, sio_packet.EVENT, ["subscribe", {"flowId": flow.pk}], id=1)
        replies = [receive_packet(ws), receive_packet(ws)]
        assert (replies[0].packet_type, replies[0].data) == (
            sio_packet.EVENT, [ClientEvent.SUBSCRIBED, {"flowId": flow.pk, "seq": 0}]
        )
        assert (replies[1].packet_type, replies[1].id, replies[1].data) == (
            sio_packet.ACK, 1, [{"flowId": flow.pk, "seq": 0}]
        )


def test_a_refused_websocket_client_gets_a_connect_error(live_asgi_server, transactional_db):
    with ws_connect(f"{live_asgi_server.ws_url}/socket.io/?EIO=4&transport=websocket") as ws:
        ws.recv(timeout=RECEIVE_TIMEOUT)  # OPEN
        send_packet(ws, sio_packet.CONNECT, {"token": "nope"})
        refused = receive_packet(ws)
        assert refused.packet_type == sio_packet.CONNECT_ERROR
        assert json.dumps(refused.data).startswith('{"message": "Authentication failed')
