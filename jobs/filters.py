"""Query parameters of GET /api/jobs/{queueName} (django-filter)."""

from __future__ import annotations

import django_filters

from jobs.models import Job
from jobs.vocabulary import JobStatus


class JobFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        choices=JobStatus.choices,
        error_messages={
            "invalid_choice": f"%(value)s is not a job status. Valid: {', '.join(JobStatus.values)}."
        },
    )
    flowId = django_filters.CharFilter(field_name="flow_id")
    # Newest first by default; ``ordering=createdAt`` gives the oldest first (an external worker's queue order).
    ordering = django_filters.OrderingFilter(
        fields=(
            ("created_at", "createdAt"),
            ("started_at", "startedAt"),
            ("finished_at", "finishedAt"),
        )
    )

    class Meta:
        model = Job
        fields = ["status", "flowId"]
