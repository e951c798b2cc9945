"""Deliveries written from the engine's events, in the transaction of each change.

``flows.events`` hands every change's events to this recorder (registered in
``WebhooksConfig.ready``) before the change commits, whether or not anybody listens
to live events: one ``INSERT ... SELECT`` writes a pending delivery for every active
webhook that matches an event; the engine's two per-job statements (start;
complete and count off the parent) do it in an arm of the same statement
(``deliveries_sql_arm``). A process that dies right after the commit leaves the
deliveries in the database; the dispatcher sweep sends them.

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

**The guarantee.** A change records the deliveries of the webhooks that were active
when it began, as seen through that cached read, at most ``ARM_POLL_SECONDS`` old.
So creating (or re-activating) a webhook waits ``ARM_BARRIER_SECONDS`` after its
commit before it answers: every change that begins after ``POST /api/webhooks``
returned is delivered. Changes already under way at that moment may or may not be.
Flow progress is coalesced like the live events' (at most one ``progress`` delivery
per flow every 250 ms, after the changes it sums up); a process that dies in
between loses that one summary, not the job events it sums up.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from flows.events import Event
from flows.models import Flow
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
from webhooks.models import Delivery, Webhook, event_mask

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
        return kind is not None and bool(self._mask & event_mask(WEBHOOK_SUBSCRIBERS[kind]))

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
_COLUMNS = "event_id, event_type, flow_id, seq, data, status, attempts, next_attempt_at, created_at, updated_at, " \
    "response_body, last_error"


def next_event_number() -> int:
    """Take one event number (a delivery that no change made: a test ping)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"SELECT nextval('{EVENT_SEQUENCE}')")
        else:
            cursor.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {Delivery._meta.db_table}")
        return cursor.fetchone()[0]


def _matching(events: str, flow: str) -> str:
    """The join of ``events`` (flow_id, queue_name, mask) with the active webhooks that want them."""
    return (
        f"JOIN {Webhook._meta.db_table} w ON w.active AND (w.event_mask & {events}.mask) <> 0 "
        f"AND (w.all_flows OR w.owner_id = {flow}.owner_id) "
        f"AND (w.flow_id IS NULL OR w.flow_id = {events}.flow_id) "
        f"AND (w.queue_name IS NULL OR w.queue_name = {events}.queue_name) "
        f"AND (w.flowname IS NULL OR w.flowname = {flow}.flowname)"
    )


def _python_insert_sql(count: int) -> str:
    """One INSERT for the events of a change, given as VALUES rows (``record_deliveries``)."""
    delivery, flow, job = Delivery._meta.db_table, Flow._meta.db_table, Job._meta.db_table
    if connection.vendor == "postgresql":
        row = "(%s::int, %s, %s, %s, %s, %s::jsonb, %s::int)"
        number = f"nextval('{EVENT_SEQUENCE}')"
        data = "x.data || jsonb_build_object('seq', x.n)"
    else:
        row = "(%s, %s, %s, %s, %s, %s, %s)"
        number = f"(SELECT COALESCE(MAX(seq), 0) FROM {delivery}) + e.position"
        data = "json_set(x.data, '$.seq', x.n)"
    return (
        f"WITH e(position, event_type, flow_id, job_id, queue_name, data, mask) AS (VALUES {', '.join([row] * count)}), "
        f"x AS (SELECT e.event_type, e.flow_id, e.data, e.mask, {number} AS n, "
        "COALESCE(e.queue_name, j.queue_name, f.queue_name) AS queue_name, f.owner_id, f.flowname "
        f"FROM e JOIN {flow} f ON f.id = e.flow_id LEFT JOIN {job} j ON e.queue_name IS NULL AND j.id = e.job_id "
        "ORDER BY e.position) "
        f"INSERT INTO {delivery} (webhook_id, {_COLUMNS}) "
        f"SELECT w.id, 'evt_' || x.n, x.event_type, x.flow_id, x.n, {data}, %s, 0, %s, %s, %s, '', '' "
        f"FROM x {_matching('x', 'x')} "
        "WHERE true ON CONFLICT DO NOTHING"  # WHERE: SQLite's parser needs it before ON CONFLICT
    )


def record_deliveries(events: list[Event]) -> int:
    """Write the pending deliveries of a change's events (one statement); return how many."""
    params: list[Any] = []
    count = 0
    for event in events:
        described = webhook_event(event)
        if described is None:
            continue
        kind, job_id, queue_name, data = described
        count += 1
        params += [count, kind, event.flow_id, job_id, queue_name, json.dumps(data, default=str),
                   event_mask(WEBHOOK_SUBSCRIBERS[kind])]
    if not count:
        return 0
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(_python_insert_sql(count), [*params, DeliveryStatus.PENDING, now, now, now])
        return max(cursor.rowcount, 0)


def _job_kind_sql(status: str) -> str:
    """A job change's webhook event type, from its new status (``webhook_type``), in SQL."""
    cases = " ".join(
        f"WHEN '{job_status}' THEN '{webhook_type(FlowEvent.JOB_UPDATED, job_status)}'" for job_status in JobStatus
    )
    return f"CASE {status} {cases} END"


def deliveries_sql_arm(source: str) -> str:
    """``record_deliveries`` as an arm of the engine's statements: the job changes of ``source``.

    PostgreSQL only (the engine's one-statement transitions are). The change's number
    is taken once (the ``OFFSET 0`` subquery), whatever the number of webhooks.
    """
    masks = " ".join(
        f"WHEN '{kind}' THEN {event_mask(subscribers)}" for kind, subscribers in WEBHOOK_SUBSCRIBERS.items()
    )
    return (
        f"INSERT INTO {Delivery._meta.db_table} (webhook_id, {_COLUMNS}) "
        "SELECT w.id, 'evt_' || x.n, x.kind, x.flow_id, x.n, "
        "(x.data - 'jobStatus' - 'seq') || jsonb_build_object('status', x.status, 'seq', x.n), "
        f"'{DeliveryStatus.PENDING}', 0, now(), now(), now(), '', '' "
        f"FROM (SELECT e.flow_id, e.queue_name, e.data, e.status, k.kind, CASE k.kind {masks} END AS mask, "
        f"nextval('{EVENT_SEQUENCE}') AS n FROM {source} e "
        f"CROSS JOIN LATERAL (SELECT {_job_kind_sql('e.status')} AS kind) k OFFSET 0) x "
        f"JOIN {Flow._meta.db_table} f ON f.id = x.flow_id "
        f"{_matching('x', 'f')} "
        "ON CONFLICT DO NOTHING RETURNING 1"
    )


# ASKING FOR THE SENDING
# ------------------------------------------------------------------------------


class _Kicker:
    """Publishes ``webhooks.dispatch`` after commits that wrote deliveries, at most every ``KICK_INTERVAL_SECONDS``.

    From a thread, so a change never waits for the broker. A kick lost with its
    process is harmless: the dispatcher sweep (Celery beat) finds the deliveries.
    """

    def __init__(self) -> None:
        self._due = False
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def kick(self) -> None:
        import os

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
