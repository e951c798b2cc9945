"""What a user may know about their API tokens: never the token itself, nor its hash."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q
from django.utils import timezone
from knox.models import AuthToken

# Characters of a token shown to tell tokens apart (a knox token has 64; knox's own
# index, ``token_key``, keeps 15 of them).
TOKEN_PREFIX_LENGTH = 8


def api_tokens_of(*, user: AbstractBaseUser, current: AuthToken | None = None) -> list[dict]:
    """The user's tokens that still authenticate, newest first.

    ``current`` is the token of the request asking, marked ``current: True``.
    """
    rows = (
        AuthToken.objects.filter(user=user)
        .filter(Q(expiry__isnull=True) | Q(expiry__gte=timezone.now()))
        .order_by("-created")
        .values("digest", "token_key", "created", "expiry")
    )
    current_digest = current.digest if isinstance(current, AuthToken) else None
    return [
        {
            "prefix": row["token_key"][:TOKEN_PREFIX_LENGTH],
            "created": row["created"],
            "expiry": row["expiry"],
            "current": row["digest"] == current_digest,
        }
        for row in rows
    ]
