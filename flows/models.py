"""One row per flow: its definition (written once) and its overall outcome."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from jobs.vocabulary import OPEN_FLOW_STATUSES, FlowStatus


def new_flow_id() -> str:
    return uuid.uuid4().hex


class Flow(models.Model):
    """A tree of jobs. Per-job state lives in ``jobs.Job``; this row changes rarely.

    ``job_structure`` is the tree as submitted, every node annotated with its
    ``jobId``. Progress is derived from the Job rows (see ``flows.selectors``),
    so sibling jobs finishing together never queue behind this row's lock.
    """

    id = models.CharField(primary_key=True, max_length=64, default=new_flow_id, editable=False)
    flowname = models.CharField(max_length=200)
    name = models.CharField(max_length=200)
    queue_name = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="flows"
    )
    job_structure = models.JSONField(default=dict)
    root_job_id = models.CharField(max_length=255, blank=True, default="")
    status = models.CharField(max_length=20, choices=FlowStatus.choices, default=FlowStatus.PENDING)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    # The public error object of a failed flow (``{message, type, jobId}``, written with
    # ``error`` by ``flows.status.flow_fail``); flows failed before it have only ``error``.
    error_detail = models.JSONField(null=True, blank=True)
    total_jobs = models.PositiveIntegerField(default=0)
    # The number of the flow's last event (flows/events.py): taken in the transaction
    # of each change, so events are numbered in commit order without holes.
    event_seq = models.PositiveBigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Set only on flows migrated from the legacy service (manage.py migrate_legacy_flows):
    # the legacy "Flow".id, remembered so that running the migration again skips them.
    legacy_id = models.CharField(max_length=64, null=True, blank=True, unique=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "status"], name="flow_owner_status_idx"),
            models.Index(fields=["flowname"], name="flow_flowname_idx"),
            models.Index(fields=["created_at"], name="flow_created_at_idx"),
            # The open flows, for the sweep that settles flows whose last job finished
            # unnoticed (``jobs.sweeps.settle_finished_flows``). Partial: finished flows,
            # nearly all of them, are not in it.
            models.Index(
                fields=["status"], name="flow_open_idx", condition=models.Q(status__in=sorted(OPEN_FLOW_STATUSES))
            ),
        ]

    def __str__(self) -> str:
        return f"{self.flowname} ({self.id})"


class IdempotencyKey(models.Model):
    """Remembers the flow a client created with an ``Idempotency-Key`` header."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    flow = models.ForeignKey(Flow, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name="idempotency_owner_key_uniq")]

    def __str__(self) -> str:
        return self.key
