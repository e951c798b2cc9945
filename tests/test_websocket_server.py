"""Native websockets end to end: the ``websockets`` client against ``manage.py up``."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from flows import events
from flows.consumers import CloseCode
from flows.models import Flow
from jobs.vocabulary import ClientEvent, FlowEvent
from tests.conftest import manage
from tests.live import publish, run_server, wait_subscribed

ORIGIN = "http://localhost:3000"
RECEIVE_TIMEOUT = 5.0


@pytest.fixture
def flow(alice):
    return Flow.objects.create(owner=alice, flowname="e2e-flow", name="test-sum", queue_name="default")


def receive(ws) -> dict:
    return json.loads(ws.recv(timeout=RECEIVE_TIMEOUT))


def test_a_browser_style_client_authenticates_by_subprotocol_and_hears_its_flow(live_asgi_server, alice, flow):
    with connect(f"{live_asgi_server.ws_url}/ws/flows/", origin=ORIGIN, subprotocols=["flowsite", alice.token]) as ws:
        assert ws.subprotocol == "flowsite"
        wait_subscribed(events.user_group(alice.pk))
        publish(flow, 1, FlowEvent.UPDATED, status="running")
        assert receive(ws) == {"event": FlowEvent.UPDATED, "data": {"flowId": flow.pk, "seq": 1, "status": "running"}}

        ws.send(json.dumps({"action": "subscribe", "flowId": flow.pk}))
        assert receive(ws) == {"event": ClientEvent.SUBSCRIBED, "data": {"flowId": flow.pk, "seq": 0}}
        wait_subscribed(events.flow_group(flow.pk))
        publish(flow, 2, FlowEvent.JOB_PROGRESS, broadcast=False, progress=10)
        assert receive(ws)["data"] == {"flowId": flow.pk, "seq": 2, "progress": 10}

        ws.send(json.dumps({"action": "snapshot", "flowId": flow.pk}))
        snapshot = receive(ws)
        assert snapshot["event"] == ClientEvent.SNAPSHOT
        assert snapshot["data"]["flowId"] == flow.pk


def test_a_query_token_works_and_stays_out_of_the_server_log(live_asgi_server, alice, flow):
    with connect(f"{live_asgi_server.ws_url}/ws/flows/{flow.pk}/?token={alice.token}", origin=ORIGIN) as ws:
        ws.send(json.dumps({"action": "ping"}))
        assert receive(ws) == {"event": ClientEvent.PONG, "data": {}}
    assert alice.token not in live_asgi_server.log()


def test_an_anonymous_client_sees_close_code_4401(live_asgi_server, transactional_db):
    with connect(f"{live_asgi_server.ws_url}/ws/flows/", origin=ORIGIN) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=RECEIVE_TIMEOUT)
    assert closed.value.rcvd.code == CloseCode.UNAUTHORIZED


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory):
    """``manage.py up`` in embedded mode (SQLite, in-memory channel layer), without its worker."""
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    with run_server(env, tmp_path_factory.mktemp("embedded-live")) as server:
        yield server


def test_embedded_mode_serves_websockets_on_its_in_memory_layer(embedded_server):
    token = manage("create_api_token", "live-server-admin", env=embedded_server.env).stdout.strip()
    with open("examples/video-flow.json", "rb") as spec:
        request = urllib.request.Request(
            f"{embedded_server.url}/api/flows", data=spec.read(), method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
    with urllib.request.urlopen(request, timeout=RECEIVE_TIMEOUT) as response:
        flow_id = json.load(response)["flowId"]

    with connect(f"{embedded_server.ws_url}/ws/flows/", origin=ORIGIN, subprotocols=["flowsite", token]) as ws:
        ws.send(json.dumps({"action": "subscribe", "flowId": flow_id}))
        subscribed = receive(ws)
        assert subscribed["event"] == ClientEvent.SUBSCRIBED and subscribed["data"]["flowId"] == flow_id
        ws.send(json.dumps({"action": "snapshot", "flowId": flow_id}))
        snapshot = receive(ws)["data"]
        assert snapshot["flowId"] == flow_id
        assert snapshot["seq"] == subscribed["data"]["seq"]
        assert len(snapshot["jobs"]) == 3
