"""Which queues exist, read from the settings: worked by Flowsite's workers, or external.

- ``FLOWSITE_QUEUES``: Celery workers consume them (``-Q``); jobs are published there.
- ``FLOWSITE_EXTERNAL_QUEUES``: jobs processed outside Flowsite. Any job name is
  accepted, nothing is published, and only reports change their state.

Jobs may be created on either kind; everything that lists "the queues" (validation,
the queue routes, the sweeps, queue counts) uses ``job_queues()``.
"""

from __future__ import annotations

from django.conf import settings

from jobs.vocabulary import WEBHOOK_QUEUE


def worked_queues() -> list[str]:
    """Queues Flowsite's workers consume (``FLOWSITE_QUEUES``)."""
    return list(dict.fromkeys(settings.FLOWSITE_QUEUES))


def external_queues() -> list[str]:
    """Queues whose jobs run outside Flowsite (``FLOWSITE_EXTERNAL_QUEUES``)."""
    return list(dict.fromkeys(settings.FLOWSITE_EXTERNAL_QUEUES))


def job_queues() -> list[str]:
    """Every queue a job may be sent to: the worked ones, then the external ones."""
    return list(dict.fromkeys([*settings.FLOWSITE_QUEUES, *settings.FLOWSITE_EXTERNAL_QUEUES]))


def is_external(queue_name: str) -> bool:
    """Whether jobs of this queue run outside Flowsite (nothing is published for them)."""
    return queue_name in settings.FLOWSITE_EXTERNAL_QUEUES


def unknown_queue_message(queue_name: str) -> str:
    """The error text for a queue that is not configured."""
    if queue_name == WEBHOOK_QUEUE:
        return (
            f"Queue {queue_name!r} is reserved for webhook deliveries: send jobs to another queue "
            f"({', '.join(job_queues())})."
        )
    return f"Unknown queue {queue_name!r}. Allowed queues: {', '.join(job_queues())}."
