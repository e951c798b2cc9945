from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """API authentication: tokens (django-rest-knox) for API clients."""

    name = "accounts"

    def ready(self) -> None:
        from accounts import schema  # noqa: F401  (registers the OpenAPI extension)
