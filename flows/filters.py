"""Query parameters of GET /api/flows (django-filter)."""

from __future__ import annotations

from datetime import timezone

import django_filters
from rest_framework.exceptions import ValidationError

from flows.models import Flow
from jobs.vocabulary import FlowStatus


class UTCDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 bound, converted to UTC (PostgreSQL refuses offsets beyond ±15:59)."""

    def filter(self, qs, value):
        if value is not None:
            try:
                value = value.astimezone(timezone.utc)
            except OverflowError:
                raise ValidationError({self.field_name: ["Date out of range."]}) from None
        return super().filter(qs, value)


class FlowFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        choices=FlowStatus.choices,
        error_messages={
            "invalid_choice": f"%(value)s is not a flow status. Valid: {', '.join(FlowStatus.values)}."
        },
    )
    flowname = django_filters.CharFilter()
    queueName = django_filters.CharFilter(field_name="queue_name")
    createdAfter = UTCDateTimeFilter(field_name="created_at", lookup_expr="gte")
    createdBefore = UTCDateTimeFilter(field_name="created_at", lookup_expr="lte")
    ordering = django_filters.OrderingFilter(
        fields=(
            ("created_at", "createdAt"),
            ("updated_at", "updatedAt"),
            ("completed_at", "completedAt"),
            ("flowname", "flowname"),
            ("status", "status"),
        )
    )

    class Meta:
        model = Flow
        fields = ["status", "flowname", "queueName", "createdAfter", "createdBefore"]
