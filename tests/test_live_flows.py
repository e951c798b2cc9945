"""Live events of real flows, end to end: real workers, the real server, real clients.

Service mode: ``manage.py up --no-worker`` (``live_asgi_server``), two Celery
workers (``engine_db``), PostgreSQL and Redis. A ``websockets`` client and a
python-socketio client (over its websocket transport) watch every flow of their
user while flows complete, fail and are cancelled; another user's clients watch too.
"""

from __future__ import annotations

import json
import queue
import threading

import pytest
import requests
import socketio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from accounts.services import api_token_create
from flows import events
from flows.services import flow_cancel, flow_create
from jobs.models import Job
from jobs.vocabulary import ClientEvent, FlowEvent, FlowStatus, JobStatus
from tests.conftest import wait_for, wait_for_flow
from tests.live import wait_subscribed

pytestmark = pytest.mark.usefixtures("engine_db")

ORIGIN = "http://localhost:3000"
FINAL_EVENTS = {FlowEvent.COMPLETED, FlowEvent.FAILED, FlowEvent.CANCELLED}


def leaf(name, **extra):
    return {"name": name, "queueName": "default", **extra}


def spec(root, flowname="live"):
    return {"flowname": flowname, **root}


class WebsocketWatcher:
    """A ``websockets`` client reading frames in a thread."""

    def __init__(self, url: str, token: str) -> None:
        self._connection = connect(url, origin=ORIGIN, subprotocols=["flowsite", token])
        self.ws = self._connection.__enter__()  # closed by close()
        self.frames: queue.Queue[dict] = queue.Queue()
        self.received: list[dict] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                self.frames.put(json.loads(self.ws.recv()))
        except ConnectionClosed:
            pass

    def send(self, message: dict) -> None:
        self.ws.send(json.dumps(message))

    def drain(self) -> list[dict]:
        while True:
            try:
                self.received.append(self.frames.get_nowait())
            except queue.Empty:
                return self.received

    def next_event(self, name: str, timeout: float = 10) -> dict:
        return wait_for(lambda: next((f for f in self.drain() if f["event"] == name), None), timeout=timeout,
                        message=name)

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


class SocketIOWatcher:
    """python-socketio's client over the websocket transport, as a legacy frontend connects."""

    def __init__(self, url: str, token: str) -> None:
        self.client = socketio.Client(reconnection=False)
        self.received: list[dict] = []
        self.client.on("*", lambda event, data: self.received.append({"event": event, "data": data}))
        self.client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)

    def drain(self) -> list[dict]:
        return list(self.received)

    def close(self) -> None:
        self.client.disconnect()


@pytest.fixture
def watchers(live_asgi_server, user, other_user):
    """Alice's and Mallory's websocket and Socket.IO clients on /ws/flows/ and /socket.io/."""
    opened = []
    for person in (user, other_user):
        token = api_token_create(user=person)[1]
        person.ws = WebsocketWatcher(f"{live_asgi_server.ws_url}/ws/flows/", token)
        person.sio = SocketIOWatcher(live_asgi_server.url, token)
        opened += [person.ws, person.sio]
        wait_subscribed(events.user_group(person.pk))
    yield user, other_user
    for watcher in opened:
        watcher.close()


def of_flow(frames, flow_id):
    return [f for f in frames if isinstance(f["data"], dict) and f["data"].get("flowId") == flow_id]


def assert_full_ordered_sequence(frames, flow):
    """The flow's events arrived in seq order, numbered 1..n without a hole, final event last of its kind."""
    seqs = [f["data"]["seq"] for f in frames]
    assert seqs == sorted(seqs), seqs  # delivered in commit order
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # nothing missing, nothing twice
    names = [f["event"] for f in frames]
    assert names[0] == FlowEvent.CREATED
    final = next(i for i, name in enumerate(names) if name in FINAL_EVENTS)
    if names[final] == FlowEvent.FAILED:
        # The flow fails at once; a sibling already running may still finish afterwards.
        assert not any(f["event"] == FlowEvent.JOB_UPDATED and f["data"]["jobStatus"] == JobStatus.FAILED
                       for f in frames[final:])
    else:
        assert not any(name == FlowEvent.JOB_UPDATED for name in names[final:])
    statuses = {}
    for frame in frames:
        if frame["event"] == FlowEvent.JOB_UPDATED:
            statuses[frame["data"]["jobId"]] = frame["data"]["jobStatus"]
    assert statuses == dict(Job.objects.filter(flow=flow).values_list("id", "status"))
    last_update = [f for f in frames if f["event"] == FlowEvent.UPDATED][-1]["data"]
    assert last_update["status"] == flow.status
    return names[final]


def test_clients_receive_the_full_ordered_events_of_real_flows_and_nobody_elses(watchers):
    alice, mallory = watchers
    done = flow_create(owner=alice, spec=spec(leaf("test-sum", children=[leaf("test-value", data={"value": n}) for n in (1, 2, 3)])))
    failing = flow_create(owner=alice, spec=spec(leaf("test-sum", children=[leaf("test-value", data={"value": 1}), leaf("test-fail")])))
    slow = flow_create(owner=alice, spec=spec(leaf("test-sum", children=[leaf("test-sleep", data={"ms": 5000})])))
    wait_for(lambda: slow.jobs.filter(status=JobStatus.ACTIVE).exists(), timeout=10, message="the sleeper to start")
    flow_cancel(flow=slow)
    for flow in (done, failing, slow):
        wait_for_flow(flow, timeout=15)
    assert (done.status, failing.status, slow.status) == (FlowStatus.COMPLETED, FlowStatus.FAILED, FlowStatus.CANCELLED)

    for client in (alice.ws, alice.sio):
        for flow, final in ((done, FlowEvent.COMPLETED), (failing, FlowEvent.FAILED), (slow, FlowEvent.CANCELLED)):
            # The coalesced flow:updated comes last, at most 250 ms after the final change.
            wait_for(lambda: any(f["event"] == FlowEvent.UPDATED and f["data"]["status"] == flow.status
                                 for f in of_flow(client.drain(), flow.pk)), timeout=5,
                     message=f"the last flow:updated of {flow.flowname}")
            assert assert_full_ordered_sequence(of_flow(client.drain(), flow.pk), flow) == final
    completed = next(f for f in of_flow(alice.ws.drain(), done.pk) if f["event"] == FlowEvent.COMPLETED)
    assert completed["data"]["result"] == 6
    assert alice.ws.drain() != [] and alice.sio.drain() != []

    # Mallory's clients heard none of it; a ping round trip shows their sockets work.
    mallory.ws.send({"action": "ping"})
    mallory.ws.next_event(ClientEvent.PONG)
    assert [f for f in mallory.ws.drain() if f["event"] != ClientEvent.PONG] == []
    assert mallory.sio.drain() == []


def test_a_client_that_reconnects_mid_flow_catches_up_with_a_snapshot(live_asgi_server, user):
    token = api_token_create(user=user)[1]
    flow = flow_create(owner=user, spec=spec(leaf("test-echo", children=[
        leaf("test-value", data={"value": 1}), leaf("test-sleep", data={"ms": 3000}),
    ])))
    url = f"{live_asgi_server.ws_url}/ws/flows/{flow.pk}/"
    sleeper = flow.jobs.get(name="test-sleep").pk
    first = WebsocketWatcher(url, token)
    first.send({"action": "ping"})
    first.next_event(ClientEvent.PONG)
    wait_for(lambda: Job.objects.get(pk=sleeper).status == JobStatus.ACTIVE, timeout=10, message="the sleeper to start")
    first.close()  # gone mid-flow: the sleeper runs for 3 s more

    again = WebsocketWatcher(url, token)
    again.send({"action": "snapshot", "flowId": flow.pk})
    snapshot = again.next_event(ClientEvent.SNAPSHOT)["data"]
    assert snapshot["status"] == FlowStatus.RUNNING
    state = {job["jobId"]: job["status"] for job in snapshot["jobs"]}
    wait_for_flow(flow, timeout=15)
    # Apply every event numbered after the snapshot, as a client does.
    wait_for(lambda: any(f["event"] == FlowEvent.COMPLETED for f in again.drain()), timeout=10,
             message=f"completion; received {again.drain()}")
    later = [f for f in again.drain() if isinstance(f["data"], dict) and f["data"].get("seq", 0) > snapshot["seq"]]
    seqs = [f["data"]["seq"] for f in later if f["event"] != FlowEvent.PROGRESS]
    assert seqs == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(seqs)))
    for frame in later:
        if frame["event"] == FlowEvent.JOB_UPDATED:
            state[frame["data"]["jobId"]] = frame["data"]["jobStatus"]
    assert state == dict(Job.objects.filter(flow=flow).values_list("id", "status"))
    again.close()

    detail = requests.get(f"{live_asgi_server.url}/api/flows/{flow.pk}", headers={"Authorization": f"Bearer {token}"},
                          timeout=10).json()
    assert {job["jobId"]: job["status"] for job in detail["jobs"]} == state
    assert detail["status"] == FlowStatus.COMPLETED


def test_job_progress_reaches_the_flows_subscribers(live_asgi_server, user):
    token = api_token_create(user=user)[1]
    watcher = WebsocketWatcher(f"{live_asgi_server.ws_url}/ws/flows/", token)
    watcher.send({"action": "ping"})
    watcher.next_event(ClientEvent.PONG)  # listening before the flow exists
    flow = flow_create(owner=user, spec=spec(leaf("test-progress")))
    try:
        wait_for_flow(flow, timeout=15)
        progress = watcher.next_event(FlowEvent.JOB_PROGRESS)["data"]
        assert progress["flowId"] == flow.pk and progress["jobId"] == flow.root_job_id
        assert set(progress) == {"flowId", "jobId", "progress", "seq"}
    finally:
        watcher.close()
