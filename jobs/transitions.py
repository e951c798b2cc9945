"""Job state transitions of the hot path: start, complete, fail, progress, log.

Every transition is one conditional ``UPDATE ... WHERE status IN (allowed
sources)`` whose row count (or ``RETURNING`` row) says whether it happened, so
a re-delivered or duplicated task, or a job cancelled meanwhile, changes
nothing. Fan-in is counted in the database: each parent holds
``pending_children``; the child that brings it to zero moves the parent from
``waiting-children`` to ``waiting`` and enqueues it after commit.

Start and complete use hand-written SQL so that a job costs two statements,
whatever the size of its flow. The other job writes (submission, reports,
cancel, delete, retry, queues) are in ``jobs.services``.
"""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from flows import events
from flows import status as flow_status
from flows.models import Flow
from flowsite.db import load_json, prepared_cursor
from jobs import liveness
from jobs.dispatch import JobRef, enqueue_jobs, redispatch_at
from jobs.exceptions import JobLostError
from jobs.models import Job, JobLog, QueueState
from jobs.options import JobOptions
from jobs.vocabulary import (
    CANCELLED_ERROR,
    CHILD_FAILED_ERROR,
    FINAL_FLOW_STATUSES,
    IGNORED_FAILURE_POLICIES,
    STARTABLE_JOB_STATUSES,
    FailurePolicy,
    FlowEvent,
    FlowStatus,
    JobStatus,
)

logger = logging.getLogger(__name__)

JOB_TABLE = Job._meta.db_table
FLOW_TABLE = Flow._meta.db_table


@dataclass(frozen=True)
class StartedJob:
    """What a worker needs of a job it has just made active."""

    id: str
    name: str
    queue_name: str
    data: dict[str, Any]
    opts: dict[str, Any]
    flow_id: str | None
    parent_id: str | None
    attempts_made: int
    child_count: int
    failure_policy: str

    @classmethod
    def from_job(cls, job: Job) -> StartedJob:
        return cls(
            id=job.id, name=job.name, queue_name=job.queue_name, data=job.data, opts=job.opts,
            flow_id=job.flow_id, parent_id=job.parent_id, attempts_made=job.attempts_made,
            child_count=job.child_count, failure_policy=job.failure_policy,
        )


def _json_placeholder() -> str:
    return "%s::jsonb" if connection.vendor == "postgresql" else "%s"


def _fetch_one(sql: str, params: list[Any]) -> tuple | None:
    with prepared_cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


_STARTABLE = sorted(STARTABLE_JOB_STATUSES)
_STARTABLE_SQL = ", ".join(["%s"] * len(_STARTABLE))
_QUEUE_PAUSED_SQL = (
    f"EXISTS (SELECT 1 FROM {QueueState._meta.db_table} q WHERE q.name = {JOB_TABLE}.queue_name AND q.paused)"
)


def _park_if_paused(job_id: str) -> bool:
    """Move a due job of a paused queue ``waiting|delayed -> paused``; True if it was parked."""
    with transaction.atomic():
        row = _fetch_one(
            f"UPDATE {JOB_TABLE} SET status = %s WHERE id = %s AND status IN ({_STARTABLE_SQL}) "
            f"AND {_QUEUE_PAUSED_SQL} RETURNING flow_id, name, queue_name, attempts_made",
            [JobStatus.PAUSED, job_id, *_STARTABLE],
        )
        if row is None:
            return False
        outbox = events.Outbox()
        outbox.job_updated(
            flow_id=row[0], job_id=job_id, name=row[1], queue_name=row[2], status=JobStatus.PAUSED,
            attempts_made=row[3],
        )
        outbox.close()
    return True


def _is_startable(job_id: str) -> bool:
    return Job.objects.filter(pk=job_id, status__in=STARTABLE_JOB_STATUSES).exists()


# Commit durability on PostgreSQL, for a worker's two statements per job.
#
# A commit normally waits for its WAL to reach the disk, and keeps its row locks
# meanwhile. For the completion that is the expensive part: siblings finishing at
# the same moment all count down the same parent row, so each waited for the
# others' disk flushes, one after another. Instead, both statements commit without
# waiting (``synchronous_commit`` off for that one transaction, set inside the
# statement), and before the worker acknowledges anything, ``_wait_for_flush``
# waits for the disk outside any lock. The WAL is written in order, so a flushed
# later commit means every earlier one is on disk too.
#
# - A start lost in a database crash leaves the job as it was (``waiting``); its
#   message, not yet acknowledged, is delivered again. Only an attempt goes uncounted.
# - A completion is flushed before its parent is published and before the task
#   returns (and its message is acknowledged).
# Inside a caller's transaction nothing is relaxed: the caller's commit decides.
_RELAXED = "relaxed AS (SELECT set_config('synchronous_commit', 'off', true))"
_IS_RELAXED = "EXISTS (SELECT 1 FROM relaxed)"

_START_COLUMNS = "name, queue_name, data, opts, flow_id, parent_id, attempts_made, child_count, failure_policy"
_START_UPDATE = (
    f"UPDATE {JOB_TABLE} SET status = %s, attempts_made = attempts_made + 1, started_at = %s, worker_id = %s "
    f"WHERE id = %s AND status IN ({_STARTABLE_SQL}) AND NOT {_QUEUE_PAUSED_SQL} {{relaxed}}"
    f"RETURNING {_START_COLUMNS}"
)
# Elsewhere than PostgreSQL: the start alone; its event number is taken in the same transaction.
_START_PLAIN_SQL = _START_UPDATE.format(relaxed="")
# PostgreSQL: the start and its event number (``flows.events``) in one statement. The
# number is taken only while events are live (the parameter before the flow id, ``events.live()``).
# A flow already final (a job of a failed flow goes on) takes one number more: its
# final event is sent again after the job's (``events.final_event_again``).
_FINAL_SQL = ", ".join(f"'{status}'" for status in sorted(FINAL_FLOW_STATUSES))
_SEQ_ARM = (
    f"seq AS (UPDATE {FLOW_TABLE} SET event_seq = event_seq + CASE WHEN status IN ({_FINAL_SQL}) THEN 2 ELSE 1 END "
    "WHERE %s AND id = {flow} RETURNING event_seq, owner_id, status IN (" + _FINAL_SQL + ") AS closed)"
)
_START_SQL = (
    "WITH {with_relaxed}started AS (" + _START_UPDATE + "), "
    + _SEQ_ARM.replace("{flow}", "(SELECT flow_id FROM started)") + " "
    f"SELECT {_START_COLUMNS}, seq.event_seq, seq.owner_id, seq.closed FROM started LEFT JOIN seq ON true"
)
_START_SYNC_SQL = _START_SQL.format(with_relaxed="", relaxed="")
_START_RELAXED_SQL = _START_SQL.format(with_relaxed=f"{_RELAXED}, ", relaxed=f"AND {_IS_RELAXED} ")

# Complete a job and count it off its parent, in one statement.
_COMPLETE_SQL = (
    f"{{with_relaxed}}done AS (UPDATE {JOB_TABLE} SET status = %s, result = %s::jsonb, finished_at = %s "
    "WHERE id = %s AND status = %s {relaxed}RETURNING id), "
    f"parent AS (UPDATE {JOB_TABLE} SET pending_children = pending_children - 1, "
    "status = CASE WHEN pending_children = 1 THEN %s ELSE status END, "
    "redispatch_at = CASE WHEN pending_children = 1 THEN %s ELSE redispatch_at END "
    "WHERE id = %s AND status = %s AND pending_children > 0 AND EXISTS (SELECT 1 FROM done) "
    "RETURNING status, queue_name, opts), "
    + _SEQ_ARM.replace("{flow}", "%s AND EXISTS (SELECT 1 FROM done)") + " "
    "SELECT (SELECT count(*) FROM done), (SELECT status FROM parent), "
    "(SELECT queue_name FROM parent), (SELECT opts FROM parent), "
    "(SELECT event_seq FROM seq), (SELECT owner_id FROM seq), (SELECT closed FROM seq)"
)
_COMPLETE_SYNC_SQL = _COMPLETE_SQL.format(with_relaxed="WITH ", relaxed="")
_COMPLETE_RELAXED_SQL = _COMPLETE_SQL.format(with_relaxed=f"WITH {_RELAXED}, ", relaxed=f"AND {_IS_RELAXED} ")


# While a recorder (webhooks) wants a job's change, the same statement also hands it to
# the recorder's own arms (``events.recorder_sql_arms``): the CTE ``ev`` holds the change
# (``events.RECORDED_JOB_COLUMNS``), and the last column counts what they wrote. Still
# one statement per transition, committed the same way.
_START_EVENT_ARM = (
    "ev AS (SELECT started.flow_id, %s::text AS job_id, started.queue_name, jsonb_build_object("
    "'flowId', started.flow_id, 'jobId', %s::text, 'name', started.name, 'queueName', started.queue_name, "
    "'jobStatus', %s::text, 'attemptsMade', started.attempts_made) AS data, %s::text AS status "
    "FROM started WHERE started.flow_id IS NOT NULL)"
)
_COMPLETE_EVENT_ARM = (
    "ev AS (SELECT %s::text AS flow_id, %s::text AS job_id, %s::text AS queue_name, %s::jsonb AS data, "
    "%s::text AS status FROM done)"
)


def _with_recorders(sql: str, event_arm: str, final_select: str, last_column: str) -> str:
    """``sql`` with the change as ``ev`` and the recorders' arms before its final ``SELECT``,
    which gets one more column (after ``last_column``): the number of records written."""
    head, tail = sql.split(final_select, 1)
    arms = events.recorder_sql_arms("ev")
    counted = " + ".join(f"(SELECT count(*) FROM rec{index})" for index in range(len(arms))) or "0"
    assert tail.count(last_column) == 1
    tail = tail.replace(last_column, f"{last_column}, {counted}")
    return f"{head}, {', '.join([event_arm, *arms])} {final_select}{tail}"


_recorded_sql: dict[str, str] = {}


def _recorded(name: str, sql: str) -> str:
    """The recorded variant of one of the statements above (built once the recorders are known)."""
    if name not in _recorded_sql:
        if name.startswith("start"):
            _recorded_sql[name] = _with_recorders(
                sql, _START_EVENT_ARM, f"SELECT {_START_COLUMNS}, seq.event_seq", "seq.closed"
            )
        else:
            _recorded_sql[name] = _with_recorders(
                sql, _COMPLETE_EVENT_ARM, "SELECT (SELECT count(*) FROM done)", "(SELECT closed FROM seq)"
            )
    return _recorded_sql[name]


def _relax_commits() -> bool:
    return connection.vendor == "postgresql" and not connection.in_atomic_block


def _wait_for_flush() -> None:
    """Return once every commit so far is on disk (see the note above ``_RELAXED``).

    A transaction with an id commits synchronously and flushes the WAL up to its
    own commit record, which comes after ours; without locks, it waits alone.
    """
    _fetch_one("SELECT pg_current_xact_id()", [])


def job_start(*, job_id: str, redelivered: bool = False, lost_on: str | None = None) -> StartedJob | None:
    """Move a job ``waiting|delayed -> active``, counting the attempt.

    Returns ``None`` (and changes nothing) when the job is not startable: already
    running or finished (a duplicated delivery), cancelled, or gone. Marks the
    job's flow ``running`` the first time one of its jobs starts.

    ``redelivered``: this message was given out before and its run did not finish
    (see ``jobs.tasks.run``). If the job is still ``active`` and the worker that
    runs it is dead (``jobs.liveness``), that run was lost, and the attempt is
    recorded as failed (``fail_lost_run``). A run whose worker is alive is left
    alone: the message came back because the broker's visibility timeout ran out,
    or was published twice, not because the run ended.

    ``lost_on``: the worker that handled this message before knows that its run
    ended unfinished (it lost the database mid-run and sent the message again): a
    run of that worker still ``active`` is lost whatever its heartbeat says.
    """
    for _ in range(3):
        row = _start_row(job_id)
        if row is not None:
            break
        if _park_if_paused(job_id):
            return None
        if (redelivered or lost_on) and fail_lost_run(job_id=job_id, lost_on=lost_on):
            return None
        if not _is_startable(job_id):
            return None
        # The queue was resumed between the two statements: try again.
    else:
        return None
    job = StartedJob(
        id=job_id,
        name=row[0],
        queue_name=row[1],
        data=load_json(row[2]) or {},
        opts=load_json(row[3]) or {},
        flow_id=row[4],
        parent_id=row[5],
        attempts_made=row[6],
        child_count=row[7],
        failure_policy=row[8],
    )
    if job.flow_id:
        if row[9] is not None:
            _send_numbered(job, JobStatus.ACTIVE, numbers=row[9:12])
        _mark_flow_running(job.flow_id)
    return job


def _mark_flow_running(flow_id: str) -> None:
    """``flows.status.flow_mark_running``; recorders that want the move (webhooks' ``delta``) get it with it."""
    if flow_status.flow_known_running(flow_id):
        return
    if not events.recording(FlowEvent.UPDATED, FlowStatus.RUNNING):
        flow_status.flow_mark_running(flow_id=flow_id)
        return
    with transaction.atomic():
        if flow_status.flow_mark_running(flow_id=flow_id):
            events.record([events.Event(name=FlowEvent.UPDATED, data={"flowId": flow_id, "status": FlowStatus.RUNNING},
                                        flow_id=flow_id, owner_id=0)])


def _start_row(job_id: str) -> tuple | None:
    """The start statement; its row ends with the event numbers (``_send_numbered``), all None unnumbered.

    Recorders that want the start get it in the same statement (PostgreSQL) or transaction.
    """
    params = [JobStatus.ACTIVE, timezone.now(), liveness.this_worker(), job_id, *_STARTABLE]
    recording = events.recording(FlowEvent.JOB_UPDATED, JobStatus.ACTIVE)
    if connection.vendor == "postgresql":
        relax = _relax_commits()
        sql = _START_RELAXED_SQL if relax else _START_SYNC_SQL
        params = [*params, events.live()]
        if recording:
            sql = _recorded("start-relaxed" if relax else "start-sync", sql)
            params += [job_id, job_id, JobStatus.ACTIVE, JobStatus.ACTIVE]
        row = _fetch_one(sql, params)
        if recording and row is not None and row[12]:
            events.recorded_by_sql(row[4])
        return row and (*row[:9], *_numbers(*row[9:12]))
    with transaction.atomic():
        row = _fetch_one(_START_PLAIN_SQL, params)
        if row is not None and row[4] is not None and recording:
            _record_job_event(job_id, row[4], row[0], row[1], JobStatus.ACTIVE, row[6])
        if row is None or row[4] is None or not events.live():
            return row and (*row, None, None, None)
        return (*row, *events.take_seqs({row[4]: 1}).get(row[4], (None, None, None)))


def _record_job_event(job_id: str, flow_id: str, name: str, queue_name: str, status: str, attempts_made: int,
                      **outcome: Any) -> None:
    """Hand one job's change to the recorders, in the current transaction."""
    data = events.job_updated_data(flow_id=flow_id, job_id=job_id, name=name, queue_name=queue_name, status=status,
                                   attempts_made=attempts_made, **outcome)
    events.record([events.Event(name=FlowEvent.JOB_UPDATED, data=data, flow_id=flow_id, owner_id=0)])



def _numbers(seq: int | None, owner_id: int | None, closed: bool | None) -> tuple[int | None, int | None, int | None]:
    """The seq arm's ``(event_seq, owner, closed)`` as ``(job event seq, owner, final event seq or None)``."""
    if seq is None or not closed:
        return seq, owner_id, None
    return seq - 1, owner_id, seq


def _send_numbered(job: StartedJob, status: str, *, numbers: tuple, **outcome: Any) -> None:
    """Publish a job's event after commit, then its closed flow's final event again if it has one."""
    seq, owner_id, again = numbers
    built = [_job_event(job, status, seq=seq, owner_id=owner_id, **outcome)]
    if again is not None and (final := events.final_event_again(job.flow_id, again)) is not None:
        built.append(final)
    _send(*built)


def _job_event(job: StartedJob, status: str, *, seq: int, owner_id: int, **outcome: Any) -> events.Event:
    data = events.job_updated_data(
        flow_id=job.flow_id, job_id=job.id, name=job.name, queue_name=job.queue_name, status=status,
        attempts_made=job.attempts_made, **outcome,
    )
    data["seq"] = seq
    return events.Event(name=FlowEvent.JOB_UPDATED, data=data, flow_id=job.flow_id, owner_id=owner_id)


def _send(*built: events.Event) -> None:
    """Publish events after the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: events.publish(built))


def fail_lost_run(*, job_id: str, run: tuple[str | None, int] | None = None, lost_on: str | None = None) -> bool:
    """Record the run of an ``active`` job as lost, if its worker is dead: a failed attempt.

    Retried after its backoff while attempts remain, else failed with its failure
    policy, like any failure. False, and nothing changed, if the job is not active,
    if its worker is alive (``jobs.liveness``), or if ``run`` (worker id, attempt)
    is given and the job's current run is another one. ``lost_on``: a worker known
    to have lost its run of this job, alive or not.
    """
    job = Job.objects.filter(pk=job_id, status=JobStatus.ACTIVE).first()
    if job is None or (run is not None and (job.worker_id, job.attempts_made) != run):
        return False
    if not (lost_on and job.worker_id == lost_on) and liveness.is_alive(job.worker_id, reported_at=job.reported_at):
        return False
    started = StartedJob.from_job(job)
    cause = (
        f"its worker process {job.worker_id} died or stopped answering" if job.worker_id
        else f"it was not reported on for FLOWSITE_EXTERNAL_STALLED_AFTER ({settings.FLOWSITE_EXTERNAL_STALLED_AFTER} s)"
    )
    error = JobLostError(f"Attempt {job.attempts_made} of this job was lost before it finished ({cause}).")
    logger.warning("Job %s (%s): %s", job.name, job_id, error)
    job_log(job_id=job_id, message=str(error))
    retry = JobOptions.from_stored(job.opts).retry_delay_ms(job.attempts_made)
    return job_fail(job=started, exc=error, retry_delay_ms=retry, attempt=job.attempts_made)


def job_children_outcomes(*, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(children_values, children_failures)`` of a parent, keyed by job id and name."""
    values: dict[str, Any] = {}
    failures: dict[str, Any] = {}
    rows = (
        Job.objects.filter(parent_id=job_id)
        .order_by("position")
        .values_list("id", "name", "status", "result", "error", "error_type", "failure_policy")
    )
    for child_id, name, status, result, error, error_type, policy in rows:
        if status == JobStatus.COMPLETED:
            target, value = values, result
        elif status == JobStatus.FAILED and policy == FailurePolicy.IGNORE:
            target = failures
            value = {"jobId": child_id, "name": name, "error": error, "errorType": error_type}
        else:
            continue
        target[child_id] = value
        previous = target.get(name, _MISSING)
        if previous is _MISSING:
            target[name] = value
        elif isinstance(previous, _SameName):
            previous.append(value)
        else:
            target[name] = _SameName([previous, value])
    return _plain(values), _plain(failures)


class _SameName(list):
    """Marks a name shared by several children, so their values collect in a list."""


_MISSING = object()


def _plain(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, _SameName) else value for key, value in mapping.items()}


def _release_parent(parent_id: str) -> JobRef | None:
    """Count one finished child off its parent; return the parent if that was the last one.

    One statement: ``pending_children - 1``, and ``waiting-children -> waiting``
    when it reaches zero. Row locks (PostgreSQL) or the write lock (SQLite)
    serialise concurrent siblings, so no decrement is ever lost.
    """
    row = _fetch_one(
        f"UPDATE {JOB_TABLE} SET pending_children = pending_children - 1, "
        "status = CASE WHEN pending_children = 1 THEN %s ELSE status END, "
        "redispatch_at = CASE WHEN pending_children = 1 THEN %s ELSE redispatch_at END "
        "WHERE id = %s AND status = %s AND pending_children > 0 "
        "RETURNING status, queue_name, opts",
        [JobStatus.WAITING, redispatch_at(), parent_id, JobStatus.WAITING_CHILDREN],
    )
    if row is None or row[0] != JobStatus.WAITING:
        return None
    return JobRef(id=parent_id, queue_name=row[1], opts=load_json(row[2]) or {})


def job_complete(*, job: StartedJob, result: Any) -> bool:
    """Move a job ``active -> completed`` with its result, and release its parent.

    Returns False if the job was no longer active (cancelled meanwhile, or a
    duplicate delivery finished first): then nothing changes. The parent, when
    this was its last pending child, is enqueued after commit; a job without a
    parent settles its flow's final status.
    """
    now = timezone.now()
    encoded = json.dumps(result)
    ready: JobRef | None = None
    recording = bool(job.flow_id) and events.recording(FlowEvent.JOB_UPDATED, JobStatus.COMPLETED)
    if connection.vendor == "postgresql" and job.parent_id:
        relax = _relax_commits()
        sql = _COMPLETE_RELAXED_SQL if relax else _COMPLETE_SYNC_SQL
        params = [
            JobStatus.COMPLETED, encoded, now, job.id, JobStatus.ACTIVE,
            JobStatus.WAITING, redispatch_at(now=now), job.parent_id, JobStatus.WAITING_CHILDREN, events.live(),
            job.flow_id,
        ]
        if recording:
            sql = _recorded("complete-relaxed" if relax else "complete-sync", sql)
            data = events.job_updated_data(
                flow_id=job.flow_id, job_id=job.id, name=job.name, queue_name=job.queue_name,
                status=JobStatus.COMPLETED, attempts_made=job.attempts_made, result=result,
            )
            params += [job.flow_id, job.id, job.queue_name, json.dumps(data), JobStatus.COMPLETED]
        row = _fetch_one(sql, params)
        if relax:
            _wait_for_flush()
        if not row[0]:
            return False
        if recording and row[7]:
            events.recorded_by_sql(job.flow_id)
        if row[1] == JobStatus.WAITING:
            ready = JobRef(id=job.parent_id, queue_name=row[2], opts=load_json(row[3]) or {})
        if row[4] is not None:
            # Before the parent is published: a flow's events follow its causes.
            _send_numbered(job, JobStatus.COMPLETED, numbers=_numbers(*row[4:7]), result=result)
    else:
        with transaction.atomic():
            with prepared_cursor() as cursor:
                cursor.execute(
                    f"UPDATE {JOB_TABLE} SET status = %s, result = {_json_placeholder()}, finished_at = %s "
                    "WHERE id = %s AND status = %s",
                    [JobStatus.COMPLETED, encoded, now, job.id, JobStatus.ACTIVE],
                )
                if cursor.rowcount != 1:
                    return False
            if recording:
                _record_job_event(job.id, job.flow_id, job.name, job.queue_name, JobStatus.COMPLETED,
                                  job.attempts_made, result=result)
            if job.parent_id:
                ready = _release_parent(job.parent_id)
            if job.flow_id and events.live():
                numbers = events.take_seqs({job.flow_id: 1}).get(job.flow_id)
                if numbers is not None:
                    _send_numbered(job, JobStatus.COMPLETED, numbers=numbers, result=result)
    if ready is not None:
        transaction.on_commit(lambda: enqueue_jobs([ready]))
    elif job.parent_id is None and job.flow_id:
        settle_flow(flow_id=job.flow_id)
    return True


def settle_flow(*, flow_id: str) -> str | None:
    """``flows.status.flow_settle``, with its ``flow:completed``/``flow:failed`` event."""
    numbered = events.live()
    recording = events.recording()
    with transaction.atomic():
        status = flow_status.flow_settle(flow_id=flow_id, numbered=numbered)
        if status is not None and (numbered or recording):
            events.flow_settled(flow_id, numbered=numbered)
    return status


def job_fail(*, job: StartedJob, exc: BaseException, retry_delay_ms: int | None, attempt: int | None = None) -> bool:
    """Record a failed attempt: ``active -> delayed`` (retry) or ``active -> failed``.

    ``retry_delay_ms`` is ``None`` when no attempt is left. A final failure then
    applies the job's failure policy to its ancestors (see ``_propagate_failure``)
    and fails the flow at once unless the failure is ignored. Returns False if
    the job was no longer active.
    """
    message = str(exc) or type(exc).__name__
    fields = {
        "error": message,
        "error_type": type(exc).__name__,
        # The error object a reporter sent (``jobs.services.ReportedJobFailure``), else none.
        "error_detail": getattr(exc, "detail", None),
        "stacktrace": "".join(traceback.format_exception(exc))[-20_000:],
    }
    outcome = {"error": message, "error_type": fields["error_type"], "error_detail": fields["error_detail"]}
    active = Job.objects.filter(pk=job.id, status=JobStatus.ACTIVE)
    if attempt is not None:  # only that attempt's run
        active = active.filter(attempts_made=attempt)
    outbox = events.Outbox()
    with transaction.atomic():
        if retry_delay_ms is not None:
            if not active.update(status=JobStatus.DELAYED, redispatch_at=redispatch_at(retry_delay_ms), **fields):
                return False
            _add_job_event(outbox, job, JobStatus.DELAYED, **outcome)
            outbox.close()
            ref = JobRef(id=job.id, queue_name=job.queue_name, opts=job.opts)
            transaction.on_commit(lambda: enqueue_jobs([ref], delay_ms=retry_delay_ms))
            return True
        if not active.update(status=JobStatus.FAILED, finished_at=timezone.now(), **fields):
            return False
        _add_job_event(outbox, job, JobStatus.FAILED, **outcome)
        _propagate_failure(job=job, error=f"{fields['error_type']}: {message}", error_type=fields["error_type"],
                           outbox=outbox)
        outbox.close()
    return True


def _add_job_event(outbox: events.Outbox, job: StartedJob, status: str, **outcome: Any) -> None:
    outbox.job_updated(
        flow_id=job.flow_id, job_id=job.id, name=job.name, queue_name=job.queue_name, status=status,
        attempts_made=job.attempts_made, **outcome,
    )


def _propagate_failure(*, job: StartedJob, error: str, error_type: str, outbox: events.Outbox) -> None:
    """Apply a final failure to the ancestors, walking up while parents fail too.

    - ``fail-parent`` (default): the parent fails without running, and so on up;
    - ``ignore`` / ``remove``: the parent is released as if the child had finished;
    - ``keep-parent-waiting``: the parent stays in ``waiting-children``.
    The flow fails at once unless the failure stopped at an ignoring policy.
    """
    child_id, child_name, parent_id, policy = job.id, job.name, job.parent_id, job.failure_policy
    now = timezone.now()
    while parent_id is not None:
        if policy in IGNORED_FAILURE_POLICIES:
            ready = _release_parent(parent_id)
            if ready is not None:
                transaction.on_commit(lambda: enqueue_jobs([ready]))
            return
        if policy != FailurePolicy.FAIL_PARENT:
            break
        parent_error = f"Child job {child_name} ({child_id}) failed: {error}"
        row = _fetch_one(
            f"UPDATE {JOB_TABLE} SET status = %s, error = %s, error_type = %s, finished_at = %s "
            "WHERE id = %s AND status = %s RETURNING id, name, parent_id, failure_policy, queue_name, attempts_made",
            [JobStatus.FAILED, parent_error, CHILD_FAILED_ERROR, now, parent_id, JobStatus.WAITING_CHILDREN],
        )
        if row is None:
            break
        outbox.job_updated(
            flow_id=job.flow_id, job_id=row[0], name=row[1], queue_name=row[4], status=JobStatus.FAILED,
            attempts_made=row[5], error=parent_error, error_type=CHILD_FAILED_ERROR,
        )
        child_id, child_name, parent_id, policy = row[:4]
    if job.flow_id:
        flow_error = f"Job {job.name} ({job.id}) failed: {error}"
        detail = {"message": flow_error, "type": error_type, "jobId": job.id}
        if flow_status.flow_fail(flow_id=job.flow_id, error=flow_error, detail=detail):
            outbox.flow_finished(job.flow_id)


def job_cancelled_alone(*, job: StartedJob, outbox: events.Outbox) -> None:
    """Let a flow react to one of its jobs cancelled alone (not with the flow); in its transaction.

    For the parent, a job of the tree cancelled on its own is a failure of that job
    (``CANCELLED_ERROR``): its failure policy decides whether the parent fails, is
    released or keeps waiting, and the root's cancel fails the flow. A job attached by
    ``flowId`` is extra work that is now finished: the flow settles if nothing else runs.
    Without this, the flow waited for the cancelled job for ever.
    """
    if job.flow_id is None:
        return
    if job.parent_id is None and not Flow.objects.filter(pk=job.flow_id, root_job_id=job.id).exists():
        transaction.on_commit(lambda: settle_flow(flow_id=job.flow_id))
        return
    _propagate_failure(job=job, error=CANCELLED_ERROR, error_type=CANCELLED_ERROR, outbox=outbox)


def job_is_cancelled(*, job_id: str) -> bool:
    """Whether a job was cancelled or deleted (what a running handler polls, ``ctx.cancelled``)."""
    status = Job.objects.filter(pk=job_id).values_list("status", flat=True).first()
    return status is None or status == JobStatus.CANCELLED


def job_update_progress(*, job_id: str, progress: Any) -> bool:
    """Set an active job's progress (a number or a JSON object), with its ``flow:job:progress`` event.

    False, and nothing written, if the job is no longer active or no longer exists
    (its flow was deleted while its handler ran).
    """
    json.dumps(progress)
    with transaction.atomic():
        changed = Job.objects.filter(pk=job_id, status=JobStatus.ACTIVE).update(progress=progress)
        if changed:
            flow_id = Job.objects.filter(pk=job_id).values_list("flow_id", flat=True).first()
            outbox = events.Outbox()
            outbox.add(flow_id, FlowEvent.JOB_PROGRESS, {"flowId": flow_id, "jobId": job_id, "progress": progress})
            outbox.close()
    return bool(changed)


# One statement: the line is written only if its job still exists. On PostgreSQL the
# job row is locked (KEY SHARE) for the insert, so a concurrent delete of the job
# (``flow_delete``, ``job_delete``: they lock their job rows first, see
# ``jobs.services.lock_jobs``) either waits for the line and deletes it with the job,
# or runs first and the insert writes nothing. A plain INSERT violated the foreign key
# when its job vanished meanwhile.
_LOG_SQL = (
    f"INSERT INTO {JobLog._meta.db_table} (job_id, message, created_at) "
    f"SELECT id, %s, %s FROM {JOB_TABLE} WHERE id = %s"
)


def job_log(*, job_id: str, message: str) -> bool:
    """Append one line to a job's log; False, and nothing written, if the job no longer exists."""
    sql = _LOG_SQL + (" FOR KEY SHARE" if connection.vendor == "postgresql" else "")
    with connection.cursor() as cursor:
        cursor.execute(sql, [message, connection.ops.adapt_datetimefield_value(timezone.now()), job_id])
        return cursor.rowcount == 1
