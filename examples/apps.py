from django.apps import AppConfig


class ExamplesConfig(AppConfig):
    """Example job handlers (video and image pipelines) so a new user can run a flow at once."""

    name = "examples"
