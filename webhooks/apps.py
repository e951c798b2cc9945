from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """Webhook subscriptions, their signed deliveries and the delivery log."""

    name = "webhooks"

    def ready(self) -> None:
        from flows import events
        from webhooks import recording

        # Deliveries are written in the transaction of each change a webhook may want.
        events.add_recorder(
            recording.record_deliveries, armed=recording.armed, sql_arm=recording.deliveries_sql_arm,
            after_commit=recording.kicker.kick,
        )
