"""Flow planning: from a validated tree to job rows and the annotated structure.

How a flow executes: every job is one ``jobs.run`` Celery task on its own
queue. The leaves are published together when the flow is created (siblings run
in parallel on any number of workers); each parent waits in
``waiting-children`` with a ``pending_children`` counter, and the child that
counts it down to zero publishes the parent. This replaces nested Celery chords,
which hang at depth 50 and slow down on wide fan-ins (see BENCHMARKS.md and
README "Design notes"): the database already records every job, so it also
counts the fan-in.

A flow's status rules are in ``flows.status``; a job's transitions in
``jobs.transitions``; the worker's run lifecycle in ``jobs.runner``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from flows.specs import JobSpec
from django.utils import timezone

from jobs.dispatch import redispatch_at
from jobs.models import Job, new_job_id
from jobs.selectors import iso
from jobs.vocabulary import JobStatus


def flow_metadata(
    *, flow_id: str, flowname: str, root_job_id: str, parent_job_id: str | None, injected_at: str | None = None
) -> dict:
    """Return the ``_flowMetadata`` object injected into every job's data.

    Flowsite's fields, and the legacy service's ``parentFlowName`` (the flow's name)
    and ``injectedAt`` (when the job got it, ISO 8601; now unless given).
    """
    return {
        "flowId": flow_id, "flowname": flowname, "rootJobId": root_job_id, "parentJobId": parent_job_id,
        "parentFlowName": flowname, "injectedAt": injected_at or iso(timezone.now()),
    }


@dataclass
class FlowPlan:
    """The rows and structure of a flow about to be created."""

    jobs: list[Job]
    structure: dict[str, Any]
    root_job_id: str
    leaves: list[Job]


def plan_flow(*, flow_id: str, flowname: str, owner_id: int, root: JobSpec) -> FlowPlan:
    """Assign job ids and build the Job rows (parents first) and the annotated structure.

    Every job's data gets ``flowId`` and ``_flowMetadata``. Iterative, so depth
    is bounded only by the validation limit.
    """
    root_id = new_job_id()
    jobs: list[Job] = []
    leaves: list[Job] = []
    structure: dict[str, Any] = {}
    # Breadth-first: parents precede their children, siblings keep their order.
    queue: deque[tuple[JobSpec, str, str | None, int, dict[str, Any]]] = deque(
        [(root, root_id, None, 0, structure)]
    )
    now = timezone.now()
    injected_at = iso(now)  # formatted once for the whole tree
    while queue:
        spec, job_id, parent_id, position, node = queue.popleft()
        data = {
            **spec.data,
            "flowId": flow_id,
            "_flowMetadata": flow_metadata(
                flow_id=flow_id, flowname=flowname, root_job_id=root_id, parent_job_id=parent_id,
                injected_at=injected_at,
            ),
        }
        if spec.children:
            status = JobStatus.WAITING_CHILDREN
        elif spec.options.delay_ms:
            status = JobStatus.DELAYED
        else:
            status = JobStatus.WAITING
        job = Job(
            id=job_id,
            flow_id=flow_id,
            owner_id=owner_id,
            parent_id=parent_id,
            name=spec.name,
            queue_name=spec.queue_name,
            data=data,
            opts=spec.opts,
            status=status,
            max_attempts=spec.options.attempts,
            failure_policy=spec.options.failure_policy,
            position=position,
            child_count=len(spec.children),
            pending_children=len(spec.children),
            redispatch_at=None if spec.children else redispatch_at(spec.options.delay_ms, now=now),
        )
        jobs.append(job)
        if not spec.children:
            leaves.append(job)
        node.update({"jobId": job_id, "name": spec.name, "queueName": spec.queue_name, "data": spec.data})
        if spec.opts:
            node["opts"] = spec.opts
        if spec.children:
            node["children"] = [{} for _ in spec.children]
            for index, child in enumerate(spec.children):
                queue.append((child, new_job_id(), job_id, index, node["children"][index]))
    return FlowPlan(jobs=jobs, structure=structure, root_job_id=root_id, leaves=leaves)
