"""The webhooks admin: lists with filters and the last error, the SSRF guard on its form, its actions."""

from __future__ import annotations

import pytest

from jobs.vocabulary import DeliveryStatus, WebhookEvent
from webhooks.models import Delivery, Webhook, event_mask

pytestmark = pytest.mark.django_db

TARGET = "https://93.184.215.14/hook"


@pytest.fixture
def webhook(user):
    return Webhook.objects.create(owner=user, url=TARGET, event_mask=event_mask([WebhookEvent.ALL]))


@pytest.fixture
def failed(webhook):
    return Delivery.objects.create(webhook=webhook, event_id="evt_f_1", event_type=WebhookEvent.FAILED, data={},
                                   status=DeliveryStatus.FAILED, attempts=6, last_error="Gave up after 6 attempts: HTTP 503")


def test_the_lists_show_the_last_error_and_filter(admin_client, webhook, failed):
    deliveries = admin_client.get("/admin/webhooks/delivery/?status=failed&event_type=failed")
    none = admin_client.get("/admin/webhooks/delivery/?status=succeeded")
    hooks = admin_client.get("/admin/webhooks/webhook/?active__exact=1")

    assert deliveries.status_code == 200 and "Gave up after 6 attempts: HTTP 503" in deliveries.content.decode()
    assert "evt_f_1" not in none.content.decode() and "0 deliveries" in none.content.decode()
    assert hooks.status_code == 200 and TARGET in hooks.content.decode()


def test_the_form_refuses_an_internal_target_and_creates_through_the_service(admin_client, user):
    base = {"owner": user.pk, "events": [WebhookEvent.COMPLETED], "description": "", "flow_id": "", "queue_name": "",
            "flowname": "", "active": "on"}

    refused = admin_client.post("/admin/webhooks/webhook/add/", {**base, "url": "http://169.254.169.254/"})
    created = admin_client.post("/admin/webhooks/webhook/add/", {**base, "url": TARGET})

    assert refused.status_code == 200 and "169.254.169.254 is a link-local address" in refused.content.decode()
    assert created.status_code == 302
    webhook = Webhook.objects.get()
    assert webhook.events == [WebhookEvent.COMPLETED] and webhook.secret.startswith("whsec_")
    assert (webhook.flow_id, webhook.queue_name, webhook.flowname) == (None, None, None)  # blank: no filter


def test_redeliver_and_disable_actions(admin_client, webhook, failed):
    admin_client.post("/admin/webhooks/delivery/", {"action": "redeliver", "_selected_action": [failed.pk]})
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == (DeliveryStatus.PENDING, 0)

    admin_client.post("/admin/webhooks/delivery/", {"action": "disable_webhooks", "_selected_action": [failed.pk]})
    webhook.refresh_from_db()
    assert not webhook.active and "admin" in webhook.disabled_reason

    webhook.active = True
    webhook.save()
    admin_client.post("/admin/webhooks/webhook/", {"action": "disable", "_selected_action": [webhook.pk]})
    webhook.refresh_from_db()
    assert not webhook.active
