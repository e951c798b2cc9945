"""One lock per flow for the API's flow-wide changes: cancel, retry, delete, attaching a job.

A transaction-scoped PostgreSQL advisory lock keyed by the flow id, not a lock on
the flow row: the engine's hot path (``jobs.transitions``) locks a job row and then
the flow row (its ``event_seq``) inside one statement, so a service that locked the
flow row before its job rows could deadlock with a worker. The advisory lock is
taken first, before any row, and the hot path never takes it, so it adds no cycle;
after it the services keep the hot path's order (job rows in pk order, then the flow row).

Cancel, retry and delete take it exclusively; attaching a job (``jobs.services.job_submit``
with a ``flowId``) shares it with other attaches. Off PostgreSQL it is a no-op (SQLite
serialises writers anyway).
"""

from __future__ import annotations

from django.db import connection

_NAMESPACE = 0x466C6F77  # "Flow": the first key of the two-key advisory lock


def lock_flow(flow_id: str, *, shared: bool = False) -> None:
    """Hold the flow's lock until the current transaction ends (waiting for a conflicting holder)."""
    if connection.vendor != "postgresql":
        return
    assert connection.in_atomic_block, "lock_flow must be called inside transaction.atomic()"
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s, hashtext(%s))", [_NAMESPACE, flow_id])
