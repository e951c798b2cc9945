"""A legacy frontend's own client: the real ``socket.io-client`` v4 from npm, under Node.

The script (tests/node/legacy_client.mjs) connects as the legacy frontends do,
changing only the server URL and the token, joins a flow's room and prints what it
hears. It runs against the real server (``manage.py up``) while real workers run
the flow. Its npm dependencies are installed on first use (``npm ci``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from accounts.services import api_token_create
from flows.services import flow_create
from jobs.vocabulary import FlowEvent, FlowStatus, JobStatus
from tests.conftest import wait_for, wait_for_flow

NODE_DIR = Path(__file__).resolve().parent / "node"

pytestmark = pytest.mark.usefixtures("engine_db")


@pytest.fixture(scope="module")
def node_client():
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node.js and npm are needed for the legacy client test (see README, Tests)"
    if not (NODE_DIR / "node_modules" / "socket.io-client").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True,
                       timeout=300)

    def start(url: str, token: str, flow_id: str | None = None) -> subprocess.Popen:
        return subprocess.Popen([node, "legacy_client.mjs", url, token, *([flow_id] if flow_id else [])],
                                cwd=NODE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    return start


def lines(process: subprocess.Popen) -> list[dict]:
    out, err = process.communicate(timeout=40)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_the_npm_socket_io_client_follows_a_flow_in_its_room(live_asgi_server, node_client, user):
    token = api_token_create(user=user)[1]
    flow = flow_create(owner=user, spec={"flowname": "legacy", "name": "test-echo", "queueName": "default",
                                         "children": [{"name": "test-sleep", "queueName": "default",
                                                       "data": {"ms": 1500}}]})
    client = node_client(live_asgi_server.url, token, flow.pk)
    wait_for_flow(flow, timeout=20)
    heard = lines(client)
    assert client.returncode == 0, heard
    names = [line["event"] for line in heard]
    assert heard[0]["event"] == "connect"
    # It starts on long-polling and upgrades to the websocket, as in a browser.
    assert heard[-1] == {"event": "transport", "data": {"name": "websocket"}}
    ack = next(line["data"] for line in heard if line["event"] == "ack")
    assert ack["flowId"] == flow.pk
    of_flow = [line for line in heard if isinstance(line["data"], dict) and line["data"].get("flowId") == flow.pk
               and line["event"].startswith("flow:")]
    assert FlowEvent.PROGRESS in {line["event"] for line in of_flow}  # the room's own event
    completed = next(line["data"] for line in of_flow if line["event"] == FlowEvent.COMPLETED)
    assert completed["result"]["flowId"] == flow.pk
    root = [line["data"]["jobStatus"] for line in of_flow
            if line["event"] == FlowEvent.JOB_UPDATED and line["data"]["jobId"] == flow.root_job_id]
    assert root == [JobStatus.ACTIVE, JobStatus.COMPLETED]
    seqs = [line["data"]["seq"] for line in of_flow]
    assert seqs == sorted(seqs) and seqs[-1] >= completed["seq"]
    assert flow.status == FlowStatus.COMPLETED


def test_the_npm_client_is_refused_with_a_bad_token(live_asgi_server, node_client, transactional_db):
    client = node_client(live_asgi_server.url, "not-a-token")
    heard = lines(client)
    assert client.returncode == 2
    assert heard == [{"event": "connect_error",
                      "data": {"message": "Authentication failed: connect with a valid API token as auth: {token}."}}]
