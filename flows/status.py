"""A flow's status rules: derived from its jobs' counts, and the flow row's few changes.

The flow row changes only a few times (pending -> running -> final), never once
per job, so thousands of siblings never queue behind its lock. ``derive_flow_status``
is the rule; the rest applies it to the row with conditional updates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db.models import Count, F, OuterRef, Q, Subquery
from django.utils import timezone

from flows.models import Flow
from jobs.models import Job
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


# Flows this process has already seen running: saves a statement per job start.
_running_flows: set[str] = set()
_RUNNING_CACHE_LIMIT = 10_000


def flow_known_running(flow_id: str) -> bool:
    """Whether this process has already seen the flow running (``flow_mark_running`` would do nothing)."""
    return flow_id in _running_flows


def flow_mark_running(*, flow_id: str) -> bool:
    """Move a flow ``pending -> running`` when its first job starts (at most once per process).

    True if this call moved it.
    """
    if flow_id in _running_flows:
        return False
    now = timezone.now()
    changed = Flow.objects.filter(pk=flow_id, status=FlowStatus.PENDING).update(
        status=FlowStatus.RUNNING, started_at=now, updated_at=now
    )
    if len(_running_flows) >= _RUNNING_CACHE_LIMIT:
        _running_flows.clear()
    _running_flows.add(flow_id)
    return bool(changed)


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


def flow_settle(*, flow_id: str, numbered: bool = False) -> FlowStatus | None:
    """Finish a flow whose last job has just finished: ``running -> completed|failed``.

    Called when a job without a parent (the root, or a job attached by
    ``flowId``) finishes. Derives the status from the job counts; if it is
    final, records it, with the root job's return value as the flow's result.
    Returns the new status, or None if the flow is still running. ``numbered``
    also takes the flow's next event number (``flows.events``) in the same update.
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
    if numbered:
        updates["event_seq"] = F("event_seq") + 1
    changed = Flow.objects.filter(pk=flow_id, status__in=OPEN_FLOW_STATUSES).update(**updates)
    return status if changed else None


def flow_fail(*, flow_id: str, error: str, detail: dict[str, Any] | None = None) -> bool:
    """Move a flow to ``failed`` at once (a job failed for good and was not ignored).

    ``error`` is the text; ``detail`` the public error object (``{message, type, jobId}``).
    """
    now = timezone.now()
    return bool(
        Flow.objects.filter(pk=flow_id, status__in=OPEN_FLOW_STATUSES).update(
            status=FlowStatus.FAILED, error=error, error_detail=detail, completed_at=now, updated_at=now
        )
    )
