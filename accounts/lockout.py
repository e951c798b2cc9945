"""Admin login lockout (django-axes): who is counted, and from which address.

``/admin/login/`` is locked for an account, and separately for a client address,
after ``FLOWSITE_LOGIN_FAILURE_LIMIT`` failed logins within the cool-off
(``FLOWSITE_LOGIN_COOLOFF_MINUTES``); a locked login is answered ``429`` with the
lockout page, even with the right password. Three hooks adapt axes to Flowsite:

- ``client_address``: the client's address by the token throttle's own rule
  (``NUM_PROXIES``, DRF's ``get_ident``), so both refuse a forged
  ``X-Forwarded-For`` alike. django-ipware counts proxies differently (with one
  proxy it finds no address in a one-entry header, where DRF takes that entry).
- ``counts_only_admin_logins``: axes ignores every login that is not the admin's.
  ``POST /api/auth/token`` has its own throttle (``accounts.views.TokenThrottle``),
  and API tokens and websocket sessions never call ``authenticate()``.
- ``LoginLockoutBackend``: an ``authenticate()`` without a request (the test
  client's ``login()``, a management command) is no network login: nothing to lock.
"""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest
from django.urls import reverse
from rest_framework.throttling import BaseThrottle


def client_address(request: HttpRequest) -> str | None:
    """The client's address: the connection's own, or from ``X-Forwarded-For`` past ``NUM_PROXIES`` proxies."""
    return BaseThrottle().get_ident(request) or None


def counts_only_admin_logins(request: HttpRequest | None, credentials: dict[str, Any] | None) -> bool:
    """Axes' whitelist hook: True (not counted, never locked) for any login but the admin's."""
    path = getattr(request, "path", None)
    return path is None or not path.startswith(reverse("admin:index"))


class LoginLockoutBackend(AxesStandaloneBackend):
    """Axes' lockout check, first in ``AUTHENTICATION_BACKENDS``; it logs nobody in."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
