"""Job writes other than the hot path: submission, reports, queues, cancel, delete, retry.

Each change is a conditional update through the state machine, like the hot
path's transitions (``jobs.transitions``), which the reports reuse; messages
are published after commit (``jobs.dispatch``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from accounts import permissions
from accounts.permissions import Action
from flows import events
from flows import status as flow_status
from flows.locks import lock_flow
from flows.models import Flow
from flows.planning import flow_metadata
from jobs.dispatch import JobRef, enqueue_jobs, redispatch_at, revoke_jobs
from jobs.exceptions import FlowClosed, InvalidTransition, SpecValidationError
from jobs.models import Job, QueueState
from jobs.transitions import StartedJob, job_cancelled_alone, job_complete, job_fail, job_update_progress, settle_flow
from jobs.validation import NUL_MESSAGE, JSONTooDeep, contains_nul, json_value_errors, validate_job_fields
from jobs.vocabulary import CANCELLED_ERROR, STARTABLE_JOB_STATUSES, UNFINISHED_JOB_STATUSES, JobStatus, ReportedJobStatus


def job_submit(
    *,
    name: str,
    queue_name: str,
    data: dict[str, Any] | None = None,
    opts: dict[str, Any] | None = None,
    flow_id: str | None = None,
    owner: AbstractBaseUser | None = None,
) -> Job:
    """Submit one job on any allowed queue; enqueue it after commit.

    With a ``flow_id`` (or a ``flowId`` in ``data``) the job is attached to that
    flow: it carries the flow's ``flowId`` and ``_flowMetadata``, counts in its
    progress, and the flow finishes only after it. Raises ``SpecValidationError``
    for bad input and ``FlowClosed`` if the flow has already finished. The job
    belongs to its flow's owner, or to ``owner`` when it is standalone. ``owner``
    (the submitting user; None for the engine) attaches only to flows they may see
    (another flow is unknown) and change (``accounts.permissions``: ``NotPermitted``).
    """
    node = {"name": name, "queueName": queue_name, "data": data or {}, "opts": opts or {}}
    errors: dict[str, list[str]] = {}
    if contains_nul(node):
        errors["non_field_errors"] = [NUL_MESSAGE]
    name, queue_name, data, opts, options = validate_job_fields(node, "", errors)
    flow_id = flow_id or data.get("flowId")
    if flow_id is not None and not isinstance(flow_id, str):
        errors.setdefault("flowId", []).append("Must be a string.")
    if errors:
        raise SpecValidationError("Invalid job.", errors)
    with transaction.atomic():
        flow = None
        if flow_id:
            # Shared with other attaches, exclusive for a cancel (``flows.locks``): the flow
            # read below is the one a concurrent cancel leaves, and cancels this job if it ran first.
            lock_flow(flow_id, shared=True)
            flows = Flow.objects.all() if owner is None else permissions.visible(Flow.objects.all(), owner)
            flow = flows.filter(pk=flow_id).first()
            if flow is None:
                raise SpecValidationError("Invalid job.", {"flowId": [f"Unknown flow {flow_id!r}."]})
            if owner is not None:
                permissions.authorize(owner, flow, Action.CHANGE, what="attach a job to")
            if not flow_status.flow_is_open(flow.status):
                raise FlowClosed(f"Flow {flow_id} is {flow.status}: it accepts no more jobs.")
            data = {
                **data,
                "flowId": flow.id,
                "_flowMetadata": flow_metadata(
                    flow_id=flow.id, flowname=flow.flowname, root_job_id=flow.root_job_id, parent_job_id=None
                ),
            }
        job = Job.objects.create(
            flow=flow,
            owner_id=flow.owner_id if flow is not None else getattr(owner, "pk", None),
            name=name,
            queue_name=queue_name,
            data=data,
            opts=opts,
            status=JobStatus.DELAYED if options.delay_ms else JobStatus.WAITING,
            max_attempts=options.attempts,
            failure_policy=options.failure_policy,
            redispatch_at=redispatch_at(options.delay_ms),
        )
        if flow is not None:
            Flow.objects.filter(pk=flow.pk).update(total_jobs=F("total_jobs") + 1, updated_at=timezone.now())
            outbox = events.Outbox()
            outbox.job_updated(
                flow_id=flow.pk, job_id=job.id, name=job.name, queue_name=job.queue_name, status=job.status,
                attempts_made=0,
            )
            outbox.close()
        ref = JobRef(id=job.id, queue_name=job.queue_name, opts=opts)
        transaction.on_commit(lambda: enqueue_jobs([ref], delay_ms=options.delay_ms))
    return job


def jobs_requeue_interrupted() -> int:
    """Re-enqueue jobs left unfinished by a stopped embedded server; return how many.

    Only for embedded mode, where the worker lived in the stopped process: its
    ``active`` jobs go back to ``waiting``. Waiting and delayed jobs keep their
    messages in the on-disk broker and are not enqueued twice.
    """
    with transaction.atomic():
        interrupted = _move_jobs(
            Job.objects.filter(status=JobStatus.ACTIVE), JobStatus.ACTIVE, JobStatus.WAITING, redispatch_at=redispatch_at()
        )
        refs = [JobRef(id=row["id"], queue_name=row["queue_name"], opts=row["opts"]) for row in interrupted]
        transaction.on_commit(lambda: enqueue_jobs(refs))
    return len(refs)


class ReportedJobFailure(Exception):
    """A failure reported through the API by a job processed outside Flowsite.

    ``detail`` is the error object the reporter sent (legacy ``{message, ...}``), if any:
    the job keeps it as sent (``Job.error_detail``), with its ``message`` as the error text.
    """

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail


def job_report(
    *, job: Job, status: str, result: Any = None, error: str | dict[str, Any] | None = None, progress: Any = None,
    worker_id: str | None = None,
) -> Job:
    """Apply a state reported by a job processed outside Flowsite, through the state machine.

    ``running`` claims the job (``waiting|delayed -> active``, see ``_claim_run``):
    of concurrent claimers exactly one wins, the others get ``InvalidTransition``.
    Reported again by its claimer (the same ``worker_id``) it updates progress and
    keeps the run alive. ``completed`` and ``failed`` finish the job, claiming it
    first if it was still waiting; a reported failure is final (the job ran
    elsewhere, so Flowsite cannot retry it) and applies the job's failure policy.
    The parent and the flow follow exactly as for a job run by a worker.
    Raises ``InvalidTransition`` with the current status for any other move.
    ``error`` is a text or an object whose ``message`` is the text (kept whole).

    A report is applied whole or not at all: its values are checked before any
    write, and every write is one transaction. A report that failed half-way once
    left its job ``active`` and its flow ``running`` with nobody to finish them.
    """
    _check_report_values(result=result, error=error, progress=progress)
    with transaction.atomic():
        started = _claim_run(job=job, status=status, worker_id=worker_id)
        if progress is not None:
            job_update_progress(job_id=job.id, progress=progress)
        if status == ReportedJobStatus.COMPLETED:
            done = job_complete(job=started, result=result)
        elif status == ReportedJobStatus.FAILED:
            message, detail = (error.get("message"), error) if isinstance(error, dict) else (error, None)
            failure = ReportedJobFailure(message or "Reported as failed", detail)
            done = job_fail(job=started, exc=failure, retry_delay_ms=None)
        else:
            done = True
        job.refresh_from_db()
        if not done:
            raise InvalidTransition(
                f"Job {job.id} is {job.status}: it cannot become {status}.", current_status=job.status
            )
    return job


def _claim_run(*, job: Job, status: str, worker_id: str | None) -> StartedJob:
    """Start the run a report claims, or find the run it continues; else raise ``InvalidTransition``.

    A startable job is claimed by one conditional update (no worker, the report's
    ``worker_id`` and time recorded): of concurrent claimers exactly one wins. On an
    ``active`` job, a report continues the run only if it names the claim's
    ``worker_id``; ``completed``/``failed`` naming none are accepted too (legacy
    reporters send no id), but ``running`` naming none claims nothing: someone else
    runs the job. A continuing report renews ``reported_at`` (``jobs.sweeps``).
    """
    now = timezone.now()
    paused = QueueState.objects.filter(paused=True).values("name")
    claimed = (
        Job.objects.filter(pk=job.pk, status__in=STARTABLE_JOB_STATUSES)
        .exclude(queue_name__in=paused)
        .update(status=JobStatus.ACTIVE, attempts_made=F("attempts_made") + 1, started_at=now, worker_id=None,
                claimed_by=worker_id, reported_at=now)
    )
    job.refresh_from_db()
    if claimed:
        _add_claim_events(job)
        return StartedJob.from_job(job)
    continues = job.status == JobStatus.ACTIVE and (
        (worker_id is not None and worker_id == job.claimed_by)
        or (worker_id is None and status != ReportedJobStatus.RUNNING)
    )
    if continues and Job.objects.filter(pk=job.pk, status=JobStatus.ACTIVE).update(reported_at=now):
        return StartedJob.from_job(job)
    who = "another worker" if job.status == JobStatus.ACTIVE else "nobody"
    raise InvalidTransition(
        f"Job {job.id} is {job.status}: it cannot become {status}"
        + (f" (it was claimed by {who})." if job.status == JobStatus.ACTIVE else "."),
        current_status=job.status,
    )


def _add_claim_events(job: Job) -> None:
    outbox = events.Outbox()
    outbox.job_updated(
        flow_id=job.flow_id, job_id=job.id, name=job.name, queue_name=job.queue_name, status=JobStatus.ACTIVE,
        attempts_made=job.attempts_made,
    )
    outbox.close()
    if job.flow_id:
        flow_status.flow_mark_running(flow_id=job.flow_id)


def _check_report_values(*, result: Any, error: str | dict[str, Any] | None, progress: Any) -> None:
    """Raise ``SpecValidationError`` for report values PostgreSQL could not store (a report
    may come from Python too, not only through the API's parser, which checks them as well)."""
    try:
        errors = json_value_errors(
            {"result": result, "error": error, "progress": progress}, max_depth=settings.FLOWSITE_MAX_JSON_DEPTH
        )
    except JSONTooDeep as exc:
        raise SpecValidationError(
            "Invalid job report.", {exc.path: ["Nested too deeply (FLOWSITE_MAX_JSON_DEPTH)."]}
        ) from None
    if not errors and contains_nul([result, error, progress]):
        errors = {"non_field_errors": [NUL_MESSAGE]}
    if errors:
        raise SpecValidationError("Invalid job report.", errors)


def queue_pause(*, name: str) -> int:
    """Pause a queue: its waiting jobs become ``paused`` and no job of it starts; return how many."""
    with transaction.atomic():
        QueueState.objects.update_or_create(name=name, defaults={"paused": True})
        waiting = Job.objects.filter(queue_name=name, status=JobStatus.WAITING)
        return len(_move_jobs(waiting, JobStatus.WAITING, JobStatus.PAUSED))


def queue_resume(*, name: str) -> int:
    """Resume a queue: its paused jobs go back to ``waiting`` and are enqueued; return how many."""
    with transaction.atomic():
        QueueState.objects.update_or_create(name=name, defaults={"paused": False})
        paused = Job.objects.filter(queue_name=name, status=JobStatus.PAUSED)
        resumed = _move_jobs(paused, JobStatus.PAUSED, JobStatus.WAITING, redispatch_at=redispatch_at())
        refs = [JobRef(id=row["id"], queue_name=name, opts=row["opts"]) for row in resumed]
        transaction.on_commit(lambda: enqueue_jobs(refs, delay_ms=0))
    return len(refs)


def release_due_jobs(*, queue: str) -> int:
    """Move an external queue's ``delayed`` jobs whose time has come to ``waiting``; return how many.

    Nothing is published for external queues, so nothing else would: external
    workers look for ``waiting`` jobs. A delayed job is due ``FLOWSITE_REDISPATCH_AFTER``
    before its ``redispatch_at`` (``jobs.dispatch.redispatch_at``).
    """
    due_by = timezone.now() + timedelta(seconds=settings.FLOWSITE_REDISPATCH_AFTER)
    with transaction.atomic():
        due = Job.objects.select_for_update(skip_locked=True).filter(
            queue_name=queue, status=JobStatus.DELAYED, redispatch_at__lte=due_by
        )
        return len(_move_jobs(due, JobStatus.DELAYED, JobStatus.WAITING))


def job_cancel(*, job: Job) -> bool:
    """Cancel one unfinished job and revoke its message; False if it had already finished.

    A handler running it is interrupted after the commit (``jobs.dispatch.revoke_jobs``),
    and whatever it returns is discarded: the job stays ``cancelled``.

    A job of a flow cancelled alone counts for its parent as a failure (its failure
    policy applies; the root's cancel fails the flow), and an attached job's cancel
    lets the flow finish (``transitions.job_cancelled_alone``). To stop a whole flow,
    cancel the flow.
    """
    with transaction.atomic():
        changed = Job.objects.filter(pk=job.pk, status__in=UNFINISHED_JOB_STATUSES).update(
            status=JobStatus.CANCELLED, error=CANCELLED_ERROR, error_type="", error_detail=None,
            finished_at=timezone.now(),
        )
        if changed:
            outbox = events.Outbox()
            outbox.job_updated(
                flow_id=job.flow_id, job_id=job.pk, name=job.name, queue_name=job.queue_name,
                status=JobStatus.CANCELLED, attempts_made=job.attempts_made, error=CANCELLED_ERROR,
            )
            job_cancelled_alone(job=StartedJob.from_job(job), outbox=outbox)
            outbox.close()
            transaction.on_commit(lambda: revoke_jobs([job.pk], running=[job.pk]))
    return bool(changed)


def job_delete(*, job: Job) -> None:
    """Delete a standalone (or attached) job, cancelling it first if it has not finished.

    A job that is part of a flow's tree (it has a parent or children) cannot be
    deleted alone: its flow would wait for it for ever. Delete or cancel the flow.
    """
    if job.parent_id or job.child_count:
        raise InvalidTransition(
            f"Job {job.pk} is part of flow {job.flow_id}'s tree: cancel or delete the flow instead.",
            current_status=job.status,
        )
    with transaction.atomic():
        lock_jobs(Job.objects.filter(pk=job.pk))
        job_cancel(job=job)
        Job.objects.filter(pk=job.pk).delete()
        if job.flow_id:
            Flow.objects.filter(pk=job.flow_id).update(total_jobs=F("total_jobs") - 1, updated_at=timezone.now())
            transaction.on_commit(lambda: settle_flow(flow_id=job.flow_id))


def lock_jobs(jobs: QuerySet[Job]) -> None:
    """Lock these job rows until the end of the transaction, before they are deleted.

    A running handler's log line (``jobs.transitions.job_log``) then either committed
    before, and is deleted with its job, or waits and finds its job gone: never a log
    row left pointing at a deleted job (a foreign-key violation at commit).
    """
    list(jobs.select_for_update().order_by("pk").values_list("pk", flat=True))


def job_retry_standalone(*, job: Job) -> Job:
    """Re-run a failed job that belongs to no flow: ``failed -> waiting``, attempts reset."""
    with transaction.atomic():
        changed = Job.objects.filter(pk=job.pk, status=JobStatus.FAILED).update(
            status=JobStatus.WAITING, attempts_made=0, error="", error_type="", error_detail=None, stacktrace="",
            result=None, started_at=None, finished_at=None, redispatch_at=redispatch_at(),
        )
        if not changed:
            job.refresh_from_db(fields=["status"])
            raise InvalidTransition(f"Job {job.pk} is {job.status}: only failed jobs can be retried.",
                                    current_status=job.status)
        ref = JobRef(id=job.pk, queue_name=job.queue_name, opts=job.opts)
        transaction.on_commit(lambda: enqueue_jobs([ref], delay_ms=0))
    job.refresh_from_db()
    return job


def _move_jobs(jobs, source: str, target: str, **fields: Any) -> list[dict[str, Any]]:
    """Move these jobs ``source -> target`` (inside a transaction), with their events; return their rows."""
    rows = list(jobs.values("id", "flow_id", "name", "queue_name", "attempts_made", "opts"))
    Job.objects.filter(pk__in=[row["id"] for row in rows], status=source).update(status=target, **fields)
    outbox = events.Outbox()
    for row in rows:
        outbox.job_updated(
            flow_id=row["flow_id"], job_id=row["id"], name=row["name"], queue_name=row["queue_name"],
            status=target, attempts_made=row["attempts_made"],
        )
    outbox.close()
    return rows
