"""Writing planned legacy flows: one transaction per flow, bulk inserts, legacy timestamps kept."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection, transaction

from flows.legacy.plan import FlowPlan
from flows.models import Flow
from jobs.models import Job

BULK_BATCH_SIZE = 1000


def write_flow(*, plan: FlowPlan) -> None:
    """Insert one flow and all its jobs in one transaction: all of it, or nothing.

    ``created_at`` is ``auto_now_add`` (and ``Flow.updated_at`` is ``auto_now``),
    so inserting overwrites the legacy timestamps with the current time; one
    UPDATE per table, in the same transaction, puts them back.
    """
    flow_times = {"created_at": plan.flow.created_at, "updated_at": plan.flow.updated_at}
    job_times = [job.created_at for job in plan.jobs]
    with transaction.atomic():
        Flow.objects.bulk_create([plan.flow])
        Job.objects.bulk_create(plan.jobs, batch_size=BULK_BATCH_SIZE)
        Flow.objects.filter(pk=plan.flow.pk).update(**flow_times)
        for job, created_at in zip(plan.jobs, job_times):
            job.created_at = created_at
        if plan.jobs:
            Job.objects.bulk_update(plan.jobs, ["created_at"], batch_size=BULK_BATCH_SIZE)
    for field, value in flow_times.items():
        setattr(plan.flow, field, value)


@contextmanager
def fast_commits() -> Iterator[None]:
    """Let PostgreSQL acknowledge this session's commits before flushing them to disk.

    One commit per flow would otherwise wait for a WAL flush each time. A server
    crash can lose only the last moment's commits, never half a flow, and running
    the (idempotent) migration again restores them. Other sessions are unaffected.
    """
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO off")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET synchronous_commit")
