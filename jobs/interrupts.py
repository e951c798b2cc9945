"""Interrupting a running handler when its job is cancelled (prefork pool processes).

A cancel (``jobs.services.job_cancel``, ``flows.services.flow_cancel``) publishes,
after it commits, the ids of the jobs it found ``active`` on one Redis pub/sub
channel (``publish_cancel``). Every prefork pool process runs one thread
subscribed to that channel (``watch``), started with the process's first job: not
in ``worker_process_init``, where Celery's Django fixup closes the database
connections' file descriptors by number and can close a socket this thread had
just opened under a reused number (seen once: "Bad file descriptor"). When a message
names the job this process is running, the thread sends its own process
``SIGUSR1``, and the runner's signal handler (``jobs.runner``) raises
``JobCancelled`` inside the handler, wherever it is: a sleep, a query, a loop that
never polls ``ctx.cancelled``. The process lives on and takes the next job.
Nothing is paid per job but two assignments under a lock (``running``).

Why not Celery's ``revoke(terminate=True, signal="SIGUSR1")``: billiard's
``Pool.terminate_job`` expects the signal to end the pool process, and marks the
process ``_job_terminated`` for good. A ``SIGUSR1`` only raises an exception, so
the process lives on, marked; when it later dies for real (killed, out of memory)
billiard reports the job it was running as *terminated* instead of *lost*, Celery
takes that for a revoke and acknowledges the message, and ``reject_on_worker_lost``
never returns it to the queue: the worker-death redelivery of
``tests/test_stranded_jobs.py`` stopped working. Besides, ``terminate`` signals a
pid, which may be running another job by the time the signal arrives, and it
acknowledges the message at once. Here the process that runs the job decides,
knowing which job it runs.

A message sent while a watcher is reconnecting is missed by it: after every
(re)subscription the watcher asks the database whether its current job was
cancelled. Embedded mode (worker threads, no Redis) cannot interrupt a thread:
handlers there poll ``ctx.cancelled``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from django.conf import settings
from django.db import connections

from jobs.models import Job
from jobs.vocabulary import CANCEL_CHANNEL, JobStatus

logger = logging.getLogger(__name__)

# The signal that interrupts a cancelled job's handler (``jobs.runner`` handles it).
INTERRUPT_SIGNAL = getattr(signal, "SIGUSR1", None)
# A watcher that lost Redis subscribes again after this long.
RECONNECT_SECONDS = 1.0

_client = None
_client_lock = threading.Lock()


def cancel_channel() -> str:
    """The pub/sub channel of cancels: ``CANCEL_CHANNEL`` and the broker's Redis database number."""
    return f"{CANCEL_CHANNEL}.{urlparse(settings.REDIS_URL).path.strip('/') or '0'}"


def _redis():
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                import redis

                _client = redis.Redis.from_url(settings.REDIS_URL)
    return _client


def publish_cancel(job_ids: Iterable[str]) -> None:
    """Tell every worker process that these jobs were cancelled (service mode; after commit).

    Best effort, never raises: a process that misses it finds the cancel when its
    watcher subscribes again, and the job's outcome is discarded either way.
    """
    ids = " ".join(job_ids)
    if not ids or settings.EMBEDDED:
        return
    try:
        _redis().publish(cancel_channel(), ids)
    except Exception as exc:
        logger.warning("Could not publish the cancel of running jobs (%s): %s: %s", ids[:200], type(exc).__name__, exc)


class _Watcher:
    """This process's running job, and the thread that interrupts it when it is cancelled."""

    def __init__(self) -> None:
        self.pid = 0
        self.running: str | None = None  # the job whose handler this process runs now
        self.cancelled: str | None = None  # the job the last interrupting signal was for
        self._lock = threading.Lock()

    def ensure(self) -> None:
        if self.pid == os.getpid():
            return
        with self._lock:
            if self.pid != os.getpid():
                self.running = self.cancelled = None
                threading.Thread(target=self._listen, name="flowsite-cancel-watcher", daemon=True).start()
                self.pid = os.getpid()

    def interrupt_if_running(self, job_ids: set[str]) -> bool:
        with self._lock:
            job_id = self.running
            if job_id is None or job_id not in job_ids:
                return False
            # Under the lock: the runner cannot leave the handler between this check and the signal.
            self.cancelled = job_id
            os.kill(os.getpid(), INTERRUPT_SIGNAL)
            return True

    def _listen(self) -> None:
        while True:
            pubsub = None
            try:
                pubsub = _redis().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(cancel_channel())
                self._check_database()  # a cancel published while we were not subscribed
                for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.interrupt_if_running(set(message["data"].decode().split()))
            except Exception:
                logger.warning("The cancel watcher lost Redis; subscribing again", exc_info=True)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        logger.debug("Could not close the cancel watcher's subscription", exc_info=True)
            time.sleep(RECONNECT_SECONDS)

    def _check_database(self) -> None:
        job_id = self.running
        if job_id is None:
            return
        try:
            if Job.objects.filter(pk=job_id, status=JobStatus.CANCELLED).exists():
                self.interrupt_if_running({job_id})
        finally:
            connections.close_all()  # this thread's connection


_watcher = _Watcher()


def watch() -> None:
    """Start this process's cancel watcher if it has not started (service mode, prefork pool processes)."""
    if not settings.EMBEDDED and INTERRUPT_SIGNAL is not None:
        _watcher.ensure()


@contextmanager
def running(job_id: str) -> Iterator[None]:
    """Mark ``job_id`` as this process's running job while the block runs (its handler)."""
    watch()
    with _watcher._lock:
        _watcher.running, _watcher.cancelled = job_id, None
    try:
        yield
    finally:
        with _watcher._lock:
            _watcher.running = None


def clear() -> None:
    """Forget this process's running job (after a run, whatever happened in it)."""
    with _watcher._lock:
        _watcher.running = None


def cancel_requested(job_id: str) -> bool:
    """Whether the watcher signalled this process because ``job_id`` was cancelled (from a signal handler)."""
    return _watcher.cancelled == job_id
