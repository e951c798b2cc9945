"""Test set-up: real PostgreSQL, real Redis and real Celery worker processes.

The suite runs in service mode; its environment defaults are in pytest.ini
(pytest-env), so they apply before Django reads its settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The session's workers consume every queue but ``isolated``, which tests give workers of their own.
ISOLATED_QUEUE = "isolated"
TEST_QUEUES = ",".join(
    name for name in os.environ.get("FLOWSITE_QUEUES", "default,video,image,alt").split(",") if name != ISOLATED_QUEUE
)
WORKER_COUNT = 2


def wait_for(predicate, *, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"Timed out after {timeout}s waiting for {message}")


def wait_for_flow(flow, *, timeout: float = 60.0):
    """Wait until the flow reaches a final status; return it refreshed."""
    from jobs.vocabulary import FINAL_FLOW_STATUSES

    def done():
        flow.refresh_from_db()
        return flow.status in FINAL_FLOW_STATUSES

    wait_for(done, timeout=timeout, message=f"flow {flow.pk} to finish")
    return flow


def _queued_or_unacknowledged(client, job_ids: set[str]) -> set[str]:
    """The ids with a message still in a Redis queue, or delivered but not acknowledged yet."""
    messages = [json.loads(entry)[0] for entry in client.hvals("unacked")]
    for key in client.scan_iter(count=1000):
        if client.type(key) == b"list":
            messages.extend(json.loads(item) for item in client.lrange(key, 0, -1))
    return {message["headers"]["id"] for message in messages} & job_ids


def _held_by_workers(job_ids: set[str]) -> set[str] | None:
    """The ids a worker holds (reserved, waiting for their ETA, running); None if a worker did not answer."""
    from flowsite.celery import app

    inspect = app.control.inspect(timeout=2.0, limit=WORKER_COUNT)
    held = set()
    for method in (inspect.reserved, inspect.scheduled, inspect.active):
        replies = method() or {}
        if len(replies) < WORKER_COUNT:
            return None
        for tasks in replies.values():
            held.update(task.get("id") or task["request"]["id"] for task in tasks)
    return held & job_ids


def wait_for_deliveries(job_ids, *, timeout: float = 15.0) -> None:
    """Wait until every message of these jobs has been consumed, run (or revoked) and acknowledged.

    Jobs are ``acks_late``: a message leaves Redis's ``unacked`` set only after its task ran.
    Redis is read before the workers are asked: a message between the queue and the
    ``unacked`` set is inside a worker's delivery callback, so the worker, answering after
    it, reports it as held.
    """
    from flowsite.celery import app

    pending = set(job_ids)
    with app.connection_for_write() as conn:
        client = conn.default_channel.client

        def delivered() -> bool:
            if _queued_or_unacknowledged(client, pending):
                return False
            return _held_by_workers(pending) == set()

        wait_for(delivered, timeout=timeout, interval=0.1, message=f"the deliveries of {sorted(pending)}")


def worker_log() -> str:
    """Everything the test workers logged so far (they log at INFO)."""
    from django.conf import settings

    return "".join((settings.DATA_DIR / f"test-worker{index}.log").read_text() for index in range(WORKER_COUNT))


def service_env(database_name: str) -> dict[str, str]:
    """The environment of a process that must use the test database (workers, commands)."""
    url = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/" + database_name
    return {**os.environ, "DATABASE_URL": url}


def manage(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``manage.py`` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def command_env(engine_db):
    from django.db import connection

    return service_env(connection.settings_dict["NAME"])


@pytest.fixture(autouse=True, scope="session")
def fast_password_hashing():
    """Users are created by the hundred: hash their passwords cheaply (the test process only)."""
    from django.conf import settings

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def celery_workers(django_db_setup, django_db_blocker):
    """Two real ``celery worker`` processes (prefork, 2 children each) on the test database.

    They log at INFO into ``FLOWSITE_DATA_DIR/test-worker<n>.log`` (``worker_log()``): the
    engine logs there, for instance, each delivery it ignores.
    """
    from django.conf import settings
    from django.db import connection

    from flowsite.celery import app

    env = service_env(connection.settings_dict["NAME"])
    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()  # no stale messages from an earlier run
    processes = []
    logs = []
    for index in range(WORKER_COUNT):
        log = open(settings.DATA_DIR / f"test-worker{index}.log", "w")
        logs.append(log)
        processes.append(
            subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "flowsite", "worker",
                    "-Q", TEST_QUEUES, "-c", "2", "-P", "prefork", "-l", "info",
                    "-n", f"test{index}@%h", "--without-mingle", "--without-gossip",
                ],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        )
    names = {f"test{index}@" for index in range(WORKER_COUNT)}

    def all_up():
        replies = app.control.ping(timeout=0.5) or []
        up = {next(iter(reply)).split("@")[0] + "@" for reply in replies}
        return names <= up

    wait_for(all_up, timeout=60, interval=0.2, message="the Celery workers to start")
    yield processes
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
    for log in logs:
        log.close()


@pytest.fixture
def engine_db(transactional_db, celery_workers):
    """Committed data (the workers are other processes) and running workers."""
    return celery_workers


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="pw-alice-123")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="mallory", password="pw-mallory-123")


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user(username="operator", password="pw-operator-123", is_staff=True)


@pytest.fixture
def alice(transactional_db, user):
    """``user`` with a real API token in ``.token`` (committed: a server in a subprocess sees it)."""
    from accounts.services import api_token_create

    user.token = api_token_create(user=user)[1]
    return user


@pytest.fixture
def mallory(transactional_db, other_user):
    """``other_user`` with a real API token in ``.token``."""
    from accounts.services import api_token_create

    other_user.token = api_token_create(user=other_user)[1]
    return other_user


@pytest.fixture
def operator(transactional_db, staff_user):
    """``staff_user`` with a real API token in ``.token``."""
    from accounts.services import api_token_create

    staff_user.token = api_token_create(user=staff_user)[1]
    return staff_user


def token_client(user):
    """An API client authenticated with a real API token of ``user`` (or anonymous)."""
    from rest_framework.test import APIClient

    from accounts.services import api_token_create

    client = APIClient()
    if user is not None:
        _, token = api_token_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def api(user):
    return token_client(user)


@pytest.fixture(scope="session")
def live_asgi_server(django_db_setup, django_db_blocker, tmp_path_factory):
    """``manage.py up`` serving the test database at a free port (tests.live.LiveServer)."""
    from django.db import connection

    from tests.live import run_server

    with run_server(service_env(connection.settings_dict["NAME"]), tmp_path_factory.mktemp("live-server")) as server:
        yield server


@pytest.fixture
def viewer(operator):
    """``operator`` (staff, with a token) who may also view every flow and job (``accounts.permissions``)."""
    from tests.factories import grant

    return grant(operator, "flows.view_flow", "jobs.view_job")


@pytest.fixture
def receiver():
    """A local HTTP server that records the webhook deliveries it gets (``tests.webhook_receiver``)."""
    from tests.webhook_receiver import start_receiver, stop_receiver

    server = start_receiver()
    yield server
    stop_receiver(server)
