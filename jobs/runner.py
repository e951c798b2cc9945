"""The lifecycle of one job run: start, call the handler, record the outcome.

Like NetBox's job wrapper, this is the single place that owns a run. Handlers
never touch job rows themselves; every status change goes through
``jobs.transitions``.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from django.db import connections

from jobs import interrupts, transitions
from jobs.exceptions import JobCancelled, JobTimeoutError
from jobs.handlers import JobContext
from jobs.options import JobOptions
from jobs.registry import get_handler
from jobs.validation import contains_nul

logger = logging.getLogger(__name__)


class UnknownHandler(LookupError):
    """The job names a handler that this worker does not have."""


def run_job(*, job_id: str, redelivered: bool = False, lost_on: str | None = None) -> None:
    """Run one job: ``active``, then ``completed``, ``delayed`` (retry) or ``failed``.

    A job that cannot start (finished, running elsewhere, cancelled, gone)
    is left alone: that is how duplicate deliveries become harmless. A
    redelivered message of a job still ``active`` means its run was lost
    (see ``transitions.job_start``). A handler interrupted because its job was
    cancelled (``jobs.interrupts``) leaves the job ``cancelled``, as the cancel
    recorded it: no failure, no retry.
    """
    job = transitions.job_start(job_id=job_id, redelivered=redelivered, lost_on=lost_on)
    if job is None:
        logger.info("Job %s is not startable; delivery ignored", job_id)
        return
    options = JobOptions.from_stored(job.opts)
    try:
        try:
            result = _call_handler(job, options)
            if contains_nul(result):  # also checks that it is JSON-serialisable
                raise ValueError(f"The result of job {job.name!r} contains NUL characters, which cannot be stored.")
        except JobCancelled:
            logger.info("Job %s (%s) was cancelled: its handler was interrupted", job.name, job.id)
            return
        except Exception as exc:  # the handler's failure is the job's failure
            if not transitions.job_fail(job=job, exc=exc, retry_delay_ms=options.retry_delay_ms(job.attempts_made)):
                _log_discarded(job)
            return
        if not transitions.job_complete(job=job, result=result):
            _log_discarded(job)
    finally:
        interrupts.clear()
        _rearm_soft_limit()


def _log_discarded(job: transitions.StartedJob) -> None:
    if transitions.job_is_cancelled(job_id=job.id):
        logger.info("Job %s (%s) was cancelled while its handler ran; its outcome is discarded", job.name, job.id)


def _call_handler(job: transitions.StartedJob, options: JobOptions) -> Any:
    handler = get_handler(job.name)
    if handler is None:
        raise UnknownHandler(f"No handler registered for job {job.name!r} on this worker.")
    values, failures = ({}, {})
    if job.child_count:
        values, failures = transitions.job_children_outcomes(job_id=job.id)
    ctx = JobContext(
        job_id=job.id,
        name=job.name,
        queue_name=job.queue_name,
        data=job.data,
        opts=job.opts,
        flow_id=job.flow_id,
        attempt=job.attempts_made,
        children_values=values,
        children_failures=failures,
    )
    if options.timeout_ms is None:  # not parsed options: every parsed job has a timeout
        return handler(ctx)
    if _interruptible():
        return _call_interruptible(handler, ctx, options.timeout_ms)
    return _call_with_timeout(handler, ctx, options.timeout_ms)


# Timeouts and cancels. In a prefork pool process the job's message carries a Celery
# soft time limit (``jobs.dispatch.enqueue_jobs``): when it runs out, the pool signals
# the process (SIGUSR1) and the handler is interrupted where it is, with an exception.
# A cancel interrupts it the same way: the process's cancel watcher signals its own
# process (``jobs.interrupts``). Elsewhere (the embedded mode's threads, the solo pool)
# nothing can interrupt Python code, so the handler runs in a helper thread that is
# abandoned when the time is up, and polls ``ctx.cancelled`` to stop on a cancel.
_soft_limit_sighandler = None  # billiard's SIGUSR1 handler, once this process is known to have it


def _interruptible() -> bool:
    """True in a prefork pool process (billiard's soft time limit handler is installed)."""
    global _soft_limit_sighandler
    if threading.current_thread() is not threading.main_thread() or interrupts.INTERRUPT_SIGNAL is None:
        return False
    if _soft_limit_sighandler is None:
        from billiard.pool import soft_timeout_sighandler

        if signal.getsignal(interrupts.INTERRUPT_SIGNAL) is not soft_timeout_sighandler:
            return False
        _soft_limit_sighandler = soft_timeout_sighandler
    return True


def _call_interruptible(handler, ctx: JobContext, timeout_ms: int) -> Any:
    """Call the handler; a soft time limit or a cancel interrupts it with an exception.

    The handler sees ``SoftTimeLimitExceeded`` (time is up) or ``JobCancelled``; the run
    then ends in ``JobTimeoutError`` (a failed attempt) or ``JobCancelled`` (nothing to
    record), also when the handler caught the interruption and carried on.
    """
    from celery.exceptions import SoftTimeLimitExceeded

    reason: type[BaseException] | None = None

    def interrupt(signum, frame):
        nonlocal reason
        if reason is not None:  # once: a second signal must not break the unwinding
            return
        reason = JobCancelled if interrupts.cancel_requested(ctx.job_id) else SoftTimeLimitExceeded
        raise reason()

    signal.signal(interrupts.INTERRUPT_SIGNAL, interrupt)
    try:
        try:
            with interrupts.running(ctx.job_id):
                value = handler(ctx)
        finally:
            # A signal that comes now, after the handler, must not interrupt the bookkeeping.
            signal.signal(interrupts.INTERRUPT_SIGNAL, signal.SIG_IGN)
    except BaseException:
        if reason is None:  # the handler's own failure
            raise
    if reason is not None:
        _drop_busy_connection()
    if reason is JobCancelled:
        raise JobCancelled(f"Job {ctx.job_id} was cancelled")
    if reason is SoftTimeLimitExceeded:
        raise JobTimeoutError(f"Job timed out after {_message_soft_limit_ms() or timeout_ms} ms")
    return value


def _message_soft_limit_ms() -> int | None:
    """The soft time limit this message carries: the timeout its publisher applied."""
    from celery import current_task

    limits = getattr(getattr(current_task, "request", None), "timelimit", None) or (None, None)
    return round(limits[1] * 1000) if limits[1] else None


def _drop_busy_connection() -> None:
    """Close the database connection if the interruption left it mid-query or mid-transaction."""
    from django.db import connection

    raw = connection.connection
    if raw is None or connection.vendor != "postgresql":
        return
    from psycopg.pq import TransactionStatus

    if raw.info.transaction_status != TransactionStatus.IDLE:
        logger.warning("A timed-out handler left its database connection busy; closing it")
        try:
            connection.close()
        except Exception:  # already broken: Django opens a new one when it is next used
            connection.connection = None


def _rearm_soft_limit() -> None:
    if _soft_limit_sighandler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(interrupts.INTERRUPT_SIGNAL, _soft_limit_sighandler)


def _call_with_timeout(handler, ctx: JobContext, timeout_ms: int) -> Any:
    """Run the handler in a helper thread and give up after ``timeout_ms``.

    A handler that overruns is abandoned: its thread runs on, but whatever it
    returns is discarded and its job, no longer active, refuses its progress updates.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = handler(ctx)
        except BaseException as exc:  # re-raised in the worker thread below
            outcome["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, name=f"job-{ctx.job_id}", daemon=True)
    thread.start()
    thread.join(timeout_ms / 1000)
    if thread.is_alive():
        raise JobTimeoutError(f"Job timed out after {timeout_ms} ms")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
