"""The state of every job, in a flow or standalone: the single source of truth."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from jobs.vocabulary import FailurePolicy, JobStatus


def new_job_id() -> str:
    return uuid.uuid4().hex


class Job(models.Model):
    """One job. Its id is also the Celery task id, assigned before dispatch.

    Hot state (``status``, ``pending_children``, ``attempts_made``) is only ever
    changed by conditional ``UPDATE`` statements in ``jobs.transitions`` and ``jobs.services``: never by
    read-modify-save, since many workers touch sibling rows at the same time.
    """

    id = models.CharField(primary_key=True, max_length=255, default=new_job_id, editable=False)
    # Indexed by ``job_flow_status_idx``, which starts with the flow.
    flow = models.ForeignKey(
        "flows.Flow", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs", db_index=False
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children", db_index=False
    )
    name = models.CharField(max_length=200)
    queue_name = models.CharField(max_length=200)
    data = models.JSONField(default=dict, blank=True)
    opts = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.WAITING)
    progress = models.JSONField(default=int, blank=True)
    attempts_made = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=1)
    failure_policy = models.CharField(
        max_length=24, choices=FailurePolicy.choices, default=FailurePolicy.FAIL_PARENT
    )
    position = models.PositiveIntegerField(default=0, help_text="Index among its siblings.")
    child_count = models.PositiveIntegerField(default=0)
    pending_children = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    # The error object a reporter sent (``PUT /api/flows/{flowId}/jobs/{jobId}`` with
    # ``error: {message, ...}``), kept as sent; ``error`` holds its ``message``.
    error_detail = models.JSONField(null=True, blank=True)
    error_type = models.CharField(max_length=200, blank=True, default="")
    stacktrace = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The worker process that started the current run (``jobs.liveness``), written by the
    # start statement itself. Empty for a job made active by an external report.
    worker_id = models.CharField(max_length=255, null=True, blank=True, editable=False)
    # A run claimed by a report (``jobs.services.job_report``): the ``workerId`` the claim
    # named, if any, and when the run was last reported on. Such a run has no worker
    # heartbeat; it is lost after ``FLOWSITE_EXTERNAL_STALLED_AFTER`` seconds without a report.
    claimed_by = models.CharField(max_length=255, null=True, blank=True, editable=False)
    reported_at = models.DateTimeField(null=True, blank=True, editable=False)
    # When the sweep publishes this job's message again if it is still ``waiting`` or
    # ``delayed`` (``jobs.sweeps``): set with every status change that publishes it.
    redispatch_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Set only on jobs migrated from the legacy service: the BullMQ job id ("FlowJob"."jobId"),
    # kept so that old logs and references can still be traced to the migrated job.
    legacy_id = models.CharField(max_length=255, null=True, blank=True, editable=False)

    class Meta:
        # Every status change updates every index of this table, so it keeps only the
        # ones queries use. Indexes declared here, unlike ``db_index``, get no extra
        # ``varchar_pattern_ops`` copy on PostgreSQL (no query here uses LIKE).
        indexes = [
            models.Index(fields=["flow", "status"], name="job_flow_status_idx"),
            models.Index(fields=["queue_name", "status"], name="job_queue_status_idx"),
            models.Index(fields=["parent"], name="job_parent_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.id}) {self.status}"


class JobLog(models.Model):
    """A line a handler wrote with ``ctx.log()``."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="logs")
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.message[:80]


class QueueState(models.Model):
    """A queue's state: paused by operators (its jobs wait as ``paused``), and the sweeps' counters."""

    name = models.CharField(primary_key=True, max_length=200)
    paused = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)
    # Counted by the sweeps (``jobs.sweeps``): runs found lost, messages published again.
    stalled_total = models.PositiveBigIntegerField(default=0)
    redispatched_total = models.PositiveBigIntegerField(default=0)

    class Meta:
        verbose_name = "queue"  # the admin's queue page (``jobs.admin``) lists every configured queue

    def __str__(self) -> str:
        return f"{self.name} ({'paused' if self.paused else 'running'})"


class Worker(models.Model):
    """A process that runs jobs, as its heartbeat shows it (``jobs.liveness``).

    Each Celery pool process, and the embedded worker, writes its row when it starts
    and renews ``last_seen_at`` every ``FLOWSITE_HEARTBEAT_SECONDS``. A run whose
    worker has not been seen for ``FLOWSITE_STALLED_AFTER`` seconds is lost.
    """

    id = models.CharField(primary_key=True, max_length=255)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list, blank=True)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.id
