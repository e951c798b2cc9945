"""API token issuance and revocation."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone
from knox.models import AuthToken
from knox.settings import knox_settings


def api_token_create(*, user: AbstractBaseUser, ttl: timedelta | None = None) -> tuple[AuthToken, str]:
    """Create a token for ``user``; return the stored (hashed) token and the one-time plain text.

    The user's expired tokens are deleted on the way (they no longer authenticate anyway).
    """
    AuthToken.objects.filter(user=user, expiry__lt=timezone.now()).delete()
    return AuthToken.objects.create(user=user, expiry=ttl if ttl is not None else knox_settings.TOKEN_TTL)


def api_token_revoke(*, token: AuthToken) -> None:
    """Revoke one token: it no longer authenticates."""
    AuthToken.objects.filter(pk=token.pk).delete()


def api_tokens_revoke_all(*, user: AbstractBaseUser) -> int:
    """Revoke every token of ``user``; return how many there were."""
    deleted, _ = AuthToken.objects.filter(user=user).delete()
    return deleted
