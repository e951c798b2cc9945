"""/admin/login/ locks out after too many failed logins, per account and per address (django-axes).

Against the real server (``manage.py up``), as an attacker would try it: wrong
passwords, then the right one, with a forged ``X-Forwarded-For`` on every try.
The API's token login and the test client's ``login()`` are not counted.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import pytest
import requests
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from rest_framework.test import APIClient

from tests.conftest import service_env
from tests.live import run_server

GUESSES = 60
LOCKOUT_PAGE = "Too many failed logins"


def staff_account(django_user_model, username: str, password: str):
    """A staff user whose password the server can check (the test process hashes with MD5 only)."""
    hasher = PBKDF2PasswordHasher()
    encoded = hasher.encode(password, hasher.salt(), iterations=1000)  # cheap, still PBKDF2
    return django_user_model.objects.create(username=username, password=encoded, is_staff=True, is_superuser=True)


class AdminLogin:
    """A browser at the admin's login page: one session, the CSRF cookie, a form post."""

    def __init__(self, server) -> None:
        self.url = f"{server.url}/admin/login/"
        self.session = requests.Session()
        page = self.session.get(self.url, timeout=10)
        assert page.status_code == 200
        self.csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)

    def post(self, username: str, password: str, *, forwarded_for: str | None = None) -> requests.Response:
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        return self.session.post(
            self.url, data={"csrfmiddlewaretoken": self.csrf, "username": username, "password": password,
                            "next": "/admin/"},
            headers=headers, allow_redirects=False, timeout=30,
        )


def logged_in(response: requests.Response) -> bool:
    return response.status_code == 302 and response.headers["Location"] == "/admin/"


def test_sixty_wrong_passwords_lock_the_account_and_the_right_one_is_then_refused(
    live_asgi_server, transactional_db, django_user_model
):
    staff_account(django_user_model, "root-admin", "right-horse-battery")
    assert logged_in(AdminLogin(live_asgi_server).post("root-admin", "right-horse-battery"))  # the password works

    attacker = AdminLogin(live_asgi_server)
    answers = [
        attacker.post("root-admin", f"guess-{index}", forwarded_for=f"10.0.{index // 250}.{index % 250}")
        for index in range(GUESSES)
    ]
    right = attacker.post("root-admin", "right-horse-battery", forwarded_for="10.9.9.9")

    limit = settings.AXES_FAILURE_LIMIT
    statuses = [answer.status_code for answer in answers]
    assert statuses[: limit - 1] == [200] * (limit - 1)  # the form again, with its error
    assert set(statuses[limit:]) == {429}
    assert LOCKOUT_PAGE in answers[-1].text and answers[-1].headers["Content-Type"].startswith("text/html")
    assert right.status_code == 429 and LOCKOUT_PAGE in right.text
    assert "sessionid" not in attacker.session.cookies
    assert AccessAttempt.objects.filter(username="root-admin").exists()


def test_forged_forwarded_for_headers_do_not_escape_the_lockout_of_an_address(
    live_asgi_server, transactional_db, django_user_model
):
    """NUM_PROXIES=0: every guess names another account and another forwarded address; the connection's own address is locked."""
    staff_account(django_user_model, "second-admin", "another-right-one")
    attacker = AdminLogin(live_asgi_server)

    statuses = [
        attacker.post(f"user-{index}", "guess", forwarded_for=f"192.0.2.{index}").status_code for index in range(GUESSES)
    ]
    untouched_account = attacker.post("second-admin", "another-right-one", forwarded_for="198.51.100.77")

    assert set(statuses[settings.AXES_FAILURE_LIMIT:]) == {429}
    assert untouched_account.status_code == 429  # locked by address: an account nobody attacked, from here
    assert not AccessAttempt.objects.filter(ip_address__startswith="192.0.2.").exists()
    assert AccessAttempt.objects.filter(ip_address="127.0.0.1").exists()


def test_the_servers_token_throttle_ignores_forged_forwarded_for_too(live_asgi_server, transactional_db):
    """The server itself (uvicorn) must not take X-Forwarded-For for the address when NUM_PROXIES is 0:
    it did for clients on 127.0.0.1, so every forged header counted as a new client."""
    from django.core.cache import cache

    cache.delete("throttle_anon_127.0.0.1")
    try:
        statuses = [
            requests.post(f"{live_asgi_server.url}/api/auth/token", json={}, timeout=10,
                          headers={"X-Forwarded-For": f"192.0.2.{index}"}).status_code
            for index in range(31)
        ]
    finally:
        cache.delete("throttle_anon_127.0.0.1")

    assert statuses == [400] * 30 + [429]


@contextmanager
def server_behind_one_proxy(tmp_path):
    from django.db import connection

    env = {**service_env(connection.settings_dict["NAME"]), "NUM_PROXIES": "1"}
    with run_server(env, tmp_path) as server:
        yield server


def test_behind_a_trusted_proxy_the_account_is_locked_whatever_the_address_and_addresses_apart(
    transactional_db, django_user_model, tmp_path
):
    """NUM_PROXIES=1: the proxy's last X-Forwarded-For entry is the client, as for the token throttle."""
    staff_account(django_user_model, "root-admin", "right-horse-battery")
    staff_account(django_user_model, "other-admin", "other-right-one")
    with server_behind_one_proxy(tmp_path) as server:
        answers = [
            AdminLogin(server).post("root-admin", f"guess-{index}", forwarded_for=f"203.0.113.{index}").status_code
            for index in range(GUESSES)
        ]
        right_elsewhere = AdminLogin(server).post("root-admin", "right-horse-battery", forwarded_for="198.51.100.1")
        # One forged entry before the proxy's own: not trusted, the client is still 198.51.100.2.
        other_account = AdminLogin(server).post("other-admin", "other-right-one", forwarded_for="203.0.113.1, 198.51.100.2")

    assert set(answers[settings.AXES_FAILURE_LIMIT:]) == {429}
    assert right_elsewhere.status_code == 429  # the account is locked, from any address
    assert logged_in(other_account)  # another account from another client behind the same proxy
    assert AccessAttempt.objects.filter(ip_address="203.0.113.5").exists()


def test_api_token_logins_are_not_counted_by_the_admin_lockout(user):
    from django.core.cache import cache

    cache.delete("throttle_anon_127.0.0.1")  # the token endpoint's own throttle (30 a minute) starts empty
    client = APIClient()
    wrong = [
        client.post("/api/auth/token", {"username": "alice", "password": f"guess-{index}"}, format="json").status_code
        for index in range(settings.AXES_FAILURE_LIMIT + 2)
    ]
    right = client.post("/api/auth/token", {"username": "alice", "password": "pw-alice-123"}, format="json")

    assert set(wrong) == {401}
    assert right.status_code == 201
    assert not AccessAttempt.objects.exists()
    cache.delete("throttle_anon_127.0.0.1")


def test_a_login_without_a_request_is_not_a_network_login(user):
    """The test client's login() and management commands call authenticate() without a request."""
    from django.test import Client

    assert Client().login(username="alice", password="pw-alice-123")
    assert not Client().login(username="alice", password="wrong")
    assert not AccessAttempt.objects.exists()
