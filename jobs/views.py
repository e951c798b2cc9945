"""Jobs by queue (the legacy /jobs/:queueName routes), queues and the dashboard."""

from __future__ import annotations

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import Action, authorize, may_change_all
from flows.services import flow_retry
from flows.selectors import flow_status_counts, flows_created_per_hour
from jobs import selectors, services
from jobs.filters import JobFilter
from jobs.models import Job, QueueState
from jobs.queues import job_queues, unknown_queue_message
from jobs.vocabulary import FLOW_UPDATED_MESSAGE, ID_PATTERN
from jobs.serializers import (
    error_responses,
    DashboardOutputSerializer,
    JobOutputSerializer,
    JobReportInputSerializer,
    JobReportOutputSerializer,
    JobSubmitInputSerializer,
    JobSubmitOutputSerializer,
    QueueActionOutputSerializer,
    QueueOutputSerializer,
)



def _payload(job: Job) -> dict:
    return selectors.job_payload(Job.objects.values(*selectors.JOB_PAYLOAD_FIELDS).get(pk=job.pk))


@extend_schema_view(
    list=extend_schema(responses={200: JobOutputSerializer(many=True), **error_responses(400, 401, 404)}, tags=["jobs"]),
    retrieve=extend_schema(responses={200: JobOutputSerializer, **error_responses(400, 401, 404)}, tags=["jobs"]),
    destroy=extend_schema(responses={204: None, **error_responses(400, 401, 403, 404, 409, 413)}, tags=["jobs"]),
)
class QueueJobViewSet(viewsets.GenericViewSet):
    """Jobs of one queue: list, submit, read, report, retry, delete."""

    lookup_url_kwarg = "job_id"
    lookup_value_regex = ID_PATTERN
    filter_backends = [DjangoFilterBackend]
    filterset_class = JobFilter
    serializer_class = JobOutputSerializer

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if kwargs["queue_name"] not in job_queues():
            raise NotFound(unknown_queue_message(kwargs["queue_name"]))

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Job.objects.none()
        jobs = selectors.job_list_for_user(user=self.request.user)
        return jobs.filter(queue_name=self.kwargs["queue_name"]).order_by("-created_at", "id")

    def list(self, request, queue_name: str):
        jobs = self.paginate_queryset(self.filter_queryset(self.get_queryset()).values(*selectors.JOB_PAYLOAD_FIELDS))
        return self.get_paginated_response([selectors.job_payload(row) for row in jobs])

    def retrieve(self, request, queue_name: str, job_id: str):
        return Response(_payload(self.get_object()))

    @extend_schema(request=JobSubmitInputSerializer, responses={201: JobSubmitOutputSerializer, **error_responses(400, 401, 403, 404, 409, 413)}, tags=["jobs"])
    def create(self, request, queue_name: str):
        data = JobSubmitInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = data.validated_data
        job = services.job_submit(
            name=fields["name"], queue_name=queue_name, data=fields.get("data") or {},
            opts=fields.get("opts") or {}, flow_id=fields.get("flowId"), owner=request.user,
        )
        body = {"jobId": job.pk, "message": "Job submitted", "job": _payload(job)}
        return Response(body, status=status.HTTP_201_CREATED)

    def acted_on(self, action: Action, what: str) -> Job:
        """The job of the URL, if the user may see it (else 404) and do this to it (else 403)."""
        job = self.get_object()
        authorize(self.request.user, job, action, what=what)
        return job

    @extend_schema(
        request=JobReportInputSerializer,
        responses={200: JobReportOutputSerializer, **error_responses(400, 401, 403, 404, 409, 413)},
        tags=["jobs"],
    )
    def update(self, request, queue_name: str, job_id: str):
        """Report the state of a job processed outside Flowsite (as ``PUT /api/flows/{flowId}/jobs/{jobId}``)."""
        report = JobReportInputSerializer(data=request.data, context={"job_id": job_id})
        report.is_valid(raise_exception=True)
        job = services.job_report(job=self.acted_on(Action.CHANGE, "report the state of"), **report.to_service())
        return Response({**_payload(job), "message": FLOW_UPDATED_MESSAGE})

    def destroy(self, request, queue_name: str, job_id: str):
        services.job_delete(job=self.acted_on(Action.DELETE, "delete"))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={200: JobOutputSerializer, **error_responses(400, 401, 403, 404, 409, 413)}, tags=["jobs"])
    @action(detail=True, methods=["post"], filter_backends=[])
    def retry(self, request, queue_name: str, job_id: str):
        job = self.acted_on(Action.CHANGE, "retry")
        if job.flow_id:
            flow_retry(flow=job.flow, job_id=job.pk)
        else:
            services.job_retry_standalone(job=job)
        return Response(_payload(job))


class MayChangeQueues(BasePermission):
    """Pausing and resuming a queue: superusers, and staff with ``jobs.change_queuestate`` (as in the admin)."""

    message = "Pausing and resuming queues needs the permission jobs.change_queuestate."

    def has_permission(self, request, view) -> bool:
        return may_change_all(request.user, QueueState)


class QueueViewSet(viewsets.ViewSet):
    """The allowed queues, with a job count per status; pausing and resuming needs ``MayChangeQueues``."""

    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def get_permissions(self):
        if self.action in ("pause", "resume"):
            return [IsAuthenticated(), MayChangeQueues()]
        return [IsAuthenticated()]

    @extend_schema(responses={200: QueueOutputSerializer(many=True), **error_responses(401)}, tags=["queues"])
    def list(self, request):
        counts = selectors.queue_status_counts(user=request.user)
        paused = selectors.paused_queues()
        health = selectors.queue_health()
        return Response(
            [{"name": name, "paused": name in paused, "counts": c, **health[name]} for name, c in counts.items()]
        )

    def _change(self, name: str, *, pause: bool) -> Response:
        if name not in job_queues():
            raise NotFound(unknown_queue_message(name))
        changed = services.queue_pause(name=name) if pause else services.queue_resume(name=name)
        return Response({"name": name, "paused": pause, "jobsAffected": changed})

    @extend_schema(request=None, responses={200: QueueActionOutputSerializer, **error_responses(400, 401, 403, 404)}, tags=["queues"])
    @action(detail=True, methods=["post"])
    def pause(self, request, name: str):
        return self._change(name, pause=True)

    @extend_schema(request=None, responses={200: QueueActionOutputSerializer, **error_responses(400, 401, 403, 404)}, tags=["queues"])
    @action(detail=True, methods=["post"])
    def resume(self, request, name: str):
        return self._change(name, pause=False)


class DashboardView(APIView):
    """Counts per queue and status, each queue's health, flows per status, the latest failures, flows per hour."""

    @extend_schema(responses={200: DashboardOutputSerializer, **error_responses(401)}, tags=["dashboard"])
    def get(self, request):
        return Response(
            {
                "queues": selectors.queue_status_counts(user=request.user),
                "queueHealth": selectors.queue_health(),
                "flows": flow_status_counts(user=request.user),
                "latestFailures": selectors.latest_failures(user=request.user),
                "flowsPerHour": [
                    {"hour": selectors.iso(slot["hour"]), "count": slot["count"]}
                    for slot in flows_created_per_hour(user=request.user)
                ],
            }
        )
