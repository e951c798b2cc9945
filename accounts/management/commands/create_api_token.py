"""Create an API token for a user and print it (it cannot be shown again)."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.services import api_token_create


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it. Use it as 'Authorization: Bearer <token>'."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--days", type=int, default=None, help="Expire after this many days (default: FLOWSITE_TOKEN_TTL_HOURS).")

    def handle(self, *args, username: str, days: int | None, **options) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"User {username!r} does not exist.")
        if days is not None and days <= 0:
            raise CommandError("--days must be a positive number.")
        instance, token = api_token_create(user=user, ttl=timedelta(days=days) if days else None)
        self.stdout.write(token)
        expiry = instance.expiry.isoformat() if instance.expiry else "never"
        self.stderr.write(f"Token for {username} created; expires {expiry}. It will not be shown again.")
