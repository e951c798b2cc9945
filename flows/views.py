"""The flows API: thin viewsets that validate, call a service or selector, and serialize."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.filters import SearchFilter
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework.response import Response

from accounts.permissions import Action, authorize
from flows import selectors, services
from flows.filters import FlowFilter
from flows.models import Flow
from flows.serializers import (
    FlowActionOutputSerializer,
    FlowCreateInputSerializer,
    FlowDetailOutputSerializer,
    FlowJobsQuerySerializer,
    FlowOutputSerializer,
)
from jobs.models import Job
from jobs.selectors import JOB_PAYLOAD_FIELDS, job_list_payloads, job_payload
from jobs.serializers import (
    FlowJobOutputSerializer,
    JobReportInputSerializer,
    JobReportOutputSerializer,
    error_responses,
)
from jobs.services import job_report
from jobs.vocabulary import FLOW_CREATED_MESSAGE, FLOW_UPDATED_MESSAGE, ID_PATTERN

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
    description="Repeat a create safely: the same key and body return the first flow (200).",
)


def flow_action_body(flow: Flow, message: str) -> dict:
    return {"flowId": flow.pk, "message": message, "flow": selectors.flow_payload_of(flow)}


@extend_schema_view(
    list=extend_schema(responses={200: FlowOutputSerializer(many=True), **error_responses(400, 401, 404)}, tags=["flows"]),
    retrieve=extend_schema(responses={200: FlowDetailOutputSerializer, **error_responses(400, 401, 404)}, tags=["flows"]),
    destroy=extend_schema(responses={200: FlowActionOutputSerializer, **error_responses(400, 401, 403, 404)}, tags=["flows"]),
)
class FlowViewSet(viewsets.GenericViewSet):
    """Create, list, read, cancel, retry and delete flows; report jobs run elsewhere."""

    lookup_url_kwarg = "flow_id"
    lookup_value_regex = ID_PATTERN
    filter_backends = [DjangoFilterBackend, SearchFilter]
    filterset_class = FlowFilter
    search_fields = ["flowname", "=id"]
    serializer_class = FlowOutputSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Flow.objects.none()
        return selectors.flow_list_for_user(user=self.request.user)

    def list(self, request):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()).values_list("pk", flat=True))
        return self.get_paginated_response(selectors.flow_payloads(list(page)))

    def retrieve(self, request, flow_id: str):
        flow = get_object_or_404(self.get_queryset().defer(None), pk=flow_id)
        return HttpResponse(selectors.flow_detail_json(flow=flow), content_type="application/json")

    @extend_schema(
        request=FlowCreateInputSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={201: FlowActionOutputSerializer, 200: FlowActionOutputSerializer, **error_responses(400, 401, 404, 409, 413)},
        tags=["flows"],
    )
    def create(self, request):
        key = request.headers.get("Idempotency-Key")
        if key:
            if len(key) > 255:
                raise ValidationError({"Idempotency-Key": ["At most 255 characters."]})
            flow, created = services.flow_create_idempotent(owner=request.user, spec=request.data, key=key)
        else:
            flow, created = services.flow_create(owner=request.user, spec=request.data), True
        message = FLOW_CREATED_MESSAGE if created else "Flow already created with this Idempotency-Key"
        return Response(
            flow_action_body(flow, message), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    def acted_on(self, action: Action, what: str) -> Flow:
        """The flow of the URL, if the user may see it (else 404) and do this to it (else 403)."""
        flow = self.get_object()
        authorize(self.request.user, flow, action, what=what)
        return flow

    def destroy(self, request, flow_id: str):
        flow = self.acted_on(Action.DELETE, "delete")
        body = flow_action_body(flow, "Flow deleted")
        services.flow_delete(flow=flow)
        return Response(body)

    @extend_schema(request=None, responses={200: FlowActionOutputSerializer, **error_responses(400, 401, 403, 404, 409, 413)}, tags=["flows"])
    @action(detail=True, methods=["post"])
    def cancel(self, request, flow_id: str):
        flow = services.flow_cancel(flow=self.acted_on(Action.CHANGE, "cancel"))
        return Response(flow_action_body(flow, "Flow cancelled"))

    @extend_schema(request=None, responses={200: FlowActionOutputSerializer, **error_responses(400, 401, 403, 404, 409, 413)}, tags=["flows"])
    @action(detail=True, methods=["post"])
    def retry(self, request, flow_id: str):
        flow = services.flow_retry(flow=self.acted_on(Action.CHANGE, "retry"))
        return Response(flow_action_body(flow, "Flow retried"))

    @extend_schema(
        parameters=[FlowJobsQuerySerializer], responses={200: FlowJobOutputSerializer(many=True), **error_responses(400, 401, 404)}, tags=["flows"]
    )
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def jobs(self, request, flow_id: str):
        query = FlowJobsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        flow = self.get_object()
        return Response(job_list_payloads(selectors.flow_jobs(flow=flow, status=query.validated_data.get("status"))))

    @extend_schema(
        request=JobReportInputSerializer,
        responses={200: JobReportOutputSerializer, **error_responses(400, 401, 403, 404, 409, 413)},
        tags=["flows"],
    )
    @action(detail=True, methods=["put"], url_path=rf"jobs/(?P<job_id>{ID_PATTERN})", filter_backends=[])
    def job(self, request, flow_id: str, job_id: str):
        report = JobReportInputSerializer(data=request.data, context={"job_id": job_id})
        report.is_valid(raise_exception=True)
        flow = self.get_object()
        job = get_object_or_404(Job.objects.select_related("owner"), pk=job_id, flow_id=flow.pk)
        authorize(request.user, job, Action.CHANGE, what="report the state of")
        job = job_report(job=job, **report.to_service())
        body = job_payload(Job.objects.values(*JOB_PAYLOAD_FIELDS).get(pk=job.pk))
        return Response({**body, "message": FLOW_UPDATED_MESSAGE})
