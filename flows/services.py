"""Flow-level writes: create, cancel, delete. Views, commands and the admin call these."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from flows import engine
from flows.models import Flow, new_flow_id
from flows.specs import parse_flow_spec
from jobs.exceptions import InvalidTransition
from jobs.models import Job
from jobs.tasks import JobRef, enqueue_jobs, revoke_jobs
from jobs.vocabulary import OPEN_FLOW_STATUSES, UNFINISHED_JOB_STATUSES, FlowStatus, JobStatus

BULK_BATCH_SIZE = 1000


def flow_create(*, owner: AbstractBaseUser, spec: Any) -> Flow:
    """Validate a flow specification, store the flow and all its jobs, then start it.

    One transaction writes the Flow row and every Job row (bulk inserts, parents
    first); the leaf jobs are published only after it commits. Raises
    ``SpecValidationError`` naming every bad field by its path.
    """
    flowname, root = parse_flow_spec(spec)
    flow_id = new_flow_id()
    plan = engine.plan_flow(flow_id=flow_id, flowname=flowname, root=root)
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
        )
        Job.objects.bulk_create(plan.jobs, batch_size=BULK_BATCH_SIZE)
        refs = [JobRef(id=job.id, queue_name=job.queue_name, opts=job.opts) for job in plan.leaves]
        transaction.on_commit(lambda: enqueue_jobs(refs))
    return flow


def flow_cancel(*, flow: Flow) -> Flow:
    """Cancel an open flow: every unfinished job becomes ``cancelled`` and is revoked.

    A job that starts afterwards finds itself cancelled and does nothing; a job
    already running finishes its handler, but its result is discarded. Raises
    ``InvalidTransition`` if the flow has already finished.
    """
    now = timezone.now()
    with transaction.atomic():
        changed = Flow.objects.filter(pk=flow.pk, status__in=OPEN_FLOW_STATUSES).update(
            status=FlowStatus.CANCELLED, completed_at=now
        )
        if not changed:
            flow.refresh_from_db(fields=["status"])
            raise InvalidTransition(
                f"Flow {flow.pk} is {flow.status} and cannot be cancelled.", current_status=flow.status
            )
        unfinished = Job.objects.filter(flow_id=flow.pk, status__in=UNFINISHED_JOB_STATUSES)
        job_ids = list(unfinished.values_list("id", flat=True))
        unfinished.update(status=JobStatus.CANCELLED, error="Cancelled", finished_at=now)
        transaction.on_commit(lambda: revoke_jobs(job_ids))
    flow.refresh_from_db()
    return flow


def flow_delete(*, flow: Flow) -> None:
    """Cancel the flow if it is still open, then delete it with all its jobs and logs."""
    if engine.flow_is_open(flow.status):
        try:
            flow_cancel(flow=flow)
        except InvalidTransition:
            pass  # it finished meanwhile: nothing left to stop
    Flow.objects.filter(pk=flow.pk).delete()  # jobs and logs cascade
