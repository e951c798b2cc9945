"""From one legacy flow and its job rows to the Flowsite rows that replace them.

Pure: builds unsaved ``Flow`` and ``Job`` objects (and never touches a
database), so a dry run plans exactly what a real run writes. A row that cannot
be placed in its flow raises ``BadRow``, which skips its whole flow: a flow with
a hole in it would get a wrong tree and a wrong status, and skipping it whole
lets a later run migrate it cleanly once the row is fixed. A ``data``, ``opts``
or ``result`` cell that cannot be read does not: the job keeps its raw text as
``{"_legacyRaw": "..."}`` and is reported as needing attention.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.db import models

from flows.status import derive_flow_status
from flows.legacy.report import Issue
from flows.legacy.source import LegacyFlow, LegacyJob
from flows.legacy.tree import Tree, rebuild_tree
from flows.legacy.values import (
    BadValue,
    legacy_id_text,
    map_status,
    parse_json,
    parse_json_list,
    parse_json_object,
    parse_timestamp,
    RAW_KEY,
    raw_text,
    user_data,
)
from jobs.queues import job_queues
from flows.models import Flow, new_flow_id
from jobs.models import Job, new_job_id
from jobs.options import parse_job_options
from flows.planning import flow_metadata
from jobs.vocabulary import (
    FINAL_FLOW_STATUSES,
    IGNORED_FAILURE_POLICIES,
    TERMINAL_JOB_STATUSES,
    UNFINISHED_JOB_STATUSES,
    FlowStatus,
    JobStatus,
)

M = TypeVar("M", bound=models.Model)

# The name of a job whose name the legacy data does not give (see docs/legacy-migration.md).
UNKNOWN_JOB_NAME = "(unknown)"


class BadRow(Exception):
    """A legacy row that cannot be migrated; ``issue`` names it and says why."""

    def __init__(self, issue: Issue) -> None:
        super().__init__(str(issue))
        self.issue = issue


@dataclass
class ParsedJob:
    """A legacy job row with its values parsed (``status`` already mapped)."""

    legacy: LegacyJob
    row_id: str  # "FlowJob".id, which reports name the row by
    queue_name: str
    data: dict[str, Any]
    opts: dict[str, Any]
    status: JobStatus
    status_known: bool
    result: Any
    error: str
    children: list[Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    # Why a cell was kept raw (``RAW_KEY``), one reason per cell.
    raw_cells: list[str] = field(default_factory=list)

    @property
    def data_unreadable(self) -> bool:
        """Its ``data`` was kept raw: it can match its definition by queue only (``tree``)."""
        return RAW_KEY in self.data and any(reason.startswith("data ") for reason in self.raw_cells)


@dataclass
class FlowPlan:
    """The rows to write for one legacy flow, and what is worth reporting about it."""

    legacy_id: str
    flow: Flow
    jobs: list[Job]
    warnings: list[Issue] = field(default_factory=list)
    statuses_mapped: Counter[tuple[str, str]] = field(default_factory=Counter)
    statuses_unknown: list[tuple[str, str]] = field(default_factory=list)
    # Migrated, but the exit status says they need attention (also listed in ``warnings``).
    attention: list[Issue] = field(default_factory=list)


def plan_legacy_flow(*, legacy: LegacyFlow, rows: list[LegacyJob], owner_id: int | None) -> FlowPlan:
    """Return the ``Flow`` and ``Job`` objects for one legacy flow (unsaved).

    Job statuses are mapped (``values.map_status``), the tree is rebuilt from
    the ``children`` definitions, and the flow's status is derived from its
    jobs by ``flows.status.derive_flow_status``. Raises ``BadRow``.
    """
    flow_id = legacy_id_text(legacy.id)
    name = _flow_name(legacy, flow_id)
    created_at, updated_at = _flow_times(legacy, flow_id)
    parsed = sorted(
        (_parse_job(row, default_time=created_at) for row in rows),
        key=lambda job: (job.created_at, _sort_key(job.legacy.id)),
    )
    tree = rebuild_tree(root_name=name, rows=parsed)
    plan = FlowPlan(
        legacy_id=flow_id,
        flow=new_instance(Flow, id=new_flow_id(), legacy_id=flow_id, flowname=name, name=name, owner_id=owner_id),
        jobs=[],
    )
    ids = [new_job_id() for _ in parsed]
    plan.jobs = _build_jobs(plan, parsed, tree, ids)
    plan.flow.job_structure = _structure(parsed, tree, ids)
    _note_statuses(plan, parsed)
    _note_tree(plan, parsed, tree)
    _note_raw_cells(plan, parsed)
    _note_queues(plan, parsed)
    _finish_flow(plan.flow, plan.jobs, has_root=tree.root is not None, created_at=created_at, updated_at=updated_at)
    return plan


# Legacy values -------------------------------------------------------------


def _flow_name(legacy: LegacyFlow, flow_id: str) -> str:
    _check_length(flow_id, Flow, "legacy_id", "Flow", flow_id, "id")
    if not isinstance(legacy.name, str) or not legacy.name.strip():
        raise BadRow(Issue("Flow", flow_id, "name is missing, so its flow and root job have no name"))
    _check_length(legacy.name, Flow, "flowname", "Flow", flow_id, "name")
    return legacy.name


def _flow_times(legacy: LegacyFlow, flow_id: str) -> tuple[dt.datetime, dt.datetime]:
    try:
        created = parse_timestamp(legacy.created_at, column="createdAt")
        updated = parse_timestamp(legacy.updated_at, column="updatedAt")
    except BadValue as exc:
        raise BadRow(Issue("Flow", flow_id, str(exc))) from exc
    created = created or updated
    if created is None:
        raise BadRow(Issue("Flow", flow_id, "createdAt and updatedAt are both NULL"))
    return created, updated or created


def _parse_job(row: LegacyJob, *, default_time: dt.datetime) -> ParsedJob:
    job_id = legacy_id_text(row.id)
    where = f"in flow {legacy_id_text(row.flow_id)}: its flow is skipped"
    try:
        if not isinstance(row.queue_name, str) or not row.queue_name.strip():
            raise BadValue("queueName is missing")
        _check_length(row.queue_name, Job, "queue_name", "FlowJob", job_id, "queueName")
        if row.job_id is not None:
            _check_length(legacy_id_text(row.job_id), Job, "legacy_id", "FlowJob", job_id, "jobId")
        status, known = map_status(row.status)
        created = parse_timestamp(row.created_at, column="createdAt") or default_time
        raw_cells: list[str] = []
        return ParsedJob(
            legacy=row,
            row_id=job_id,
            queue_name=row.queue_name,
            data=_or_raw(parse_json_object, row.data, "data", raw_cells),
            opts=_or_raw(parse_json_object, row.opts, "opts", raw_cells),
            status=status,
            status_known=known,
            result=_or_raw(parse_json, row.result, "result", raw_cells),
            error="" if row.error is None else str(row.error),
            # Unreadable children cannot be placed: that skips the flow.
            children=parse_json_list(row.children, column="children"),
            created_at=created,
            updated_at=parse_timestamp(row.updated_at, column="updatedAt") or created,
            raw_cells=raw_cells,
        )
    except (BadValue, BadRow) as exc:
        reason = exc.issue.reason if isinstance(exc, BadRow) else str(exc)
        raise BadRow(Issue("FlowJob", job_id, f"{reason} ({where})")) from exc


def _or_raw(parse: Callable[..., Any], value: Any, column: str, raw_cells: list[str]) -> Any:
    """``parse(value)``, or ``{RAW_KEY: <the cell's text>}`` if it cannot be read (the reason noted)."""
    try:
        return parse(value, column=column)
    except BadValue as exc:
        raw_cells.append(str(exc))
        return {RAW_KEY: raw_text(value)}


def _check_length(value: str, model: type, field_name: str, table: str, legacy_id: str, column: str) -> None:
    limit = _max_length(model, field_name)
    if len(value) > limit:
        raise BadRow(Issue(table, legacy_id, f"{column} is longer than {limit} characters"))


@functools.cache
def _max_length(model: type[models.Model], field_name: str) -> int:
    return model._meta.get_field(field_name).max_length


def _sort_key(value: Any) -> tuple[int, Any]:
    # Integer ids sort as numbers, cuid strings as text: rows of one table never mix them.
    return (0, value) if isinstance(value, int) else (1, str(value))


# Flowsite rows -------------------------------------------------------------


def _build_jobs(plan: FlowPlan, parsed: list[ParsedJob], tree: Tree, ids: list[str]) -> list[Job]:
    """One ``Job`` per row, parents before children (breadth-first), then unplaced rows."""
    root_id = ids[tree.root] if tree.root is not None else ""
    jobs = []
    for index in _breadth_first(tree) + tree.unplaced:
        placement = tree.placements.get(index)
        parent_id = ids[placement.parent] if placement and placement.parent is not None else None
        children = [parsed[child] for child in tree.children.get(index, [])]
        jobs.append(
            _new_job(
                plan.flow, parsed[index], job_id=ids[index], root_id=root_id, parent_id=parent_id,
                name=(placement.name if placement else None) or UNKNOWN_JOB_NAME,
                position=placement.position if placement else 0, children=children,
            )
        )
    return jobs


def _new_job(
    flow: Flow, job: ParsedJob, *, job_id: str, root_id: str, parent_id: str | None, name: str, position: int,
    children: list[ParsedJob],
) -> Job:
    _check_length(name, Job, "name", "FlowJob", job.row_id, "the name in its definition")
    options, _ = parse_job_options(job.opts, path="opts")  # lenient: BullMQ stored more keys than Flowsite knows
    metadata = flow_metadata(flow_id=flow.id, flowname=flow.flowname, root_job_id=root_id, parent_job_id=parent_id)
    return new_instance(
        Job,
        id=job_id,
        legacy_id=None if job.legacy.job_id is None else legacy_id_text(job.legacy.job_id),
        flow_id=flow.id,
        owner_id=flow.owner_id,
        parent_id=parent_id,
        name=name,
        queue_name=job.queue_name,
        data={**user_data(job.data), "flowId": flow.id, "_flowMetadata": metadata},
        opts=job.opts,
        status=job.status,
        max_attempts=options.attempts,
        failure_policy=options.failure_policy,
        position=position,
        child_count=len(children),
        pending_children=sum(child.status not in TERMINAL_JOB_STATUSES for child in children),
        result=job.result,
        error=job.error,
        created_at=job.created_at,
        finished_at=job.updated_at if job.status in TERMINAL_JOB_STATUSES else None,
    )


def new_instance(model: type[M], **values: Any) -> M:
    """``model(**values)``, built as ``Model.from_db`` builds rows: positionally, in field order.

    Three times faster than keyword arguments, which counts for the hundreds of
    thousands of rows a migration plans.
    """
    return model(*[values[name] if name in values else default() for name, default in _field_defaults(model)])


@functools.cache
def _field_defaults(model: type[models.Model]) -> list[tuple[str, Callable[[], Any]]]:
    return [(field.attname, field.get_default) for field in model._meta.concrete_fields]


def _breadth_first(tree: Tree) -> list[int]:
    if tree.root is None:
        return []
    order, queue = [], deque([tree.root])
    while queue:
        index = queue.popleft()
        order.append(index)
        queue.extend(tree.children.get(index, []))
    return order


def _structure(parsed: list[ParsedJob], tree: Tree, ids: list[str]) -> dict[str, Any]:
    """The tree as ``flow_create`` stores it: ``{jobId, name, queueName, data, opts?, children?}``."""
    if tree.root is None:
        return {}
    nodes: dict[int, dict[str, Any]] = {}
    for index in _breadth_first(tree):
        job = parsed[index]
        node = {
            "jobId": ids[index],
            "name": tree.placements[index].name or UNKNOWN_JOB_NAME,
            "queueName": job.queue_name,
            "data": user_data(job.data),
        }
        if job.opts:
            node["opts"] = job.opts
        nodes[index] = node
        parent = tree.placements[index].parent
        if parent is not None:
            nodes[parent].setdefault("children", []).append(node)
    return nodes[tree.root]


def _finish_flow(
    flow: Flow, jobs: list[Job], *, has_root: bool, created_at: dt.datetime, updated_at: dt.datetime
) -> None:
    """Fill in the flow's root, status (derived from its jobs), outcome and timestamps."""
    root = jobs[0] if has_root else None  # jobs come root first
    flow.root_job_id = root.id if root else ""
    flow.queue_name = root.queue_name if root else ""
    flow.total_jobs = len(jobs)
    flow.status = _derive_status(jobs)
    flow.created_at, flow.updated_at = created_at, updated_at
    if flow.status != FlowStatus.PENDING:
        # Legacy rows record no start times: the first job's creation is the closest.
        flow.started_at = min(job.created_at for job in jobs)
    if flow.status in FINAL_FLOW_STATUSES:
        finished = [job.finished_at for job in jobs if job.finished_at]
        flow.completed_at = max(finished, default=updated_at)
    if flow.status == FlowStatus.COMPLETED and root is not None:
        flow.result = root.result
    if flow.status == FlowStatus.FAILED:
        flow.error = _first_failure(jobs)


def _derive_status(jobs: list[Job]) -> FlowStatus:
    """Count the jobs as ``flows.status.flow_job_counts`` does, then apply the engine's rule."""
    counts = Counter(job.status for job in jobs)
    ignored = sum(_is_ignored_failure(job) for job in jobs)
    # Only a user's cancellation leaves cancelled jobs behind, so they mean the flow was cancelled.
    return derive_flow_status(counts, ignored_failures=ignored, cancelled=bool(counts[JobStatus.CANCELLED]))


def _is_ignored_failure(job: Job) -> bool:
    """A child's failure under ignore/removeDependencyOnFailure: it does not fail the flow."""
    return (
        job.status == JobStatus.FAILED and job.failure_policy in IGNORED_FAILURE_POLICIES and job.parent_id is not None
    )


def _first_failure(jobs: list[Job]) -> str:
    failed = [job for job in jobs if job.status == JobStatus.FAILED and not _is_ignored_failure(job)]
    job = min(failed, key=lambda job: job.finished_at or job.created_at)
    # The message jobs.transitions writes when a job fails its flow.
    return f"Job {job.name} ({job.id}) failed: {job.error}"


# Findings ------------------------------------------------------------------


def _note_statuses(plan: FlowPlan, parsed: list[ParsedJob]) -> None:
    for job in parsed:
        raw = job.legacy.status
        shown = "NULL" if raw is None else repr(raw)
        if not job.status_known:
            plan.statuses_unknown.append((shown, job.row_id))
        elif raw != job.status.value:
            plan.statuses_mapped[(shown, job.status.value)] += 1


def _note_tree(plan: FlowPlan, parsed: list[ParsedJob], tree: Tree) -> None:
    if not parsed:
        plan.warnings.append(Issue("Flow", plan.legacy_id, "has no jobs: migrated as an empty, pending flow"))
    for index in tree.unplaced:
        plan.warnings.append(
            Issue(
                "FlowJob", parsed[index].row_id,
                f"matches no child definition in flow {plan.legacy_id}: migrated without a parent, "
                f"named {UNKNOWN_JOB_NAME!r}",
            )
        )
    for parent, definition in tree.missing:
        plan.warnings.append(
            Issue("FlowJob", parsed[parent].row_id, f"child {_describe(definition)} has no FlowJob row")
        )
    for index, placement in tree.placements.items():
        if placement.name is None:
            plan.warnings.append(
                Issue("FlowJob", parsed[index].row_id, f"its definition has no name: named {UNKNOWN_JOB_NAME!r}")
            )


def _note_raw_cells(plan: FlowPlan, parsed: list[ParsedJob]) -> None:
    for job in parsed:
        for reason in job.raw_cells:
            column = reason.split(" ", 1)[0]
            _attention(plan, Issue("FlowJob", job.row_id, f"{reason}: migrated with its raw text as {column} "
                                                          f'{{"{RAW_KEY}": ...}}'))


def _note_queues(plan: FlowPlan, parsed: list[ParsedJob]) -> None:
    """Name the unfinished jobs on a queue Flowsite does not know: no worker would ever run them."""
    known = set(job_queues())
    for job in parsed:
        if job.queue_name not in known and job.status in UNFINISHED_JOB_STATUSES:
            _attention(plan, Issue(
                "FlowJob", job.row_id,
                f"is {job.status} on queue {job.queue_name!r}, which no worker consumes and no external "
                "worker reports (not in FLOWSITE_QUEUES or FLOWSITE_EXTERNAL_QUEUES): add the queue, "
                "or cancel the flow",
            ))


def _attention(plan: FlowPlan, issue: Issue) -> None:
    plan.attention.append(issue)
    plan.warnings.append(issue)


def _describe(definition: Any) -> str:
    if not isinstance(definition, dict):
        return f"definition {definition!r:.60}"
    return f"{definition.get('name')!r} (queue {definition.get('queueName')!r})"
