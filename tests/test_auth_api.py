"""API authentication: tokens (hashed, revocable, expiring), Bearer and Token prefixes, sessions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings
from knox.models import AuthToken
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_token_from_username_and_password_works_with_both_prefixes(user):
    client = APIClient()

    response = client.post("/api/auth/token", {"username": "alice", "password": "pw-alice-123"}, format="json")

    assert response.status_code == 201
    token = response.json()["token"]
    assert response.json()["expiry"]
    stored = AuthToken.objects.get(user=user)
    assert token not in (stored.digest, stored.token_key)  # only a hash is stored
    for prefix in ("Bearer", "Token", "bearer"):
        client.credentials(HTTP_AUTHORIZATION=f"{prefix} {token}")
        assert client.get("/api/flows").status_code == 200, prefix


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"username": "alice", "password": "wrong"}, 401, "Invalid username or password."),
        ({"username": "nobody", "password": "x"}, 401, "Invalid username or password."),
        ({"username": "alice"}, 400, None),
    ],
)
def test_token_errors(user, body, status, message):
    response = APIClient().post("/api/auth/token/", body, format="json")

    assert response.status_code == status
    if message:
        assert response.json()["error"] == message
    else:
        assert response.json()["details"]["password"] == ["This field is required."]


def test_anonymous_bad_revoked_and_expired_tokens_get_401(user):
    client = APIClient()
    assert client.get("/api/flows").status_code == 401
    assert client.get("/api/flows")["WWW-Authenticate"] == "Bearer"
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert client.get("/api/flows").status_code == 401
    client.credentials(HTTP_AUTHORIZATION="Bearer two words")
    assert client.get("/api/flows").status_code == 401

    instance, token = AuthToken.objects.create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/flows").status_code == 200
    instance.delete()  # revoked
    assert client.get("/api/flows").status_code == 401

    _, expired = AuthToken.objects.create(user=user, expiry=timedelta(seconds=-1))
    client.credentials(HTTP_AUTHORIZATION=f"Token {expired}")
    assert client.get("/api/flows").status_code == 401
    assert not AuthToken.objects.filter(user=user).exists()  # the expired token is deleted


@override_settings(REST_KNOX={"TOKEN_TTL": None, "AUTO_REFRESH": False})  # FLOWSITE_TOKEN_TTL_HOURS=0
def test_a_token_that_never_expires_keeps_working(user):
    from accounts.services import api_token_create

    stored, token = api_token_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    response = client.get("/api/flows")

    assert response.status_code == 200, response.json()
    stored.refresh_from_db()
    assert stored.expiry is None  # still stored, never swept


def test_a_token_request_costs_one_query_and_new_tokens_sweep_expired_ones(user):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.authentication import BearerTokenAuthentication
    from accounts.services import api_token_create

    stale, _ = AuthToken.objects.create(user=user, expiry=timedelta(seconds=-1))
    _, token = api_token_create(user=user)
    assert not AuthToken.objects.filter(pk=stale.pk).exists()

    with CaptureQueriesContext(connection) as queries:
        authenticated, _ = BearerTokenAuthentication().authenticate_credentials(token.encode())
    assert authenticated == user
    assert len(queries) == 1


def test_create_api_token_command_prints_a_working_token(user, capsys):
    call_command("create_api_token", "alice", "--days", "7")

    token = capsys.readouterr().out.strip()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get("/api/dashboard").status_code == 200


def test_session_auth_serves_the_browsable_api(user, other_user):
    from tests.factories import make_flow

    mine = make_flow(user, flowname="alices-nightly-report")
    theirs = make_flow(other_user, flowname="mallorys-secret-flow")
    client = APIClient()
    client.login(username="alice", password="pw-alice-123")

    response = client.get("/api/flows", HTTP_ACCEPT="text/html")

    page = response.content.decode()
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert "Flow List" in page  # the browsable API's page for the flow list
    assert '<li class="navbar-text">alice</li>' in page  # logged in by her session
    # Her flow, rendered as the API's JSON inside the page; not the other user's.
    assert "&quot;count&quot;: 1" in page
    assert f"&quot;flowId&quot;: &quot;{mine.pk}&quot;" in page
    assert "alices-nightly-report" in page
    assert theirs.pk not in page and "mallorys-secret-flow" not in page


def test_health_and_schema_need_no_authentication():
    client = APIClient()
    assert client.get("/health").status_code == 200
    assert client.get("/api/schema/").status_code == 200


def test_the_token_throttle_counts_requests_across_processes(user):
    """Service mode runs several web processes: the throttle counts in the shared cache (Redis)."""
    import os
    import subprocess
    import sys

    from django.core.cache import cache

    from tests.conftest import ROOT

    key = "throttle_anon_127.0.0.1"  # DRF's AnonRateThrottle key for the test client's address
    cache.delete(key)
    try:
        client = APIClient()
        # Every request counts, also a refused one (400: no credentials, so no slow hashing).
        statuses = [client.post("/api/auth/token", {}, format="json").status_code for _ in range(30)]
        assert set(statuses) == {400}
        other_process = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from rest_framework.test import APIClient; "
             "print(APIClient().post('/api/auth/token', {'username': 'alice', 'password': 'pw-alice-123'}, "
             "format='json').status_code)"],
            cwd=ROOT, env={**os.environ, "ALLOWED_HOSTS": "testserver"}, capture_output=True, text=True, timeout=60,
        )
        assert other_process.stdout.strip().splitlines()[-1] == "429", other_process.stderr
    finally:
        cache.delete(key)


@pytest.fixture
def clean_throttle():
    """The token throttle's counters start empty (they live in the shared cache, Redis)."""
    from django.core.cache import cache

    def clear():
        keys = ["throttle_anon_127.0.0.1", "throttle_anon_203.0.113.7", "throttle_anon_198.51.100.1"]
        keys += [f"throttle_anon_10.0.{index // 250}.{index % 250}" for index in range(100)]
        cache.delete_many(keys)

    clear()
    yield
    clear()


def test_the_token_throttle_ignores_x_forwarded_for_from_the_client(user, clean_throttle):
    """A client that sends another X-Forwarded-For with each guess is still counted by its own address."""
    client = APIClient()
    statuses = [
        client.post(
            "/api/auth/token", {"username": "alice", "password": f"guess-{index}"}, format="json",
            HTTP_X_FORWARDED_FOR=f"10.0.{index // 250}.{index % 250}",
        ).status_code
        for index in range(60)
    ]

    assert statuses[:30] == [401] * 30
    assert set(statuses[30:]) == {429}
    right = client.post(
        "/api/auth/token", {"username": "alice", "password": "pw-alice-123"}, format="json",
        HTTP_X_FORWARDED_FOR="10.0.9.9",
    )
    assert right.status_code == 429


def test_behind_a_trusted_proxy_the_token_throttle_counts_the_address_it_forwards(user, clean_throttle):
    """NUM_PROXIES=1: the last X-Forwarded-For entry (added by the proxy) is the client; what precedes it is not trusted."""
    client = APIClient()
    with override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}):
        forged = [
            client.post(
                "/api/auth/token", {}, format="json", HTTP_X_FORWARDED_FOR=f"10.0.0.{index}, 203.0.113.7",
            ).status_code
            for index in range(31)
        ]
        other_client = client.post("/api/auth/token", {}, format="json", HTTP_X_FORWARDED_FOR="198.51.100.1")

    assert forged == [400] * 30 + [429]
    assert other_client.status_code == 400  # another client behind the same proxy is not throttled


def _bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_logout_revokes_the_token_of_the_request_only(user):
    from accounts.services import api_token_create

    _, used = api_token_create(user=user)
    _, other = api_token_create(user=user)

    response = _bearer(used).post("/api/auth/logout")

    assert response.status_code == 204
    assert _bearer(used).get("/api/flows").status_code == 401
    assert _bearer(other).get("/api/flows").status_code == 200
    assert AuthToken.objects.filter(user=user).count() == 1
    assert APIClient().post("/api/auth/logout/").status_code == 401


def test_logout_all_revokes_every_token_of_the_user_and_no_one_elses(user, other_user):
    from accounts.services import api_token_create

    tokens = [api_token_create(user=user)[1] for _ in range(3)]
    _, theirs = api_token_create(user=other_user)

    response = _bearer(tokens[0]).post("/api/auth/logout-all/")

    assert response.status_code == 204
    assert [_bearer(token).get("/api/flows").status_code for token in tokens] == [401, 401, 401]
    assert _bearer(theirs).get("/api/flows").status_code == 200


def test_tokens_lists_the_users_tokens_without_their_secrets(user, other_user):
    from accounts.services import api_token_create

    first, first_token = api_token_create(user=user)
    never, never_token = AuthToken.objects.create(user=user, expiry=None)
    AuthToken.objects.create(user=user, expiry=timedelta(seconds=-1))  # expired: not listed
    api_token_create(user=other_user)

    response = _bearer(never_token).get("/api/auth/tokens")

    assert response.status_code == 200
    listed = response.json()
    assert [entry["prefix"] for entry in listed] == [never_token[:8], first_token[:8]]  # newest first
    assert set(listed[0]) == {"prefix", "created", "expiry", "current"}
    assert [entry["current"] for entry in listed] == [True, False]
    assert listed[0]["expiry"] is None and listed[1]["expiry"].startswith(str(first.expiry.year))
    for secret in (first_token, never_token, first.digest, never.digest, first.token_key, never.token_key):
        assert secret not in response.content.decode()
    assert APIClient().get("/api/auth/tokens").status_code == 401


def test_session_logout_ends_the_session(user):
    client = APIClient(enforce_csrf_checks=False)
    client.login(username="alice", password="pw-alice-123")
    assert client.get("/api/auth/tokens").json() == []

    assert client.post("/api/auth/logout").status_code == 204
    assert client.get("/api/flows").status_code == 401


def test_the_auth_endpoints_are_in_the_schema():
    import yaml

    paths = yaml.safe_load(APIClient().get("/api/schema/").content)["paths"]

    assert set(paths["/api/auth/logout/"]) == {"post"}
    assert set(paths["/api/auth/logout-all/"]) == {"post"}
    assert set(paths["/api/auth/tokens/"]) == {"get"}
    assert paths["/api/auth/logout/"]["post"]["tags"] == ["auth"]



def test_api_responses_are_not_stored_by_caches(user):
    from accounts.services import api_token_create
    from jobs.models import Job
    from tests.factories import make_flow

    flow = make_flow(user)
    job = Job.objects.get(pk=flow.root_job_id)
    client = _bearer(api_token_create(user=user)[1])

    responses = {
        "flow": client.get(f"/api/flows/{flow.pk}"),
        "job": client.get(f"/api/jobs/{job.queue_name}/{job.pk}"),
        "jobs": client.get(f"/api/jobs/{job.queue_name}"),
        "401": APIClient().get(f"/api/flows/{flow.pk}"),
        "404": client.get("/api/flows/nope"),
        "token": APIClient().post("/api/auth/token", {"username": "alice", "password": "pw-alice-123"}, format="json"),
    }

    for name, response in responses.items():
        assert response.status_code in (200, 201, 401, 404), name
        assert response["Cache-Control"] == "no-store", name
    assert "Cache-Control" not in APIClient().get("/health")
