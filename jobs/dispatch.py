"""Publishing job messages: one ``jobs.run`` message per job, on the job's own queue.

Messages are sent by task name, so the code that changes job rows never imports
the task that runs them (``jobs.tasks``, on top of the engine).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from flowsite.celery import app
from jobs import interrupts
from jobs.options import JobOptions
from jobs.queues import is_external

logger = logging.getLogger(__name__)

# The one Celery task that runs every job (``jobs.tasks.run``).
RUN_TASK = "jobs.run"


@dataclass(frozen=True)
class JobRef:
    """Enough of a job to publish it: id (= Celery task id), queue and options."""

    id: str
    queue_name: str
    opts: dict[str, Any]


def redispatch_at(delay_ms: int | None = None, *, now: datetime | None = None) -> datetime:
    """When the sweep publishes a job again that was published now (``jobs.sweeps``).

    Store it with every status change that publishes the job: ``FLOWSITE_REDISPATCH_AFTER``
    after the job is due.
    """
    return (now or timezone.now()) + timedelta(milliseconds=delay_ms or 0, seconds=settings.FLOWSITE_REDISPATCH_AFTER)


def enqueue_jobs(refs: Iterable[JobRef], *, delay_ms: int | None = None) -> bool:
    """Publish one ``jobs.run`` message per job, on the job's own queue, in one batch.

    Call it from ``transaction.on_commit`` only, so a worker never looks for a row
    that is not committed yet. ``delay_ms`` overrides the jobs' ``delay`` option
    (retries use it for their backoff).

    Never raises: the change that made the jobs due is committed, and a broker that
    cannot be reached must not turn it into an error. The failure is logged and
    False returned; the sweep publishes the jobs later (``redispatch_at``).

    Jobs of external queues (``jobs.queues``) are never published: an external
    worker finds them through the API and reports their state.
    """
    refs = [ref for ref in refs if not is_external(ref.queue_name)]
    if not refs:
        return True
    try:
        _publish(refs, delay_ms=delay_ms)
    except Exception as exc:
        logger.warning(
            "Could not publish %d job message(s) (%s); the sweep will publish them again. %s: %s",
            len(refs), ", ".join(ref.id for ref in refs[:5]) + (", ..." if len(refs) > 5 else ""),
            type(exc).__name__, exc,
        )
        logger.debug("Publishing failed", exc_info=True)
        return False
    return True


def _publish(refs: list[JobRef], *, delay_ms: int | None) -> None:
    # ``batch()`` pipelines the messages into one round trip on Redis (kombu >= 5.7);
    # other transports publish each message at once.
    with app.producer_or_acquire() as producer, producer.batch():
        for ref in refs:
            options = JobOptions.from_stored(ref.opts)
            delay = options.delay_ms if delay_ms is None else delay_ms
            app.send_task(
                RUN_TASK,
                (ref.id,),
                task_id=ref.id,
                queue=ref.queue_name,
                routing_key=ref.queue_name,
                priority=options.celery_priority,
                countdown=delay / 1000 if delay else None,
                # No Celery time limit: the runner applies the job's timeout itself (jobs.runner).
                producer=producer,
                # Nobody waits for a job's Celery result (the job row is the record): no
                # subscription to the result backend per message (and none to fail).
                ignore_result=True,
            )


def queued_messages(queue: str) -> int:
    """How many messages wait in the broker's ``queue`` (not those delivered to a worker)."""
    with app.connection_for_write() as connection:
        try:
            return connection.default_channel.queue_declare(queue=queue, passive=True).message_count
        except connection.channel_errors:
            return 0  # no such queue in the broker: nothing waits there


def revoke_jobs(job_ids: list[str], *, running: list[str] | None = None) -> None:
    """Ask every worker to drop these jobs' messages, and to interrupt the ``running`` ones.

    Call it after the cancel commits. Best effort: the database guard is the rule (a
    job that starts after its cancel does nothing, and the outcome of a run that goes
    on is discarded). A handler running on a prefork worker is interrupted where it
    is, by an exception raised inside it (``jobs.interrupts``); in the embedded mode's
    threads it stops only if it polls ``ctx.cancelled``. Not ``revoke(terminate=True)``:
    ``jobs.interrupts`` says why.
    """
    if job_ids and app.conf.worker_enable_remote_control:
        app.control.revoke(job_ids)
    if running:
        interrupts.publish_cancel(running)
