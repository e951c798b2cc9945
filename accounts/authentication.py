"""Token authentication accepting both ``Authorization: Bearer <token>`` and ``Token <token>``."""

from __future__ import annotations

import re

from django.utils import timezone
from knox.auth import TokenAuthentication
from knox.signals import token_expired
from rest_framework import exceptions
from rest_framework.authentication import get_authorization_header

ACCEPTED_PREFIXES = (b"bearer", b"token")
TOKEN_BYTES = re.compile(rb"[!-~]+")


class BearerTokenAuthentication(TokenAuthentication):
    """django-rest-knox tokens (stored hashed, revocable, expiring) under either prefix."""

    def authenticate(self, request):
        auth = get_authorization_header(request).split()
        if not auth or auth[0].lower() not in ACCEPTED_PREFIXES:
            return None
        if len(auth) != 2:
            raise exceptions.AuthenticationFailed("Invalid Authorization header: expected 'Bearer <token>'.")
        # The header arrives as raw bytes (latin-1 in WSGI and ASGI): a token is printable
        # ASCII, and knox would decode anything else as UTF-8 and fail with a 500
        # (UnicodeDecodeError), or look a NUL up in PostgreSQL (ValueError).
        if not TOKEN_BYTES.fullmatch(auth[1]):
            raise exceptions.AuthenticationFailed("Invalid token.")
        return self.authenticate_credentials(auth[1])

    def authenticate_header(self, request) -> str:
        return "Bearer"

    def _cleanup_token(self, auth_token) -> bool:
        """Reject (and delete) this token if it has expired: one query per request, not two.

        knox also sweeps the user's other expired tokens here, on every request;
        ``accounts.services.api_token_create`` does that when it issues a token instead.
        """
        if auth_token.expiry is not None and auth_token.expiry < timezone.now():
            username = auth_token.user.get_username()
            auth_token.delete()
            token_expired.send(sender=self.__class__, username=username, source="auth_token")
            return True
        return False
