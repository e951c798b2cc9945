"""Reads of flows and their jobs: progress and the job tree."""

from __future__ import annotations

from typing import Any

from flows.engine import flow_job_counts
from flows.models import Flow
from jobs.models import Job
from jobs.vocabulary import JobStatus


def flow_progress(*, flow: Flow) -> dict[str, Any]:
    """Return ``{total, completed, failed, percentage, <status>: n...}`` from the job rows."""
    counts, _ = flow_job_counts(flow_id=flow.pk)
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
