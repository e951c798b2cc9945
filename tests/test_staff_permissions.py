"""Who may read and act on another user's flows and jobs through the API (``accounts.permissions``).

The matrix: the owner, another user, staff without permissions, staff who may view,
staff who may view and change (not delete), staff with every permission, a superuser;
for reading, cancel, retry, delete, a job report, attaching a job, and a job's retry
and delete. Another user's object is 404 to whoever may not see it, 403 with a
message to whoever sees it but lacks the permission. Every act on another user's
object is in the ``flowsite.audit`` log.
"""

from __future__ import annotations

import logging

import pytest

from flows.models import Flow
from jobs.models import Job
from jobs.services import job_submit
from jobs.vocabulary import FlowStatus, JobStatus
from tests.conftest import token_client
from tests.factories import grant, make_flow

pytestmark = pytest.mark.django_db

VIEW = ("flows.view_flow", "jobs.view_job")
CHANGE = (*VIEW, "flows.change_flow", "jobs.change_job")
EVERYTHING = (*CHANGE, "flows.delete_flow", "jobs.delete_job")
ROLES = ["owner", "other", "staff", "staff_view", "staff_change", "staff_all", "superuser"]


@pytest.fixture
def as_role(user, django_user_model):
    """The user who plays a role towards alice's (``user``'s) flows and jobs."""

    def make(role: str):
        if role == "owner":
            return user
        if role == "superuser":
            return django_user_model.objects.create_superuser(username="root", password="pw-root-123")
        acting = django_user_model.objects.create_user(
            username=role, password=f"pw-{role}-123", is_staff=role.startswith("staff")
        )
        perms = {"staff_view": VIEW, "staff_change": CHANGE, "staff_all": EVERYTHING}.get(role, ())
        return grant(acting, *perms)

    return make


def failed_flow(owner) -> Flow:
    """A flow whose first leaf failed (by itself) and failed the flow: something to retry."""
    flow = make_flow(owner)
    leaf = Job.objects.filter(flow=flow).exclude(pk=flow.root_job_id).order_by("position").first()
    Job.objects.filter(pk=leaf.pk).update(status=JobStatus.FAILED, error="boom", error_type="ValueError")
    Flow.objects.filter(pk=flow.pk).update(status=FlowStatus.FAILED, error="boom")
    return flow


def a_leaf(flow: Flow) -> Job:
    return Job.objects.filter(flow=flow).exclude(pk=flow.root_job_id).order_by("position").first()


# role -> expected status, per operation
READ = dict(owner=200, other=404, staff=404, staff_view=200, staff_change=200, staff_all=200, superuser=200)
CHANGE_FLOW = dict(owner=200, other=404, staff=404, staff_view=403, staff_change=200, staff_all=200, superuser=200)
DELETE_FLOW = dict(owner=200, other=404, staff=404, staff_view=403, staff_change=403, staff_all=200, superuser=200)
ATTACH = dict(owner=201, other=400, staff=400, staff_view=403, staff_change=201, staff_all=201, superuser=201)
DELETE_JOB = dict(owner=204, other=404, staff=404, staff_view=403, staff_change=403, staff_all=204, superuser=204)


@pytest.mark.parametrize("role", ROLES)
def test_reading_a_flow_its_jobs_and_a_job(role, user, as_role):
    flow = make_flow(user)
    leaf = a_leaf(flow)
    client = token_client(as_role(role))

    answers = [
        client.get(f"/api/flows/{flow.pk}"),
        client.get(f"/api/flows/{flow.pk}/jobs"),
        client.get(f"/api/jobs/{leaf.queue_name}/{leaf.pk}"),
    ]
    listed = client.get("/api/flows").json()["count"]

    assert [answer.status_code for answer in answers] == [READ[role]] * 3
    assert listed == (1 if READ[role] == 200 else 0)
    if READ[role] == 200:
        assert answers[0].json()["flowId"] == flow.pk and answers[2].json()["data"]["value"] == 1
    else:
        assert answers[0].json() == {"error": "Not found.", "message": "Not found.", "details": {}}


@pytest.mark.parametrize("role", ROLES)
def test_cancel(role, user, as_role):
    flow = make_flow(user)

    response = token_client(as_role(role)).post(f"/api/flows/{flow.pk}/cancel")

    assert response.status_code == CHANGE_FLOW[role], response.json()
    flow.refresh_from_db()
    expected = FlowStatus.CANCELLED if CHANGE_FLOW[role] == 200 else FlowStatus.PENDING
    assert flow.status == expected
    if response.status_code == 403:
        assert response.json()["error"] == (
            "You may not cancel another user's flow: it needs the permission flows.change_flow."
        )


@pytest.mark.parametrize("role", ROLES)
def test_retry(role, user, as_role):
    flow = failed_flow(user)

    response = token_client(as_role(role)).post(f"/api/flows/{flow.pk}/retry")

    assert response.status_code == CHANGE_FLOW[role], response.json()
    flow.refresh_from_db()
    assert flow.status == (FlowStatus.RUNNING if CHANGE_FLOW[role] == 200 else FlowStatus.FAILED)


@pytest.mark.parametrize("role", ROLES)
def test_delete(role, user, as_role):
    flow = make_flow(user)

    response = token_client(as_role(role)).delete(f"/api/flows/{flow.pk}")

    assert response.status_code == DELETE_FLOW[role], response.json()
    assert Flow.objects.filter(pk=flow.pk).exists() == (DELETE_FLOW[role] != 200)
    if response.status_code == 403:
        assert "flows.delete_flow" in response.json()["error"]


@pytest.mark.parametrize("role", ROLES)
def test_job_report(role, user, as_role):
    flow = make_flow(user)
    leaf = a_leaf(flow)

    response = token_client(as_role(role)).put(
        f"/api/flows/{flow.pk}/jobs/{leaf.pk}", {"status": "completed", "result": {"fake": True}}, format="json"
    )

    assert response.status_code == CHANGE_FLOW[role], response.json()
    leaf.refresh_from_db()
    if CHANGE_FLOW[role] == 200:
        assert leaf.status == JobStatus.COMPLETED and leaf.result == {"fake": True}
    else:
        assert leaf.status == JobStatus.WAITING and leaf.result is None
    if response.status_code == 403:
        assert "jobs.change_job" in response.json()["error"]


@pytest.mark.parametrize("role", ROLES)
def test_attach_a_job_to_the_flow(role, user, as_role):
    flow = make_flow(user)

    response = token_client(as_role(role)).post(
        "/api/jobs/default", {"name": "test-value", "flowId": flow.pk}, format="json"
    )

    assert response.status_code == ATTACH[role], response.json()
    attached = Job.objects.filter(flow=flow, name="test-value", parent=None).exclude(pk=flow.root_job_id)
    assert attached.count() == (1 if ATTACH[role] == 201 else 0)
    if ATTACH[role] == 201:
        assert attached.get().owner_id == user.pk  # the flow's owner's, whoever attached it
    if ATTACH[role] == 400:
        assert response.json()["details"] == {"flowId": [f"Unknown flow {flow.pk!r}."]}


@pytest.mark.parametrize("role", ROLES)
def test_retry_and_delete_a_standalone_job(role, user, as_role):
    job = job_submit(owner=user, name="test-value", queue_name="default", data={"value": 1})
    Job.objects.filter(pk=job.pk).update(status=JobStatus.FAILED, error="boom")
    client = token_client(as_role(role))

    retried = client.post(f"/api/jobs/default/{job.pk}/retry")
    deleted = client.delete(f"/api/jobs/default/{job.pk}")

    assert retried.status_code == CHANGE_FLOW[role], retried.json()
    assert deleted.status_code == DELETE_JOB[role]
    if retried.status_code == 403:
        assert "jobs.change_job" in retried.json()["error"]
    assert Job.objects.filter(pk=job.pk).exists() == (DELETE_JOB[role] != 204)


def test_acting_on_another_users_flow_is_audited(user, as_role, caplog):
    flow = make_flow(user)
    operator = as_role("staff_change")

    with caplog.at_level(logging.INFO, logger="flowsite.audit"):
        refused = token_client(operator).delete(f"/api/flows/{flow.pk}")
        cancelled = token_client(operator).post(f"/api/flows/{flow.pk}/cancel")
        own = token_client(user).get(f"/api/flows/{flow.pk}")

    assert (refused.status_code, cancelled.status_code, own.status_code) == (403, 200, 200)
    lines = [(record.levelno, record.getMessage()) for record in caplog.records if record.name == "flowsite.audit"]
    assert lines == [
        (logging.WARNING, f"refused: staff_change (id {operator.pk}) delete flow {flow.pk} of alice (id {user.pk})"),
        (logging.INFO, f"allowed: staff_change (id {operator.pk}) cancel flow {flow.pk} of alice (id {user.pk})"),
    ]


def test_the_owner_acting_on_their_own_flow_is_not_audited(user, caplog):
    flow = make_flow(user)

    with caplog.at_level(logging.INFO, logger="flowsite.audit"):
        assert token_client(user).post(f"/api/flows/{flow.pk}/cancel").status_code == 200

    assert not [record for record in caplog.records if record.name == "flowsite.audit"]


def test_an_inactive_superuser_sees_nothing_of_others(user, django_user_model):
    from accounts.permissions import sees_all

    root = django_user_model.objects.create_superuser(username="root", password="pw", is_active=False)

    assert not sees_all(root, Flow)
    assert not sees_all(root, Job)


def test_the_dashboard_counts_others_jobs_only_for_those_who_view_them(user, as_role):
    make_flow(user)

    staff = token_client(as_role("staff")).get("/api/dashboard").json()
    viewer = token_client(as_role("staff_view")).get("/api/dashboard").json()

    assert sum(staff["flows"].values()) == 0 and sum(staff["queues"]["default"].values()) == 0
    assert sum(viewer["flows"].values()) == 1 and sum(viewer["queues"]["default"].values()) == 3
