"""Jobs by queue (legacy /jobs/:queueName), queues, the dashboard, and retries end to end."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models import F

from flows.models import Flow
from jobs.models import Job
from jobs.vocabulary import FlowStatus, JobStatus
from tests.conftest import token_client, wait_for, wait_for_flow
from tests.factories import grant, make_flow


@pytest.mark.django_db
def test_list_jobs_of_a_queue_with_filters(api, user, other_user):
    mine = make_flow(user, queue="video")
    make_flow(other_user, queue="video")
    make_flow(user, queue="image")

    everything = api.get("/api/jobs/video").json()
    waiting = api.get(f"/api/jobs/video/?status=waiting&flowId={mine.pk}").json()

    assert everything["count"] == 3
    assert {job["queueName"] for job in everything["results"]} == {"video"}
    assert {job["flowId"] for job in everything["results"]} == {mine.pk}
    assert waiting["count"] == 2 and {job["status"] for job in waiting["results"]} == {JobStatus.WAITING}


@pytest.mark.django_db
def test_jobs_of_a_queue_are_listed_newest_first_or_oldest_first_on_request(api, user):
    made = [api.post("/api/jobs/isolated", {"name": "test-value", "data": {"value": n}}, format="json").json()["jobId"]
            for n in range(3)]
    Job.objects.filter(pk=made[0]).update(created_at=F("created_at") - timedelta(seconds=2))
    Job.objects.filter(pk=made[1]).update(created_at=F("created_at") - timedelta(seconds=1))

    def ids(query: str) -> list[str]:
        return [job["jobId"] for job in api.get(f"/api/jobs/isolated?status=waiting{query}").json()["results"]]

    assert ids("") == made[::-1]
    assert ids("&ordering=createdAt") == made  # an external worker takes the oldest first
    assert ids("&ordering=-createdAt") == made[::-1]
    refused = api.get("/api/jobs/isolated?ordering=name")
    assert refused.status_code == 400 and "ordering" in refused.json()["details"]


@pytest.mark.django_db
def test_unknown_queue_is_404_and_unknown_status_400_listing_valid_ones(api):
    unknown = api.get("/api/jobs/nowhere")
    bad_status = api.get("/api/jobs/video?status=sleeping")

    assert unknown.status_code == 404
    assert "Unknown queue 'nowhere'. Allowed queues: default, video, image, alt, isolated." == unknown.json()["error"]
    assert bad_status.status_code == 400
    assert bad_status.json()["details"]["status"] == [
        "sleeping is not a job status. Valid: waiting, waiting-children, delayed, active, completed, failed, "
        "paused, stuck, cancelled."
    ]


@pytest.mark.django_db
def test_submit_a_standalone_job_and_read_it(api, user, other_user):
    created = api.post("/api/jobs/image/", {"name": "test-value", "data": {"value": 5}}, format="json")

    assert created.status_code == 201
    job_id = created.json()["jobId"]
    job = Job.objects.get(pk=job_id)
    assert (job.owner, job.queue_name, job.flow) == (user, "image", None)
    read = api.get(f"/api/jobs/image/{job_id}")
    assert read.status_code == 200 and read.json()["data"] == {"value": 5}
    assert api.get(f"/api/jobs/video/{job_id}").status_code == 404
    assert token_client(other_user).get(f"/api/jobs/image/{job_id}").status_code == 404
    assert token_client(None).get(f"/api/jobs/image/{job_id}").status_code == 401


@pytest.mark.django_db
def test_submit_errors(api, user, other_user):
    theirs = make_flow(other_user)

    unknown = api.post("/api/jobs/image", {"name": "rm-rf", "opts": {"delay": "soon"}}, format="json")
    missing = api.post("/api/jobs/image", {"data": {}}, format="json")
    foreign_flow = api.post("/api/jobs/image", {"name": "test-value", "flowId": theirs.pk}, format="json")
    not_object = api.post("/api/jobs/image", {"name": "test-value", "data": [1]}, format="json")

    assert unknown.status_code == 400
    assert "Unknown job handler 'rm-rf'" in unknown.json()["details"]["name"][0]
    assert unknown.json()["details"]["opts.delay"] == ["Must be an integer."]
    assert missing.status_code == 400 and missing.json()["details"]["name"] == ["This field is required."]
    assert foreign_flow.status_code == 400 and "Unknown flow" in foreign_flow.json()["details"]["flowId"][0]
    assert not_object.status_code == 400 and "data" in not_object.json()["details"]
    assert not Job.objects.filter(flow__isnull=True).exists()


@pytest.mark.django_db
def test_submit_with_a_flow_id_attaches_the_job(api, user):
    flow = make_flow(user)

    created = api.post("/api/jobs/alt", {"name": "test-value", "flowId": flow.pk}, format="json")

    job = Job.objects.get(pk=created.json()["jobId"])
    assert job.flow == flow and job.data["flowId"] == flow.pk
    assert api.get(f"/api/flows/{flow.pk}").json()["progress"]["total"] == 4


@pytest.mark.django_db
def test_delete_a_standalone_job_revokes_it_and_a_tree_job_is_409(api, user):
    job_id = api.post("/api/jobs/image", {"name": "test-value"}, format="json").json()["jobId"]
    flow = make_flow(user)
    tree_job = Job.objects.filter(flow=flow).first()

    deleted = api.delete(f"/api/jobs/image/{job_id}")
    refused = api.delete(f"/api/jobs/default/{tree_job.pk}")

    assert deleted.status_code == 204 and not Job.objects.filter(pk=job_id).exists()
    assert refused.status_code == 409 and "cancel or delete the flow instead" in refused.json()["error"]


def counts(**nonzero: int) -> dict[str, int]:
    """A queue's count per job status: ``nonzero`` (keyed by ``JobStatus`` name), every other status 0."""
    return {status.value: nonzero.get(status.name, 0) for status in JobStatus}


def _fail_the_first_child(flow: Flow, error: str) -> None:
    child = Job.objects.filter(flow=flow, parent__isnull=False).order_by("position").first()
    Job.objects.filter(pk=child.pk).update(status=JobStatus.FAILED, error=error)


@pytest.mark.django_db
def test_queues_list_counts_only_the_users_jobs_and_only_queue_managers_pause(api, user, other_user, staff_user):
    make_flow(user, children=2, queue="video")
    _fail_the_first_child(make_flow(other_user, children=3, queue="video"), "their failure")

    queues = {queue["name"]: queue for queue in api.get("/api/queues").json()}
    pause = api.post("/api/queues/video/pause")
    bare_staff_pause = token_client(staff_user).post("/api/queues/video/pause/")  # staff without the permission
    manager = token_client(grant(staff_user, "jobs.change_queuestate"))
    staff_pause = manager.post("/api/queues/video/pause/")
    unknown = manager.post("/api/queues/nowhere/pause")

    assert set(queues) == {"default", "video", "image", "alt", "isolated"}
    assert queues["video"]["counts"] == counts(WAITING=2, WAITING_CHILDREN=1)
    assert pause.status_code == 403
    assert bare_staff_pause.status_code == 403 and "jobs.change_queuestate" in bare_staff_pause.json()["error"]
    # Pausing is global: every user's waiting jobs of the queue are parked.
    assert staff_pause.status_code == 200 and staff_pause.json() == {"name": "video", "paused": True, "jobsAffected": 4}
    assert unknown.status_code == 404
    after = {q["name"]: q for q in api.get("/api/queues").json()}["video"]
    assert after["paused"] is True and after["counts"] == counts(PAUSED=2, WAITING_CHILDREN=1)


@pytest.mark.django_db
def test_dashboard_counts_queues_flows_and_latest_failures_of_the_user_only(api, user, other_user):
    flow = make_flow(user, children=1)
    theirs = make_flow(other_user, children=2)
    Job.objects.filter(pk=flow.root_job_id).update(status=JobStatus.FAILED, error="boom")
    Flow.objects.filter(pk=flow.pk).update(status=FlowStatus.FAILED)
    _fail_the_first_child(theirs, "their failure")
    Flow.objects.filter(pk=theirs.pk).update(status=FlowStatus.FAILED)
    make_flow(other_user, children=3, queue="image")

    body = api.get("/api/dashboard").json()

    assert body["flows"] == {status.value: int(status == FlowStatus.FAILED) for status in FlowStatus}
    assert body["queues"]["default"] == counts(FAILED=1, WAITING=1)
    assert body["queues"]["image"] == counts()
    assert [(job["jobId"], job["error"]) for job in body["latestFailures"]] == [(flow.root_job_id, {"message": "boom"})]
    assert token_client(None).get("/api/dashboard").status_code == 401


def test_retry_reruns_the_failed_jobs_keeping_completed_results(engine_db, user, tmp_path):
    api = token_client(user)
    marker = tmp_path / "marker"
    body = {
        "flowname": "retry-me", "name": "test-echo", "queueName": "default",
        "children": [
            {"name": "test-value", "queueName": "default", "data": {"value": 1}},
            {"name": "test-echo", "queueName": "video", "children": [
                {"name": "test-fail-first-time", "queueName": "image", "data": {"marker": str(marker)}},
            ]},
        ],
    }
    flow = Flow.objects.get(pk=api.post("/api/flows", body, format="json").json()["flowId"])
    wait_for_flow(flow)
    assert flow.status == FlowStatus.FAILED
    kept = Job.objects.get(flow=flow, name="test-value")

    response = api.post(f"/api/flows/{flow.pk}/retry")

    assert response.status_code == 200
    assert response.json()["flow"]["status"] in (FlowStatus.RUNNING, FlowStatus.COMPLETED)
    flow = wait_for_flow(flow)
    assert flow.status == FlowStatus.COMPLETED
    assert flow.result["childrenValues"]["test-echo"]["childrenValues"]["test-fail-first-time"] == {"recovered": True}
    assert Job.objects.get(pk=kept.pk).finished_at == kept.finished_at  # not re-run
    assert Job.objects.get(flow=flow, name="test-fail-first-time").attempts_made == 1


def test_retry_of_a_failed_standalone_job_through_the_queue_route(engine_db, user, tmp_path):
    api = token_client(user)
    job_id = api.post(
        "/api/jobs/image", {"name": "test-fail-first-time", "data": {"marker": str(tmp_path / "m")}}, format="json"
    ).json()["jobId"]
    wait_for(lambda: Job.objects.get(pk=job_id).status == JobStatus.FAILED, message="the job to fail")

    assert api.post(f"/api/jobs/image/{job_id}/retry").status_code == 200

    wait_for(lambda: Job.objects.get(pk=job_id).status == JobStatus.COMPLETED, message="the retried job")
    assert Job.objects.get(pk=job_id).result == {"recovered": True}
    assert api.post(f"/api/jobs/image/{job_id}/retry").status_code == 409


def test_a_paused_queue_holds_its_jobs_until_resumed(engine_db, user, staff_user):
    api, staff = token_client(user), token_client(grant(staff_user, "jobs.change_queuestate"))
    assert staff.post("/api/queues/alt/pause").status_code == 200
    try:
        job_id = api.post("/api/jobs/alt", {"name": "test-value", "data": {"value": 9}}, format="json").json()["jobId"]
        wait_for(lambda: Job.objects.get(pk=job_id).status == JobStatus.PAUSED, timeout=10,
                 message="the job to be parked")
    finally:
        resumed = staff.post("/api/queues/alt/resume")

    assert resumed.json()["jobsAffected"] == 1
    wait_for(lambda: Job.objects.get(pk=job_id).status == JobStatus.COMPLETED, timeout=10,
             message="the job after resume")
    assert Job.objects.get(pk=job_id).result == 9


@pytest.mark.django_db
@pytest.mark.parametrize(
    "method, suffix, owner_status",
    [("get", "", 200), ("post", "/retry", 200), ("delete", "", 204)],
)
def test_job_permission_matrix_owner_other_anonymous(user, other_user, method, suffix, owner_status):
    job_id = token_client(user).post("/api/jobs/image", {"name": "test-value"}, format="json").json()["jobId"]
    Job.objects.filter(pk=job_id).update(status=JobStatus.FAILED, error="boom", attempts_made=1)
    url = f"/api/jobs/image/{job_id}{suffix}"

    assert getattr(token_client(None), method)(url).status_code == 401
    assert getattr(token_client(other_user), method)(url).status_code == 404
    job = Job.objects.get(pk=job_id)
    assert (job.status, job.error, job.attempts_made) == (JobStatus.FAILED, "boom", 1)  # untouched
    owner = getattr(token_client(user), method)(url)

    assert owner.status_code == owner_status
    if method == "delete":
        assert not Job.objects.filter(pk=job_id).exists()
        return
    job.refresh_from_db()
    if suffix == "/retry":
        assert (job.status, job.error, job.attempts_made) == (JobStatus.WAITING, "", 0)
    else:
        assert owner.json()["jobId"] == job_id and owner.json()["status"] == JobStatus.FAILED
        assert job.status == JobStatus.FAILED
