"""The sweeps that leave no job stranded, run every ``FLOWSITE_SWEEP_INTERVAL`` seconds.

- **Lost runs.** An ``active`` job whose worker has been silent for
  ``FLOWSITE_STALLED_AFTER`` seconds (``jobs.liveness``) is recorded as a failed
  attempt (``JobLostError``): retried after its backoff while attempts remain,
  else failed with its failure policy, as any failure.
- **Dispatch.** The job rows are the outbox. A ``waiting`` job, or a ``delayed``
  one whose time has come, that has not started by its ``redispatch_at`` (set to
  ``FLOWSITE_REDISPATCH_AFTER`` after it became due, with every change that
  publishes it) is published again: its message was lost (a process died between
  commit and publish, the broker was down or flushed). Duplicates are harmless:
  the start statement is guarded. A queue whose broker queue still holds messages
  is left alone (its workers are behind: that is a backlog, not a loss), and a job
  published again waits as long as it has existed before the next time (at least
  ``FLOWSITE_REDISPATCH_AFTER``), so a busy queue is not published over and over.
- **External queues** (``FLOWSITE_EXTERNAL_QUEUES``) have no messages to publish:
  their ``delayed`` jobs whose time has come become ``waiting`` (where external
  workers look for work), and a run claimed by a report that has not been
  reported on for ``FLOWSITE_EXTERNAL_STALLED_AFTER`` seconds is lost, as above.
- **Settle.** An open flow whose root job finished more than
  ``FLOWSITE_REDISPATCH_AFTER`` ago is settled (``completed``/``failed`` from its
  jobs): the worker that finished the root died between that commit and the
  flow's own, and the redelivered message of a finished job does nothing.

Service mode: Celery beat sends ``jobs.sweep`` to ``SWEEP_QUEUE``, which every
worker consumes. Two beats (or a slow sweep overtaken by the next one) are
harmless: a sweep runs only while it holds a PostgreSQL advisory lock, and one
that finds it taken does nothing. Embedded mode: a thread of the server process
(``flowsite.embedded``).
"""

from __future__ import annotations

import logging
import threading
import zlib
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from jobs import liveness
from jobs.dispatch import JobRef, enqueue_jobs, queued_messages
from jobs.models import Job, QueueState
from jobs.queues import is_external, job_queues
from jobs.services import release_due_jobs
from jobs.transitions import fail_lost_run, settle_flow
from jobs.vocabulary import OPEN_FLOW_STATUSES, TERMINAL_JOB_STATUSES, JobStatus

logger = logging.getLogger(__name__)

# Jobs published again per queue and sweep, at most (the next sweep takes the rest).
REDISPATCH_BATCH = 500
# The advisory lock of the sweep (PostgreSQL): a fixed 32-bit key.
_LOCK_KEY = zlib.crc32(b"flowsite.sweep")
_local_lock = threading.Lock()  # SQLite (embedded mode): one process, one sweep at a time


@dataclass
class SweepResult:
    """What one sweep did, per queue."""

    ran: bool = True
    stalled: dict[str, int] = field(default_factory=dict)
    redispatched: dict[str, int] = field(default_factory=dict)
    settled_flows: int = 0
    forgotten_workers: int = 0


def sweep() -> SweepResult:
    """Recover lost runs and publish stranded jobs, unless another sweep is running."""
    with _exclusive() as mine:
        if not mine:
            return SweepResult(ran=False)
        result = SweepResult()
        for queue in job_queues():
            if stalled := recover_lost_runs(queue):
                result.stalled[queue] = stalled
            if is_external(queue):
                release_due_jobs(queue=queue)
            elif redispatched := redispatch_stranded(queue):
                result.redispatched[queue] = redispatched
            # Counted at once, not after the other queues: the jobs published here may
            # finish (and be looked at) before this sweep is over.
            _count(queue, stalled=stalled, redispatched=result.redispatched.get(queue, 0))
        result.settled_flows = settle_finished_flows()
        result.forgotten_workers = liveness.forget_long_dead_workers()
        return result


def recover_lost_runs(queue: str) -> int:
    """Record the runs of ``queue`` whose worker is silent as lost attempts; return how many.

    A run claimed by a report (no worker: ``worker_id`` empty) is silent when it has
    not been reported on for ``FLOWSITE_EXTERNAL_STALLED_AFTER`` seconds.
    """
    now = timezone.now()
    silent_since = now - timedelta(seconds=settings.FLOWSITE_STALLED_AFTER)
    live = liveness.live_workers().values("pk")
    suspects = list(
        Job.objects.filter(queue_name=queue, status=JobStatus.ACTIVE, worker_id__isnull=False,
                           started_at__lt=silent_since)
        .exclude(worker_id__in=live)
        .values_list("pk", "worker_id", "attempts_made")
    )
    suspects += Job.objects.filter(
        queue_name=queue, status=JobStatus.ACTIVE, worker_id__isnull=True,
        reported_at__lt=now - timedelta(seconds=settings.FLOWSITE_EXTERNAL_STALLED_AFTER),
    ).values_list("pk", "worker_id", "attempts_made")
    lost = 0
    for job_id, worker_id, attempt in suspects:
        if fail_lost_run(job_id=job_id, run=(worker_id, attempt)):
            lost += 1
    if lost:
        logger.warning("Sweep: %d lost run(s) on queue %s recorded as failed attempts", lost, queue)
    return lost


def redispatch_stranded(queue: str) -> int:
    """Publish again the jobs of ``queue`` that should have started by now; return how many.

    Only while the broker's queue is empty: messages waiting there mean the workers
    are behind, not that messages were lost (publishing the backlog again would
    only make it longer). Lost ones are published once the queue has drained.
    """
    try:
        if queued_messages(queue):
            return 0
    except Exception as exc:  # the broker is unreachable: nothing can be published now
        logger.warning("Sweep: cannot reach the broker (%s: %s); stranded jobs wait for the next sweep",
                       type(exc).__name__, exc)
        return 0
    now = timezone.now()
    after = timedelta(seconds=settings.FLOWSITE_REDISPATCH_AFTER)
    due = Q(redispatch_at__lte=now) | Q(redispatch_at__isnull=True, created_at__lte=now - after)
    refs = []
    with transaction.atomic():
        rows = list(
            Job.objects.select_for_update(skip_locked=True)
            .filter(due, queue_name=queue, status__in=(JobStatus.WAITING, JobStatus.DELAYED))
            .order_by("created_at")
            .values_list("pk", "created_at", "opts")[:REDISPATCH_BATCH]
        )
        for job_id, created_at, opts in rows:
            Job.objects.filter(pk=job_id).update(redispatch_at=now + max(after, now - created_at))
            refs.append(JobRef(id=job_id, queue_name=queue, opts=opts))
    if refs:
        if enqueue_jobs(refs, delay_ms=0):
            logger.warning("Sweep: %d job(s) of queue %s had not started; published again", len(refs), queue)
        else:
            return 0
    return len(refs)


def settle_finished_flows() -> int:
    """Settle the open flows whose root job finished a while ago; return how many."""
    from django.db.models import Exists, OuterRef

    from flows.models import Flow

    stale = timezone.now() - timedelta(seconds=settings.FLOWSITE_REDISPATCH_AFTER)
    finished_root = Job.objects.filter(
        pk=OuterRef("root_job_id"), status__in=TERMINAL_JOB_STATUSES, finished_at__lt=stale
    )
    candidates = list(
        Flow.objects.filter(status__in=OPEN_FLOW_STATUSES).filter(Exists(finished_root))
        .values_list("pk", flat=True)[:REDISPATCH_BATCH]
    )
    settled = sum(1 for flow_id in candidates if settle_flow(flow_id=flow_id) is not None)
    if settled:
        logger.warning("Sweep: %d flow(s) whose last job had finished were settled", settled)
    return settled


def _count(queue: str, *, stalled: int, redispatched: int) -> None:
    if not (stalled or redispatched):
        return
    QueueState.objects.get_or_create(name=queue)
    QueueState.objects.filter(name=queue).update(
        stalled_total=F("stalled_total") + stalled, redispatched_total=F("redispatched_total") + redispatched,
    )


class _exclusive:
    """Hold the sweep's lock for a ``with`` block; ``as`` gives whether it was taken."""

    def __enter__(self) -> bool:
        if connection.vendor != "postgresql":
            self._taken = _local_lock.acquire(blocking=False)
            return self._taken
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [_LOCK_KEY])
            self._taken = bool(cursor.fetchone()[0])
        return self._taken

    def __exit__(self, *exc) -> None:
        if not self._taken:
            return
        if connection.vendor != "postgresql":
            _local_lock.release()
            return
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])
