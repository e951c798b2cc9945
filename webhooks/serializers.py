"""Webhook and delivery shapes (camelCase, like the rest of the API)."""

from __future__ import annotations

from rest_framework import serializers

from accounts.permissions import sees_all
from flows.models import Flow
from jobs.vocabulary import ID_PATTERN, WEBHOOK_PING, WEBHOOK_SUBSCRIBERS, DeliveryStatus, WebhookEvent

DELIVERY_TYPES = [*WEBHOOK_SUBSCRIBERS, WEBHOOK_PING]


class WebhookInputSerializer(serializers.Serializer):
    """Create (all of it) or change (``PATCH``: any of it) a webhook."""

    url = serializers.CharField(max_length=2000, help_text="http(s) URL of a public address")
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEvent.choices), min_length=1, max_length=len(WebhookEvent),
    )
    description = serializers.CharField(max_length=500, required=False, allow_blank=True)
    active = serializers.BooleanField(required=False)
    flowId = serializers.RegexField(rf"^{ID_PATTERN}$", required=False, allow_null=True, source="flow_id")
    queueName = serializers.CharField(max_length=200, required=False, allow_null=True, source="queue_name")
    flowname = serializers.CharField(max_length=200, required=False, allow_null=True)
    allFlows = serializers.BooleanField(
        required=False, source="all_flows", help_text="Events of every user's flows: only for those who see them all (superusers, staff with flows.view_flow)."
    )

    def validate_allFlows(self, value: bool) -> bool:
        if value and not sees_all(self.context["request"].user, Flow):
            raise serializers.ValidationError(
                "Only those who see every user's flows (superusers, staff with flows.view_flow) may subscribe to all."
            )
        return value


class WebhookOutputSerializer(serializers.Serializer):
    webhookId = serializers.IntegerField(source="pk")
    url = serializers.CharField()
    events = serializers.ListField(child=serializers.ChoiceField(choices=WebhookEvent.choices))
    description = serializers.CharField()
    active = serializers.BooleanField()
    disabledReason = serializers.CharField(source="disabled_reason")
    flowId = serializers.CharField(source="flow_id", allow_null=True)
    queueName = serializers.CharField(source="queue_name", allow_null=True)
    flowname = serializers.CharField(allow_null=True)
    allFlows = serializers.BooleanField(source="all_flows")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")


class WebhookSecretOutputSerializer(WebhookOutputSerializer):
    """A webhook with its secret: only in the answers to its creation and to a rotation."""

    secret = serializers.CharField(help_text="whsec_...: verify each delivery's signature with it. Shown once.")


class DeliveryOutputSerializer(serializers.Serializer):
    deliveryId = serializers.IntegerField(source="pk")
    webhookId = serializers.IntegerField(source="webhook_id")
    eventId = serializers.CharField(source="event_id")
    eventType = serializers.ChoiceField(choices=DELIVERY_TYPES, source="event_type")
    flowId = serializers.CharField(source="flow_id", allow_null=True)
    seq = serializers.IntegerField()
    data = serializers.JSONField()
    status = serializers.ChoiceField(choices=DeliveryStatus.choices)
    attempts = serializers.IntegerField()
    nextAttemptAt = serializers.DateTimeField(source="next_attempt_at", allow_null=True)
    lastStatusCode = serializers.IntegerField(source="last_status_code", allow_null=True)
    durationMs = serializers.IntegerField(source="duration_ms", allow_null=True)
    responseBody = serializers.CharField(source="response_body")
    lastError = serializers.CharField(source="last_error")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    deliveredAt = serializers.DateTimeField(source="delivered_at", allow_null=True)
