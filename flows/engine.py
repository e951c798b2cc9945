"""The flow engine: from a validated tree to job rows, and from job states to flow status.

How a flow executes: every job is one ``jobs.run`` Celery task on its own
queue. The leaves are published together when the flow is created (siblings run
in parallel on any number of workers); each parent waits in
``waiting-children`` with a ``pending_children`` counter, and the child that
counts it down to zero publishes the parent. This replaces nested Celery chords,
which hang at depth 50 and slow down on wide fan-ins (see BENCHMARKS.md and
README "Design notes"): the database already records every job, so it also
counts the fan-in.

The flow row itself changes only a few times (pending -> running -> final),
never once per job, so thousands of siblings never queue behind its lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, OuterRef, Q, Subquery
from django.utils import timezone

from flows.models import Flow
from flows.specs import JobSpec
from jobs.models import Job, new_job_id
from jobs.vocabulary import (
    IGNORED_FAILURE_POLICIES,
    NOT_STARTED_JOB_STATUSES,
    OPEN_FLOW_STATUSES,
    UNFINISHED_JOB_STATUSES,
    FlowStatus,
    JobStatus,
)


def derive_flow_status(
    counts: Mapping[str, int], *, ignored_failures: int = 0, cancelled: bool = False
) -> FlowStatus:
    """Return a flow's status from the number of its jobs in each status.

    ``ignored_failures`` is how many of the failed jobs failed under
    ``ignoreDependencyOnFailure``/``removeDependencyOnFailure``: they count as
    finished, not as failures. The rule: cancelled by a user -> cancelled; any
    other failure -> failed; no jobs, or none started yet -> pending; anything
    unfinished -> running; otherwise completed.
    """
    if cancelled:
        return FlowStatus.CANCELLED
    if counts.get(JobStatus.FAILED, 0) > ignored_failures:
        return FlowStatus.FAILED
    total = sum(counts.values())
    not_started = sum(counts.get(status, 0) for status in NOT_STARTED_JOB_STATUSES)
    if total == 0 or not_started == total:
        return FlowStatus.PENDING
    if any(counts.get(status, 0) for status in UNFINISHED_JOB_STATUSES):
        return FlowStatus.RUNNING
    return FlowStatus.COMPLETED


def flow_is_open(status: str) -> bool:
    return status in OPEN_FLOW_STATUSES


@dataclass
class FlowPlan:
    """The rows and structure of a flow about to be created."""

    jobs: list[Job]
    structure: dict[str, Any]
    root_job_id: str
    leaves: list[Job]


def plan_flow(*, flow_id: str, flowname: str, owner_id: int, root: JobSpec) -> FlowPlan:
    """Assign job ids and build the Job rows (parents first) and the annotated structure.

    Every job's data gets ``flowId`` and ``_flowMetadata``. Iterative, so depth
    is bounded only by the validation limit.
    """
    root_id = new_job_id()
    jobs: list[Job] = []
    leaves: list[Job] = []
    structure: dict[str, Any] = {}
    # Breadth-first: parents precede their children, siblings keep their order.
    queue: deque[tuple[JobSpec, str, str | None, int, dict[str, Any]]] = deque(
        [(root, root_id, None, 0, structure)]
    )
    while queue:
        spec, job_id, parent_id, position, node = queue.popleft()
        data = {
            **spec.data,
            "flowId": flow_id,
            "_flowMetadata": {
                "flowId": flow_id,
                "flowname": flowname,
                "rootJobId": root_id,
                "parentJobId": parent_id,
            },
        }
        if spec.children:
            status = JobStatus.WAITING_CHILDREN
        elif spec.options.delay_ms:
            status = JobStatus.DELAYED
        else:
            status = JobStatus.WAITING
        job = Job(
            id=job_id,
            flow_id=flow_id,
            owner_id=owner_id,
            parent_id=parent_id,
            name=spec.name,
            queue_name=spec.queue_name,
            data=data,
            opts=spec.opts,
            status=status,
            max_attempts=spec.options.attempts,
            failure_policy=spec.options.failure_policy,
            position=position,
            child_count=len(spec.children),
            pending_children=len(spec.children),
        )
        jobs.append(job)
        if not spec.children:
            leaves.append(job)
        node.update({"jobId": job_id, "name": spec.name, "queueName": spec.queue_name, "data": spec.data})
        if spec.opts:
            node["opts"] = spec.opts
        if spec.children:
            node["children"] = [{} for _ in spec.children]
            for index, child in enumerate(spec.children):
                queue.append((child, new_job_id(), job_id, index, node["children"][index]))
    return FlowPlan(jobs=jobs, structure=structure, root_job_id=root_id, leaves=leaves)


# Flows this process has already seen running: saves a statement per job start.
_running_flows: set[str] = set()
_RUNNING_CACHE_LIMIT = 10_000


def flow_mark_running(*, flow_id: str) -> None:
    """Move a flow ``pending -> running`` when its first job starts (at most once per process)."""
    if flow_id in _running_flows:
        return
    now = timezone.now()
    Flow.objects.filter(pk=flow_id, status=FlowStatus.PENDING).update(
        status=FlowStatus.RUNNING, started_at=now, updated_at=now
    )
    if len(_running_flows) >= _RUNNING_CACHE_LIMIT:
        _running_flows.clear()
    _running_flows.add(flow_id)


def flow_job_counts(*, flow_id: str) -> tuple[dict[str, int], int]:
    """Return the flow's job count per status and how many failures are ignored (one query)."""
    counts: dict[str, int] = {}
    ignored = 0
    rows = (
        Job.objects.filter(flow_id=flow_id)
        .values("status")
        .annotate(
            n=Count("pk"),
            ignored=Count(
                "pk",
                filter=Q(
                    status=JobStatus.FAILED,
                    failure_policy__in=IGNORED_FAILURE_POLICIES,
                    parent__isnull=False,
                ),
            ),
        )
    )
    for row in rows:
        counts[row["status"]] = row["n"]
        ignored += row["ignored"]
    return counts, ignored


def flow_settle(*, flow_id: str) -> FlowStatus | None:
    """Finish a flow whose last job has just finished: ``running -> completed|failed``.

    Called when a job without a parent (the root, or a job attached by
    ``flowId``) finishes. Derives the status from the job counts; if it is
    final, records it, with the root job's return value as the flow's result.
    Returns the new status, or None if the flow is still running.
    """
    counts, ignored = flow_job_counts(flow_id=flow_id)
    status = derive_flow_status(counts, ignored_failures=ignored)
    if status not in (FlowStatus.COMPLETED, FlowStatus.FAILED):
        return None
    root_result = Job.objects.filter(pk=OuterRef("root_job_id")).values("result")[:1]
    now = timezone.now()
    updates: dict[str, Any] = {"status": status, "completed_at": now, "updated_at": now}
    if status == FlowStatus.COMPLETED:
        updates["result"] = Subquery(root_result)
    changed = Flow.objects.filter(pk=flow_id, status__in=OPEN_FLOW_STATUSES).update(**updates)
    return status if changed else None


def flow_fail(*, flow_id: str, error: str) -> bool:
    """Move a flow to ``failed`` at once (a job failed for good and was not ignored)."""
    now = timezone.now()
    return bool(
        Flow.objects.filter(pk=flow_id, status__in=OPEN_FLOW_STATUSES).update(
            status=FlowStatus.FAILED, error=error, completed_at=now, updated_at=now
        )
    )
