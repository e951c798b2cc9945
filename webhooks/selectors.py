"""Reads of webhooks and deliveries, scoped to the user."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from webhooks.models import Delivery, Webhook


def webhook_list_for_user(*, user: AbstractBaseUser) -> QuerySet[Webhook]:
    """Webhooks the user may see: their own; staff see all."""
    return Webhook.objects.all() if user.is_staff else Webhook.objects.filter(owner=user)


def delivery_list_for_user(*, user: AbstractBaseUser) -> QuerySet[Delivery]:
    """Deliveries of the webhooks the user may see."""
    deliveries = Delivery.objects.select_related("webhook")
    return deliveries if user.is_staff else deliveries.filter(webhook__owner=user)
