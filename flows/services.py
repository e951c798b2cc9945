"""Flow-level writes: create, cancel, delete. Views, commands and the admin call these."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from flows import events, planning
from flows import status as flow_status
from flows.exceptions import IdempotencyConflict
from flows.locks import lock_flow
from flows.models import Flow, IdempotencyKey, new_flow_id
from flows.specs import parse_flow_spec
from jobs.exceptions import InvalidTransition
from jobs.models import Job
from jobs.dispatch import JobRef, enqueue_jobs, redispatch_at, revoke_jobs
from jobs.services import lock_jobs
from jobs.transitions import settle_flow
from jobs.vocabulary import (
    CHILD_FAILED_ERROR,
    IGNORED_FAILURE_POLICIES,
    OPEN_FLOW_STATUSES,
    UNFINISHED_JOB_STATUSES,
    FlowEvent,
    FlowStatus,
    JobStatus,
)

BULK_BATCH_SIZE = 1000


def flow_create(*, owner: AbstractBaseUser, spec: Any) -> Flow:
    """Validate a flow specification, store the flow and all its jobs, then start it.

    One transaction writes the Flow row and every Job row (bulk inserts, parents
    first); the leaf jobs are published only after it commits. Raises
    ``SpecValidationError`` naming every bad field by its path.
    """
    flowname, root = parse_flow_spec(spec)
    flow_id = new_flow_id()
    plan = planning.plan_flow(flow_id=flow_id, flowname=flowname, owner_id=owner.pk, root=root)
    with transaction.atomic():
        flow = Flow.objects.create(
            id=flow_id,
            flowname=flowname,
            name=root.name,
            queue_name=root.queue_name,
            owner=owner,
            job_structure=plan.structure,
            root_job_id=plan.root_job_id,
            status=FlowStatus.PENDING,
            total_jobs=len(plan.jobs),
            event_seq=events.FIRST_SEQ if events.live() else 0,
        )
        Job.objects.bulk_create(plan.jobs, batch_size=BULK_BATCH_SIZE)
        events.flow_created(flow, plan.jobs)
        refs = [JobRef(id=job.id, queue_name=job.queue_name, opts=job.opts) for job in plan.leaves]
        # ``published`` says whether the broker took the messages (False: the sweep sends them later).
        flow.published = None
        transaction.on_commit(lambda: setattr(flow, "published", enqueue_jobs(refs)))
    return flow


def flow_cancel(*, flow: Flow) -> Flow:
    """Cancel an open flow: every unfinished job becomes ``cancelled`` and is revoked.

    A job that starts afterwards finds itself cancelled and does nothing; a job
    already running is not interrupted (its handler may poll ``ctx.cancelled``), but its
    outcome is discarded. Raises
    ``InvalidTransition`` if the flow has already finished, or if all its jobs
    have (a last job reported or completed just before: the flow is settled with
    their outcome instead). Holds the flow's lock (``flows.locks``): a job being
    attached meanwhile is either cancelled with the rest or refused.
    """
    now = timezone.now()
    settled = None
    with transaction.atomic():
        lock_flow(flow.pk)
        # Job rows (in pk order) before the flow row, as every transition locks them (no
        # deadlock). A job that finished while we waited for its lock is left out.
        cancelled = list(
            Job.objects.select_for_update()
            .filter(flow_id=flow.pk, status__in=UNFINISHED_JOB_STATUSES)
            .order_by("pk")
            .values_list("id", "name", "queue_name", "attempts_made", "status")
        )
        if not cancelled:
            # Every job has finished, the flow only waits for its settle: it ends with them.
            settled = settle_flow(flow_id=flow.pk)
        if settled is None:
            Job.objects.filter(pk__in=[row[0] for row in cancelled], status__in=UNFINISHED_JOB_STATUSES).update(
                status=JobStatus.CANCELLED, error="Cancelled", error_type="", error_detail=None, finished_at=now
            )
            changed = Flow.objects.filter(pk=flow.pk, status__in=OPEN_FLOW_STATUSES).update(
                status=FlowStatus.CANCELLED, completed_at=now, updated_at=now
            )
            if not changed:
                flow.refresh_from_db(fields=["status"])
                raise InvalidTransition(
                    f"Flow {flow.pk} is {flow.status} and cannot be cancelled.", current_status=flow.status
                )
            outbox = events.Outbox()
            for job_id, name, queue_name, attempts_made, _ in cancelled:
                outbox.job_updated(
                    flow_id=flow.pk, job_id=job_id, name=name, queue_name=queue_name, status=JobStatus.CANCELLED,
                    attempts_made=attempts_made, error="Cancelled",
                )
            outbox.flow_finished(flow.pk)
            outbox.close()
            job_ids = [row[0] for row in cancelled]
            running = [row[0] for row in cancelled if row[4] == JobStatus.ACTIVE]
            transaction.on_commit(lambda: revoke_jobs(job_ids, running=running))
    if settled is not None:
        raise InvalidTransition(
            f"Flow {flow.pk} is {settled}: all its jobs had finished, it cannot be cancelled.",
            current_status=settled,
        )
    flow.refresh_from_db()
    return flow


def flow_delete(*, flow: Flow) -> None:
    """Cancel the flow if it is still open, then delete it with all its jobs and logs.

    The job rows are locked first, so a handler still running writes its log lines
    either before the delete (they go with it) or after, as no-ops (``jobs.transitions.job_log``).
    """
    if flow_status.flow_is_open(flow.status):
        try:
            flow_cancel(flow=flow)
        except InvalidTransition:
            pass  # it finished meanwhile: nothing left to stop
    with transaction.atomic():
        lock_flow(flow.pk)
        lock_jobs(Job.objects.filter(flow_id=flow.pk))
        outbox = events.Outbox()
        outbox.add(flow.pk, FlowEvent.DELETED, {"flowId": flow.pk})
        outbox.close()  # numbered before the row goes
        Flow.objects.filter(pk=flow.pk).delete()  # jobs and logs cascade


def flow_create_idempotent(*, owner: AbstractBaseUser, spec: Any, key: str) -> tuple[Flow, bool]:
    """Create a flow once per ``(owner, key)``; return ``(flow, created)``.

    The same key with the same body returns the flow created the first time; with
    a different body it raises ``IdempotencyConflict``. Concurrent requests with one
    key create one flow: the unique constraint decides, the loser reads the winner's.
    """
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    for _ in range(2):
        existing = IdempotencyKey.objects.select_related("flow").filter(owner=owner, key=key).first()
        if existing is not None:
            if existing.request_hash != digest:
                raise IdempotencyConflict(
                    f"Idempotency-Key {key!r} was already used with a different request body."
                )
            return existing.flow, False
        try:
            with transaction.atomic():
                flow = flow_create(owner=owner, spec=spec)
                IdempotencyKey.objects.create(owner=owner, key=key, request_hash=digest, flow=flow)
            return flow, True
        except IntegrityError:
            continue  # another request with this key won the race: read its flow
    raise IdempotencyConflict(f"Idempotency-Key {key!r} is being used by a concurrent request.")


def flow_retry(*, flow: Flow, job_id: str | None = None) -> Flow:
    """Re-run a failed flow's failed jobs, keeping every completed result.

    The jobs that failed by themselves (not ``ChildFailed``, not ignored) go back to
    ``waiting`` with their attempts reset and are enqueued; the ancestors they
    failed go back to ``waiting-children``, counting the children still to finish.
    With ``job_id``, only the failures at or under that job are retried. The flow
    reopens (``running``) unless another failure remains. Raises
    ``InvalidTransition`` if there is nothing to retry.
    """
    with transaction.atomic():
        # One retry (or cancel, or attach) of this flow at a time (``flows.locks``): a
        # concurrent retry waits, then finds nothing left to retry.
        lock_flow(flow.pk)
        # Lock the flow's jobs, in pk order: a sibling finishing meanwhile must not slip
        # between our count of a parent's pending children and its reopening.
        rows = {
            row["id"]: row
            for row in Job.objects.select_for_update()
            .filter(flow_id=flow.pk)
            .order_by("pk")
            .values("id", "parent_id", "status", "error_type", "failure_policy", "queue_name", "opts", "name",
                    "attempts_made")
        }
        causes = _retry_causes(rows, under=job_id)
        if not causes:
            raise InvalidTransition(
                f"Flow {flow.pk} has no failed job to retry{' under job ' + job_id if job_id else ''}.",
                current_status=flow.status,
            )
        reopen = _failed_ancestors(rows, causes)
        children: dict[str, list[dict]] = {}
        for row in rows.values():
            children.setdefault(row["parent_id"], []).append(row)
        for parent_id in reopen:
            pending = sum(1 for child in children[parent_id] if not _done_for_parent(child))
            Job.objects.filter(pk=parent_id, status=JobStatus.FAILED).update(
                status=JobStatus.WAITING_CHILDREN, pending_children=pending, **_RESET
            )
        Job.objects.filter(pk__in=causes, status=JobStatus.FAILED).update(
            status=JobStatus.WAITING, attempts_made=0, redispatch_at=redispatch_at(), **_RESET
        )
        counts, ignored = flow_status.flow_job_counts(flow_id=flow.pk)
        if flow_status.derive_flow_status(counts, ignored_failures=ignored) != FlowStatus.FAILED:
            Flow.objects.filter(pk=flow.pk).update(
                status=FlowStatus.RUNNING, error="", error_detail=None, result=None, completed_at=None, updated_at=timezone.now()
            )
        outbox = events.Outbox()
        for job_id in sorted(reopen) + sorted(causes):
            row = rows[job_id]
            outbox.job_updated(
                flow_id=flow.pk, job_id=job_id, name=row["name"], queue_name=row["queue_name"],
                status=JobStatus.WAITING_CHILDREN if job_id in reopen else JobStatus.WAITING,
                attempts_made=row["attempts_made"] if job_id in reopen else 0,
            )
        outbox.close()
        refs = [JobRef(id=i, queue_name=rows[i]["queue_name"], opts=rows[i]["opts"]) for i in causes]
        transaction.on_commit(lambda: enqueue_jobs(refs))
    flow.refresh_from_db()
    return flow


_RESET = {"error": "", "error_type": "", "error_detail": None, "stacktrace": "", "result": None, "started_at": None, "finished_at": None}


def _done_for_parent(row: dict) -> bool:
    """Whether a child no longer holds its parent back (completed, or its failure ignored)."""
    return row["status"] == JobStatus.COMPLETED or (
        row["status"] == JobStatus.FAILED and row["failure_policy"] in IGNORED_FAILURE_POLICIES
    )


def _retry_causes(rows: dict[str, dict], *, under: str | None) -> set[str]:
    """The failed jobs to re-run: failed by themselves, failure not ignored, under ``under``."""
    causes = set()
    for job_id, row in rows.items():
        if row["status"] != JobStatus.FAILED or row["error_type"] == CHILD_FAILED_ERROR:
            continue
        if row["parent_id"] and row["failure_policy"] in IGNORED_FAILURE_POLICIES:
            continue
        if under is None or under in _lineage(rows, job_id):
            causes.add(job_id)
    return causes


def _lineage(rows: dict[str, dict], job_id: str) -> list[str]:
    """The job and its ancestors, bottom-up."""
    chain = [job_id]
    while rows[chain[-1]]["parent_id"] is not None:
        chain.append(rows[chain[-1]]["parent_id"])
    return chain


def _failed_ancestors(rows: dict[str, dict], causes: set[str]) -> set[str]:
    """Ancestors of the causes that failed because of them (``ChildFailed``)."""
    found = set()
    for cause in causes:
        for ancestor in _lineage(rows, cause)[1:]:
            row = rows[ancestor]
            if row["status"] != JobStatus.FAILED or row["error_type"] != CHILD_FAILED_ERROR:
                break
            found.add(ancestor)
    return found
