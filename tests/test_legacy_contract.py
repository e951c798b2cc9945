"""The legacy service's REST contract, as a legacy client uses it, against the real server.

Written from the legacy service's types: ``FlowResponse``, ``FlowProgress``
(``jobs`` by id and ``summary``), ``FlowUpdateRequest {jobId, status, result?, error?}``,
``EnhancedJobData._flowMetadata``, and its example test (create -> read
``progress.summary`` -> update jobs through PUT, errors as ``{message}`` -> completed).
Every request goes over HTTP to ``manage.py up`` in service mode (``live_asgi_server``),
with nothing but a base URL and a token changed, as a legacy client would.

The flows run on the ``isolated`` queue, which no test worker consumes: their jobs
change only through the PUT reports, as jobs run outside Flowsite do.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

import pytest
from websockets.sync.client import connect

from flows import events
from jobs.vocabulary import ClientEvent, FlowEvent, FlowStatus, JobStatus
from tests.conftest import ISOLATED_QUEUE
from tests.live import wait_subscribed

TIMEOUT = 10.0
ORIGIN = "http://localhost:3000"

# Legacy ``FlowProgress.summary`` keys, and ``FlowProgress.jobs[jobId]`` keys.
SUMMARY_KEYS = {
    "total", "completed", "failed", "delayed", "active", "waiting", "waiting-children", "paused", "stuck", "percentage",
}
PROGRESS_JOB_KEYS = {"name", "queueName", "status", "result", "error", "startedAt", "completedAt"}
# Legacy ``FlowResponse`` keys.
FLOW_RESPONSE_KEYS = {
    "flowId", "flowname", "name", "queueName", "status", "progress", "result", "error",
    "createdAt", "updatedAt", "startedAt", "completedAt",
}


class LegacyClient:
    """What a legacy client does: JSON over HTTP with a bearer token, reading status and body."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base = f"{base_url}/api"
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.load(error)

    def get(self, path: str) -> tuple[int, Any]:
        return self.call("GET", path)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.call("POST", path, body)

    def put(self, path: str, body: Any) -> tuple[int, Any]:
        return self.call("PUT", path, body)


@pytest.fixture
def client(live_asgi_server, alice) -> LegacyClient:
    return LegacyClient(live_asgi_server.url, alice.token)


def create_request(flowname: str = "legacy-example") -> dict[str, Any]:
    """A legacy ``CreateFlowRequest``: a parent and two children, all on a queue no worker consumes."""
    return {
        "flowname": flowname,
        "name": "test-sum",
        "queueName": ISOLATED_QUEUE,
        "data": {"title": "parent"},
        "opts": {"attempts": 1},
        "children": [
            {"name": "test-value", "queueName": ISOLATED_QUEUE, "data": {"value": 1}},
            {"name": "test-value", "queueName": ISOLATED_QUEUE, "data": {"value": 2}},
        ],
    }


def create(client: LegacyClient, flowname: str = "legacy-example") -> dict[str, Any]:
    status, body = client.post("/flows", create_request(flowname))
    assert status == 201, body
    return body


def job_ids(client: LegacyClient, flow_id: str) -> tuple[str, list[str]]:
    """The root's id and the children's ids, in order, from the legacy ``jobStructure``."""
    root = client.get(f"/flows/{flow_id}")[1]["jobStructure"]["root"]
    return root["jobId"], [child["jobId"] for child in root["children"]]


def assert_error_body(status: int, body: dict, expected_status: int) -> None:
    """Every error has ``message`` (what a legacy client prints) beside ``error`` and ``details``."""
    assert status == expected_status, body
    assert isinstance(body["message"], str) and body["message"]
    assert body["message"] == body["error"]
    assert isinstance(body["details"], dict)


def assert_iso(value: str) -> None:
    assert datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None


def test_the_legacy_example_runs_from_create_to_completed(client):
    created = create(client)
    assert created["message"] == "Flow created successfully"
    flow_id = created["flowId"]
    assert FLOW_RESPONSE_KEYS <= set(created["flow"])
    assert created["flow"]["status"] == FlowStatus.PENDING and created["flow"]["error"] is None

    status, flow = client.get(f"/flows/{flow_id}")
    assert status == 200
    assert FLOW_RESPONSE_KEYS <= set(flow)
    summary = flow["progress"]["summary"]
    assert set(summary) >= SUMMARY_KEYS
    assert summary["total"] == 3 and summary["waiting"] == 2 and summary["waiting-children"] == 1
    assert summary["completed"] == summary["failed"] == 0 and summary["percentage"] == 0
    root = flow["jobStructure"]["root"]
    assert (root["name"], root["queueName"], root["data"], root["opts"]) == ("test-sum", ISOLATED_QUEUE, {"title": "parent"}, {"attempts": 1})
    assert [child["data"] for child in root["children"]] == [{"value": 1}, {"value": 2}]
    jobs = flow["progress"]["jobs"]
    assert set(jobs) == {root["jobId"], *(child["jobId"] for child in root["children"])}
    assert all(set(job) == PROGRESS_JOB_KEYS for job in jobs.values())
    assert jobs[root["jobId"]]["status"] == JobStatus.WAITING_CHILDREN

    first, second = (child["jobId"] for child in root["children"])
    status, updated = client.put(f"/flows/{flow_id}/jobs/{first}", {"jobId": first, "status": "completed", "result": {"value": 1}})
    assert status == 200 and updated["message"] == "Flow updated successfully"
    assert updated["jobId"] == first and updated["status"] == JobStatus.COMPLETED and updated["result"] == {"value": 1}
    summary = client.get(f"/flows/{flow_id}")[1]["progress"]["summary"]
    assert summary["completed"] == 1 and summary["percentage"] == 33.3

    assert client.put(f"/flows/{flow_id}/jobs/{second}", {"jobId": second, "status": "running"})[0] == 200
    assert client.get(f"/flows/{flow_id}")[1]["progress"]["summary"]["active"] == 1
    assert client.put(f"/flows/{flow_id}/jobs/{second}", {"jobId": second, "status": "completed", "result": {"value": 2}})[0] == 200
    status, done = client.put(f"/flows/{flow_id}/jobs/{root['jobId']}", {"jobId": root["jobId"], "status": "completed", "result": {"sum": 3}})
    assert status == 200 and done["message"] == "Flow updated successfully"

    status, flow = client.get(f"/flows/{flow_id}")
    assert flow["status"] == FlowStatus.COMPLETED and flow["result"] == {"sum": 3} and flow["error"] is None
    assert flow["progress"]["summary"]["completed"] == 3 and flow["progress"]["summary"]["percentage"] == 100.0
    entry = flow["progress"]["jobs"][root["jobId"]]
    assert entry["status"] == JobStatus.COMPLETED and entry["result"] == {"sum": 3} and entry["error"] is None
    assert_iso(entry["startedAt"]) and assert_iso(entry["completedAt"]) and assert_iso(flow["completedAt"])


def test_a_reported_error_object_is_kept_as_sent_and_fails_the_flow_with_an_error_object(client, live_asgi_server, alice):
    flow_id = create(client)["flowId"]
    root_id, (first, second) = job_ids(client, flow_id)
    client.put(f"/flows/{flow_id}/jobs/{first}", {"jobId": first, "status": "completed", "result": 1})

    with connect(f"{live_asgi_server.ws_url}/ws/flows/", origin=ORIGIN, subprotocols=["flowsite", alice.token]) as ws:
        ws.send(json.dumps({"action": "subscribe", "flowId": flow_id}))
        assert json.loads(ws.recv(timeout=TIMEOUT))["event"] == ClientEvent.SUBSCRIBED
        wait_subscribed(events.flow_group(flow_id))
        error = {"message": "Job failed", "code": "E_DISK", "retryable": False}
        status, failed = client.put(f"/flows/{flow_id}/jobs/{second}", {"jobId": second, "status": "failed", "error": error})
        heard = {}
        while FlowEvent.FAILED not in heard:
            frame = json.loads(ws.recv(timeout=TIMEOUT))
            if frame["event"] == FlowEvent.JOB_UPDATED and frame["data"]["jobId"] == second:
                heard[FlowEvent.JOB_UPDATED] = frame["data"]
            elif frame["event"] == FlowEvent.FAILED:
                heard[FlowEvent.FAILED] = frame["data"]

    assert status == 200 and failed["message"] == "Flow updated successfully"
    assert failed["error"] == error and failed["errorMessage"] == "Job failed"
    status, flow = client.get(f"/flows/{flow_id}")
    assert flow["status"] == FlowStatus.FAILED
    assert flow["error"]["message"] == flow["errorMessage"] and "Job failed" in flow["error"]["message"]
    assert flow["error"]["jobId"] == second and flow["error"]["type"] == "ReportedJobFailure"
    assert flow["progress"]["jobs"][second]["error"] == error
    # 1 of 3 jobs completed: the flow failed, it is not 100% done.
    assert flow["progress"]["summary"]["percentage"] == 33.3 and flow["progress"]["percentage"] == 33.3
    listed = {job["jobId"]: job for job in client.get(f"/flows/{flow_id}/jobs")[1]}
    assert listed[second]["error"] == error
    assert listed[root_id]["error"]["message"].startswith("Child job test-value")
    # The events carry the REST shapes.
    assert heard[FlowEvent.JOB_UPDATED]["error"] == error
    assert heard[FlowEvent.FAILED]["error"] == flow["error"]


def test_a_reported_error_string_is_an_error_object_too(client):
    flow_id = create(client)["flowId"]
    _, (first, _) = job_ids(client, flow_id)

    status, failed = client.put(f"/flows/{flow_id}/jobs/{first}", {"status": "failed", "error": "GPU on fire"})

    assert status == 200
    assert failed["error"] == {"message": "GPU on fire", "type": "ReportedJobFailure"}
    assert failed["errorMessage"] == "GPU on fire"


@pytest.mark.parametrize(
    "error, complaint",
    [
        ({"code": 1}, "needs a `message`"),
        ({"message": ""}, "needs a `message`"),
        ({"message": "x", "type": 7}, "`type` must be a string"),
        (["broken"], "a string or an object"),
        (42, "a string or an object"),
    ],
)
def test_a_malformed_error_is_a_400_and_changes_nothing(client, error, complaint):
    flow_id = create(client)["flowId"]
    _, (first, _) = job_ids(client, flow_id)

    status, body = client.put(f"/flows/{flow_id}/jobs/{first}", {"status": "failed", "error": error})

    assert_error_body(status, body, 400)
    assert complaint in body["details"]["error"][0]
    assert client.get(f"/flows/{flow_id}")[1]["progress"]["jobs"][first]["status"] == JobStatus.WAITING


def test_a_body_jobid_that_is_not_the_urls_is_a_400_and_changes_nothing(client):
    flow_id = create(client)["flowId"]
    _, (first, second) = job_ids(client, flow_id)

    status, body = client.put(f"/flows/{flow_id}/jobs/{first}", {"jobId": second, "status": "completed"})

    assert_error_body(status, body, 400)
    assert second in body["details"]["jobId"][0] and first in body["details"]["jobId"][0]
    jobs = client.get(f"/flows/{flow_id}")[1]["progress"]["jobs"]
    assert jobs[first]["status"] == jobs[second]["status"] == JobStatus.WAITING


def test_every_error_body_has_a_message(client, live_asgi_server):
    flow_id = create(client)["flowId"]
    root_id, _ = job_ids(client, flow_id)

    assert_error_body(*LegacyClient(live_asgi_server.url, None).get("/flows"), 401)
    assert_error_body(*client.get("/flows/0123456789abcdef"), 404)
    assert_error_body(*client.post("/flows", {"flowname": "x"}), 400)
    status, body = client.put(f"/flows/{flow_id}/jobs/{root_id}", {"status": "completed"})
    assert_error_body(status, body, 409)
    assert body["currentStatus"] == JobStatus.WAITING_CHILDREN


def test_lists_accept_the_legacy_limit_and_page(client):
    made = [create(client, flowname=f"paged-{index}")["flowId"] for index in range(3)]

    status, first = client.get("/flows?limit=2")
    _, second = client.get("/flows?limit=2&page=2")
    _, same = client.get("/flows?limit=2&pageSize=2")

    assert status == 200 and first["count"] == 3 and len(first["results"]) == 2 and first["next"]
    assert "limit=2" in first["next"]
    assert len(second["results"]) == 1
    assert {flow["flowId"] for flow in first["results"] + second["results"]} == set(made)
    assert same["results"] == first["results"]
    assert len(client.get("/flows?limit=100000")[1]["results"]) == 3  # cut down to the maximum, as pageSize
    for query in ("limit=0", "limit=-1", "limit=abc"):
        status, body = client.get(f"/flows?{query}")
        assert_error_body(status, body, 400)
        assert "limit" in body["details"]
    assert_error_body(*client.get("/flows?limit=1&pageSize=2"), 400)
    assert len(client.get(f"/jobs/{ISOLATED_QUEUE}?limit=1")[1]["results"]) == 1


def test_a_flows_jobs_have_the_legacy_id_children_and_updated_at(client):
    flow_id = create(client)["flowId"]
    root_id, children = job_ids(client, flow_id)
    client.put(f"/flows/{flow_id}/jobs/{children[0]}", {"status": "completed", "result": 1})

    status, jobs = client.get(f"/flows/{flow_id}/jobs")

    assert status == 200
    by_id = {job["id"]: job for job in jobs}
    assert set(by_id) == {root_id, *children} and all(job["id"] == job["jobId"] for job in jobs)
    assert by_id[root_id]["children"] == children and by_id[children[0]]["children"] == []
    assert by_id[children[0]]["updatedAt"] == by_id[children[0]]["finishedAt"]
    assert by_id[children[1]]["updatedAt"] == by_id[children[1]]["createdAt"]


def test_every_job_carries_the_legacy_flow_metadata(client):
    created = create(client, flowname="with-metadata")
    root_id, children = job_ids(client, created["flowId"])

    for job_id in (root_id, *children):
        status, job = client.get(f"/jobs/{ISOLATED_QUEUE}/{job_id}")
        assert status == 200
        metadata = job["data"]["_flowMetadata"]
        assert job["data"]["flowId"] == metadata["flowId"] == created["flowId"]
        assert metadata["parentFlowName"] == metadata["flowname"] == "with-metadata"
        assert metadata["rootJobId"] == root_id
        assert_iso(metadata["injectedAt"])
