"""Running work is bounded: a cancel interrupts a running handler, every job has a timeout,
and the example handlers are opt-in outside the embedded mode.

Real prefork workers throughout (the session's, and workers of the tests' own on the
``isolated`` queue, one pool process each, so that "the same process" is known).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from flows.services import flow_cancel, flow_create
from jobs import liveness, sweeps
from jobs.handlers import JobContext
from jobs.models import Job, JobLog
from jobs.runner import run_job
from jobs.services import job_cancel, job_submit
from jobs.vocabulary import FlowStatus, JobStatus
from tests.conftest import ISOLATED_QUEUE, service_env, wait_for, wait_for_flow
from tests.live import run_server
from tests.test_stranded_jobs import start_worker, stop, wait_until_consuming

pytestmark = pytest.mark.usefixtures("engine_db")

LONG_MS = 60_000  # a handler that sleeps this long is only ever stopped by an interruption


@pytest.fixture
def own_worker(engine_db, tmp_path):
    """Start a worker of the test's own (one prefork pool process) on the ``isolated`` queue."""
    started = []

    def start(name: str = "cancel", **extra_env: str):
        log_path = tmp_path / f"{name}.log"
        process = start_worker(service_env(connection.settings_dict["NAME"]), name, log_path=log_path,
                               extra_env=extra_env)
        started.append(process)
        wait_until_consuming(name)
        return log_path

    yield start
    for process in started:
        stop(process)


def active(job_id: str) -> Job:
    return wait_for(lambda: Job.objects.filter(pk=job_id, status=JobStatus.ACTIVE, worker_id__isnull=False).first(),
                    timeout=30, message=f"job {job_id} to run")


def logs(job: Job) -> list[str]:
    return list(JobLog.objects.filter(job=job).order_by("pk").values_list("message", flat=True))


def worker_pid(job: Job) -> int:
    return int(job.worker_id.split(":")[1])


def assert_interrupted_and_cancelled(job: Job, log_path) -> None:
    """The handler got ``JobCancelled`` where it slept; the job stays cancelled, not failed or retried."""
    wait_for(lambda: "interrupted by JobCancelled" in logs(job), timeout=15, message="the handler to be interrupted")
    wait_for(lambda: f"Job test-sleep ({job.pk}) was cancelled: its handler was interrupted" in log_path.read_text(),
             timeout=10, message="the worker to finish the interrupted run")
    job.refresh_from_db()
    assert (job.status, job.result, job.error, job.attempts_made) == (JobStatus.CANCELLED, None, "Cancelled", 1)
    assert not any(line.startswith("end ") for line in logs(job))


def test_a_job_cancel_interrupts_a_sleeping_handler_and_its_process_runs_the_next_job(user, own_worker):
    log_path = own_worker()
    job = job_submit(owner=user, name="test-sleep", queue_name=ISOLATED_QUEUE, data={"ms": LONG_MS},
                     opts={"attempts": 3})
    pid = worker_pid(active(job.pk))

    assert job_cancel(job=job)

    assert_interrupted_and_cancelled(job, log_path)
    following = job_submit(owner=user, name="test-sleep", queue_name=ISOLATED_QUEUE, data={"ms": 1})
    wait_for(lambda: Job.objects.filter(pk=following.pk, status=JobStatus.COMPLETED).exists(), timeout=15,
             message="the next job to complete")
    following.refresh_from_db()
    assert following.result["pid"] == pid  # the same pool process: it survived the interruption


def test_deleting_a_running_job_through_the_api_frees_its_worker(user, api, own_worker):
    """The issue's probe: a job sleeping 90 s held a worker even after ``DELETE`` answered 204."""
    log_path = own_worker()
    job = job_submit(owner=user, name="test-sleep", queue_name=ISOLATED_QUEUE, data={"ms": LONG_MS})
    pid = worker_pid(active(job.pk))

    response = api.delete(f"/api/jobs/{ISOLATED_QUEUE}/{job.pk}")

    assert response.status_code == 204
    wait_for(lambda: f"Job test-sleep ({job.pk}) was cancelled: its handler was interrupted" in log_path.read_text(),
             timeout=15, message="the handler to be interrupted")
    assert not Job.objects.filter(pk=job.pk).exists()
    following = job_submit(owner=user, name="test-sleep", queue_name=ISOLATED_QUEUE, data={"ms": 1})
    wait_for(lambda: Job.objects.filter(pk=following.pk, status=JobStatus.COMPLETED).exists(), timeout=15,
             message="the next job to complete")
    following.refresh_from_db()
    assert following.result["pid"] == pid


def test_a_flow_cancel_interrupts_its_running_handler_and_a_later_death_of_that_process_is_still_redelivered(
    user, own_worker
):
    """Regression: Celery's ``revoke(terminate=True, signal="SIGUSR1")`` left billiard's pool
    process marked as terminated; when it later died, its job was taken for revoked and its
    message acknowledged, never redelivered (``jobs.interrupts`` explains)."""
    log_path = own_worker()
    flow = flow_create(owner=user, spec={"flowname": "cancel-running", "name": "test-sleep",
                                         "queueName": ISOLATED_QUEUE, "data": {"ms": LONG_MS}})
    job = flow.jobs.get()
    pid = worker_pid(active(job.pk))

    flow = flow_cancel(flow=flow)

    assert flow.status == FlowStatus.CANCELLED
    assert_interrupted_and_cancelled(job, log_path)
    # The pool process that was interrupted now dies mid-job: its message comes back at once.
    dying = flow_create(owner=user, spec={"flowname": "dies", "name": "test-die-first-time",
                                          "queueName": ISOLATED_QUEUE, "opts": {"attempts": 2}})
    assert worker_pid(active(dying.root_job_id)) == pid
    dying = wait_for_flow(dying, timeout=30)
    assert (dying.status, dying.result) == (FlowStatus.COMPLETED, {"survived": 2})
    assert "WorkerLostError" in log_path.read_text()  # redelivered by the worker, not found by a sweep


def test_a_handler_that_polls_ctx_cancelled_in_a_thread_stops_early_and_its_outcome_is_discarded(user):
    """Threads (the embedded mode's worker) cannot be interrupted: the handler polls ``ctx.cancelled``."""
    job = job_submit(owner=user, name="test-until-cancelled", queue_name=ISOLATED_QUEUE, data={})
    runner = threading.Thread(target=run_job, kwargs={"job_id": job.pk})  # not a pool process: a helper thread
    runner.start()
    try:
        active(job.pk)

        job_cancel(job=job)

        wait_for(lambda: "saw ctx.cancelled" in logs(job), timeout=10, message="the handler to see the cancel")
    finally:
        runner.join(30)
        liveness.stop_heartbeat()  # run_job started one for this process
    assert not runner.is_alive()
    job.refresh_from_db()
    assert (job.status, job.result) == (JobStatus.CANCELLED, None)
    assert "interrupted by JobCancelled" not in logs(job)


def test_ctx_cancelled_turns_true_once_the_job_is_cancelled(user):
    job = job_submit(owner=user, name="test-value", queue_name="isolated", data={"value": 1})  # nobody runs it
    ctx = JobContext(job_id=job.pk, name=job.name, queue_name=job.queue_name, data={}, opts={}, flow_id=None,
                     attempt=1)
    assert ctx.cancelled is False

    job_cancel(job=job)

    wait_for(lambda: ctx.cancelled, timeout=5, message="ctx.cancelled")
    Job.objects.filter(pk=job.pk).delete()
    assert ctx.cancelled is True  # once seen, it stays so


# TIMEOUTS
# ------------------------------------------------------------------------------


def wait_failed(job: Job) -> Job:
    wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.FAILED).exists(), timeout=30,
             message=f"job {job.pk} to fail")
    job.refresh_from_db()
    return job


def test_a_job_without_a_timeout_gets_the_default_one_on_its_first_run_and_on_its_retry(user, own_worker):
    own_worker(FLOWSITE_DEFAULT_JOB_TIMEOUT="1")  # the worker applies the timeout, whoever published the run
    job = job_submit(owner=user, name="test-sleep", queue_name=ISOLATED_QUEUE, data={"ms": LONG_MS},
                     opts={"attempts": 2})

    job = wait_failed(job)

    assert (job.error_type, job.error, job.attempts_made) == ("JobTimeoutError", "Job timed out after 1000 ms", 2)
    assert logs(job).count("interrupted by SoftTimeLimitExceeded") == 2
    assert job.opts == {"attempts": 2}  # the default applies when the job runs; it is not stored


def test_a_job_the_sweep_publishes_again_gets_the_default_timeout(user, own_worker):
    own_worker(FLOWSITE_DEFAULT_JOB_TIMEOUT="1")
    # A waiting job whose message was lost (none was ever published), due long ago.
    job = Job.objects.create(owner=user, name="test-sleep", queue_name=ISOLATED_QUEUE, data={"ms": LONG_MS},
                             redispatch_at=timezone.now() - timedelta(minutes=1))

    # Published once the broker's queue is empty (the worker drains what earlier tests left there).
    wait_for(lambda: sweeps.redispatch_stranded(ISOLATED_QUEUE), timeout=15, message="the sweep to publish the job")

    job = wait_failed(job)
    assert (job.error_type, job.error) == ("JobTimeoutError", "Job timed out after 1000 ms")
    assert logs(job)[-1] == "interrupted by SoftTimeLimitExceeded"


def test_a_timeout_over_the_maximum_is_400_naming_opts_timeout(api, settings):
    # On the queue nobody consumes here: the accepted job must not run while the test ends.
    limit_ms = settings.FLOWSITE_MAX_JOB_TIMEOUT * 1000
    url = f"/api/jobs/{ISOLATED_QUEUE}"
    over = api.post(url, {"name": "test-value", "opts": {"timeout": limit_ms + 1}}, format="json")
    in_flow = api.post("/api/flows", {"flowname": "f", "name": "test-value", "queueName": ISOLATED_QUEUE,
                                      "children": [{"name": "test-value", "queueName": ISOLATED_QUEUE,
                                                    "opts": {"timeout": limit_ms + 1}}]}, format="json")
    at_limit = api.post(url, {"name": "test-value", "opts": {"timeout": limit_ms}}, format="json")

    message = f"Must be at most {limit_ms} milliseconds (FLOWSITE_MAX_JOB_TIMEOUT: {limit_ms // 1000} s)."
    assert (over.status_code, over.json()["details"]) == (400, {"opts.timeout": [message]})
    assert (in_flow.status_code, in_flow.json()["details"]) == (400, {"children[0].opts.timeout": [message]})
    assert at_limit.status_code == 201
    assert Job.objects.count() == 1


# EXAMPLES
# ------------------------------------------------------------------------------


def post_json(url: str, token: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_service_without_flowsite_examples_refuses_the_example_handlers(alice, tmp_path):
    env = {**service_env(connection.settings_dict["NAME"]), "FLOWSITE_EXAMPLES": ""}  # unset: off in service mode
    with run_server(env, tmp_path) as server:
        example = post_json(f"{server.url}/api/jobs/video", alice.token,
                            {"name": "download-video", "data": {"workMs": 90_000}})
        own = post_json(f"{server.url}/api/jobs/{ISOLATED_QUEUE}", alice.token, {"name": "test-value"})

    status, body = example
    assert status == 400, body
    assert "download-video" in body["details"]["name"][0]
    assert own[0] == 201, own[1]
    assert list(Job.objects.values_list("name", flat=True)) == ["test-value"]


def test_an_example_asked_to_work_longer_than_the_maximum_works_the_maximum(user, settings):
    job = job_submit(owner=user, name="download-video", queue_name="video", data={"workMs": 90_000})

    wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.COMPLETED).exists(), timeout=15,
             message="the example job to complete")
    limit = settings.FLOWSITE_EXAMPLE_MAX_WORK_MS  # the workers' too (pytest.ini)
    assert f"workMs 90000 is over the maximum (FLOWSITE_EXAMPLE_MAX_WORK_MS): working {limit} ms" in logs(job)
