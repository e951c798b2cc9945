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


@dataclass
class EmbeddedWorker:
    controller: _EmbeddedWorkController
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs and wait for the running ones to finish."""
        self.controller.stop(in_sighandler=False, exitcode=0)
        self.thread.join(timeout)


def start_embedded_worker(*, queues: list[str] | None = None, concurrency: int | None = None) -> EmbeddedWorker:
    """Start a Celery worker thread consuming ``queues`` (default: all allowed queues)."""
    queues = queues or list(settings.FLOWSITE_QUEUES)
    controller = _EmbeddedWorkController(
        app=app,
        hostname=f"embedded-{threading.get_native_id()}@flowsite",
        pool="threads",
        concurrency=concurrency or settings.FLOWSITE_EMBEDDED_CONCURRENCY,
        queues=queues,
        loglevel=logging.WARNING,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    thread = threading.Thread(target=controller.start, name="flowsite-worker", daemon=True)
    thread.start()
    if not controller.ready.wait(30):
        raise RuntimeError("The embedded Celery worker did not start within 30 s")
    logger.debug("Embedded worker consuming %s", ", ".join(queues))
    return EmbeddedWorker(controller=controller, thread=thread)
