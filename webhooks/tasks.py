"""Celery tasks of the webhooks queue: thin adapters over ``webhooks.services``."""

from __future__ import annotations

from celery import shared_task

from jobs.vocabulary import WEBHOOK_DELIVER_TASK, WEBHOOK_DISPATCH_TASK
from webhooks import services


@shared_task(name=WEBHOOK_DELIVER_TASK, acks_late=True, ignore_result=True)
def deliver(delivery_id: int) -> int:
    """Send one delivery, then the next ones of its webhook and flow, in order."""
    return services.delivery_send_chain(delivery_id=delivery_id)


@shared_task(name=WEBHOOK_DISPATCH_TASK, ignore_result=True)
def dispatch(sweep: bool = False) -> int:
    """Publish a ``deliver`` for each delivery that can be sent now (``sweep``: beat's periodic run)."""
    return services.deliveries_dispatch(sweep=sweep)
