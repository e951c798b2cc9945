"""Reads of webhooks and deliveries, scoped to the user."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from accounts.permissions import sees_all, visible
from webhooks.models import Delivery, Webhook


def webhook_list_for_user(*, user: AbstractBaseUser) -> QuerySet[Webhook]:
    """Webhooks the user may see: their own, or all with ``webhooks.view_webhook`` (``accounts.permissions``)."""
    return visible(Webhook.objects.all(), user)


def delivery_list_for_user(*, user: AbstractBaseUser) -> QuerySet[Delivery]:
    """Deliveries of the webhooks the user may see."""
    deliveries = Delivery.objects.select_related("webhook")
    return deliveries if sees_all(user, Webhook) else deliveries.filter(webhook__owner=user)
