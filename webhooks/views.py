"""The webhooks API: thin viewsets that validate, call a service or selector, and serialize."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from accounts.permissions import Action, authorize
from jobs.serializers import error_responses
from jobs.vocabulary import DeliveryStatus
from webhooks import selectors, services
from webhooks.filters import DeliveryFilter
from webhooks.models import Delivery, Webhook
from webhooks.serializers import (
    DELIVERY_TYPES,
    DeliveryOutputSerializer,
    WebhookInputSerializer,
    WebhookOutputSerializer,
    WebhookSecretOutputSerializer,
)

NUMERIC_ID = r"[0-9]{1,18}"
_WRITE_ERRORS = error_responses(400, 401, 403, 404, 413)


@extend_schema_view(
    list=extend_schema(responses={200: WebhookOutputSerializer(many=True), **error_responses(400, 401, 404)}),
    retrieve=extend_schema(responses={200: WebhookOutputSerializer, **error_responses(400, 401, 404)}),
    destroy=extend_schema(responses={204: None, **error_responses(400, 401, 403, 404)}),
)
@extend_schema(tags=["webhooks"])
class WebhookViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """Subscribe to flow and job events: signed POSTs to your URL, with retries and a delivery log."""

    lookup_url_kwarg = "webhook_id"
    lookup_value_regex = NUMERIC_ID
    serializer_class = WebhookOutputSerializer
    filter_backends: list = []

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Webhook.objects.none()
        return selectors.webhook_list_for_user(user=self.request.user)

    def acted_on(self, action: Action, what: str) -> Webhook:
        """The webhook of the URL, if the user may see it (else 404) and do this to it (else 403)."""
        webhook = self.get_object()
        authorize(self.request.user, webhook, action, what=what)
        return webhook

    def _input(self, partial: bool = False) -> dict:
        serializer = WebhookInputSerializer(data=self.request.data, partial=partial, context={"request": self.request})
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    @extend_schema(request=WebhookInputSerializer, responses={201: WebhookSecretOutputSerializer, **_WRITE_ERRORS})
    def create(self, request):
        webhook = services.webhook_create(owner=request.user, **self._input())
        return Response(WebhookSecretOutputSerializer(webhook).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=WebhookInputSerializer, responses={200: WebhookOutputSerializer, **_WRITE_ERRORS})
    def update(self, request, webhook_id: str):
        webhook = services.webhook_update(webhook=self.acted_on(Action.CHANGE, "change"), **self._input())
        return Response(WebhookOutputSerializer(webhook).data)

    @extend_schema(request=WebhookInputSerializer, responses={200: WebhookOutputSerializer, **_WRITE_ERRORS})
    def partial_update(self, request, webhook_id: str):
        webhook = services.webhook_update(webhook=self.acted_on(Action.CHANGE, "change"), **self._input(partial=True))
        return Response(WebhookOutputSerializer(webhook).data)

    def destroy(self, request, webhook_id: str):
        services.webhook_delete(webhook=self.acted_on(Action.DELETE, "delete"))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=DeliveryStatus.values),
            OpenApiParameter("eventType", str, enum=DELIVERY_TYPES),
        ],
        responses={200: DeliveryOutputSerializer(many=True), **error_responses(400, 401, 404)},
    )
    @action(detail=True, methods=["get"])
    def deliveries(self, request, webhook_id: str):
        """The webhook's deliveries, newest first (filters: ``status``, ``eventType``)."""
        webhook = self.get_object()
        filtered = DeliveryFilter(request.query_params, queryset=webhook.deliveries.all())
        if not filtered.is_valid():
            raise ValidationError(filtered.errors)
        deliveries = filtered.qs
        page = self.paginate_queryset(deliveries)
        return self.get_paginated_response(DeliveryOutputSerializer(page, many=True).data)

    @extend_schema(request=None, responses={200: DeliveryOutputSerializer, **error_responses(400, 401, 403, 404, 409, 413)})
    @action(detail=True, methods=["post"])
    def test(self, request, webhook_id: str):
        delivery = services.webhook_test(webhook=self.acted_on(Action.CHANGE, "test"))
        return Response(DeliveryOutputSerializer(delivery).data)

    @extend_schema(request=None, responses={200: WebhookSecretOutputSerializer, **error_responses(400, 401, 403, 404, 413)})
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request, webhook_id: str):
        webhook = services.webhook_rotate_secret(webhook=self.acted_on(Action.CHANGE, "rotate the secret of"))
        return Response(WebhookSecretOutputSerializer(webhook).data)


@extend_schema(tags=["webhooks"])
class DeliveryViewSet(mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """One delivery of your webhooks, and sending it again."""

    lookup_url_kwarg = "delivery_id"
    lookup_value_regex = NUMERIC_ID
    serializer_class = DeliveryOutputSerializer
    filter_backends: list = []
    pagination_class = None

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Delivery.objects.none()
        return selectors.delivery_list_for_user(user=self.request.user)

    @extend_schema(responses={200: DeliveryOutputSerializer, **error_responses(400, 401, 404)})
    def retrieve(self, request, delivery_id: str):
        return Response(DeliveryOutputSerializer(get_object_or_404(self.get_queryset(), pk=delivery_id)).data)

    @extend_schema(request=None, responses={200: DeliveryOutputSerializer, **error_responses(400, 401, 403, 404, 413)})
    @action(detail=True, methods=["post"])
    def redeliver(self, request, delivery_id: str):
        delivery = get_object_or_404(self.get_queryset(), pk=delivery_id)
        authorize(request.user, delivery.webhook, Action.CHANGE, what="redeliver a delivery of")
        delivery = services.delivery_redeliver(delivery=delivery)
        return Response(DeliveryOutputSerializer(delivery).data)
