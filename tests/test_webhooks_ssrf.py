"""The SSRF guard at delivery time, in a real webhooks worker with FLOWSITE_WEBHOOK_ALLOW_PRIVATE off.

The webhooks are written straight to the database, as if saved while the guard
allowed them (or before a name started to resolve to an internal address): the
worker checks again after resolving the name, and refuses without connecting.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from jobs.vocabulary import WEBHOOK_QUEUE, DeliveryStatus, WebhookEvent
from tests.conftest import wait_for
from tests.webhook_workers import webhook_worker_running
from webhooks.models import Delivery, Webhook, event_mask
from webhooks.tasks import dispatch

pytestmark = pytest.mark.usefixtures("engine_db")


@pytest.fixture(scope="module")
def guarded_worker(celery_workers):
    with webhook_worker_running("webhooks-guarded", allow_private=False) as process:
        yield process


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("localhost", "localhost resolves to 127.0.0.1, a loopback address"),
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1 is a loopback address (IPv4-mapped 127.0.0.1)"),
        ("169.254.169.254", "169.254.169.254 is a link-local address"),
        ("100.64.0.1", "100.64.0.1 is a carrier-grade NAT address"),
        ("10.0.0.1", "10.0.0.1 is a private address"),
    ],
)
def test_the_worker_refuses_an_internal_target_after_resolving_it(user, guarded_worker, receiver, host, reason):
    webhook = Webhook.objects.create(
        owner=user, url=f"http://{host}:{receiver.port}/hook", event_mask=event_mask([WebhookEvent.ALL])
    )
    now = timezone.now()
    delivery = Delivery.objects.create(webhook=webhook, event_id="evt_test_1", event_type=WebhookEvent.COMPLETED,
                                       data={"flowId": "f"}, next_attempt_at=now)

    dispatch.apply_async(queue=WEBHOOK_QUEUE)  # as Celery beat sends it

    refused = wait_for(
        lambda: Delivery.objects.filter(pk=delivery.pk).exclude(last_error="").first(), message="the refusal"
    )
    assert refused.last_error == f"Refused: {reason}."
    assert refused.last_status_code is None
    failed = wait_for(
        lambda: Delivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.FAILED).first(), message="giving up"
    )
    assert failed.attempts == 3 and reason in failed.last_error
    assert receiver.received == []
