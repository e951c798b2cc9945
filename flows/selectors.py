"""Reads of flows and their jobs: progress and the job tree."""

from __future__ import annotations

import json
from datetime import timedelta, timezone as dt_timezone
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Count, F, QuerySet, Window
from django.db.models.functions import RowNumber, TruncHour
from django.utils import timezone
from rest_framework.utils import encoders

from accounts import permissions
from flows.status import flow_job_counts
from flowsite.db import load_json, prepared_cursor
from flows.models import Flow
from jobs.models import Job, JobLog
from jobs.selectors import JOB_STATE_FIELDS, error_payload, iso, job_progress_entry, job_state_payload
from jobs.vocabulary import FlowStatus, JobStatus

# ``REST_FRAMEWORK["DATETIME_FORMAT"]`` in PostgreSQL's to_char() notation.
_PG_TIMESTAMP = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


def flow_progress(*, flow: Flow) -> dict[str, Any]:
    """Return the flow's progress (``progress_from_counts``) from the job rows."""
    counts, _ = flow_job_counts(flow_id=flow.pk)
    return progress_from_counts(counts)


def progress_from_counts(counts: dict[str, int]) -> dict[str, Any]:
    """The public progress object from a flow's job count per status: the one builder, REST and events.

    ``{total, completed, failed, percentage, <status>: n..., summary: {the same}}``: the
    flat counters are Flowsite's, ``summary`` the legacy ``FlowProgress.summary``.
    ``percentage`` is the share of the flow's jobs that completed (failed ones do not count).
    """
    total = sum(counts.values())
    completed = counts.get(_COMPLETED, 0)
    summary: dict[str, Any] = {
        "total": total,
        "completed": completed,
        "failed": counts.get(_FAILED, 0),
        "percentage": round(100 * completed / total, 1) if total else 0.0,
    }
    for status in _JOB_STATUSES:
        summary[status] = counts.get(status, 0)
    return {**summary, "summary": summary}


# Plain strings: this runs for every flow of every list page.
_JOB_STATUSES = tuple(status.value for status in JobStatus)
_COMPLETED, _FAILED = JobStatus.COMPLETED.value, JobStatus.FAILED.value


TREE_FIELDS = ("id", "parent_id", "name", "queue_name", "status", "attempts_made", "result", "error")
# The admin's flow page shows more of each job (``flows.console``).
CONSOLE_TREE_FIELDS = (
    *TREE_FIELDS, "max_attempts", "progress", "data", "error_type", "created_at", "started_at", "finished_at",
)


def flow_jobs_tree(*, flow: Flow, fields: tuple[str, ...] = TREE_FIELDS) -> list[dict[str, Any]]:
    """Return the flow's jobs as nested dicts (roots first, children in order), in one query.

    Each job has ``fields`` (which must include ``id`` and ``parent_id``) and ``children``.
    """
    rows = list(Job.objects.filter(flow_id=flow.pk).order_by("position", "created_at").values(*fields))
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    for row in rows:
        by_parent.setdefault(row["parent_id"], []).append(row)
    for row in rows:
        row["children"] = by_parent.get(row["id"], [])
    roots = by_parent.get(None, [])
    roots.sort(key=lambda row: row["id"] != flow.root_job_id)
    return roots


FLOW_FIELDS = (
    "id", "flowname", "name", "queue_name", "status", "result", "error", "error_detail",
    "created_at", "updated_at", "started_at", "completed_at",
)


def flow_payload(row: dict[str, Any], progress: dict[str, Any]) -> dict[str, Any]:
    """A flow's public (camelCase) shape from a ``.values(*FLOW_FIELDS)`` row and its progress.

    ``flows.serializers.FlowOutputSerializer`` documents the same shape.
    """
    return {
        "flowId": row["id"],
        "flowname": row["flowname"],
        "name": row["name"],
        "queueName": row["queue_name"],
        "status": row["status"],
        "progress": progress,
        "result": row["result"],
        "error": error_payload(row["error"], detail=row["error_detail"]),
        "errorMessage": row["error"] or None,
        "createdAt": iso(row["created_at"]),
        "updatedAt": iso(row["updated_at"]),
        "startedAt": iso(row["started_at"]),
        "completedAt": iso(row["completed_at"]),
    }


# A page of flows with each one's job count per status, in one prepared statement.
_FLOW_PAGE_SQL = (
    f"SELECT {', '.join(f'f.{field}' for field in FLOW_FIELDS)}, "
    "(SELECT json_object_agg(c.status, c.n) FROM "
    f"(SELECT status, count(*) AS n FROM {Job._meta.db_table} WHERE flow_id = f.id GROUP BY status) c) "
    f"FROM {Flow._meta.db_table} f WHERE f.id = ANY(%s)"
)


def flow_payloads(flow_ids: list[str]) -> list[dict[str, Any]]:
    """Payloads of these flows, in this order, without N+1: one query on PostgreSQL, two elsewhere."""
    if connection.vendor == "postgresql":
        with prepared_cursor() as cursor:
            cursor.execute(_FLOW_PAGE_SQL, [flow_ids])
            found = {}
            for *values, counts in cursor.fetchall():
                row = dict(zip(FLOW_FIELDS, values))
                row["result"] = load_json(row["result"])
                row["error_detail"] = load_json(row["error_detail"])
                found[row["id"]] = flow_payload(row, progress_from_counts(load_json(counts) or {}))
    else:
        progress = flows_progress(flow_ids=flow_ids)
        found = {row["id"]: flow_payload(row, progress[row["id"]])
                 for row in Flow.objects.filter(pk__in=flow_ids).values(*FLOW_FIELDS)}
    return [found[flow_id] for flow_id in flow_ids if flow_id in found]


def flow_payload_of(flow: Flow) -> dict[str, Any]:
    """The payload of one loaded flow."""
    row = {field: getattr(flow, field) for field in FLOW_FIELDS}
    return flow_payload(row, flow_progress(flow=flow))


def flow_list_for_user(*, user: AbstractBaseUser) -> QuerySet[Flow]:
    """Flows the user may see (``accounts.permissions``): their own, or every flow for
    superusers and staff with ``flows.view_flow``. The job structure is not loaded."""
    return permissions.visible(Flow.objects.defer("job_structure"), user)


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


def flow_job_logs(*, flow: Flow, per_job: int) -> dict[str, list[dict[str, Any]]]:
    """``{job id: [{message, created_at}...]}``: the last ``per_job`` log lines of each job, in one query."""
    rows = (
        JobLog.objects.filter(job__flow_id=flow.pk)
        .annotate(rank=Window(RowNumber(), partition_by=F("job_id"), order_by=F("id").desc()))
        .filter(rank__lte=per_job)
        .order_by("job_id", "id")
        .values("job_id", "message", "created_at")
    )
    logs: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        logs.setdefault(row["job_id"], []).append(row)
    return logs


def flows_created_per_hour(*, user: AbstractBaseUser, hours: int = 24) -> list[dict[str, Any]]:
    """Flows the user may see created in each of the last ``hours`` hours, oldest first (one query).

    ``[{"hour": <start of the hour, UTC>, "count": n}]``, the current hour last, empty hours included.
    """
    end = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    counted = dict(
        flow_list_for_user(user=user).filter(created_at__gte=start)
        .annotate(hour=TruncHour("created_at", tzinfo=dt_timezone.utc)).values("hour")
        .annotate(n=Count("pk")).order_by().values_list("hour", "n")
    )
    slots = [start + timedelta(hours=index) for index in range(hours)]
    return [{"hour": slot, "count": counted.get(slot, 0)} for slot in slots]


def flow_status_counts(*, user: AbstractBaseUser) -> dict[str, int]:
    """``{flow status: n}`` over the flows the user may see (one query)."""
    counts = {status.value: 0 for status in FlowStatus}
    for row in flow_list_for_user(user=user).values("status").annotate(n=Count("pk")).order_by():
        counts[row["status"]] = row["n"]
    return counts


def job_structure_payload(structure: dict[str, Any]) -> dict[str, Any]:
    """The public ``jobStructure``: the stored tree (every node with its ``jobId``) under ``root``."""
    return {"root": structure}


_PG_TIME = "to_char({column} AT TIME ZONE 'UTC', '" + _PG_TIMESTAMP + "')"
# ``jobs.selectors.error_payload`` in SQL: the reporter's object while its message is the text.
_PG_JOB_ERROR = (
    "CASE WHEN error = '' THEN NULL "
    "WHEN error_detail ->> 'message' = error THEN error_detail::json "
    "WHEN error_type <> '' THEN json_build_object('message', error, 'type', error_type) "
    "ELSE json_build_object('message', error) END"
)
# PostgreSQL builds the same objects as ``jobs.selectors.job_state_payload`` and
# ``job_progress_entry``, key for key: the job states in order, and the legacy map by job id.
_JOB_STATES_SQL = f"""
SELECT coalesce(json_agg(state ORDER BY created_at, position, id), '[]')::text,
       coalesce(json_object_agg(id, entry ORDER BY created_at, position, id), '{{}}')::text
FROM (SELECT id, created_at, position, json_build_object(
    'jobId', id, 'parentJobId', parent_id, 'name', name, 'queueName', queue_name,
    'status', status, 'progress', progress, 'attemptsMade', attempts_made, 'result', result,
    'error', {_PG_JOB_ERROR}, 'errorMessage', nullif(error, ''),
    'createdAt', {_PG_TIME.format(column="created_at")},
    'startedAt', {_PG_TIME.format(column="started_at")},
    'finishedAt', {_PG_TIME.format(column="finished_at")}
) AS state, json_build_object(
    'name', name, 'queueName', queue_name, 'status', status, 'result', result,
    'error', {_PG_JOB_ERROR},
    'startedAt', {_PG_TIME.format(column="started_at")},
    'completedAt', {_PG_TIME.format(column="finished_at")}
) AS entry FROM {Job._meta.db_table} WHERE flow_id = %s) job
"""


def flow_job_states_json(*, flow: Flow) -> tuple[str, str]:
    """The flow's job states as a JSON array (text), in ``flow_jobs`` order, and the
    legacy ``progress.jobs`` map by job id (text).

    On PostgreSQL the database builds the JSON in one query, with no Python work
    per job: a 1,000-job flow's detail stays fast. Elsewhere Python builds it.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_JOB_STATES_SQL, [flow.pk])
            states, entries = cursor.fetchone()
            return states, entries
    states = [job_state_payload(row) for row in flow_jobs(flow=flow).values(*JOB_STATE_FIELDS)]
    return json.dumps(states), json.dumps({state["jobId"]: job_progress_entry(state) for state in states})


def flow_detail_json(*, flow: Flow) -> str:
    """``GET /api/flows/{flowId}``'s body as JSON text: the flow, ``jobStructure``, ``jobs``,
    and ``progress`` with the legacy ``jobs`` map.

    The job arrays arrive as JSON text (built by the database): they are spliced in
    rather than decoded and encoded again. The websocket snapshot decodes this same text.
    """
    body = flow_payload_of(flow)
    progress = body.pop("progress")
    body["jobStructure"] = job_structure_payload(flow.job_structure)
    states, entries = flow_job_states_json(flow=flow)
    head = json.dumps(body, cls=encoders.JSONEncoder, separators=(",", ":"))
    progress_text = json.dumps(progress, separators=(",", ":"))
    return f'{head[:-1]},"progress":{progress_text[:-1]},"jobs":{entries}}},"jobs":{states}}}'


def flow_detail_payload(*, row: dict[str, Any], counts: dict[str, int], job_rows: list[dict[str, Any]],
                        structure: dict[str, Any]) -> dict[str, Any]:
    """``flow_detail_json``'s object built in Python, from rows already in memory (``flow:created``)."""
    states = [job_state_payload(job_row) for job_row in job_rows]
    body = {**flow_payload(row, progress_from_counts(counts)), "jobStructure": job_structure_payload(structure)}
    body["progress"]["jobs"] = {state["jobId"]: job_progress_entry(state) for state in states}
    body["jobs"] = states
    return body
