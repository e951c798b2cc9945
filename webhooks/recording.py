"""Webhook events recorded from the engine's changes, in the transaction of each change.

``flows.events`` hands every change's events to this recorder (registered in
``WebhooksConfig.ready``) before the change commits, whether or not anybody listens
to live events. An event that some active webhook wants becomes one
``RecordedEvent`` row, however many webhooks want it: one ``INSERT ... SELECT``
with an ``EXISTS`` over the active webhooks; the engine's two per-job statements
(start; complete and count off the parent) do it in an arm of the same statement
(``events_sql_arm``). The dispatcher then turns the recorded events into one
``Delivery`` per matching webhook and deletes them, in one transaction
(``expand_events``, run by ``webhooks.services.deliveries_dispatch``). A process that
dies right after the commit leaves the events in the database; the dispatcher sweep
expands and sends them.

Why not one delivery row per webhook in the change itself (the version before): with
10 webhooks on every event the job's transaction wrote 20-25 rows per job, each
with its own copy of the payload and three index entries, and the engine ran at
0.59-0.73x its speed without webhooks. One narrow row per event, with only its
primary key, leaves that work to the webhooks worker, off the job's path.

**Which webhooks.** A webhook gets an event if it is active and matches it (types,
filters, owner) when the event is expanded, usually a few milliseconds after its
commit. So a webhook deactivated or deleted in between does not get it; a webhook
created in between may (its owner's flows only, like any other).

**Order.** Every event takes a number from one sequence (``EVENT_SEQUENCE``), its
deliveries' ``seq``; a webhook's deliveries of one flow are sent one at a time in
that order (``webhooks.services``). A change that began after another committed has
a larger number, and is sent after it: a job's ``active`` before its ``completed``,
a child's end before its parent's start, every job before its flow's end. Two
changes that ran at the same time (sibling jobs) may be sent in either order.

**The hot path without webhooks.** Each process reads which event types the active
webhooks subscribe to at most every ``ARM_POLL_SECONDS`` (``_Armed``, one query).
A change that no webhook may want pays that cached read and nothing else: the
engine runs its statements unchanged.

**The guarantee.** A change records the events that the webhooks active when it
began may want, as seen through that cached read, at most ``ARM_POLL_SECONDS`` old.
So creating (or re-activating) a webhook waits ``ARM_BARRIER_SECONDS`` after its
commit before it answers: every change that begins after ``POST /api/webhooks``
returned is delivered. Changes already under way at that moment may or may not be.
Flow progress is coalesced like the live events' (at most one ``progress`` delivery
per flow every ``FLOWSITE_WEBHOOK_PROGRESS_INTERVAL_MS`` while nobody watches live,
every 250 ms while somebody does, and always one after the last change); a process
that dies in between loses that one summary, not the job events it sums up.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from flows.events import Event
from flows.models import Flow
from flowsite.db import prepared_cursor
from jobs.models import Job
from jobs.vocabulary import (
    WEBHOOK_DISPATCH_TASK,
    WEBHOOK_QUEUE,
    WEBHOOK_SUBSCRIBERS,
    DeliveryStatus,
    FlowEvent,
    FlowStatus,
    JobStatus,
    WebhookEvent,
)
from webhooks.models import Delivery, RecordedEvent, Webhook, event_mask

logger = logging.getLogger(__name__)

ARM_POLL_SECONDS = 0.5
# How long a webhook's creation waits after its commit: every process has read the flag since.
ARM_BARRIER_SECONDS = ARM_POLL_SECONDS + 0.1
# The dispatcher is asked at most this often per process (``_Kicker``).
KICK_INTERVAL_SECONDS = 0.05


class _Armed:
    """Which event types active webhooks subscribe to, read from the database at most every ``ARM_POLL_SECONDS``.

    Called by ``flows.events`` as ``armed(name, status)``: whether some active webhook
    may want that event (any event, without a name).
    """

    def __init__(self) -> None:
        self._mask = 0
        self._until = 0.0

    def __call__(self, name: FlowEvent | None = None, status: str | None = None) -> bool:
        now = time.monotonic()
        if now >= self._until:
            mask = 0
            for subscribed in Webhook.objects.filter(active=True).values_list("event_mask", flat=True).distinct():
                mask |= subscribed
            self._mask = mask
            self._until = now + ARM_POLL_SECONDS  # from before the read: see ARM_BARRIER_SECONDS
        if not self._mask or name is None:
            return bool(self._mask)
        kind = webhook_type(name, status)
        return kind is not None and bool(self._mask & _RECEIVERS[kind])

    def forget(self) -> None:
        """Read the flag again at the next change (tests)."""
        self._until = 0.0


armed = _Armed()


def wait_until_armed() -> None:
    """After the commit of a webhook's activation: return once every process records for it."""
    armed.forget()
    transaction.on_commit(lambda: time.sleep(ARM_BARRIER_SECONDS))


# EVENTS -> DELIVERIES
# ------------------------------------------------------------------------------

# The bits of the subscription types that receive each event type.
_RECEIVERS = {kind: event_mask(subscribers) for kind, subscribers in WEBHOOK_SUBSCRIBERS.items()}


def webhook_type(name: FlowEvent, status: str | None = None) -> str | None:
    """The webhook event type of a flow event (for a job's change, of its new status); None: not sent."""
    if name == FlowEvent.JOB_UPDATED:
        return {JobStatus.COMPLETED: WebhookEvent.COMPLETED, JobStatus.FAILED: WebhookEvent.FAILED}.get(
            status, WebhookEvent.DELTA
        )
    return _FLOW_EVENT_TYPES.get(name)


_FLOW_EVENT_TYPES = {
    FlowEvent.UPDATED: WebhookEvent.DELTA,  # recorded only for the move to running (``flow_mark_running``)
    FlowEvent.JOB_PROGRESS: WebhookEvent.PROGRESS,
    FlowEvent.PROGRESS: WebhookEvent.PROGRESS,
    FlowEvent.CREATED: WebhookEvent.DELTA,
    FlowEvent.COMPLETED: WebhookEvent.COMPLETED,
    FlowEvent.FAILED: WebhookEvent.FAILED,
    FlowEvent.CANCELLED: WebhookEvent.DELTA,
}


def webhook_event(event: Event) -> tuple[str, str | None, str | None, dict[str, Any]] | None:
    """``(type, job id, job queue, data)`` of a flow event for webhooks, or None if they do not get it.

    A job's status change is ``delta``, or ``completed``/``failed`` once it finished;
    a flow's end is ``completed``/``failed`` (``cancelled``: ``delta``); job and flow
    progress (the flow's coalesced, at most one per 250 ms) are ``progress``.
    """
    data, name = event.data, event.name
    common = {"flowId": event.flow_id}
    kind = webhook_type(name, data.get("jobStatus"))
    if name == FlowEvent.JOB_UPDATED:
        status = data["jobStatus"]
        body = {**common, "jobId": data["jobId"], "name": data["name"], "queueName": data["queueName"],
                "status": status, "attemptsMade": data["attemptsMade"]}
        for key in ("result", "error"):
            if key in data:
                body[key] = data[key]
        return kind, data["jobId"], data["queueName"], body
    if name == FlowEvent.JOB_PROGRESS:
        return kind, data["jobId"], None, {
            **common, "jobId": data["jobId"], "status": JobStatus.ACTIVE, "progress": data["progress"],
        }
    if name in (FlowEvent.CREATED, FlowEvent.UPDATED):
        return kind, None, None, {**common, "status": data["status"]}
    if name == FlowEvent.COMPLETED:
        return kind, None, None, {**common, "status": FlowStatus.COMPLETED, "result": data["result"]}
    if name == FlowEvent.FAILED:
        return kind, None, None, {**common, "status": FlowStatus.FAILED, "error": data["error"]}
    if name == FlowEvent.CANCELLED:
        return kind, None, None, {**common, "status": FlowStatus.CANCELLED}
    if name == FlowEvent.PROGRESS:
        return kind, None, None, {**common, "status": data["status"], "progress": data["progress"]}
    return None  # flow:deleted is not a webhook event


# Every recorded event takes the next number of this sequence (PostgreSQL; SQLite, whose
# writers take turns, counts on from the largest): the ``seq`` of its deliveries, which
# orders a webhook's deliveries of one flow. A change that began after another one
# committed gets a larger number, whatever the two were.
EVENT_SEQUENCE = "webhooks_event_seq"
# Recorded events one transaction of ``expand_events`` turns into deliveries.
EXPAND_BATCH = 1000
# The advisory lock (two keys: "Hook", 0) that lets one ``expand_events`` run at a time.
_EXPAND_LOCK = (0x486F6F6B, 0)

_EVENT_COLUMNS = "seq, event_type, mask, flow_id, queue_name, owner_id, flowname, data, created_at"
_DELIVERY_COLUMNS = "webhook_id, event_id, event_type, flow_id, seq, data, status, attempts, next_attempt_at, " \
    "created_at, updated_at, response_body, last_error"


def _sqlite_next_number() -> str:
    """SQLite: the largest event number given so far (recorded events and deliveries)."""
    return (
        f"(SELECT COALESCE(MAX(seq), 0) FROM (SELECT MAX(seq) AS seq FROM {RecordedEvent._meta.db_table} "
        f"UNION ALL SELECT MAX(seq) FROM {Delivery._meta.db_table}))"
    )


def next_event_number() -> int:
    """Take one event number (a delivery that no change made: a test ping)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"SELECT nextval('{EVENT_SEQUENCE}')")
        else:
            cursor.execute(f"SELECT {_sqlite_next_number()} + 1")
        return cursor.fetchone()[0]


def _matching(events: str) -> str:
    """Whether the active webhook ``w`` wants the event ``events`` (columns of ``RecordedEvent``)."""
    return (
        f"w.active AND (w.event_mask & {events}.mask) <> 0 "
        f"AND (w.all_flows OR w.owner_id = {events}.owner_id) "
        f"AND (w.flow_id IS NULL OR w.flow_id = {events}.flow_id) "
        f"AND (w.queue_name IS NULL OR w.queue_name = {events}.queue_name) "
        f"AND (w.flowname IS NULL OR w.flowname = {events}.flowname)"
    )


def _wanted(events: str) -> str:
    """``events`` rows that some active webhook wants (the only ones recorded)."""
    return f"EXISTS (SELECT 1 FROM {Webhook._meta.db_table} w WHERE {_matching(events)})"


def _python_insert_sql(count: int) -> str:
    """One INSERT for the events of a change, given as VALUES rows (``record_events``)."""
    flow, job = Flow._meta.db_table, Job._meta.db_table
    if connection.vendor == "postgresql":
        row = "(%s::int, %s::text, %s::text, %s::text, %s::text, %s::jsonb, %s::int)"
        number, now = f"nextval('{EVENT_SEQUENCE}')", "now()"
    else:
        row = "(%s, %s, %s, %s, %s, %s, %s)"
        number, now = f"{_sqlite_next_number()} + x.position", "%s"
    return (
        f"WITH e(position, event_type, flow_id, job_id, queue_name, data, mask) AS (VALUES {', '.join([row] * count)}), "
        "x AS (SELECT e.event_type, e.mask, e.flow_id, "
        "COALESCE(e.queue_name, j.queue_name, f.queue_name) AS queue_name, f.owner_id, f.flowname, e.data, "
        f"e.position FROM e JOIN {flow} f ON f.id = e.flow_id "
        f"LEFT JOIN {job} j ON e.queue_name IS NULL AND j.id = e.job_id) "
        f"INSERT INTO {RecordedEvent._meta.db_table} ({_EVENT_COLUMNS}) "
        f"SELECT {number}, x.event_type, x.mask, x.flow_id, x.queue_name, x.owner_id, x.flowname, x.data, {now} "
        f"FROM x WHERE {_wanted('x')} ORDER BY x.position"
    )


def record_events(events: list[Event]) -> int:
    """Record the events of a change that some active webhook wants (one statement); return how many."""
    params: list[Any] = []
    count = 0
    for event in events:
        described = webhook_event(event)
        if described is None:
            continue
        kind, job_id, queue_name, data = described
        count += 1
        params += [count, kind, event.flow_id, job_id, queue_name, json.dumps(data, default=str), _RECEIVERS[kind]]
    if not count:
        return 0
    if connection.vendor != "postgresql":
        params.append(connection.ops.adapt_datetimefield_value(timezone.now()))
    with prepared_cursor() as cursor:  # planning it was most of its cost
        cursor.execute(_python_insert_sql(count), params)
        return max(cursor.rowcount, 0)


def _job_kind_sql(status: str) -> str:
    """A job change's webhook event type, from its new status (``webhook_type``), in SQL."""
    cases = " ".join(
        f"WHEN '{job_status}' THEN '{webhook_type(FlowEvent.JOB_UPDATED, job_status)}'" for job_status in JobStatus
    )
    return f"CASE {status} {cases} END"


def events_sql_arm(source: str) -> str:
    """``record_events`` as an arm of the engine's statements: the job changes of ``source``.

    PostgreSQL only (the engine's one-statement transitions are). One row per
    change that some active webhook wants, whatever the number of webhooks.
    """
    masks = " ".join(f"WHEN '{kind}' THEN {mask}" for kind, mask in _RECEIVERS.items())
    return (
        f"INSERT INTO {RecordedEvent._meta.db_table} ({_EVENT_COLUMNS}) "
        f"SELECT nextval('{EVENT_SEQUENCE}'), x.kind, x.mask, x.flow_id, x.queue_name, x.owner_id, x.flowname, "
        "(x.data - 'jobStatus' - 'seq') || jsonb_build_object('status', x.status), now() "
        f"FROM (SELECT e.flow_id, e.queue_name, e.data, e.status, k.kind, CASE k.kind {masks} END AS mask, "
        f"f.owner_id, f.flowname FROM {source} e "
        f"JOIN {Flow._meta.db_table} f ON f.id = e.flow_id "
        f"CROSS JOIN LATERAL (SELECT {_job_kind_sql('e.status')} AS kind) k) x "
        f"WHERE {_wanted('x')} RETURNING 1"
    )


def expand_events(*, batch: int = EXPAND_BATCH) -> int:
    """Turn the recorded events into deliveries, one per matching active webhook; return how many.

    In order of their numbers, ``batch`` events a transaction: each transaction
    writes their deliveries and deletes them, so none is lost or expanded twice (a
    delivery is unique per webhook and event besides). One expansion runs at a time
    (an advisory lock on PostgreSQL; SQLite's writers take turns), so a webhook's
    deliveries appear in event order.
    """
    events, delivery = RecordedEvent._meta.db_table, Delivery._meta.db_table
    data = "x.data || jsonb_build_object('seq', x.seq)" if connection.vendor == "postgresql" \
        else "json_set(x.data, '$.seq', x.seq)"
    written = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", list(_EXPAND_LOCK))
            cursor.execute(f"SELECT seq FROM {events} ORDER BY seq LIMIT %s", [batch])
            numbers = [row[0] for row in cursor.fetchall()]
            if not numbers:
                return written
            taken = ", ".join(["%s"] * len(numbers))
            now = connection.ops.adapt_datetimefield_value(timezone.now())
            cursor.execute(
                f"INSERT INTO {delivery} ({_DELIVERY_COLUMNS}) "
                f"SELECT w.id, 'evt_' || x.seq, x.event_type, x.flow_id, x.seq, {data}, %s, 0, %s, x.created_at, "
                f"%s, '', '' FROM {events} x JOIN {Webhook._meta.db_table} w ON {_matching('x')} "
                f"WHERE x.seq IN ({taken}) ORDER BY x.seq, w.id ON CONFLICT DO NOTHING",
                [DeliveryStatus.PENDING, now, now, *numbers],
            )
            written += max(cursor.rowcount, 0)
            cursor.execute(f"DELETE FROM {events} WHERE seq IN ({taken})", numbers)
        if len(numbers) < batch:
            return written


# ASKING FOR THE SENDING
# ------------------------------------------------------------------------------


class _Kicker:
    """Publishes ``webhooks.dispatch`` after commits that recorded events, at most every ``KICK_INTERVAL_SECONDS``.

    From a thread, so a change never waits for the broker. A kick lost with its
    process is harmless: the dispatcher sweep (Celery beat) finds the events.
    """

    def __init__(self) -> None:
        self._due = False
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def kick(self) -> None:
        if self._due and self._pid == os.getpid():
            return  # a publish is due already (a racy read: the worst is one kick more)
        with self._wake:
            self._due = True
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="flowsite-webhook-kicks", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._due:
                    self._wake.wait()
                self._due = False
            try:
                publish_dispatch()
            except Exception as exc:
                logger.warning("Could not ask for webhook deliveries (the sweep sends them): %s: %s",
                               type(exc).__name__, exc)
            time.sleep(KICK_INTERVAL_SECONDS)


kicker = _Kicker()


# Set while a ``webhooks.dispatch`` is queued and has not started: kicks meanwhile publish
# nothing (it will see their deliveries), so a webhooks worker that was down finds one
# dispatch waiting, not one per kick.
DISPATCH_QUEUED_KEY = "webhooks:dispatch-queued"


def publish_dispatch() -> None:
    """Publish one ``webhooks.dispatch`` (it sends what is due), unless one is queued already."""
    from django.core.cache import cache

    from flowsite.celery import app

    if cache.add(DISPATCH_QUEUED_KEY, 1, timeout=60):  # expires: a lost message does not block the next
        app.send_task(WEBHOOK_DISPATCH_TASK, queue=WEBHOOK_QUEUE, routing_key=WEBHOOK_QUEUE, expires=60)


def dispatch_started() -> None:
    """A dispatch runs: the next kick publishes another one."""
    from django.core.cache import cache

    cache.delete(DISPATCH_QUEUED_KEY)
