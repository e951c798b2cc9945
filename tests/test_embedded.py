"""Embedded mode end to end: the README's run command in a subprocess (SQLite, on-disk broker).

The server's own in-process worker runs the flows: ``submit_flow --no-worker``
only creates them and follows them through the shared SQLite database.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import urllib.parse
import urllib.request

import pytest

from jobs.vocabulary import FlowStatus, JobStatus
from tests.conftest import ROOT, manage, wait_for

SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """``scripts/run`` serving on a free port, with its own data directory."""
    data_dir = tmp_path_factory.mktemp("embedded")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    env.update(FLOWSITE_DATA_DIR=str(data_dir), FLOWSITE_EMBEDDED_CONCURRENCY="4")
    log = open(data_dir / "server.log", "w+")
    server = subprocess.Popen(
        ["scripts/run", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, timeout=120, interval=0.3, message="the embedded server")
        log.seek(0)
        yield {"env": env, "url": f"http://127.0.0.1:{port}", "output": log.read(), "data_dir": data_dir}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_the_run_command_prints_admin_credentials_that_work(embedded):
    match = re.search(r"Created admin user 'admin' with password '([^']+)'", embedded["output"])
    assert match, embedded["output"]
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(embedded["url"] + "/admin/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    body = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": token, "username": "admin", "password": match.group(1), "next": "/admin/"}
    ).encode()
    response = opener.open(urllib.request.Request(embedded["url"] + "/admin/login/", data=body))

    assert response.url == embedded["url"] + "/admin/"
    assert "<title>Dashboard | Flowsite console</title>" in response.read().decode()  # the admin index, logged in
    assert opener.open(embedded["url"] + "/static/admin/css/base.css").status == 200


def test_submit_flow_wait_completes_the_video_flow_on_the_servers_worker(embedded):
    result = manage("submit_flow", "examples/video-flow.json", "--wait", "--no-worker", "--timeout", "60",
                    env=embedded["env"])

    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed" in result.stdout
    assert json.loads(result.stdout.split("Result: ", 1)[1])["outputPath"].endswith("cats-watermarked.mp4")


def test_500_siblings_on_sqlite_leave_exact_counts(embedded, tmp_path):
    spec = tmp_path / "wide.json"
    spec.write_text(json.dumps({
        "flowname": "wide", "name": "test-sum", "queueName": "default",
        "children": [{"name": "test-value", "queueName": "default", "data": {"value": 1}} for _ in range(500)],
    }))
    env = {**embedded["env"], "FLOWSITE_HANDLER_MODULES": "tests.handlers"}

    result = manage("submit_flow", str(spec), "--wait", "--no-worker", "--timeout", "150", env=env, timeout=200)

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    flow_id = result.stdout.splitlines()[0]
    status = json.loads(manage("flow_status", flow_id, "--json", env=env).stdout)
    assert status["result"] == 500
    assert status["progress"]["completed"] == 501 and status["progress"]["total"] == 501
    root = status["jobs"][0]
    assert root["attempts_made"] == 1 and len(root["children"]) == 500
    assert {child["status"] for child in root["children"]} == {"completed"}


def test_a_failing_flow_fails_at_once_in_embedded_mode_too(embedded, tmp_path):
    spec = tmp_path / "failing.json"
    spec.write_text(json.dumps({
        "flowname": "doomed", "name": "test-echo", "queueName": "default",
        "children": [
            {"name": "test-fail", "queueName": "image", "opts": {"attempts": 2, "backoff": 100}},
            # Due in 10 minutes: the flow must not wait for it.
            {"name": "test-value", "queueName": "video", "opts": {"delay": 600_000}},
        ],
    }))
    env = {**embedded["env"], "FLOWSITE_HANDLER_MODULES": "tests.handlers"}

    result = manage("submit_flow", str(spec), "--wait", "--no-worker", "--timeout", "60", env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    status = json.loads(manage("flow_status", result.stdout.splitlines()[0], "--json", env=env).stdout)
    root = status["jobs"][0]
    failing, waiting = root["children"]
    assert status["status"] == FlowStatus.FAILED
    assert (failing["name"], failing["status"], failing["attempts_made"]) == ("test-fail", JobStatus.FAILED, 2)
    # Failed as soon as its child failed for good: the parent never ran, the sibling has not run yet.
    assert (waiting["name"], waiting["status"], waiting["attempts_made"]) == ("test-value", JobStatus.DELAYED, 0)
    assert (root["status"], root["attempts_made"]) == (JobStatus.FAILED, 0)
    assert status["error"] == f"Job test-fail ({failing['id']}) failed: ValueError: boom"
    assert f"Error: {status['error']}" in result.stdout.splitlines()
