"""The one Celery task that runs every job.

The task is a thin adapter: it takes a job id and hands it to
``jobs.runner.run_job``, which owns the start -> run -> finish lifecycle.
Messages are published by ``jobs.dispatch``.
"""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError, connection

from jobs.dispatch import RUN_TASK
from jobs.runner import run_job

# After the database went away mid-job, the job's message comes back this much later.
DATABASE_RETRY_SECONDS = 5


@shared_task(name=RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run(self, job_id: str, recovering: bool = False) -> None:
    """Run the job ``job_id`` (delivered at least once; duplicates change nothing).

    A run can be lost two ways, and both bring the message back as a redelivery, so
    that the lost run is recorded as a failed attempt (``jobs.transitions.job_start``):
    - the process running it dies: ``acks_late`` with ``reject_on_worker_lost``
      returns the message to the queue, marked redelivered;
    - the database goes away (restart, failover, a killed connection): the broken
      connection is dropped and the message is retried ``DATABASE_RETRY_SECONDS``
      later, for as long as the database stays away.
    """
    redelivered = recovering or bool((self.request.delivery_info or {}).get("redelivered"))
    try:
        run_job(job_id=job_id, redelivered=redelivered)
    except (OperationalError, InterfaceError) as exc:
        connection.close()
        raise self.retry(
            exc=exc, args=(job_id,), kwargs={"recovering": True}, countdown=DATABASE_RETRY_SECONDS, max_retries=None
        ) from exc
