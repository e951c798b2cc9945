"""The webhooks API: CRUD, the secret shown once, the SSRF guard on save, isolation, the delivery log.

Requests go through the real Django app with real API tokens and PostgreSQL. A
public target is an IP literal (``PUBLIC``): nothing is resolved or sent here
(sending is tested in ``test_webhooks_delivery.py``).
"""

from __future__ import annotations

import pytest

from jobs.vocabulary import WEBHOOK_PING, DeliveryStatus, WebhookEvent
from tests.conftest import token_client
from tests.factories import grant
from webhooks.models import Delivery, Webhook

pytestmark = pytest.mark.django_db

PUBLIC = "https://93.184.215.14/hooks/flowsite"


def create(client, **body):
    return client.post("/api/webhooks", {"url": PUBLIC, "events": [WebhookEvent.COMPLETED], **body}, format="json")


def test_create_returns_the_secret_once_and_stores_the_subscription(api, user):
    response = create(api, events=[WebhookEvent.COMPLETED, WebhookEvent.FAILED], description="CI",
                      flowId="abc123", queueName="video", flowname="nightly")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["secret"].startswith("whsec_")
    assert body["events"] == [WebhookEvent.COMPLETED, WebhookEvent.FAILED]
    assert (body["url"], body["flowId"], body["queueName"], body["flowname"]) == (PUBLIC, "abc123", "video", "nightly")
    assert body["active"] is True and body["allFlows"] is False
    webhook = Webhook.objects.get(pk=body["webhookId"])
    assert webhook.owner == user and webhook.secret == body["secret"]
    assert webhook.events == [WebhookEvent.COMPLETED, WebhookEvent.FAILED]

    shown = api.get(f"/api/webhooks/{webhook.pk}").json()
    listed = api.get("/api/webhooks").json()
    assert "secret" not in shown and shown["description"] == "CI"
    assert [item["webhookId"] for item in listed["results"]] == [webhook.pk]
    assert "secret" not in listed["results"][0]


def test_rotate_secret_shows_a_new_secret(api):
    webhook = create(api).json()

    response = api.post(f"/api/webhooks/{webhook['webhookId']}/rotate-secret")

    assert response.status_code == 200
    assert response.json()["secret"].startswith("whsec_") and response.json()["secret"] != webhook["secret"]
    assert Webhook.objects.get(pk=webhook["webhookId"]).secret == response.json()["secret"]


def test_patch_changes_events_and_filters_and_put_replaces(api):
    webhook_id = create(api, flowname="a").json()["webhookId"]

    patched = api.patch(f"/api/webhooks/{webhook_id}", {"events": [WebhookEvent.ALL], "flowname": None}, format="json")
    replaced = api.put(f"/api/webhooks/{webhook_id}", {"url": PUBLIC + "/v2", "events": [WebhookEvent.DELTA],
                                                       "active": False}, format="json")

    assert patched.status_code == 200 and patched.json()["events"] == [WebhookEvent.ALL]
    assert patched.json()["flowname"] is None
    assert replaced.status_code == 200
    webhook = Webhook.objects.get(pk=webhook_id)
    assert (webhook.url, webhook.events, webhook.active) == (PUBLIC + "/v2", [WebhookEvent.DELTA], False)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://93.184.215.14/x", "Only http and https"),
        ("file:///etc/passwd", "Only http and https"),
        ("https://user:pw@93.184.215.14/x", "Credentials in the URL"),
        ("http://localhost:8000/hook", "localhost resolves to 127.0.0.1, a loopback address"),
        ("http://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
        ("http://[::1]/hook", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/hook", "a loopback address (IPv4-mapped 127.0.0.1)"),
        ("http://[::ffff:169.254.169.254]/", "a link-local address (IPv4-mapped 169.254.169.254)"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://[fe80::1]/", "a link-local address"),
        ("http://100.64.0.7/", "a carrier-grade NAT address"),
        ("http://10.1.2.3/", "a private address"),
        ("http://192.168.0.1/", "a private address"),
        ("http://[fd00::1]/", "a private address"),
        ("http://224.0.0.1/", "a multicast address"),
        ("http://0.0.0.0/", "an unspecified address"),
        ("http://240.0.0.1/", "240.0.0.1 is a reserved address"),
        ("http://198.18.0.1/", "a private address"),
        ("http://[2002:7f00:1::1]/", "a loopback address (6to4 127.0.0.1)"),
        ("http://no-such-host.invalid/", "does not resolve"),
        ("http:///nohost", "no host"),
    ],
)
def test_create_refuses_unsafe_targets_with_a_400_naming_the_reason(api, url, reason):
    response = create(api, url=url)

    assert response.status_code == 400, response.json()
    body = response.json()
    assert reason in body["error"] and reason in body["details"]["url"][0]
    assert not Webhook.objects.exists()


def test_update_refuses_an_unsafe_target(api):
    webhook_id = create(api).json()["webhookId"]

    response = api.patch(f"/api/webhooks/{webhook_id}", {"url": "http://169.254.169.254/"}, format="json")

    assert response.status_code == 400 and "link-local" in response.json()["details"]["url"][0]
    assert Webhook.objects.get(pk=webhook_id).url == PUBLIC


def test_private_targets_are_allowed_only_with_allow_private(api, settings):
    settings.FLOWSITE_WEBHOOK_ALLOW_PRIVATE = True

    assert create(api, url="http://localhost:9/hook").status_code == 201
    assert create(api, url="ftp://localhost/").status_code == 400  # the URL's shape is always checked


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": []}, "events"),
        ({"events": ["finished"]}, "events.0"),
        ({"events": "completed"}, "events"),
        ({"url": None}, "url"),
        ({"flowId": "../x"}, "flowId"),
        ({"description": "x" * 501}, "description"),
    ],
)
def test_create_refuses_bad_input_with_field_details(api, body, field):
    response = create(api, **body)

    assert response.status_code == 400
    assert field in response.json()["details"], response.json()


def test_all_flows_is_only_for_those_who_see_every_flow(api, staff_user):
    refused = create(api, allFlows=True)
    staff_refused = create(token_client(staff_user), allFlows=True)  # staff, without flows.view_flow
    allowed = create(token_client(grant(staff_user, "flows.view_flow")), allFlows=True)

    assert refused.status_code == 400 and "flows.view_flow" in refused.json()["details"]["allFlows"][0]
    assert staff_refused.status_code == 400
    assert allowed.status_code == 201 and allowed.json()["allFlows"] is True


def test_another_users_webhook_and_delivery_are_404_and_anonymous_is_401(api, other_user, staff_user):
    webhook_id = create(api).json()["webhookId"]
    delivery = Delivery.objects.create(webhook_id=webhook_id, event_id="evt_x_1", event_type="completed", data={})
    mallory = token_client(other_user)

    for method, path in [
        ("get", f"/api/webhooks/{webhook_id}"), ("patch", f"/api/webhooks/{webhook_id}"),
        ("delete", f"/api/webhooks/{webhook_id}"), ("get", f"/api/webhooks/{webhook_id}/deliveries"),
        ("post", f"/api/webhooks/{webhook_id}/test"), ("post", f"/api/webhooks/{webhook_id}/rotate-secret"),
        ("get", f"/api/deliveries/{delivery.pk}"), ("post", f"/api/deliveries/{delivery.pk}/redeliver"),
    ]:
        assert getattr(mallory, method)(path, {}, format="json").status_code == 404, path
        assert getattr(token_client(None), method)(path, {}, format="json").status_code == 401, path
    assert mallory.get("/api/webhooks").json()["results"] == []
    assert token_client(staff_user).get(f"/api/webhooks/{webhook_id}").status_code == 404  # no view permission
    viewer = token_client(grant(staff_user, "webhooks.view_webhook"))
    assert viewer.get(f"/api/webhooks/{webhook_id}").status_code == 200
    assert viewer.get(f"/api/deliveries/{delivery.pk}").status_code == 200
    for method, path in [
        ("patch", f"/api/webhooks/{webhook_id}"), ("delete", f"/api/webhooks/{webhook_id}"),
        ("post", f"/api/webhooks/{webhook_id}/rotate-secret"), ("post", f"/api/deliveries/{delivery.pk}/redeliver"),
    ]:
        assert getattr(viewer, method)(path, {}, format="json").status_code == 403, path  # seen, not theirs to change
    assert Webhook.objects.filter(pk=webhook_id).exists()
    assert Delivery.objects.get(pk=delivery.pk).attempts == 0


def test_delete_removes_the_webhook_and_its_log(api):
    webhook_id = create(api).json()["webhookId"]
    Delivery.objects.create(webhook_id=webhook_id, event_id="evt_x_1", event_type="completed", data={})

    assert api.delete(f"/api/webhooks/{webhook_id}").status_code == 204
    assert not Webhook.objects.exists() and not Delivery.objects.exists()


def test_deliveries_are_listed_newest_first_and_filtered_by_status_and_event_type(api):
    webhook_id = create(api).json()["webhookId"]
    made = [
        Delivery.objects.create(webhook_id=webhook_id, event_id=f"evt_f_{n}", event_type=kind, status=status,
                                flow_id="f", seq=n, data={"n": n})
        for n, (kind, status) in enumerate([
            (WebhookEvent.COMPLETED, DeliveryStatus.SUCCEEDED), (WebhookEvent.FAILED, DeliveryStatus.FAILED),
            (WebhookEvent.DELTA, DeliveryStatus.PENDING), (WEBHOOK_PING, DeliveryStatus.SUCCEEDED),
        ])
    ]

    def ids(query=""):
        response = api.get(f"/api/webhooks/{webhook_id}/deliveries{query}")
        assert response.status_code == 200, response.json()
        return [item["deliveryId"] for item in response.json()["results"]]

    assert ids() == [d.pk for d in reversed(made)]
    assert ids("?status=succeeded") == [made[3].pk, made[0].pk]
    assert ids("?eventType=failed") == [made[1].pk]
    assert ids("?eventType=ping&status=succeeded") == [made[3].pk]
    bad = api.get(f"/api/webhooks/{webhook_id}/deliveries?status=done")
    assert bad.status_code == 400 and "status" in bad.json()["details"]
    item = api.get(f"/api/webhooks/{webhook_id}/deliveries?eventType=delta").json()["results"][0]
    assert item["eventId"] == "evt_f_2" and item["data"] == {"n": 2} and item["status"] == DeliveryStatus.PENDING


def test_redeliver_puts_a_failed_delivery_back_in_line(api):
    webhook_id = create(api).json()["webhookId"]
    delivery = Delivery.objects.create(webhook_id=webhook_id, event_id="evt_f_1", event_type="completed",
                                       status=DeliveryStatus.FAILED, attempts=6, last_error="HTTP 500", data={})

    response = api.post(f"/api/deliveries/{delivery.pk}/redeliver")

    assert response.status_code == 200
    assert (response.json()["status"], response.json()["attempts"]) == (DeliveryStatus.PENDING, 0)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error) == (DeliveryStatus.PENDING, 0, "")
    assert delivery.next_attempt_at is not None


def test_testing_an_inactive_webhook_is_a_409(api):
    webhook_id = create(api, active=False).json()["webhookId"]

    response = api.post(f"/api/webhooks/{webhook_id}/test")

    assert response.status_code == 409 and "not active" in response.json()["error"]


def test_ids_that_are_not_numbers_are_json_404s(api):
    response = api.get("/api/webhooks/abc")

    assert response.status_code == 404 and response.json()["error"]


def test_the_sweep_bounds_a_webhooks_backlog_keeping_the_oldest(api, user, settings):
    from webhooks.services import deliveries_bound_backlog

    settings.FLOWSITE_WEBHOOK_MAX_PENDING = 3
    webhook_id = create(api).json()["webhookId"]
    made = [Delivery.objects.create(webhook_id=webhook_id, event_id=f"evt_{n}", event_type="delta", flow_id="f",
                                    seq=n, data={}) for n in range(1, 6)]
    orphan = Delivery.objects.create(webhook_id=webhook_id + 1000, event_id="evt_9", event_type="delta", seq=9, data={})

    assert deliveries_bound_backlog() == 2

    statuses = {d.seq: (d.status, d.last_error) for d in Delivery.objects.filter(webhook_id=webhook_id)}
    assert [statuses[d.seq][0] for d in made] == [DeliveryStatus.PENDING] * 3 + [DeliveryStatus.FAILED] * 2
    assert "more than FLOWSITE_WEBHOOK_MAX_PENDING (3)" in statuses[5][1]
    assert not Delivery.objects.filter(pk=orphan.pk).exists()  # its webhook was deleted meanwhile
