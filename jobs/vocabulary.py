"""Every word of Flowsite's public contract, defined once.

Job and flow statuses, the job state machine, failure policies, webhook event
types and websocket event names. Models, validation, filters, OpenAPI enums,
the admin and the tests import them from here; nothing else spells them out.
This module imports nothing from other apps.
"""

from __future__ import annotations

from django.db import models


class JobStatus(models.TextChoices):
    """BullMQ's job states, plus ``cancelled`` for jobs stopped by a user."""

    WAITING = "waiting"
    WAITING_CHILDREN = "waiting-children"
    DELAYED = "delayed"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    PAUSED = "paused"
    STUCK = "stuck"
    CANCELLED = "cancelled"


class FlowStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ReportedJobStatus(models.TextChoices):
    """What a job processed outside Flowsite may report (the legacy update endpoint)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class FailurePolicy(models.TextChoices):
    """What a job's final failure does to its parent (from its BullMQ options)."""

    FAIL_PARENT = "fail-parent", "failParentOnFailure (default)"
    IGNORE = "ignore", "ignoreDependencyOnFailure"
    REMOVE = "remove", "removeDependencyOnFailure"
    KEEP_PARENT_WAITING = "keep-parent-waiting", "failParentOnFailure: false"


class WebhookEvent(models.TextChoices):
    PROGRESS = "progress"
    COMPLETED = "completed"
    FAILED = "failed"
    DELTA = "delta"
    ALL = "all"


class FlowEvent(models.TextChoices):
    """Websocket event names of the legacy Socket.IO contract."""

    CREATED = "flow:created"
    UPDATED = "flow:updated"
    PROGRESS = "flow:progress"
    COMPLETED = "flow:completed"
    FAILED = "flow:failed"
    CANCELLED = "flow:cancelled"
    DELETED = "flow:deleted"
    JOB_UPDATED = "flow:job:updated"
    JOB_PROGRESS = "flow:job:progress"


TERMINAL_JOB_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
UNFINISHED_JOB_STATUSES = frozenset(set(JobStatus) - TERMINAL_JOB_STATUSES)
# States from which a worker may pick a job up and make it active.
STARTABLE_JOB_STATUSES = frozenset({JobStatus.WAITING, JobStatus.DELAYED})
# States that have not started yet: a flow whose jobs are all here is still pending.
NOT_STARTED_JOB_STATUSES = frozenset(
    {JobStatus.WAITING, JobStatus.WAITING_CHILDREN, JobStatus.DELAYED, JobStatus.PAUSED}
)
FINAL_FLOW_STATUSES = frozenset({FlowStatus.COMPLETED, FlowStatus.FAILED, FlowStatus.CANCELLED})
OPEN_FLOW_STATUSES = frozenset(set(FlowStatus) - FINAL_FLOW_STATUSES)
# The error type of a parent failed by its child (failParentOnFailure).
CHILD_FAILED_ERROR = "ChildFailed"
# The error text of a cancelled job, and the type its parent and flow see it fail with.
CANCELLED_ERROR = "Cancelled"
# A failed child with one of these policies does not fail its parent or its flow.
IGNORED_FAILURE_POLICIES = frozenset({FailurePolicy.IGNORE, FailurePolicy.REMOVE})

# The job state machine: every status change anywhere goes through one of these edges.
JOB_TRANSITIONS: dict[str, frozenset[str]] = {
    JobStatus.WAITING: frozenset(
        {JobStatus.ACTIVE, JobStatus.PAUSED, JobStatus.DELAYED, JobStatus.CANCELLED}
    ),
    JobStatus.WAITING_CHILDREN: frozenset(
        {JobStatus.WAITING, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.DELAYED: frozenset({JobStatus.ACTIVE, JobStatus.WAITING, JobStatus.PAUSED, JobStatus.CANCELLED}),
    JobStatus.ACTIVE: frozenset(
        {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DELAYED, JobStatus.STUCK, JobStatus.CANCELLED}
    ),
    JobStatus.PAUSED: frozenset({JobStatus.WAITING, JobStatus.CANCELLED}),
    JobStatus.STUCK: frozenset({JobStatus.WAITING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.WAITING, JobStatus.WAITING_CHILDREN}),
    JobStatus.CANCELLED: frozenset(),
}


def sources_of(target: str) -> frozenset[str]:
    """Return the statuses from which a job may move to ``target``."""
    return frozenset(src for src, targets in JOB_TRANSITIONS.items() if target in targets)


class ClientEvent(models.TextChoices):
    """Websocket events that answer one connection's own action (never broadcast)."""

    SNAPSHOT = "flow:snapshot"
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    PONG = "pong"
    ERROR = "error"


class ClientAction(models.TextChoices):
    """What a websocket client may ask for (``{"action": ...}``; Socket.IO event names)."""

    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    SNAPSHOT = "snapshot"
    PING = "ping"

# Flow and job ids in URLs and client messages: Flowsite's own ids are uuid4 hex (32
# characters), and flow ids also name channel-layer groups. A URL whose id is anything
# else (a NUL, a slash-free path of junk) matches no route and answers the API's JSON 404.
ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"

# The system queue of the periodic sweeps (``jobs.sweeps``): every worker consumes it
# besides the queues it was started with, so a sweep never waits behind jobs.
SWEEP_QUEUE = "flowsite.sweeps"
# Job queues of the default configuration (``FLOWSITE_QUEUES``): Flowsite's own, then
# the legacy service's, so that legacy flow definitions work unchanged.
DEFAULT_QUEUES = ("default", "video", "image")
LEGACY_QUEUES = ("flowQueue", "jobQueue", "schedQueue")
# The legacy service's webhook queue. Reserved for Flowsite's own webhook deliveries
# (issue #14: Celery tasks on this queue): no job may be sent to it, and neither
# FLOWSITE_QUEUES nor FLOWSITE_EXTERNAL_QUEUES may name it. Jobs sharing it with the
# deliveries would hold them up (and the other way round), and a legacy flow job on it
# was a webhook call, which Flowsite's webhooks replace.
WEBHOOK_QUEUE = "webhooks"
RESERVED_QUEUES = frozenset({WEBHOOK_QUEUE, SWEEP_QUEUE})
# The periodic sweep's Celery task (``jobs.tasks.sweep``), sent by beat to ``SWEEP_QUEUE``.
SWEEP_TASK = "jobs.sweep"
# The Redis pub/sub channel on which a cancel names the running jobs to interrupt
# (``jobs.interrupts``); the broker's Redis database number is appended, since pub/sub
# channels are shared by every database of a Redis server.
CANCEL_CHANNEL = "flowsite.cancel"

# The legacy service's response messages, which its clients may show or compare.
FLOW_CREATED_MESSAGE = "Flow created successfully"
FLOW_UPDATED_MESSAGE = "Flow updated successfully"

# WEBHOOKS (``webhooks``)
# Deliveries run on WEBHOOK_QUEUE (above): no job may be sent to it, so a slow target
# never holds up jobs, nor jobs the deliveries.
# Celery tasks: send one delivery (then the next ones of its webhook and flow, in
# order), and publish the deliveries that are due (after commits; beat, as a sweep).
WEBHOOK_DELIVER_TASK = "webhooks.deliver"
WEBHOOK_DISPATCH_TASK = "webhooks.dispatch"
# The ``type`` of a test delivery (``POST /api/webhooks/{id}/test``); nobody subscribes to it.
WEBHOOK_PING = "ping"
# Which subscriptions receive an event of each type: a finished job or flow is also a
# status change (``delta``), and ``all`` receives everything.
WEBHOOK_SUBSCRIBERS: dict[str, frozenset[str]] = {
    WebhookEvent.PROGRESS: frozenset({WebhookEvent.PROGRESS, WebhookEvent.ALL}),
    WebhookEvent.COMPLETED: frozenset({WebhookEvent.COMPLETED, WebhookEvent.DELTA, WebhookEvent.ALL}),
    WebhookEvent.FAILED: frozenset({WebhookEvent.FAILED, WebhookEvent.DELTA, WebhookEvent.ALL}),
    WebhookEvent.DELTA: frozenset({WebhookEvent.DELTA, WebhookEvent.ALL}),
}


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
