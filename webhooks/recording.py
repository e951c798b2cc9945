"""Deliveries written from the engine's events, in the transaction of the change.

``flows.events`` hands every change's numbered events to ``record_deliveries``
(an *armed recorder*, registered in ``WebhooksConfig.ready``) before the change
commits: one ``INSERT ... SELECT`` per transaction writes a pending delivery for
every active webhook that matches an event. A process that dies right after the
commit leaves the deliveries in the database; the dispatcher sweep sends them.

**The hot path without webhooks.** Recording is armed only while some webhook is
active: each process reads that flag from the database at most every
``ARM_POLL_SECONDS`` (``_Armed``), and an unarmed change pays one cached flag read,
no statement. Once armed, a job's two hot statements run in a transaction with
the delivery insert (three round trips more per transition).

**The guarantee.** A change records the deliveries of the webhooks that were
active when its transaction began, as seen through a flag at most
``ARM_POLL_SECONDS`` old. So creating (or re-activating) a webhook waits
``ARM_BARRIER_SECONDS`` after its commit before it answers: every change whose
transaction begins after ``POST /api/webhooks`` returned is delivered. Changes
already under way at that moment may or may not be.
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
    """Whether some webhook is active, read from the database at most every ``ARM_POLL_SECONDS``."""

    def __init__(self) -> None:
        self._armed = False
        self._until = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self._until:
            self._armed = Webhook.objects.filter(active=True).exists()
            self._until = now + ARM_POLL_SECONDS  # from before the read: see ARM_BARRIER_SECONDS
        return self._armed

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


def webhook_event(event: Event) -> tuple[str, str | None, str | None, dict[str, Any]] | None:
    """``(type, job id, job queue, data)`` of a flow event for webhooks, or None if they do not get it.

    A job's status change is ``delta``, or ``completed``/``failed`` once it finished;
    a flow's end is ``completed``/``failed`` (``cancelled``: ``delta``); job and flow
    progress (the flow's coalesced, at most one per 250 ms) are ``progress``.
    """
    data, name = event.data, event.name
    common = {"flowId": event.flow_id}
    if name == FlowEvent.JOB_UPDATED:
        status = data["jobStatus"]
        kind = {JobStatus.COMPLETED: WebhookEvent.COMPLETED, JobStatus.FAILED: WebhookEvent.FAILED}.get(
            status, WebhookEvent.DELTA
        )
        body = {**common, "jobId": data["jobId"], "name": data["name"], "queueName": data["queueName"],
                "status": status, "attemptsMade": data["attemptsMade"]}
        for key in ("result", "error"):
            if key in data:
                body[key] = data[key]
        return kind, data["jobId"], data["queueName"], body
    if name == FlowEvent.JOB_PROGRESS:
        return WebhookEvent.PROGRESS, data["jobId"], None, {
            **common, "jobId": data["jobId"], "status": JobStatus.ACTIVE, "progress": data["progress"],
        }
    if name == FlowEvent.CREATED:
        return WebhookEvent.DELTA, None, None, {**common, "status": data["status"]}
    if name == FlowEvent.COMPLETED:
        return WebhookEvent.COMPLETED, None, None, {**common, "status": "completed", "result": data["result"]}
    if name == FlowEvent.FAILED:
        return WebhookEvent.FAILED, None, None, {**common, "status": "failed", "error": data["error"]}
    if name == FlowEvent.CANCELLED:
        return WebhookEvent.DELTA, None, None, {**common, "status": "cancelled"}
    if name == FlowEvent.PROGRESS:
        return WebhookEvent.PROGRESS, None, None, {**common, "status": data["status"], "progress": data["progress"]}
    return None  # flow:updated tells the same change as flow:progress; flow:deleted is not a webhook event


def event_id(flow_id: str, seq: int) -> str:
    """The event's id (``webhook-id``): the same for every webhook that receives it."""
    return f"evt_{flow_id}_{seq}"


_COLUMNS = "event_id, event_type, flow_id, job_id, queue_name, seq, data, mask"


def _insert_sql(count: int) -> str:
    pg = connection.vendor == "postgresql"
    one = "(%s, %s, %s, %s, %s, %s::bigint, %s::jsonb, %s::int)" if pg else "(%s, %s, %s, %s, %s, %s, %s, %s)"
    delivery, webhook = Delivery._meta.db_table, Webhook._meta.db_table
    return (
        f"WITH e({_COLUMNS}) AS (VALUES {', '.join([one] * count)}) "
        f"INSERT INTO {delivery} (webhook_id, event_id, event_type, flow_id, seq, data, status, attempts, "
        "next_attempt_at, created_at, updated_at, response_body, last_error) "
        "SELECT w.id, e.event_id, e.event_type, e.flow_id, e.seq, e.data, %s, 0, %s, %s, %s, '', '' "
        f"FROM e JOIN {Flow._meta.db_table} f ON f.id = e.flow_id "
        f"LEFT JOIN {Job._meta.db_table} j ON e.queue_name IS NULL AND j.id = e.job_id "
        f"JOIN {webhook} w ON w.active AND (w.event_mask & e.mask) <> 0 "
        "AND (w.all_flows OR w.owner_id = f.owner_id) "
        "AND (w.flow_id IS NULL OR w.flow_id = e.flow_id) "
        "AND (w.queue_name IS NULL OR w.queue_name = COALESCE(e.queue_name, j.queue_name, f.queue_name)) "
        "AND (w.flowname IS NULL OR w.flowname = f.flowname) "
        "WHERE true ON CONFLICT DO NOTHING"  # WHERE: SQLite's parser needs it before ON CONFLICT
    )


def record_deliveries(events: list[Event]) -> None:
    """Write the pending deliveries of these events (one statement), then ask for their sending after commit."""
    params: list[Any] = []
    count = 0
    for event in events:
        described = webhook_event(event)
        if described is None or event.data.get("seq") is None:
            continue
        kind, job_id, queue_name, data = described
        seq = event.data["seq"]
        data["seq"] = seq
        params += [event_id(event.flow_id, seq), kind, event.flow_id, job_id, queue_name, seq,
                   json.dumps(data, default=str), event_mask(WEBHOOK_SUBSCRIBERS[kind])]
        count += 1
    if not count:
        return
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(count), [*params, DeliveryStatus.PENDING, now, now, now])
        written = cursor.rowcount
    if written > 0:
        transaction.on_commit(kicker.kick)


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


def publish_dispatch() -> None:
    """Publish one ``webhooks.dispatch`` (it sends what is due)."""
    from flowsite.celery import app

    app.send_task(WEBHOOK_DISPATCH_TASK, queue=WEBHOOK_QUEUE, routing_key=WEBHOOK_QUEUE, expires=60)
