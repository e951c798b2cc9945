"""The one Celery task that runs every job, and the helper that publishes it.

The task is a thin adapter: it takes a job id and hands it to
``jobs.runner.run_job``, which owns the start -> run -> finish lifecycle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery import shared_task

from flowsite.celery import app


@dataclass(frozen=True)
class JobRef:
    """Enough of a job to publish it: id (= Celery task id), queue and options."""

    id: str
    queue_name: str
    opts: dict[str, Any]


# After the database went away mid-job, the job's message comes back this much later.
DATABASE_RETRY_SECONDS = 5


@shared_task(name="jobs.run", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run(self, job_id: str, recovering: bool = False) -> None:
    """Run the job ``job_id`` (delivered at least once; duplicates change nothing).

    A run can be lost two ways, and both bring the message back as a redelivery, so
    that the lost run is recorded as a failed attempt (``jobs.services.job_start``):
    - the process running it dies: ``acks_late`` with ``reject_on_worker_lost``
      returns the message to the queue, marked redelivered;
    - the database goes away (restart, failover, a killed connection): the broken
      connection is dropped and the message is retried ``DATABASE_RETRY_SECONDS``
      later, for as long as the database stays away.
    """
    from django.db import InterfaceError, OperationalError, connection

    from jobs.runner import run_job

    redelivered = recovering or bool((self.request.delivery_info or {}).get("redelivered"))
    try:
        run_job(job_id=job_id, redelivered=redelivered)
    except (OperationalError, InterfaceError) as exc:
        connection.close()
        raise self.retry(
            exc=exc, args=(job_id,), kwargs={"recovering": True}, countdown=DATABASE_RETRY_SECONDS, max_retries=None
        ) from exc


def enqueue_jobs(refs: Iterable[JobRef], *, delay_ms: int | None = None) -> None:
    """Publish one ``jobs.run`` message per job, on the job's own queue, in one batch.

    Call it from ``transaction.on_commit`` only, so a worker never looks for a row
    that is not committed yet. ``delay_ms`` overrides the jobs' ``delay`` option
    (retries use it for their backoff).
    """
    from jobs.options import JobOptions

    # ``batch()`` pipelines the messages into one round trip on Redis (kombu >= 5.7);
    # other transports publish each message at once.
    with app.producer_or_acquire() as producer, producer.batch():
        for ref in refs:
            options = JobOptions.from_stored(ref.opts)
            delay = options.delay_ms if delay_ms is None else delay_ms
            run.apply_async(
                (ref.id,),
                task_id=ref.id,
                queue=ref.queue_name,
                routing_key=ref.queue_name,
                priority=options.celery_priority,
                countdown=delay / 1000 if delay else None,
                # Interrupts an overrunning handler in prefork pools (jobs.runner).
                soft_time_limit=options.timeout_ms / 1000 if options.timeout_ms else None,
                producer=producer,
            )


def revoke_jobs(job_ids: list[str]) -> None:
    """Ask every worker to drop these jobs' messages (best effort; the database guard is the rule)."""
    if job_ids and app.conf.worker_enable_remote_control:
        app.control.revoke(job_ids)
