"""Webhook subscriptions, the events recorded for them, and their deliveries (one row per event and webhook)."""

from __future__ import annotations

import base64
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

from jobs.vocabulary import DeliveryStatus, WebhookEvent

# Each subscription type is one bit of ``Webhook.event_mask``, in the vocabulary's order:
# matching an event is one ``event_mask & bits <> 0``, on PostgreSQL and SQLite alike.
EVENT_BITS: dict[str, int] = {event.value: 1 << index for index, event in enumerate(WebhookEvent)}


def event_mask(events: list[str] | set[str] | frozenset[str]) -> int:
    """The bits of these subscription types."""
    mask = 0
    for event in events:
        mask |= EVENT_BITS[event]
    return mask


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Webhook(models.Model):
    """A user's subscription: where to POST which events of which flows.

    The secret signs every delivery (``webhooks.signing``); it is kept as is because
    signing needs it, and it is shown only at creation and rotation.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhooks")
    url = models.CharField(max_length=2000)
    description = models.CharField(max_length=500, blank=True, default="")
    event_mask = models.PositiveIntegerField(help_text="Subscribed event types, one bit each (models.EVENT_BITS).")
    # Optional filters: only events of this flow, of jobs on this queue (flows: their
    # root's queue), of flows with this flowname.
    flow_id = models.CharField(max_length=64, null=True, blank=True)
    queue_name = models.CharField(max_length=200, null=True, blank=True)
    flowname = models.CharField(max_length=200, null=True, blank=True)
    # Staff only: every user's flows, not only the owner's.
    all_flows = models.BooleanField(default=False)
    secret = models.CharField(max_length=100, default=new_secret, editable=False)
    active = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "created_at"], name="webhook_owner_idx"),
            models.Index(fields=["active"], name="webhook_active_idx", condition=models.Q(active=True)),
        ]

    def __str__(self) -> str:
        return f"{self.url} ({self.owner})"

    @property
    def events(self) -> list[str]:
        return [event for event, bit in EVENT_BITS.items() if self.event_mask & bit]


class Delivery(models.Model):
    """One event for one webhook: its payload, and how sending it went.

    ``seq`` is the event's number (``webhooks.recording.EVENT_SEQUENCE``; ``event_id``
    is ``evt_<seq>``): a webhook's deliveries of one flow are sent in that order, one at
    a time. ``leased_until``: a worker is
    sending it until then (a worker that died lets the lease run out).
    """

    # No foreign key in the database: the engine inserts deliveries in its own transactions, and
    # a webhook deleted meanwhile must not fail a job's transition (the sweep drops the orphans).
    # No index of its own either: ``delivery_event_unique`` (webhook, seq) serves lookups by webhook.
    webhook = models.ForeignKey(
        Webhook, on_delete=models.CASCADE, related_name="deliveries", db_constraint=False, db_index=False
    )
    event_id = models.CharField(max_length=100)
    event_type = models.CharField(max_length=20)
    flow_id = models.CharField(max_length=64, null=True, blank=True)
    seq = models.BigIntegerField(default=0)
    data = models.JSONField()
    status = models.CharField(max_length=20, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    # A ``webhooks.deliver`` message for it is queued until then: the dispatcher does not
    # publish another one (a lost message is published again once this has passed).
    queued_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-seq", "-id"]
        verbose_name_plural = "deliveries"
        # One delivery per event and webhook; also the delivery log's index (newest first).
        constraints = [models.UniqueConstraint(fields=["webhook", "seq"], name="delivery_event_unique")]
        indexes = [
            # The pending deliveries: what the dispatcher sends, and the order check.
            models.Index(
                fields=["webhook", "flow_id", "seq"], name="delivery_pending_idx",
                condition=models.Q(status=DeliveryStatus.PENDING),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} -> {self.webhook_id}"


class RecordedEvent(models.Model):
    """An event that some active webhook wanted when it happened, waiting to become deliveries.

    Written by the change itself, in its transaction (``webhooks.recording``): one row
    per event, however many webhooks want it. The dispatcher turns these rows into
    one ``Delivery`` per matching webhook and deletes them, in one transaction
    (``recording.expand_events``). The flow's owner and flowname are copied in, so a
    flow deleted meanwhile still matches its webhooks' filters.
    """

    seq = models.BigIntegerField(primary_key=True)
    event_type = models.CharField(max_length=20)
    # The bits of the subscription types that receive it (``event_mask``).
    mask = models.PositiveIntegerField()
    flow_id = models.CharField(max_length=64)
    queue_name = models.CharField(max_length=200, null=True, blank=True)
    owner_id = models.BigIntegerField(null=True, blank=True)
    flowname = models.CharField(max_length=200, null=True, blank=True)
    data = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["seq"]

    def __str__(self) -> str:
        return f"{self.event_type} evt_{self.seq} of flow {self.flow_id}"
