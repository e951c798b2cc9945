"""The flows API: contract shapes, filters, errors, isolation and query counts."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from flows.models import Flow
from jobs.models import Job
from jobs.vocabulary import FlowStatus, JobStatus
from tests.conftest import token_client
from tests.factories import make_flow, spec

pytestmark = pytest.mark.django_db

FLOW_FIELDS = {
    "flowId", "flowname", "name", "queueName", "status", "progress", "result", "error", "errorMessage",
    "createdAt", "updatedAt", "startedAt", "completedAt",
}


@pytest.mark.parametrize("url", ["/api/flows", "/api/flows/"])
def test_create_returns_201_with_the_flow(api, user, url):
    response = api.post(url, spec(3), format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["message"] == "Flow created successfully"
    assert set(body["flow"]) == FLOW_FIELDS
    flow = Flow.objects.get(pk=body["flowId"])
    assert flow.owner == user and flow.status == FlowStatus.PENDING
    assert body["flow"]["progress"]["total"] == 4
    assert body["flow"]["progress"][JobStatus.WAITING] == 3
    assert Job.objects.filter(flow=flow, owner=user).count() == 4


def test_create_validation_errors_name_each_path(api):
    body = spec(2)
    body["children"][1] = {"name": "celery.backend_cleanup", "queueName": "celery", "opts": {"attempts": "x"}}

    response = api.post("/api/flows", body, format="json")

    assert response.status_code == 400
    details = response.json()["details"]
    assert "Unknown job handler 'celery.backend_cleanup'. Known handlers:" in details["children[1].name"][0]
    assert details["children[1].queueName"] == ["Unknown queue 'celery'. Allowed queues: default, video, image, alt, isolated."]
    assert details["children[1].opts.attempts"] == ["Must be an integer."]
    assert not Flow.objects.exists()


@pytest.mark.parametrize(
    "payload, message",
    [
        ("{not json", "JSON parse error"),
        ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
        ("[1, 2]", "Invalid flow specification."),
        ('"flow"', "Invalid flow specification."),
    ],
)
def test_malformed_bodies_are_400(api, payload, message):
    response = api.post("/api/flows", payload, content_type="application/json")

    assert response.status_code == 400
    assert message in response.json()["error"]


def test_a_deep_but_valid_json_tree_beyond_the_depth_limit_is_400(api):
    node = {"name": "test-value", "queueName": "default"}
    # 200 levels nest 400 deep: within FLOWSITE_MAX_JSON_DEPTH, so the spec's own limit answers.
    for _ in range(200):
        node = {"name": "test-value", "queueName": "default", "children": [node]}

    response = api.post("/api/flows", {"flowname": "deep", **node}, format="json")

    assert response.status_code == 400
    assert "deeper than 100 levels" in response.json()["error"]


@override_settings(FLOWSITE_MAX_FLOW_JOBS=20)
def test_too_many_jobs_is_400(api):
    response = api.post("/api/flows", spec(25), format="json")

    assert response.status_code == 400
    assert "more than 20 jobs" in response.json()["error"]


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=10_000)
def test_a_body_over_the_size_limit_is_413(api):
    response = api.post("/api/flows", json.dumps(spec(500)), content_type="application/json")

    assert response.status_code == 413
    assert not Flow.objects.exists()


def test_idempotency_key_returns_the_first_flow_and_refuses_another_body(api, other_user):
    first = api.post("/api/flows", spec(1), format="json", HTTP_IDEMPOTENCY_KEY="order-42")
    again = api.post("/api/flows", spec(1), format="json", HTTP_IDEMPOTENCY_KEY="order-42")
    clash = api.post("/api/flows", spec(2), format="json", HTTP_IDEMPOTENCY_KEY="order-42")
    someone_else = token_client(other_user).post(
        "/api/flows", spec(1), format="json", HTTP_IDEMPOTENCY_KEY="order-42"
    )

    assert first.status_code == 201
    assert again.status_code == 200 and again.json()["flowId"] == first.json()["flowId"]
    assert clash.status_code == 409 and "different request body" in clash.json()["error"]
    assert someone_else.status_code == 201 and someone_else.json()["flowId"] != first.json()["flowId"]
    assert Flow.objects.count() == 2


def test_list_is_paginated_and_shows_only_the_users_flows(api, user, other_user):
    for _ in range(3):
        make_flow(user)
    make_flow(other_user)

    response = api.get("/api/flows?pageSize=2")

    body = response.json()
    assert response.status_code == 200
    assert body["count"] == 3 and len(body["results"]) == 2 and body["next"]
    assert {flow["flowId"] for flow in body["results"]} <= set(Flow.objects.filter(owner=user).values_list("id", flat=True))


def test_staff_see_every_flow_with_the_view_permission_only(user, other_user, staff_user):
    from tests.factories import grant

    make_flow(user)
    make_flow(other_user)
    assert token_client(staff_user).get("/api/flows").json()["count"] == 0

    grant(staff_user, "flows.view_flow")
    assert token_client(staff_user).get("/api/flows").json()["count"] == 2


def test_list_filters_search_and_ordering(api, user):
    old = make_flow(user, flowname="nightly-report")
    Flow.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))
    video = make_flow(user, flowname="video", queue="video")
    failed = make_flow(user, flowname="import")
    Flow.objects.filter(pk=failed.pk).update(status=FlowStatus.FAILED)

    def ids(query: str) -> list[str]:
        response = api.get(f"/api/flows?{query}")
        assert response.status_code == 200, response.json()
        return [flow["flowId"] for flow in response.json()["results"]]

    assert ids("status=failed") == [failed.pk]
    assert ids("flowname=video") == [video.pk]
    assert ids("queueName=video") == [video.pk]
    yesterday = (timezone.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert set(ids(f"createdAfter={yesterday}")) == {video.pk, failed.pk}
    assert ids(f"createdBefore={yesterday}") == [old.pk]
    assert ids("search=nightly") == [old.pk]
    assert ids(f"search={video.pk}") == [video.pk]
    assert ids("ordering=createdAt")[0] == old.pk
    assert ids("ordering=-createdAt")[-1] == old.pk
    bad = api.get("/api/flows?status=exploded")
    assert bad.status_code == 400
    assert "exploded is not a flow status. Valid: pending, running" in bad.json()["details"]["status"][0]
    assert api.get("/api/flows?createdAfter=yesterday").status_code == 400


def test_detail_has_progress_jobs_and_structure(api, user):
    flow = make_flow(user, children=2)
    Job.objects.filter(flow=flow, parent__isnull=False).update(status=JobStatus.COMPLETED, result=1)

    response = api.get(f"/api/flows/{flow.pk}")

    body = response.json()
    assert response.status_code == 200
    assert body["progress"]["total"] == 3 and body["progress"]["completed"] == 2
    assert body["progress"]["percentage"] == 66.7
    assert body["progress"][JobStatus.WAITING_CHILDREN] == 1
    assert len(body["jobs"]) == 3
    assert body["jobStructure"] == {"root": flow.job_structure}
    assert body["jobStructure"]["root"]["jobId"] == flow.root_job_id
    child = next(job for job in body["jobs"] if job["parentJobId"])
    assert child["status"] == JobStatus.COMPLETED and child["result"] == 1
    assert "data" not in child  # the definition is in jobStructure


def test_progress_percentage_is_the_share_of_completed_jobs(api, user):
    flow = make_flow(user, children=3)
    first, second, _ = Job.objects.filter(flow=flow, parent__isnull=False).order_by("position")
    Job.objects.filter(pk=first.pk).update(status=JobStatus.COMPLETED)
    Job.objects.filter(pk=second.pk).update(status=JobStatus.FAILED)

    detail = api.get(f"/api/flows/{flow.pk}").json()["progress"]
    listed = api.get("/api/flows").json()["results"][0]["progress"]

    per_status = {status.value: 0 for status in JobStatus}
    per_status.update(
        {JobStatus.COMPLETED: 1, JobStatus.FAILED: 1, JobStatus.WAITING: 1, JobStatus.WAITING_CHILDREN: 1}
    )
    # 1 of 4 jobs completed; the failed one is finished but not done.
    counts = {"total": 4, "completed": 1, "failed": 1, "percentage": 25.0, **per_status}
    assert listed == {**counts, "summary": counts}
    assert set(detail.pop("jobs")) == set(Job.objects.filter(flow=flow).values_list("id", flat=True))
    assert detail == listed


def test_flow_jobs_filter_by_status(api, user):
    flow = make_flow(user, children=3)

    waiting = api.get(f"/api/flows/{flow.pk}/jobs?status=waiting").json()
    everything = api.get(f"/api/flows/{flow.pk}/jobs/").json()
    bad = api.get(f"/api/flows/{flow.pk}/jobs?status=nope")

    assert len(waiting) == 3 and {job["status"] for job in waiting} == {JobStatus.WAITING}
    assert len(everything) == 4
    assert bad.status_code == 400 and "Valid: waiting, waiting-children" in bad.json()["details"]["status"][0]


def test_cancel_then_cancel_again_is_409(api, user):
    flow = make_flow(user)

    first = api.post(f"/api/flows/{flow.pk}/cancel")
    second = api.post(f"/api/flows/{flow.pk}/cancel/")

    assert first.status_code == 200 and first.json()["flow"]["status"] == FlowStatus.CANCELLED
    assert set(Job.objects.filter(flow=flow).values_list("status", flat=True)) == {JobStatus.CANCELLED}
    assert second.status_code == 409 and second.json()["currentStatus"] == FlowStatus.CANCELLED


def test_retry_of_a_flow_that_did_not_fail_is_409(api, user):
    flow = make_flow(user)

    response = api.post(f"/api/flows/{flow.pk}/retry")

    assert response.status_code == 409
    assert "no failed job to retry" in response.json()["error"]


def test_delete_removes_the_flow_and_its_jobs(api, user):
    flow = make_flow(user)

    response = api.delete(f"/api/flows/{flow.pk}")

    assert response.status_code == 200 and response.json()["flowId"] == flow.pk
    assert not Flow.objects.filter(pk=flow.pk).exists() and not Job.objects.filter(flow_id=flow.pk).exists()
    assert api.get(f"/api/flows/{flow.pk}").status_code == 404


def test_report_moves_a_job_through_the_state_machine(api, user):
    flow = make_flow(user, children=2)
    first, second = Job.objects.filter(flow=flow, parent__isnull=False)
    url = f"/api/flows/{flow.pk}/jobs/"

    running = api.put(url + first.pk, {"status": "running", "progress": 40}, format="json")
    done = api.put(url + first.pk, {"status": "completed", "result": {"ok": True}}, format="json")
    again = api.put(url + first.pk, {"status": "running"}, format="json")
    failed = api.put(url + second.pk + "/", {"status": "failed", "error": "GPU on fire"}, format="json")

    assert running.status_code == 200 and running.json()["status"] == JobStatus.ACTIVE
    assert running.json()["progress"] == 40
    assert done.status_code == 200 and done.json()["result"] == {"ok": True}
    assert again.status_code == 409 and again.json()["currentStatus"] == JobStatus.COMPLETED
    assert failed.status_code == 200 and failed.json()["error"] == {"message": "GPU on fire", "type": "ReportedJobFailure"}
    assert failed.json()["errorMessage"] == "GPU on fire"
    assert done.json()["message"] == failed.json()["message"] == "Flow updated successfully"
    flow.refresh_from_db()
    assert flow.status == FlowStatus.FAILED
    assert Job.objects.get(pk=flow.root_job_id).status == JobStatus.FAILED
    detail = api.get(f"/api/flows/{flow.pk}").json()
    assert detail["progress"]["completed"] == 1 and detail["progress"]["failed"] == 2


def test_report_errors(api, user):
    flow, other_flow = make_flow(user), make_flow(user)
    job = Job.objects.filter(flow=flow, parent__isnull=False).first()
    other_job = Job.objects.filter(flow=other_flow).first()

    wrong_flow = api.put(f"/api/flows/{flow.pk}/jobs/{other_job.pk}", {"status": "running"}, format="json")
    bad_status = api.put(f"/api/flows/{flow.pk}/jobs/{job.pk}", {"status": "paused"}, format="json")
    missing = api.put(f"/api/flows/{flow.pk}/jobs/{job.pk}", {}, format="json")
    parent = api.put(f"/api/flows/{flow.pk}/jobs/{flow.root_job_id}", {"status": "completed"}, format="json")

    assert wrong_flow.status_code == 404
    assert bad_status.status_code == 400 and "status" in bad_status.json()["details"]
    assert missing.status_code == 400 and missing.json()["details"]["status"] == ["This field is required."]
    assert parent.status_code == 409 and parent.json()["currentStatus"] == JobStatus.WAITING_CHILDREN


def _state(flow: Flow) -> tuple:
    """The flow's status and every job's (id, status, attempts), or None for a deleted flow."""
    status = Flow.objects.filter(pk=flow.pk).values_list("status", flat=True).first()
    jobs = sorted(Job.objects.filter(flow_id=flow.pk).values_list("id", "status", "attempts_made"))
    return status, jobs


def _check_detail(flow, job, response):
    assert response.json()["flowId"] == flow.pk and len(response.json()["jobs"]) == 3


def _check_jobs(flow, job, response):
    assert {row["jobId"] for row in response.json()} == set(Job.objects.filter(flow=flow).values_list("id", flat=True))


def _check_report(flow, job, response):
    job.refresh_from_db()
    flow.refresh_from_db()
    assert (job.status, job.attempts_made, flow.status) == (JobStatus.ACTIVE, 1, FlowStatus.RUNNING)


def _check_retry(flow, job, response):
    job.refresh_from_db()
    flow.refresh_from_db()
    assert (job.status, job.attempts_made, job.error) == (JobStatus.WAITING, 0, "")
    assert flow.status == FlowStatus.RUNNING


def _check_cancel(flow, job, response):
    flow.refresh_from_db()
    assert flow.status == FlowStatus.CANCELLED
    assert set(Job.objects.filter(flow=flow).values_list("status", flat=True)) == {JobStatus.CANCELLED}


def _check_delete(flow, job, response):
    assert _state(flow) == (None, [])


# (method, path under the flow, body, whether the flow has failed first, the owner's effect)
OBJECT_REQUESTS = {
    "detail": ("get", "", None, False, _check_detail),
    "jobs": ("get", "/jobs", None, False, _check_jobs),
    "report": ("put", "/jobs/{job}", {"status": "running"}, False, _check_report),
    "retry": ("post", "/retry", None, True, _check_retry),
    "cancel": ("post", "/cancel", None, False, _check_cancel),
    "delete": ("delete", "", None, False, _check_delete),
}


@pytest.mark.parametrize("request_name", OBJECT_REQUESTS)
def test_permission_matrix_owner_other_anonymous(user, other_user, request_name):
    method, path, body, failed, check = OBJECT_REQUESTS[request_name]
    flow = make_flow(user)
    job = Job.objects.filter(flow=flow, parent__isnull=False).order_by("position").first()
    if failed:
        Job.objects.filter(pk=job.pk).update(status=JobStatus.FAILED, error="boom", error_type="ValueError")
        Flow.objects.filter(pk=flow.pk).update(status=FlowStatus.FAILED)
    url = f"/api/flows/{flow.pk}" + path.format(job=job.pk)
    before = _state(flow)

    anonymous = getattr(token_client(None), method)(url, body, format="json")
    other = getattr(token_client(other_user), method)(url, body, format="json")

    assert anonymous.status_code == 401
    assert other.status_code == 404
    assert _state(flow) == before  # neither changed anything
    owner = getattr(token_client(user), method)(url, body, format="json")
    assert owner.status_code == 200, owner.json()
    check(flow, job, owner)


def test_list_query_count_does_not_grow_with_flows(api, user):
    for _ in range(5):
        make_flow(user)
    with CaptureQueriesContext(connection) as few:
        assert api.get("/api/flows").status_code == 200
    for _ in range(45):
        make_flow(user)
    with CaptureQueriesContext(connection) as many:
        response = api.get("/api/flows")

    assert len(response.json()["results"]) == 50
    assert len(many) == len(few)


def test_detail_query_count_does_not_grow_with_jobs(api, user):
    small, large = make_flow(user, children=9), make_flow(user, children=999)
    with CaptureQueriesContext(connection) as few:
        api.get(f"/api/flows/{small.pk}")
    with CaptureQueriesContext(connection) as many:
        response = api.get(f"/api/flows/{large.pk}")

    assert len(response.json()["jobs"]) == 1000
    assert len(many) == len(few)


@pytest.mark.parametrize("where", ["flowname", "data", "key"])
def test_nul_characters_are_refused_with_400(api, where):
    body = spec(1)
    if where == "flowname":
        body["flowname"] = "bad\x00name"
    elif where == "data":
        body["children"][0]["data"] = {"text": "a\x00b"}
    else:
        body["data"] = {"k\x00": 1}

    response = api.post("/api/flows", body, format="json")

    assert response.status_code == 400
    assert "NUL" in response.json()["details"]["non_field_errors"][0]
    assert not Flow.objects.exists()


def test_the_databases_job_json_matches_the_python_payload(user):
    from flows.selectors import flow_job_states_json, flow_jobs
    from jobs.selectors import JOB_STATE_FIELDS, job_progress_entry, job_state_payload

    flow = make_flow(user, children=4)
    first, second, third, fourth = Job.objects.filter(flow=flow, parent__isnull=False).order_by("position")
    now = timezone.now()
    Job.objects.filter(pk=first.pk).update(
        status=JobStatus.COMPLETED, result={"a": [1, "é", None]}, started_at=now, finished_at=now.replace(microsecond=0)
    )
    Job.objects.filter(pk=second.pk).update(
        status=JobStatus.FAILED, error="boom \"quoted\"", error_type="ValueError", progress={"step": 2}
    )
    Job.objects.filter(pk=third.pk).update(result="text", progress=42.5)
    # A reporter's error object, kept while its message is the error text; a stale one is not shown.
    Job.objects.filter(pk=fourth.pk).update(
        status=JobStatus.FAILED, error="disk full", error_type="ReportedJobFailure",
        error_detail={"message": "disk full", "code": 28, "type": "IOError"},
    )
    Job.objects.filter(pk=flow.root_job_id).update(error="Cancelled", error_detail={"message": "old", "x": 1})

    states_json, entries_json = flow_job_states_json(flow=flow)
    from_python = [job_state_payload(row) for row in flow_jobs(flow=flow).values(*JOB_STATE_FIELDS)]

    assert json.loads(states_json) == from_python
    assert json.loads(entries_json) == {state["jobId"]: job_progress_entry(state) for state in from_python}
    by_id = {state["jobId"]: state for state in from_python}
    assert by_id[first.pk]["finishedAt"].endswith(".000000Z")
    assert by_id[second.pk]["error"] == {"message": 'boom "quoted"', "type": "ValueError"}
    assert by_id[fourth.pk]["error"] == {"message": "disk full", "code": 28, "type": "IOError"}
    assert by_id[flow.root_job_id]["error"] == {"message": "Cancelled"}
    assert by_id[third.pk]["error"] is None and by_id[third.pk]["errorMessage"] is None


def test_a_cancelled_job_shows_only_the_cancel_as_its_error(api, user):
    flow = make_flow(user, children=1)
    child = Job.objects.get(flow=flow, parent__isnull=False)
    # An attempt failed and the job waits for its retry: its error is that attempt's.
    Job.objects.filter(pk=child.pk).update(
        status=JobStatus.DELAYED, error="disk full", error_type="OSError", error_detail={"message": "disk full"}
    )

    assert api.post(f"/api/flows/{flow.pk}/cancel").status_code == 200

    jobs = {job["jobId"]: job for job in api.get(f"/api/flows/{flow.pk}/jobs").json()}
    assert jobs[child.pk]["error"] == {"message": "Cancelled"} and jobs[child.pk]["errorType"] is None
    child.refresh_from_db()
    assert (child.status, child.error_type, child.error_detail) == (JobStatus.CANCELLED, "", None)
