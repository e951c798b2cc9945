"""Token authentication accepting both ``Authorization: Bearer <token>`` and ``Token <token>``."""

from __future__ import annotations

from knox.auth import TokenAuthentication
from rest_framework import exceptions
from rest_framework.authentication import get_authorization_header

ACCEPTED_PREFIXES = (b"bearer", b"token")


class BearerTokenAuthentication(TokenAuthentication):
    """django-rest-knox tokens (stored hashed, revocable, expiring) under either prefix."""

    def authenticate(self, request):
        auth = get_authorization_header(request).split()
        if not auth or auth[0].lower() not in ACCEPTED_PREFIXES:
            return None
        if len(auth) != 2:
            raise exceptions.AuthenticationFailed("Invalid Authorization header: expected 'Bearer <token>'.")
        return self.authenticate_credentials(auth[1])

    def authenticate_header(self, request) -> str:
        return "Bearer"
