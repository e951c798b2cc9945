"""Webhook writes (create, change, rotate, delete, test, redeliver) and the sending of deliveries.

A change records each event that some active webhook wants once, in its own
transaction (``webhooks.recording``); the dispatcher (``deliveries_dispatch``) turns
those events into one delivery per matching webhook, then hands out what can be sent.

Sending, one delivery at a time per webhook and flow:

1. ``delivery_claim`` takes a pending, due delivery whose webhook is active, if no
   earlier delivery (lower ``seq``) of the same webhook and flow is still pending,
   and leases it for the longest a POST can take; a worker that dies mid-send lets
   the lease run out, and the dispatcher sweep hands the delivery out again.
2. ``delivery_attempt`` checks the URL again (SSRF, after DNS), signs and POSTs.
3. ``delivery_record`` stores the outcome: 2xx succeeded; 410 Gone fails it and
   disables the webhook; anything else is retried after the next delay of
   ``FLOWSITE_WEBHOOK_RETRY_DELAYS`` (+-20% jitter), and fails after the last one.
4. ``delivery_send_chain`` then goes on with the next delivery of that webhook and
   flow, so they arrive in event order.

A target's backlog is bounded: at most one delivery per (webhook, flow) is in
flight, each send is cut at the connect and read timeouts, and the dispatcher
sweep keeps at most ``FLOWSITE_WEBHOOK_MAX_PENDING`` pending deliveries per
webhook (the oldest; the newest beyond it are recorded failed, with the reason).
"""

from __future__ import annotations

import json
import logging
import random
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, Q
from django.utils import timezone

from jobs.selectors import iso
from jobs.vocabulary import WEBHOOK_DELIVER_TASK, WEBHOOK_PING, WEBHOOK_QUEUE, DeliveryStatus
from webhooks import recording, sender, signing
from webhooks.exceptions import WebhookInactive, WebhookTargetRefused
from webhooks.models import Delivery, Webhook, event_mask, new_secret
from webhooks.ssrf import UnsafeTarget, check_target

logger = logging.getLogger(__name__)

# Seconds a claimed delivery stays leased beyond its timeouts.
LEASE_MARGIN_SECONDS = 5
# Deliveries one task sends in a row before it hands on to a new task.
CHAIN_LIMIT = 50
# Deliveries the dispatcher hands out per run.
DISPATCH_BATCH = 500
# How long the dispatcher trusts a ``webhooks.deliver`` message it published to be run.
QUEUED_SECONDS = 60
# Each retry delay is drawn within +-20% of FLOWSITE_WEBHOOK_RETRY_DELAYS' (no thundering herd).
JITTER = 0.2


def _check(url: str) -> None:
    try:
        check_target(url)
    except UnsafeTarget as exc:
        raise WebhookTargetRefused(str(exc), {"url": [str(exc)]}) from None


def webhook_create(
    *, owner: AbstractBaseUser, url: str, events: list[str], description: str = "", flow_id: str | None = None,
    queue_name: str | None = None, flowname: str | None = None, all_flows: bool = False, active: bool = True,
) -> Webhook:
    """Create a webhook after the SSRF check of its URL; its secret is generated here.

    Returns once every process records deliveries for it (``recording.wait_until_armed``).
    Raises ``WebhookTargetRefused`` for a URL that is not allowed.
    """
    _check(url)
    with transaction.atomic():
        webhook = Webhook.objects.create(
            owner=owner, url=url, event_mask=event_mask(events), description=description, flow_id=flow_id,
            queue_name=queue_name, flowname=flowname, all_flows=all_flows, active=active,
        )
        if active:
            recording.wait_until_armed()
    return webhook


def webhook_update(*, webhook: Webhook, **fields: Any) -> Webhook:
    """Change a webhook's URL, events, filters, description or active flag (re-checking the URL).

    Re-activating one clears its disabled reason and waits like a creation.
    """
    if "url" in fields:
        _check(fields["url"])
    if "events" in fields:
        fields["event_mask"] = event_mask(fields.pop("events"))
    activated = fields.get("active") and not webhook.active
    if "active" in fields:
        fields["disabled_reason"] = ""
    with transaction.atomic():
        for name, value in fields.items():
            setattr(webhook, name, value)
        webhook.save()
        if activated:
            recording.wait_until_armed()
    return webhook


def webhook_rotate_secret(*, webhook: Webhook) -> Webhook:
    """Give the webhook a new secret; deliveries signed from now on use it."""
    webhook.secret = new_secret()
    Webhook.objects.filter(pk=webhook.pk).update(secret=webhook.secret, updated_at=timezone.now())
    return webhook


def webhook_delete(*, webhook: Webhook) -> None:
    """Delete a webhook and its delivery log."""
    with transaction.atomic():
        Delivery.objects.filter(webhook_id=webhook.pk).delete()
        webhook.delete()


def webhook_disable(*, webhook_id: int, reason: str) -> bool:
    """Stop sending to a webhook (410 Gone, or an operator); its pending deliveries wait."""
    return bool(
        Webhook.objects.filter(pk=webhook_id, active=True).update(
            active=False, disabled_reason=reason[:500], updated_at=timezone.now()
        )
    )


def webhook_test(*, webhook: Webhook) -> Delivery:
    """Send a ``ping`` delivery now, from this process; return it with the outcome.

    Raises ``WebhookInactive`` for a disabled webhook. A failed ping is retried like
    any delivery.
    """
    if not webhook.active:
        raise WebhookInactive("The webhook is not active: activate it to test it.")
    now = timezone.now()
    seq = recording.next_event_number()
    delivery = Delivery.objects.create(
        webhook=webhook, event_id=f"evt_{seq}", seq=seq, event_type=WEBHOOK_PING,
        data={"webhookId": webhook.pk, "message": "Test delivery from Flowsite."},
        next_attempt_at=now, created_at=now, updated_at=now,
    )
    delivery_send_chain(delivery_id=delivery.pk, chain=False)
    delivery.refresh_from_db()
    return delivery


def delivery_redeliver(*, delivery: Delivery) -> Delivery:
    """Send a delivery again from its first attempt (same event id and payload)."""
    now = timezone.now()
    Delivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now, leased_until=None, queued_until=None,
        last_error="", updated_at=now,
    )
    transaction.on_commit(recording.kicker.kick)
    delivery.refresh_from_db()
    return delivery


# SENDING
# ------------------------------------------------------------------------------


def _lease_seconds() -> int:
    return settings.FLOWSITE_WEBHOOK_CONNECT_TIMEOUT + settings.FLOWSITE_WEBHOOK_READ_TIMEOUT + LEASE_MARGIN_SECONDS


def _sendable(now):
    """Pending, due, unleased deliveries of active webhooks with no earlier one pending."""
    earlier = Delivery.objects.filter(
        webhook_id=OuterRef("webhook_id"), flow_id=OuterRef("flow_id"), status=DeliveryStatus.PENDING,
        seq__lt=OuterRef("seq"),
    )
    return (
        Delivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now, webhook__active=True)
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lt=now))
        .exclude(Exists(earlier))
    )


def delivery_claim(*, delivery_id: int) -> Delivery | None:
    """Lease a delivery for one attempt (counting it); None if it is not the one to send now."""
    now = timezone.now()
    lease = now + timedelta(seconds=_lease_seconds())
    claimed = _sendable(now).filter(pk=delivery_id).update(
        leased_until=lease, attempts=F("attempts") + 1, updated_at=now
    )
    if not claimed:
        return None
    return Delivery.objects.select_related("webhook").get(pk=delivery_id)


def delivery_body(delivery: Delivery) -> str:
    """The JSON body of a delivery: the same bytes at every attempt."""
    return json.dumps(
        {"type": delivery.event_type, "id": delivery.event_id, "timestamp": iso(delivery.created_at),
         "data": delivery.data},
        separators=(",", ":"), default=str,
    )


def delivery_attempt(delivery: Delivery) -> sender.Outcome:
    """Check the target again (after DNS), sign and POST; the outcome, never an exception."""
    try:
        target = check_target(delivery.webhook.url)
    except UnsafeTarget as exc:
        return sender.Outcome(status=None, body="", duration_ms=0, error=str(exc))
    body = delivery_body(delivery)
    headers = signing.signature_headers(secret=delivery.webhook.secret, message_id=delivery.event_id, body=body)
    return sender.post(target, body=body.encode(), headers=headers)


def retry_delay(attempts: int) -> float | None:
    """Seconds before the next attempt after ``attempts`` of them, with jitter; None after the last."""
    delays = settings.FLOWSITE_WEBHOOK_RETRY_DELAYS
    if attempts > len(delays):
        return None
    return delays[attempts - 1] * random.uniform(1 - JITTER, 1 + JITTER)


def delivery_record(*, delivery: Delivery, outcome: sender.Outcome) -> float | None:
    """Store one attempt's outcome; return the delay before the next attempt, or None if none follows.

    Only while this worker's lease holds: an attempt that outlived its lease (the
    delivery was handed to another worker) changes nothing.
    """
    now = timezone.now()
    fields: dict[str, Any] = {
        "last_status_code": outcome.status, "duration_ms": outcome.duration_ms,
        "response_body": outcome.body, "last_error": outcome.error, "leased_until": None, "queued_until": None,
        "updated_at": now,
    }
    delay = None
    if outcome.ok:
        fields.update(status=DeliveryStatus.SUCCEEDED, delivered_at=now)
    elif outcome.status == 410:
        fields.update(status=DeliveryStatus.FAILED, last_error="HTTP 410 Gone: the webhook was disabled")
    else:
        delay = retry_delay(delivery.attempts)
        if delay is None:
            fields.update(status=DeliveryStatus.FAILED,
                          last_error=f"Gave up after {delivery.attempts} attempts: {outcome.error}")
        else:
            fields["next_attempt_at"] = now + timedelta(seconds=delay)
            fields["queued_until"] = fields["next_attempt_at"] + timedelta(seconds=QUEUED_SECONDS)  # the retry's message
    mine = Delivery.objects.filter(pk=delivery.pk, leased_until=delivery.leased_until)
    if not mine.update(**fields):
        return None
    if outcome.status == 410:
        webhook_disable(webhook_id=delivery.webhook_id, reason="The target answered 410 Gone.")
    return delay


def _next_in_line(delivery: Delivery) -> int | None:
    if delivery.flow_id is None:
        return None
    return (
        _sendable(timezone.now()).filter(webhook_id=delivery.webhook_id, flow_id=delivery.flow_id)
        .order_by("seq").values_list("pk", flat=True).first()
    )


def delivery_send_chain(*, delivery_id: int, chain: bool = True) -> int:
    """Send a delivery, then (``chain``) the next ones of its webhook and flow; return how many were attempted."""
    attempted = 0
    while delivery_id is not None:
        if attempted >= CHAIN_LIMIT:
            publish_deliver(delivery_id)  # let other work in between
            break
        delivery = delivery_claim(delivery_id=delivery_id)
        if delivery is None:
            break
        outcome = delivery_attempt(delivery)
        attempted += 1
        delay = delivery_record(delivery=delivery, outcome=outcome)
        if not outcome.ok:
            logger.info("Webhook %s delivery %s attempt %d: %s", delivery.webhook_id, delivery.pk,
                        delivery.attempts, outcome.error)
        if delay is not None:
            publish_deliver(delivery_id, countdown=delay)  # its followers wait for it
            break
        delivery_id = _next_in_line(delivery) if chain else None
    return attempted


def publish_deliver(delivery_id: int, *, countdown: float | None = None) -> None:
    """Publish ``webhooks.deliver`` for one delivery (the dispatcher sweep publishes it again if lost)."""
    from flowsite.celery import app

    app.send_task(WEBHOOK_DELIVER_TASK, args=[delivery_id], queue=WEBHOOK_QUEUE, routing_key=WEBHOOK_QUEUE,
                  countdown=countdown)


def deliveries_dispatch(*, sweep: bool = False) -> int:
    """Expand the recorded events into deliveries, then publish a ``webhooks.deliver`` for every
    delivery that can be sent now; return how many.

    A delivery whose message is already queued (``queued_until``) is left alone, so a
    backlog is not published over and over; duplicates would be harmless anyway (a
    delivery is claimed once). ``sweep`` (Celery beat, the embedded sweeper) also
    bounds every webhook's backlog and drops the deliveries of deleted webhooks.
    """
    recording.dispatch_started()
    recording.expand_events()
    if sweep:
        deliveries_bound_backlog()
    now = timezone.now()
    with transaction.atomic():
        heads = list(
            _sendable(now).filter(Q(queued_until__isnull=True) | Q(queued_until__lt=now))
            .order_by("next_attempt_at").select_for_update(skip_locked=True, of=("self",))
            .values_list("pk", flat=True)[:DISPATCH_BATCH]
        )
        Delivery.objects.filter(pk__in=heads).update(queued_until=now + timedelta(seconds=QUEUED_SECONDS))
    for delivery_id in heads:
        publish_deliver(delivery_id)
    return len(heads)


def deliveries_bound_backlog() -> int:
    """Fail the newest pending deliveries beyond ``FLOWSITE_WEBHOOK_MAX_PENDING`` per webhook; drop orphans."""
    limit = settings.FLOWSITE_WEBHOOK_MAX_PENDING
    pending = Delivery.objects.filter(status=DeliveryStatus.PENDING)
    pending.exclude(Exists(Webhook.objects.filter(pk=OuterRef("webhook_id")))).delete()
    dropped = 0
    over = pending.values("webhook_id").annotate(n=Count("pk")).filter(n__gt=limit).order_by()
    for row in over:
        newest = list(
            pending.filter(webhook_id=row["webhook_id"]).order_by("-created_at", "-id")
            .values_list("pk", flat=True)[: row["n"] - limit]
        )
        dropped += pending.filter(pk__in=newest).update(
            status=DeliveryStatus.FAILED, updated_at=timezone.now(),
            last_error=f"Not sent: more than FLOWSITE_WEBHOOK_MAX_PENDING ({limit}) deliveries were pending "
            "for this webhook; the oldest were kept.",
        )
    if dropped:
        logger.warning("Webhooks: %d deliveries over the pending limit were recorded failed", dropped)
    return dropped
