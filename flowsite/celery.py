"""The Celery application.

Workers start with ``celery -A flowsite worker -Q <queues>``; the sweeps of
``jobs.sweeps`` are scheduled by ``celery -A flowsite beat`` (the default
scheduler: the schedule is fixed, nothing to store in a database).
"""

import os

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowsite.settings")
# The embedded mode's atomic on-disk broker (flowsite/broker.py), as ``flowsitefs://``.
TRANSPORT_ALIASES.setdefault("flowsitefs", "flowsite.broker:Transport")

app = Celery("flowsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _schedule_sweeps(sender: Celery, **kwargs) -> None:
    from django.conf import settings

    from jobs.vocabulary import SWEEP_QUEUE, SWEEP_TASK

    interval = settings.FLOWSITE_SWEEP_INTERVAL
    sender.add_periodic_task(
        interval,
        sender.signature(SWEEP_TASK, options={"queue": SWEEP_QUEUE, "routing_key": SWEEP_QUEUE, "expires": interval}),
        name="flowsite sweep: lost runs and stranded jobs",
    )
    # Webhook deliveries the engine wrote but nobody asked to send (a process died
    # after its commit), retries whose message was lost, leases that ran out.
    from jobs.vocabulary import WEBHOOK_DISPATCH_TASK, WEBHOOK_QUEUE

    sender.add_periodic_task(
        interval,
        sender.signature(
            WEBHOOK_DISPATCH_TASK, kwargs={"sweep": True},
            options={"queue": WEBHOOK_QUEUE, "routing_key": WEBHOOK_QUEUE, "expires": interval},
        ),
        name="flowsite sweep: webhook deliveries",
    )
