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
            if transitions.job_is_cancelled(job_id=job.id):
                logger.info("Job %s (%s) was cancelled: its handler was interrupted", job.name, job.id)
            else:  # raised by the handler itself: a failure like any other, or the job stays active
                _fail(job, options, RuntimeError("The handler raised JobCancelled, but its job was not cancelled."))
            return
        except Exception as exc:  # the handler's failure is the job's failure
            _fail(job, options, exc)
            return
        if not transitions.job_complete(job=job, result=result):
            _log_discarded(job)
    finally:
        interrupts.clear()
        _rearm_soft_limit()


def _fail(job: transitions.StartedJob, options: JobOptions, exc: Exception) -> None:
    if not transitions.job_fail(job=job, exc=exc, retry_delay_ms=options.retry_delay_ms(job.attempts_made)):
        _log_discarded(job)


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
    if _interruptible():
        return _call_interruptible(handler, ctx, options.effective_timeout_ms)
    if options.timeout_ms is None:
        # Threads: the default timeout is not worth a helper thread per job (it cost the
        # embedded mode a tenth of its throughput); only an explicit ``timeout`` is.
        return handler(ctx)
    return _call_with_timeout(handler, ctx, options.timeout_ms)


# Timeouts and cancels. In a prefork pool process (one job at a time, in the main
# thread) the handler is interrupted where it is, with an exception raised by a signal
# handler: SIGALRM from a timer armed for the job's timeout (``signal.setitimer``), or
# SIGUSR1 sent by the process's cancel watcher (``jobs.interrupts``). Elsewhere (the
# embedded mode's threads, the solo pool) nothing can interrupt Python code, so a
# handler with a ``timeout`` option runs in a helper thread that is abandoned when the
# time is up (the default timeout is not applied there), and a handler polls
# ``ctx.cancelled`` to stop on a cancel.
#
# Not Celery's soft time limit on the message: the worker's main process keeps a timer
# per message for it, and a finished job only marks its timer cancelled, which stays
# in the timer heap until it would have fired. With a default timeout of an hour on
# every job, that is an hour of jobs' timers in every worker (a million at 300 jobs/s).
# The timer here costs two system calls per job.
_soft_limit_sighandler = None  # billiard's SIGUSR1 handler, once this process is known to have it
TIMEOUT_SIGNAL = getattr(signal, "SIGALRM", None)


def _interruptible() -> bool:
    """True in a prefork pool process (billiard's soft time limit handler is installed)."""
    global _soft_limit_sighandler
    if (threading.current_thread() is not threading.main_thread() or interrupts.INTERRUPT_SIGNAL is None
            or TIMEOUT_SIGNAL is None):
        return False
    if _soft_limit_sighandler is None:
        from billiard.pool import soft_timeout_sighandler

        if signal.getsignal(interrupts.INTERRUPT_SIGNAL) is not soft_timeout_sighandler:
            return False
        _soft_limit_sighandler = soft_timeout_sighandler
    return True


def _call_interruptible(handler, ctx: JobContext, timeout_ms: int) -> Any:
    """Call the handler; its timeout or a cancel interrupts it with an exception.

    The handler sees ``SoftTimeLimitExceeded`` (time is up, as with Celery's soft time
    limit) or ``JobCancelled``; the run then ends in ``JobTimeoutError`` (a failed
    attempt) or ``JobCancelled`` (nothing to record), also when the handler caught the
    interruption and carried on. (A SIGUSR1 that is not a cancel is a Celery soft time
    limit, on a message published with one.)
    """
    from celery.exceptions import SoftTimeLimitExceeded

    reason: type[BaseException] | None = None

    def interrupt(signum, frame):
        nonlocal reason
        if reason is not None:  # once: a second signal must not break the unwinding
            return
        cancelled = signum == interrupts.INTERRUPT_SIGNAL and interrupts.cancel_requested(ctx.job_id)
        reason = JobCancelled if cancelled else SoftTimeLimitExceeded
        raise reason()

    previous_alarm = signal.signal(TIMEOUT_SIGNAL, interrupt)
    signal.signal(interrupts.INTERRUPT_SIGNAL, interrupt)
    try:
        try:
            with interrupts.running(ctx.job_id):
                signal.setitimer(signal.ITIMER_REAL, timeout_ms / 1000)
                value = handler(ctx)
        finally:
            # A signal that comes now, after the handler, must not interrupt the bookkeeping.
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(interrupts.INTERRUPT_SIGNAL, signal.SIG_IGN)
            signal.signal(TIMEOUT_SIGNAL, signal.SIG_IGN if previous_alarm is None else previous_alarm)
    except BaseException:
        if reason is None:  # the handler's own failure
            raise
    if reason is not None:
        _drop_busy_connection()
    if reason is JobCancelled:
        raise JobCancelled(f"Job {ctx.job_id} was cancelled")
    if reason is SoftTimeLimitExceeded:
        raise JobTimeoutError(f"Job timed out after {timeout_ms} ms")
    return value


def _drop_busy_connection() -> None:
    """Close the database connection if the interruption left it mid-query or mid-transaction."""
    from django.db import connection

    raw = connection.connection
    if raw is None or connection.vendor != "postgresql":
        return
    from psycopg.pq import TransactionStatus

    if raw.info.transaction_status != TransactionStatus.IDLE:
        logger.warning("An interrupted handler left its database connection busy; closing it")
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
