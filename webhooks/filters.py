"""Query parameters of GET /api/webhooks/{id}/deliveries (django-filter)."""

from __future__ import annotations

import django_filters

from jobs.vocabulary import DeliveryStatus
from webhooks.models import Delivery
from webhooks.serializers import DELIVERY_TYPES


class DeliveryFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        choices=DeliveryStatus.choices,
        error_messages={"invalid_choice": f"%(value)s is not a delivery status. Valid: {', '.join(DeliveryStatus.values)}."},
    )
    eventType = django_filters.ChoiceFilter(
        field_name="event_type", choices=[(kind, kind) for kind in DELIVERY_TYPES],
        error_messages={"invalid_choice": f"%(value)s is not an event type. Valid: {', '.join(DELIVERY_TYPES)}."},
    )

    class Meta:
        model = Delivery
        fields = ["status", "eventType"]
