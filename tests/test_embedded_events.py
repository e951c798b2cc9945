"""Live events in embedded mode, end to end: ``manage.py up`` as ``./scripts/run`` starts it.

One process serves the API and the websockets and runs the worker; its in-memory
channel layer carries the events. A flow submitted from another terminal
(``manage.py submit_flow``) is created by that other process, so its
``flow:created`` never reaches the server (README "Live events"); every job event
comes from the server's own worker and does. The client sees the gap in ``seq`` and
takes a snapshot, as any client that misses an event does.
"""

from __future__ import annotations

import json
import os

import pytest
from websockets.sync.client import connect

from jobs.vocabulary import ClientEvent, FlowEvent, FlowStatus, JobStatus
from tests.conftest import manage
from tests.live import run_server

ORIGIN = "http://localhost:3000"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    with run_server(env, tmp_path_factory.mktemp("embedded-events"), worker=True) as server:
        yield server


def frames_until(ws, predicate, limit: int = 200) -> list[dict]:
    frames = []
    while not frames or not predicate(frames[-1]):
        frames.append(json.loads(ws.recv(timeout=20)))
        assert len(frames) < limit, frames
    return frames


def test_a_flow_submitted_from_another_process_streams_its_job_events(embedded):
    token = manage("create_api_token", "live-server-admin", env=embedded.env).stdout.strip()
    with connect(f"{embedded.ws_url}/ws/flows/", origin=ORIGIN, subprotocols=["flowsite", token]) as ws:
        ws.send(json.dumps({"action": "ping"}))
        assert json.loads(ws.recv(timeout=10))["event"] == ClientEvent.PONG

        submitted = manage("submit_flow", "examples/image-flow.json", "--owner", "live-server-admin", "--wait",
                           "--no-worker", "--timeout", "60", env=embedded.env)
        assert submitted.returncode == 0, submitted.stderr
        frames = frames_until(ws, lambda frame: frame["event"] == FlowEvent.COMPLETED)
        flow_id = frames[-1]["data"]["flowId"]

        job_events = [f["data"] for f in frames if f["event"] == FlowEvent.JOB_UPDATED]
        assert [d["jobStatus"] for d in job_events].count(JobStatus.COMPLETED) == 4  # 3 resizes and the gallery
        assert all(d["flowId"] == flow_id for d in job_events)
        seqs = [f["data"]["seq"] for f in frames if f["data"].get("flowId") == flow_id]
        assert FlowEvent.CREATED not in {f["event"] for f in frames}
        assert seqs[0] == 2  # seq 1 (flow:created) was made by the submitting process
        assert seqs == list(range(2, 2 + len(seqs)))

        ws.send(json.dumps({"action": "snapshot", "flowId": flow_id}))
        snapshot = frames_until(ws, lambda frame: frame["event"] == ClientEvent.SNAPSHOT)[-1]["data"]
        assert snapshot["status"] == FlowStatus.COMPLETED
        assert snapshot["seq"] >= seqs[-1]
        final_states = {}
        for data in job_events:
            final_states[data["jobId"]] = data["jobStatus"]
        assert {job["jobId"]: job["status"] for job in snapshot["jobs"]} == final_states
