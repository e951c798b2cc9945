"""Query parameters of GET /api/flows (django-filter)."""

from __future__ import annotations

import django_filters

from flows.models import Flow
from jobs.vocabulary import FlowStatus


class FlowFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        choices=FlowStatus.choices,
        error_messages={
            "invalid_choice": f"%(value)s is not a flow status. Valid: {', '.join(FlowStatus.values)}."
        },
    )
    flowname = django_filters.CharFilter()
    queueName = django_filters.CharFilter(field_name="queue_name")
    createdAfter = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    createdBefore = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lte")
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
