"""Legacy queue names and external queues (FLOWSITE_EXTERNAL_QUEUES): jobs run outside Flowsite.

External jobs are created like any other, never published to Celery, found by an
external worker with ``GET /api/jobs/{queueName}?status=waiting``, claimed by a
``running`` report (one winner) and finished by reports; a claim that goes silent
for ``FLOWSITE_EXTERNAL_STALLED_AFTER`` is a lost run.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from flows.models import Flow
from flows.services import flow_create
from jobs import sweeps
from jobs.dispatch import queued_messages
from jobs.models import Job
from jobs.services import release_due_jobs
from jobs.vocabulary import DEFAULT_QUEUES, LEGACY_QUEUES, WEBHOOK_QUEUE, FlowStatus, JobStatus
from tests.conftest import ROOT, service_env, wait_for, wait_for_flow
from tests.test_settings import load_settings

OUTSIDE = "outside"  # the external queue of these tests


@pytest.fixture
def external(settings):
    settings.FLOWSITE_EXTERNAL_QUEUES = [OUTSIDE]
    return OUTSIDE


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def external_flow(user, *, opts=None) -> Flow:
    """A root and two children, all on the external queue, with names no handler has."""
    return flow_create(owner=user, spec={
        "flowname": "scan", "name": "merge-pages", "queueName": OUTSIDE, "children": [
            {"name": "scan-page", "queueName": OUTSIDE, "data": {"page": 1}, "opts": opts or {}},
            {"name": "scan-page", "queueName": OUTSIDE, "data": {"page": 2}, "opts": opts or {}},
        ],
    })


def report(client, job: Job, body: dict):
    return client.put(f"/api/flows/{job.flow_id}/jobs/{job.pk}", body, format="json")


# Creation ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_any_job_name_is_accepted_on_an_external_queue_and_nothing_is_published(external, user):
    api = client_for(user)
    spec = {"flowname": "scan", "name": "merge-pages", "queueName": OUTSIDE,
            "children": [{"name": "scan-page", "queueName": OUTSIDE, "data": {"page": 1}}]}

    created = api.post("/api/flows", spec, format="json")
    standalone = api.post(f"/api/jobs/{OUTSIDE}", {"name": "ocr any way you like"}, format="json")
    too_long = api.post("/api/flows", {**spec, "name": "x" * 201}, format="json")
    not_a_handler = api.post("/api/jobs/default", {"name": "scan-page"}, format="json")

    assert created.status_code == 201, created.json()
    assert standalone.status_code == 201 and standalone.json()["job"]["status"] == JobStatus.WAITING
    assert too_long.status_code == 400 and too_long.json()["details"]["name"] == ["Must be at most 200 characters."]
    assert not_a_handler.status_code == 400 and "Unknown job handler 'scan-page'" in not_a_handler.json()["details"]["name"][0]
    flow = Flow.objects.get(pk=created.json()["flowId"])
    assert {job.name: job.status for job in flow.jobs.all()} == {
        "merge-pages": JobStatus.WAITING_CHILDREN, "scan-page": JobStatus.WAITING,
    }
    assert queued_messages(OUTSIDE) == 0  # after commit: nothing was published for them
    queues = {queue["name"]: queue for queue in api.get("/api/queues").json()}
    assert queues[OUTSIDE]["external"] is True and queues["default"]["external"] is False
    assert queues[OUTSIDE]["counts"][JobStatus.WAITING] == 2


@pytest.mark.django_db
def test_the_webhooks_queue_is_reserved_for_webhook_deliveries(user, tmp_path):
    api = client_for(user)
    spec = {"flowname": "hook", "name": "test-value", "queueName": WEBHOOK_QUEUE}

    flow = api.post("/api/flows", spec, format="json")
    listing = api.get(f"/api/jobs/{WEBHOOK_QUEUE}")

    assert flow.status_code == 400
    assert "reserved for webhook deliveries" in flow.json()["details"]["queueName"][0]
    assert listing.status_code == 404 and "reserved for webhook deliveries" in listing.json()["error"]
    configured = load_settings(tmp_path, FLOWSITE_QUEUES="default,webhooks")
    assert configured.returncode != 0 and "reserved" in configured.stderr
    overlap = load_settings(tmp_path, FLOWSITE_QUEUES="default,video", FLOWSITE_EXTERNAL_QUEUES="video")
    assert overlap.returncode != 0 and "overlap: video" in overlap.stderr


# The external worker's loop ----------------------------------------------------------


@pytest.mark.django_db
def test_an_external_worker_finds_claims_and_finishes_jobs_and_the_parent_is_released(external, user, other_user):
    flow = external_flow(user)
    api, rival = client_for(user), client_for(user)

    waiting = api.get(f"/api/jobs/{OUTSIDE}", {"status": JobStatus.WAITING}).json()["results"]
    assert sorted(job["data"]["page"] for job in waiting) == [1, 2]
    first, second = (Job.objects.get(pk=job["jobId"]) for job in sorted(waiting, key=lambda j: j["data"]["page"]))

    claim = report(api, first, {"status": "running", "workerId": "scanner-1"})
    taken = report(rival, first, {"status": "running", "workerId": "scanner-2"})
    anonymous = report(rival, first, {"status": "running"})
    renewed = report(api, first, {"status": "running", "workerId": "scanner-1", "progress": 50})
    wrong_finisher = report(rival, first, {"status": "completed", "workerId": "scanner-2"})
    stranger = report(client_for(other_user), first, {"status": "completed"})

    assert claim.status_code == 200 and claim.json()["status"] == JobStatus.ACTIVE
    assert taken.status_code == 409 and taken.json()["currentStatus"] == JobStatus.ACTIVE
    assert anonymous.status_code == 409 and wrong_finisher.status_code == 409
    assert stranger.status_code == 404
    assert renewed.status_code == 200 and renewed.json()["progress"] == 50
    first.refresh_from_db()
    assert (first.status, first.claimed_by, first.worker_id, first.attempts_made) == (
        JobStatus.ACTIVE, "scanner-1", None, 1)
    assert [job["jobId"] for job in api.get(f"/api/jobs/{OUTSIDE}", {"status": "waiting"}).json()["results"]] == [
        second.pk]

    assert report(api, first, {"status": "completed", "workerId": "scanner-1", "result": {"text": "p1"}}).status_code == 200
    # A legacy reporter: no workerId, straight to completed.
    assert report(rival, second, {"status": "completed", "result": {"text": "p2"}}).status_code == 200

    root = Job.objects.get(pk=flow.root_job_id)
    assert root.status == JobStatus.WAITING  # released by its children, as on any queue
    assert [job["jobId"] for job in api.get(f"/api/jobs/{OUTSIDE}", {"status": "waiting"}).json()["results"]] == [
        root.pk]
    assert report(api, root, {"status": "running", "workerId": "merger"}).status_code == 200
    assert report(api, root, {"status": "completed", "workerId": "merger", "result": "p1p2"}).status_code == 200
    flow.refresh_from_db()
    assert (flow.status, flow.result) == (FlowStatus.COMPLETED, "p1p2")


@pytest.mark.django_db
def test_a_standalone_external_job_is_reported_through_its_queue_route(external, user, other_user):
    api = client_for(user)
    job_id = api.post(f"/api/jobs/{OUTSIDE}", {"name": "send-fax"}, format="json").json()["jobId"]
    url = f"/api/jobs/{OUTSIDE}/{job_id}"

    claimed = api.put(url, {"status": "running", "workerId": "fax-1"}, format="json")
    other = client_for(other_user).put(url, {"status": "running"}, format="json")
    failed = api.put(url, {"status": "failed", "workerId": "fax-1", "error": "line busy"}, format="json")
    bad = api.put(url, {"status": "paused"}, format="json")

    assert claimed.status_code == 200 and claimed.json()["status"] == JobStatus.ACTIVE
    assert other.status_code == 404
    assert failed.status_code == 200 and failed.json()["error"] == {"message": "line busy", "type": "ReportedJobFailure"}
    assert bad.status_code == 400 and "status" in bad.json()["details"]
    assert Job.objects.get(pk=job_id).status == JobStatus.FAILED


@pytest.mark.django_db(transaction=True)
def test_exactly_one_of_concurrent_claimers_wins(external, user):
    threads, trials = 20, 4
    for trial in range(trials):
        flow = flow_create(owner=user, spec={"flowname": "race", "name": "contested", "queueName": OUTSIDE})
        job = flow.jobs.get()
        barrier = threading.Barrier(threads)
        codes: list[int] = []

        def claim(index: int) -> None:
            try:
                client = client_for(user)
                barrier.wait()
                codes.append(report(client, job, {"status": "running", "workerId": f"w{index}"}).status_code)
            finally:
                connection.close()

        workers = [threading.Thread(target=claim, args=(index,)) for index in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

        assert sorted(codes) == [200] + [409] * (threads - 1), f"trial {trial}: {codes}"
        job.refresh_from_db()
        assert (job.status, job.attempts_made) == (JobStatus.ACTIVE, 1)
        assert job.claimed_by in {f"w{index}" for index in range(threads)}


# Lost runs ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_external_run_not_reported_on_for_the_stall_time_is_lost_like_a_stalled_one(external, user, settings):
    settings.FLOWSITE_EXTERNAL_STALLED_AFTER = 600
    flow = external_flow(user, opts={"attempts": 2})
    api = client_for(user)
    job = flow.jobs.filter(parent__isnull=False).order_by("position").first()
    report(api, job, {"status": "running", "workerId": "scanner-1"})

    assert sweeps.recover_lost_runs(OUTSIDE) == 0  # just reported on: alive
    Job.objects.filter(pk=job.pk).update(reported_at=timezone.now() - timedelta(seconds=599))
    assert sweeps.recover_lost_runs(OUTSIDE) == 0
    report(api, job, {"status": "running", "workerId": "scanner-1", "progress": 10})  # renews the claim
    job.refresh_from_db()
    assert timezone.now() - job.reported_at < timedelta(seconds=599)

    Job.objects.filter(pk=job.pk).update(reported_at=timezone.now() - timedelta(seconds=601))
    assert sweeps.recover_lost_runs(OUTSIDE) == 1
    job.refresh_from_db()
    assert (job.status, job.error_type, job.attempts_made) == (JobStatus.DELAYED, "JobLostError", 1)
    assert "not reported on for FLOWSITE_EXTERNAL_STALLED_AFTER (600 s)" in job.error

    # Its retry is due: the sweep makes it waiting again, where external workers look.
    Job.objects.filter(pk=job.pk).update(redispatch_at=timezone.now())
    assert release_due_jobs(queue=OUTSIDE) == 1
    job.refresh_from_db()
    assert job.status == JobStatus.WAITING

    # The last attempt lost fails the job, its parent and the flow, as a stalled run does.
    assert report(api, job, {"status": "running", "workerId": "scanner-2"}).status_code == 200
    late = report(api, job, {"status": "completed", "workerId": "scanner-1"})  # the lost run's claimer
    assert late.status_code == 409 and late.json()["currentStatus"] == JobStatus.ACTIVE
    Job.objects.filter(pk=job.pk).update(reported_at=timezone.now() - timedelta(seconds=601))
    assert sweeps.recover_lost_runs(OUTSIDE) == 1
    job.refresh_from_db()
    flow.refresh_from_db()
    assert (job.status, job.attempts_made) == (JobStatus.FAILED, 2)
    assert flow.status == FlowStatus.FAILED and Job.objects.get(pk=flow.root_job_id).status == JobStatus.FAILED


@pytest.mark.django_db
def test_a_delayed_external_job_waits_until_its_time(external, user):
    flow = flow_create(owner=user, spec={"flowname": "later", "name": "call-back", "queueName": OUTSIDE,
                                         "opts": {"delay": 3_600_000}})
    job = flow.jobs.get()

    assert job.status == JobStatus.DELAYED
    assert release_due_jobs(queue=OUTSIDE) == 0
    Job.objects.filter(pk=job.pk).update(redispatch_at=timezone.now())
    assert release_due_jobs(queue=OUTSIDE) == 1
    job.refresh_from_db()
    assert job.status == JobStatus.WAITING


# Mixed flows and the legacy queue names, with real workers ----------------------------------


def test_a_flowsite_parent_runs_once_its_external_child_is_reported(engine_db, external, user):
    flow = flow_create(owner=user, spec={"flowname": "mixed", "name": "test-sum", "queueName": "default",
                                         "data": {"value": 1},
                                         "children": [{"name": "measure", "queueName": OUTSIDE}]})
    child = flow.jobs.get(queue_name=OUTSIDE)

    response = report(client_for(user), child, {"status": "completed", "result": 41})

    assert response.status_code == 200
    flow = wait_for_flow(flow)
    assert (flow.status, flow.result) == (FlowStatus.COMPLETED, 42)


def test_legacy_queue_names_work_out_of_the_box_with_the_legacy_example_pipeline(engine_db, user, settings):
    """A worker started without -Q consumes the default FLOWSITE_QUEUES, legacy names included."""
    env = service_env(connection.settings_dict["NAME"])
    env.pop("FLOWSITE_QUEUES")
    settings.FLOWSITE_QUEUES = [*DEFAULT_QUEUES, *LEGACY_QUEUES]  # what the default settings say
    default = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings as s; "
         "print(','.join(s.FLOWSITE_QUEUES))"], cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert default.stdout.split() == [",".join(settings.FLOWSITE_QUEUES)], default.stderr
    log = open(settings.DATA_DIR / "legacy-queues-worker.log", "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "flowsite", "worker", "-c", "1", "-P", "prefork", "-l", "info",
         "-n", "legacyqueues@%h", "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        spec = {
            "flowname": "legacy-video", "name": "watermark-video", "queueName": "flowQueue",
            "data": {"videoId": "v42", "watermarkText": "Legacy Corp"},
            "children": [
                {"name": "download-video", "queueName": "jobQueue", "data": {"videoId": "v42"}},
                {"name": "generate-thumbnail", "queueName": "schedQueue", "data": {"videoId": "v42"}},
            ],
        }
        created = client_for(user).post("/api/flows", spec, format="json")
        assert created.status_code == 201, created.json()
        flow = wait_for_flow(Flow.objects.get(pk=created.json()["flowId"]))
    finally:
        worker.terminate()
        worker.wait(15)
        log.close()

    assert flow.status == FlowStatus.COMPLETED
    assert flow.result["watermarkedPath"] == flow.result["outputPath"]
    assert flow.result["watermarkedPath"].endswith("/v42-watermarked.mp4")
    assert (flow.result["watermark"], flow.result["videoId"]) == ("Legacy Corp", "v42")
    assert wait_for(lambda: client_for(user).get("/api/jobs/flowQueue").status_code == 200)
