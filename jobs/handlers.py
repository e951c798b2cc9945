"""What a job handler receives: its context (data, children's values, progress, log, submit).

Handler authors import both names from here::

    from jobs.handlers import JobContext, job_handler

The registry itself lives in ``jobs.registry``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from jobs import services, transitions
from jobs.registry import job_handler

__all__ = ["JobContext", "job_handler"]


@dataclass
class JobContext:
    """Everything a handler may know and do.

    ``children_values`` holds each completed child's return value keyed by the
    child's job id and by its name (when two children share a name, the name
    maps to the list of their values in submission order). Children that failed
    under ``ignoreDependencyOnFailure`` appear in ``children_failures`` instead,
    keyed the same way; children removed by ``removeDependencyOnFailure`` appear
    in neither.
    """

    job_id: str
    name: str
    queue_name: str
    data: dict[str, Any]
    opts: dict[str, Any]
    flow_id: str | None
    attempt: int
    children_values: dict[str, Any] = field(default_factory=dict)
    children_failures: dict[str, Any] = field(default_factory=dict)
    _cancelled: bool = field(default=False, init=False, repr=False)
    _checked_at: float = field(default=0.0, init=False, repr=False)

    # How often ``cancelled`` asks the database, at most.
    CANCEL_CHECK_SECONDS = 0.5

    @property
    def cancelled(self) -> bool:
        """Whether the job was cancelled (or deleted) while this handler runs.

        On a prefork worker a cancel interrupts the handler with ``JobCancelled``
        (``jobs.interrupts``); in the embedded mode's threads it cannot, so a long
        handler polls this between steps and returns early. Whatever a cancelled
        handler returns is discarded. Reads the database at most every
        ``CANCEL_CHECK_SECONDS``.
        """
        if not self._cancelled and time.monotonic() - self._checked_at >= self.CANCEL_CHECK_SECONDS:
            self._checked_at = time.monotonic()
            self._cancelled = transitions.job_is_cancelled(job_id=self.job_id)
        return self._cancelled

    def update_progress(self, progress: int | float | dict) -> None:
        """Record the job's progress (a number, usually 0-100, or a JSON object)."""
        transitions.job_update_progress(job_id=self.job_id, progress=progress)

    def log(self, message: str) -> None:
        """Append a line to the job's log."""
        transitions.job_log(job_id=self.job_id, message=str(message))

    def submit(
        self,
        name: str,
        *,
        queue_name: str,
        data: dict[str, Any] | None = None,
        opts: dict[str, Any] | None = None,
    ) -> str:
        """Submit another job, on any allowed queue, attached to this job's flow.

        Returns the new job's id. The job runs independently (it is not a child of
        this one) but counts in the flow's progress, and the flow finishes only
        after it does.
        """
        job = services.job_submit(
            name=name, queue_name=queue_name, data=data or {}, opts=opts or {}, flow_id=self.flow_id
        )
        return job.id
