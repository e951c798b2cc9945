"""Webhooks in embedded mode, end to end: ``manage.py up`` as ``./scripts/run`` starts it.

One process serves the API and runs the worker threads, which consume the
webhooks queue too; SQLite holds the deliveries (written by the Python recorder,
numbered without a sequence). The receiver is a local HTTP server, so the server
runs with ``FLOWSITE_WEBHOOK_ALLOW_PRIVATE=1``.
"""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from jobs.vocabulary import FlowStatus, WebhookEvent
from tests.conftest import manage, wait_for
from tests.live import run_server
from tests.webhook_receiver import start_receiver, stop_receiver
from webhooks.signing import verify_signature


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    env["FLOWSITE_WEBHOOK_ALLOW_PRIVATE"] = "1"
    with run_server(env, tmp_path_factory.mktemp("embedded-webhooks"), worker=True) as server:
        yield server


@pytest.fixture
def receiver():
    server = start_receiver()
    yield server
    stop_receiver(server)


def post(server, token: str, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{server.url}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def test_a_flows_events_are_delivered_by_the_in_process_worker(embedded, receiver):
    token = manage("create_api_token", "live-server-admin", env=embedded.env).stdout.strip()
    status, webhook = post(embedded, token, "/api/webhooks", {"url": receiver.url(), "events": [WebhookEvent.ALL]})
    assert status == 201

    status, created = post(embedded, token, "/api/flows", {
        "flowname": "embedded-hooks", "name": "test-value", "queueName": "default", "data": {"value": 7},
        "children": [{"name": "test-value", "queueName": "default", "data": {"value": 1}}],
    })
    assert status == 201
    flow_id = created["flowId"]

    def flow_completed():
        bodies = [verify_signature(webhook["secret"], r.headers, r.body) for r in receiver.at("/hook")]
        done = [b for b in bodies if "jobId" not in b["data"] and b["type"] == WebhookEvent.COMPLETED]
        return bodies if done else None

    bodies = wait_for(flow_completed, timeout=60, message="the flow's completed delivery")
    assert {b["data"]["flowId"] for b in bodies} == {flow_id}
    assert bodies[0]["data"]["status"] == FlowStatus.PENDING
    seqs = [b["data"]["seq"] for b in bodies]
    assert len(set(seqs)) == len(seqs) and all(b["id"] == f"evt_{b['data']['seq']}" for b in bodies)
    final = next(b for b in bodies if "jobId" not in b["data"] and b["type"] == WebhookEvent.COMPLETED)
    assert final["data"]["result"] == 7
    assert sum(1 for b in bodies if b["type"] == WebhookEvent.COMPLETED and "jobId" in b["data"]) == 2
