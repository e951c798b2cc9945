"""Reads of flows and their jobs: progress and the job tree."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, QuerySet

from flows.engine import flow_job_counts
from flows.models import Flow
from jobs.models import Job
from jobs.vocabulary import FlowStatus, JobStatus


def flow_progress(*, flow: Flow) -> dict[str, Any]:
    """Return ``{total, completed, failed, percentage, <status>: n...}`` from the job rows."""
    counts, _ = flow_job_counts(flow_id=flow.pk)
    return progress_from_counts(counts)


def progress_from_counts(counts: dict[str, int]) -> dict[str, Any]:
    """The public progress object from a flow's job count per status."""
    total = sum(counts.values())
    finished = counts.get(JobStatus.COMPLETED, 0) + counts.get(JobStatus.FAILED, 0)
    progress: dict[str, Any] = {
        "total": total,
        "completed": counts.get(JobStatus.COMPLETED, 0),
        "failed": counts.get(JobStatus.FAILED, 0),
        "percentage": round(100 * finished / total, 1) if total else 0.0,
    }
    for status in JobStatus:
        progress[status.value] = counts.get(status, 0)
    return progress


def flow_jobs_tree(*, flow: Flow) -> list[dict[str, Any]]:
    """Return the flow's jobs as nested dicts (roots first, children in order), in one query."""
    rows = list(
        Job.objects.filter(flow_id=flow.pk)
        .order_by("position", "created_at")
        .values("id", "parent_id", "name", "queue_name", "status", "attempts_made", "result", "error")
    )
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    for row in rows:
        by_parent.setdefault(row["parent_id"], []).append(row)
    for row in rows:
        row["children"] = by_parent.get(row["id"], [])
    roots = by_parent.get(None, [])
    roots.sort(key=lambda row: row["id"] != flow.root_job_id)
    return roots


def flow_list_for_user(*, user: AbstractBaseUser) -> QuerySet[Flow]:
    """Flows the user may see: their own; staff see all. The job structure is not loaded."""
    flows = Flow.objects.defer("job_structure")
    return flows if user.is_staff else flows.filter(owner=user)


def flows_progress(*, flow_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Progress of many flows in one query (the flow list's progress, without N+1)."""
    counts: dict[str, dict[str, int]] = {flow_id: {} for flow_id in flow_ids}
    rows = Job.objects.filter(flow_id__in=flow_ids).values("flow_id", "status").annotate(n=Count("pk")).order_by()
    for row in rows:
        counts[row["flow_id"]][row["status"]] = row["n"]
    return {flow_id: progress_from_counts(c) for flow_id, c in counts.items()}


def flow_jobs(*, flow: Flow, status: str | None = None) -> QuerySet[Job]:
    jobs = Job.objects.filter(flow_id=flow.pk).order_by("created_at", "position", "id")
    return jobs.filter(status=status) if status else jobs


def flow_status_counts(*, user: AbstractBaseUser) -> dict[str, int]:
    """``{flow status: n}`` over the flows the user may see (one query)."""
    counts = {status.value: 0 for status in FlowStatus}
    for row in flow_list_for_user(user=user).values("status").annotate(n=Count("pk")).order_by():
        counts[row["status"]] = row["n"]
    return counts
