from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Webhook subscriptions, their signed deliveries and the delivery log."""

    name = "webhooks"

    def ready(self) -> None:
        from flows import events
        from webhooks import recording

        # Deliveries are written in the transaction of each change, while some webhook is active.
        events.add_recorder(recording.record_deliveries, armed=recording.armed)
