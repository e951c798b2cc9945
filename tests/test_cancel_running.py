"""A cancelled job's running handler can stop early (``ctx.cancelled``), and its outcome is discarded."""

from __future__ import annotations

import pytest

from jobs.handlers import JobContext
from jobs.models import Job, JobLog
from jobs.services import job_cancel, job_submit
from jobs.vocabulary import JobStatus
from tests.conftest import wait_for, worker_log

pytestmark = pytest.mark.usefixtures("engine_db")


def test_a_running_handler_that_polls_ctx_cancelled_stops_and_its_outcome_is_discarded(user):
    job = job_submit(owner=user, name="test-until-cancelled", queue_name="default", data={})
    wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.ACTIVE).exists(), timeout=15,
             message="the job to run")

    job_cancel(job=job)

    wait_for(lambda: JobLog.objects.filter(job=job, message="saw ctx.cancelled").exists(), timeout=10,
             message="the handler to see the cancel")
    wait_for(lambda: f"Job test-until-cancelled ({job.pk}) was cancelled while its handler ran" in worker_log(),
             timeout=10, message="the worker to log the discarded outcome")
    job.refresh_from_db()
    assert (job.status, job.result) == (JobStatus.CANCELLED, None)


def test_ctx_cancelled_turns_true_once_the_job_is_cancelled(user):
    job = job_submit(owner=user, name="test-value", queue_name="isolated", data={"value": 1})  # nobody runs it
    ctx = JobContext(job_id=job.pk, name=job.name, queue_name=job.queue_name, data={}, opts={}, flow_id=None,
                     attempt=1)
    assert ctx.cancelled is False

    job_cancel(job=job)

    wait_for(lambda: ctx.cancelled, timeout=5, message="ctx.cancelled")
    Job.objects.filter(pk=job.pk).delete()
    assert ctx.cancelled is True  # once seen, it stays so
