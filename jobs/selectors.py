"""Reads of jobs: owner scoping, the lean job payload, queue and dashboard counts."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, QuerySet
from rest_framework.settings import api_settings

from accounts import permissions
from jobs.models import Job, QueueState
from jobs.queues import is_external, job_queues
from jobs.vocabulary import JobStatus

def iso(value: datetime | None) -> str | None:
    """Format a datetime as the API does everywhere (``REST_FRAMEWORK["DATETIME_FORMAT"]``)."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).strftime(api_settings.DATETIME_FORMAT)


def error_payload(message: str | None, *, error_type: str = "", detail: Any = None) -> dict[str, Any] | None:
    """The public ``error`` of a job or a flow: ``{message, type?, jobId?, ...}``, or None.

    The one builder of that object, for the REST payloads and the events alike.
    ``message`` is the stored error text; ``detail`` the stored error object (a
    reporter's, as sent, or a failed flow's), used while its ``message`` is still
    the current text (a later retry or cancel rewrites the text, and the old object
    no longer applies). ``flows.selectors`` builds the same object in SQL.
    """
    if not message:
        return None
    if isinstance(detail, dict) and detail.get("message") == message:
        return detail
    return {"message": message, "type": error_type} if error_type else {"message": message}


# A job's state (the flow detail's ``jobs``; the definition is in the flow's jobStructure).
JOB_STATE_FIELDS = (
    "id", "parent_id", "name", "queue_name", "status", "progress", "attempts_made",
    "result", "error", "error_type", "error_detail", "created_at", "started_at", "finished_at",
)
# The whole job (``job_payload``): its state and its definition.
JOB_PAYLOAD_FIELDS = (*JOB_STATE_FIELDS, "flow_id", "max_attempts", "data", "opts")


def job_state_payload(row: dict[str, Any]) -> dict[str, Any]:
    """A job's public (camelCase) state from a ``.values(*JOB_STATE_FIELDS)`` row.

    The lean path for large job lists, about 3x faster than a ModelSerializer;
    ``jobs.serializers.JobStateOutputSerializer`` documents the same shape.
    """
    return {
        "jobId": row["id"],
        "parentJobId": row["parent_id"],
        "name": row["name"],
        "queueName": row["queue_name"],
        "status": row["status"],
        "progress": row["progress"],
        "attemptsMade": row["attempts_made"],
        "result": row["result"],
        "error": error_payload(row["error"], error_type=row["error_type"], detail=row["error_detail"]),
        "errorMessage": row["error"] or None,
        "createdAt": iso(row["created_at"]),
        "startedAt": iso(row["started_at"]),
        "finishedAt": iso(row["finished_at"]),
    }


def job_payload(row: dict[str, Any]) -> dict[str, Any]:
    """A whole job from a ``.values(*JOB_PAYLOAD_FIELDS)`` row (``JobOutputSerializer``)."""
    return {
        **job_state_payload(row),
        "flowId": row["flow_id"],
        "attempts": row["max_attempts"],
        "data": row["data"],
        "opts": row["opts"],
        "errorType": row["error_type"] or None,
    }


def job_progress_entry(state: dict[str, Any]) -> dict[str, Any]:
    """A job's entry in the flow detail's ``progress.jobs`` (legacy ``FlowProgress.jobs``), from its state."""
    return {
        "name": state["name"],
        "queueName": state["queueName"],
        "status": state["status"],
        "result": state["result"],
        "error": state["error"],
        "startedAt": state["startedAt"],
        "completedAt": state["finishedAt"],
    }


def job_list_payloads(jobs: QuerySet[Job]) -> list[dict[str, Any]]:
    """Jobs with the legacy ``FlowJob`` fields too: ``id``, ``children`` (ids, in order) and ``updatedAt``.

    ``updatedAt`` is the job's last recorded change: its finish, else its start, else
    its creation. Two queries, whatever the number of jobs.
    """
    rows = list(jobs.values(*JOB_PAYLOAD_FIELDS))
    children: dict[str, list[str]] = {row["id"]: [] for row in rows}
    for parent_id, child_id in (
        Job.objects.filter(parent_id__in=list(children)).order_by("parent_id", "position", "created_at", "id")
        .values_list("parent_id", "id")
    ):
        children[parent_id].append(child_id)
    payloads = []
    for row in rows:
        payload = job_payload(row)
        payload["id"] = row["id"]
        payload["children"] = children[row["id"]]
        payload["updatedAt"] = iso(row["finished_at"] or row["started_at"] or row["created_at"])
        payloads.append(payload)
    return payloads


def job_list_for_user(*, user: AbstractBaseUser) -> QuerySet[Job]:
    """Jobs the user may see (``accounts.permissions``): their own (flow jobs belong to the
    flow's owner), or every job for superusers and staff with ``jobs.view_job``."""
    return permissions.visible(Job.objects.all(), user)


def job_payloads(jobs: QuerySet[Job]) -> list[dict[str, Any]]:
    return [job_payload(row) for row in jobs.values(*JOB_PAYLOAD_FIELDS)]


def queue_status_counts(*, user: AbstractBaseUser) -> dict[str, dict[str, int]]:
    """``{queue: {status: n}}`` for every allowed queue, every status present (one query)."""
    counts = {queue: {status.value: 0 for status in JobStatus} for queue in job_queues()}
    rows = job_list_for_user(user=user).values("queue_name", "status").annotate(n=Count("pk")).order_by()
    for row in rows:
        if row["queue_name"] in counts:
            counts[row["queue_name"]][row["status"]] = row["n"]
    return counts


def queue_health() -> dict[str, dict[str, Any]]:
    """Per allowed queue: live workers, the oldest waiting job's age, and the sweeps' counters.

    System-wide, whoever asks: these describe the queue, not anybody's jobs.
    """
    from django.db.models import Min
    from django.utils import timezone

    from jobs.liveness import live_workers_per_queue

    now = timezone.now()
    queues = job_queues()
    workers = live_workers_per_queue()
    oldest = dict(
        Job.objects.filter(status=JobStatus.WAITING, queue_name__in=queues)
        .values("queue_name").annotate(oldest=Min("created_at")).order_by().values_list("queue_name", "oldest")
    )
    states = {state.name: state for state in QueueState.objects.filter(name__in=queues)}
    health = {}
    for name in queues:
        state = states.get(name)
        health[name] = {
            "external": is_external(name),
            "liveWorkers": workers.get(name, 0),
            "oldestWaitingSeconds": round((now - oldest[name]).total_seconds(), 1) if name in oldest else None,
            "stalledTotal": state.stalled_total if state else 0,
            "redispatchedTotal": state.redispatched_total if state else 0,
        }
    return health


def paused_queues() -> set[str]:
    return set(QueueState.objects.filter(paused=True).values_list("name", flat=True))


def latest_failures(*, user: AbstractBaseUser, limit: int = 10) -> list[dict[str, Any]]:
    failed = job_list_for_user(user=user).filter(status=JobStatus.FAILED).order_by("-finished_at")[:limit]
    return job_payloads(failed)
