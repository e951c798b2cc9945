"""Which worker processes are alive: a heartbeat row per process, renewed by a thread.

Every process that runs jobs (each Celery pool process, the embedded worker) has
a ``Worker`` row, written when it starts and renewed every
``FLOWSITE_HEARTBEAT_SECONDS`` by a daemon thread on its own database
connection. The statement that starts a job records ``worker_id`` in the same
statement, so the hot path pays nothing more. A run is lost when its worker
has not been seen for ``FLOWSITE_STALLED_AFTER`` seconds, or, on the same host,
when its process no longer exists (found at once, without waiting).

A handler that holds the GIL for longer than ``FLOWSITE_STALLED_AFTER`` (a long
call into C that does not release it) stops the heartbeat too: its run is then
taken for lost and retried while it goes on. Handlers must tolerate running more
than once (README, "Design notes").
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connections
from django.db.models import Q
from django.utils import timezone

from jobs.models import Worker

logger = logging.getLogger(__name__)

# Rows of workers silent for this many times ``FLOWSITE_STALLED_AFTER`` are deleted by the sweep.
FORGET_AFTER_STALLED = 20


class _Heartbeat:
    """This process's worker row and the thread that renews it."""

    def __init__(self) -> None:
        self.pid = 0
        self.worker_id = ""
        self.queues: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def ensure(self) -> str:
        """Start this process's heartbeat if it has not started (after a fork too); return its id."""
        if self.pid == os.getpid():
            return self.worker_id
        with self._lock:
            if self.pid != os.getpid():
                worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
                _beat(worker_id, self.queues, first=True)
                self._stop = threading.Event()
                thread = threading.Thread(target=self._run, args=(worker_id, self._stop), name="flowsite-heartbeat",
                                          daemon=True)
                thread.start()
                self.worker_id, self.pid = worker_id, os.getpid()
        return self.worker_id

    def stop(self) -> None:
        """Stop renewing and remove the row (a clean shutdown: the runs of this process are over)."""
        if self.pid != os.getpid():
            return
        self._stop.set()
        Worker.objects.filter(pk=self.worker_id).delete()
        self.pid, self.worker_id = 0, ""

    def _run(self, worker_id: str, stop: threading.Event) -> None:
        while not stop.wait(settings.FLOWSITE_HEARTBEAT_SECONDS):
            try:
                _beat(worker_id, self.queues)
            except Exception:
                logger.warning("Could not renew the heartbeat of worker %s", worker_id, exc_info=True)
            finally:
                connections.close_all()  # this thread's connection: back to the pool between beats


_heartbeat = _Heartbeat()


def _beat(worker_id: str, queues: list[str], *, first: bool = False) -> None:
    now = timezone.now()
    if first:
        hostname, pid, _ = worker_id.split(":")
        Worker.objects.update_or_create(
            pk=worker_id,
            defaults={"hostname": hostname, "pid": int(pid), "queues": queues, "started_at": now, "last_seen_at": now},
        )
    elif not Worker.objects.filter(pk=worker_id).update(last_seen_at=now):
        # Deleted by the sweep after a long silence (a stopped container resumed): come back.
        _beat(worker_id, queues, first=True)


def set_queues(queues: list[str]) -> None:
    """Record which queues this process's worker consumes (before its heartbeat starts)."""
    _heartbeat.queues = sorted(set(queues))


def this_worker() -> str:
    """The worker id of this process, its heartbeat started on first use."""
    return _heartbeat.ensure()


def current_worker_id() -> str | None:
    """This process's worker id if its heartbeat has started (no database access)."""
    return _heartbeat.worker_id if _heartbeat.pid == os.getpid() else None


def stop_heartbeat() -> None:
    _heartbeat.stop()


def _silent_since():
    return timezone.now() - timedelta(seconds=settings.FLOWSITE_STALLED_AFTER)


def is_alive(worker_id: str | None, *, reported_at: datetime | None = None) -> bool:
    """Whether the run of a job started by ``worker_id`` may still be going on.

    A run claimed by a report (``jobs.services.job_report``) has no worker and no
    heartbeat: it is alive while reports come, until ``FLOWSITE_EXTERNAL_STALLED_AFTER``
    seconds after ``reported_at`` (none recorded, as on migrated jobs: alive).
    """
    if not worker_id:
        return reported_at is None or reported_at >= timezone.now() - timedelta(
            seconds=settings.FLOWSITE_EXTERNAL_STALLED_AFTER
        )
    hostname, _, rest = worker_id.partition(":")
    pid = rest.partition(":")[0]
    if hostname == socket.gethostname() and pid.isdigit() and not _process_exists(int(pid)):
        return False
    return Worker.objects.filter(pk=worker_id, last_seen_at__gte=_silent_since()).exists()


def _process_exists(pid: int) -> bool:
    """Whether ``pid`` is a running process of this host (a zombie, killed but not reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc: the signal said it exists


def live_workers():
    """Workers heard from within ``FLOWSITE_STALLED_AFTER``."""
    return Worker.objects.filter(last_seen_at__gte=_silent_since())


def live_workers_per_queue() -> dict[str, int]:
    counts: dict[str, int] = {}
    for queues in live_workers().values_list("queues", flat=True):
        for name in queues or []:
            counts[name] = counts.get(name, 0) + 1
    return counts


def dead_worker_ids() -> list[str]:
    """Workers silent for longer than ``FLOWSITE_STALLED_AFTER``."""
    return list(Worker.objects.filter(last_seen_at__lt=_silent_since()).values_list("pk", flat=True))


def forget_long_dead_workers() -> int:
    """Delete the rows of workers silent for ``FORGET_AFTER_STALLED`` stalls, with no job pointing at them."""
    from jobs.models import Job
    from jobs.vocabulary import JobStatus

    cutoff = timezone.now() - timedelta(seconds=settings.FLOWSITE_STALLED_AFTER * FORGET_AFTER_STALLED)
    running = Job.objects.filter(status=JobStatus.ACTIVE, worker_id__isnull=False).values("worker_id")
    deleted, _ = Worker.objects.filter(Q(last_seen_at__lt=cutoff)).exclude(pk__in=running).delete()
    return deleted
