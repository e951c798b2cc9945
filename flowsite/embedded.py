"""A real Celery worker running in a thread of the current process (embedded mode).

Not eager mode: jobs go through the broker and run asynchronously, exactly as
with separate workers, only in the same process as the server or command.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from celery.worker import WorkController
from django.conf import settings

from flowsite.celery import app

logger = logging.getLogger(__name__)


class _EmbeddedWorkController(WorkController):
    """A WorkController that says when its consumer is ready to take messages."""

    def __init__(self, *args, **kwargs) -> None:
        self.ready = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer) -> None:
        self.ready.set()


class _Sweeper:
    """Runs the sweeps of ``jobs.sweeps`` every ``FLOWSITE_SWEEP_INTERVAL`` (Celery beat's part in service mode)."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="flowsite-sweeps", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from django.db import connections

        from jobs.sweeps import sweep
        from webhooks.services import deliveries_dispatch

        while not self.stopped.wait(settings.FLOWSITE_SWEEP_INTERVAL):
            try:
                sweep()
                deliveries_dispatch(sweep=True)
            except Exception:
                logger.warning("The sweep failed; it runs again in %s s", settings.FLOWSITE_SWEEP_INTERVAL,
                               exc_info=True)
            finally:
                connections.close_all()

    def stop(self, timeout: float) -> None:
        self.stopped.set()
        self.thread.join(timeout)


@dataclass
class EmbeddedWorker:
    controller: _EmbeddedWorkController
    thread: threading.Thread
    sweeper: _Sweeper

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs and wait for the running ones to finish."""
        from jobs import liveness

        self.sweeper.stop(timeout)
        self.controller.stop(in_sighandler=False, exitcode=0)
        self.thread.join(timeout)
        try:
            liveness.stop_heartbeat()
        except Exception:
            logger.debug("Could not remove the embedded worker's heartbeat", exc_info=True)


def start_embedded_worker(*, queues: list[str] | None = None, concurrency: int | None = None) -> EmbeddedWorker:
    """Start a Celery worker thread consuming ``queues`` (default: the worked queues,
    ``jobs.queues.worked_queues``, and the webhook deliveries'), and the sweeps."""
    from jobs import liveness
    from jobs.queues import worked_queues
    from jobs.vocabulary import WEBHOOK_QUEUE

    consumed = queues or [*worked_queues(), WEBHOOK_QUEUE]
    queues = queues or worked_queues()
    liveness.set_queues(queues)
    liveness.this_worker()
    controller = _EmbeddedWorkController(
        app=app,
        hostname=f"embedded-{threading.get_native_id()}@flowsite",
        pool="threads",
        concurrency=concurrency or settings.FLOWSITE_EMBEDDED_CONCURRENCY,
        queues=consumed,
        loglevel=logging.WARNING,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    thread = threading.Thread(target=controller.start, name="flowsite-worker", daemon=True)
    thread.start()
    if not controller.ready.wait(30):
        raise RuntimeError("The embedded Celery worker did not start within 30 s")
    logger.debug("Embedded worker consuming %s", ", ".join(consumed))
    return EmbeddedWorker(controller=controller, thread=thread, sweeper=_Sweeper())
