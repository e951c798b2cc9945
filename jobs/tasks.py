"""The Celery tasks: ``jobs.run`` runs every job, ``jobs.sweep`` finds stranded ones.

``run`` is a thin adapter: it takes a job id and hands it to
``jobs.runner.run_job``, which owns the start -> run -> finish lifecycle.
Messages are published by ``jobs.dispatch``; the sweep is scheduled by Celery
beat (``flowsite.celery``) on the system queue that every worker consumes.
"""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError, connection

from jobs import liveness, sweeps
from jobs import worker as _worker_signals  # noqa: F401  (connects the worker's heartbeat and queues)
from jobs.dispatch import RUN_TASK
from jobs.runner import run_job
from jobs.vocabulary import SWEEP_TASK

# After the database went away mid-job, the job's message comes back this much later.
DATABASE_RETRY_SECONDS = 5


@shared_task(name=RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run(self, job_id: str, recovering: bool = False, lost_on: str | None = None) -> None:
    """Run the job ``job_id`` (delivered at least once; duplicates change nothing).

    A run can be lost three ways:
    - the pool process running it dies: ``acks_late`` with ``reject_on_worker_lost``
      returns the message to the queue, marked redelivered, and the next worker
      finds the dead process (``jobs.liveness``) and records the lost attempt;
    - the whole worker dies (machine lost, container killed): nobody returns the
      message; the sweep finds the silent heartbeat (``jobs.sweeps``);
    - the database goes away (restart, failover, a killed connection): the broken
      connection is dropped and the message is sent again ``DATABASE_RETRY_SECONDS``
      later, naming this worker as the one whose run was lost, for as long as the
      database stays away.
    """
    redelivered = recovering or bool((self.request.delivery_info or {}).get("redelivered"))
    try:
        run_job(job_id=job_id, redelivered=redelivered, lost_on=lost_on)
    except (OperationalError, InterfaceError) as exc:
        connection.close()
        raise self.retry(
            exc=exc, args=(job_id,), kwargs={"lost_on": lost_on or liveness.current_worker_id()},
            countdown=DATABASE_RETRY_SECONDS, max_retries=None,
        ) from exc


@shared_task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> None:
    """Find lost runs and unpublished jobs (``jobs.sweeps.sweep``); one sweep at a time."""
    sweeps.sweep()
