"""What a Celery worker does besides running tasks: its heartbeat, and the sweep queue.

- A worker started without ``-Q`` consumes every queue of ``FLOWSITE_QUEUES`` (the
  legacy queue names included), not Celery's default ``celery`` queue, where Flowsite
  publishes nothing. External queues (``FLOWSITE_EXTERNAL_QUEUES``) are never consumed.
- Every worker consumes ``SWEEP_QUEUE`` besides the queues it was started with
  (``-Q``), so that the sweeps beat sends are run by whichever worker is free.
- Each pool process starts its heartbeat when it starts (``jobs.liveness``), so a
  worker counts as live before it has run anything; a process that stops cleanly
  removes its row.
"""

from __future__ import annotations

import logging

from celery import signals

from jobs import liveness
from jobs.queues import worked_queues
from jobs.vocabulary import SWEEP_QUEUE

logger = logging.getLogger(__name__)


@signals.celeryd_after_setup.connect
def _consume_sweeps(sender, instance, **kwargs) -> None:
    queues = instance.app.amqp.queues
    default = instance.app.conf.task_default_queue
    if set(queues.consume_from) == {default}:  # started without -Q
        for name in worked_queues():
            queues.select_add(name)
        queues.deselect([default])
    queues.select_add(SWEEP_QUEUE)
    liveness.set_queues([name for name in queues.consume_from if name != SWEEP_QUEUE])


@signals.worker_process_init.connect
def _start_heartbeat(**kwargs) -> None:
    try:
        liveness.this_worker()
    except Exception:  # the first job starts it again; the worker must start whatever the database says
        logger.warning("Could not start this worker process's heartbeat", exc_info=True)


@signals.worker_process_shutdown.connect
def _stop_heartbeat(**kwargs) -> None:
    try:
        liveness.stop_heartbeat()
    except Exception:
        logger.debug("Could not remove this worker process's heartbeat", exc_info=True)
