from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Webhook subscriptions and deliveries (built in a later issue)."""

    name = "webhooks"
