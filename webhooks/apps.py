from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Webhook subscriptions, their signed deliveries and the delivery log."""

    name = "webhooks"

    def ready(self) -> None:
        from django.conf import settings

        from flows import events
        from webhooks import recording

        # The events a webhook wants are recorded in the transaction of each change.
        events.add_recorder(
            recording.record_events, armed=recording.armed, sql_arm=recording.events_sql_arm,
            after_commit=recording.kicker.kick,
            progress_interval=settings.FLOWSITE_WEBHOOK_PROGRESS_INTERVAL_MS / 1000,
        )
