"""submit_flow and flow_status, run as a user runs them, against the real workers."""

from __future__ import annotations

import json

import pytest

from flows.models import Flow
from jobs.vocabulary import FlowStatus
from tests.conftest import manage


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user(username="alice")


def test_submit_flow_wait_prints_transitions_and_the_result(command_env, alice):
    result = manage("submit_flow", "examples/video-flow.json", "--owner", "alice", "--wait", env=command_env)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    flow = Flow.objects.get(pk=lines[0])
    assert flow.status == FlowStatus.COMPLETED and flow.owner == alice
    output = result.stdout
    for name in ("download-video", "generate-thumbnail", "watermark-video"):
        assert any(name in line and "active -> completed" in line for line in lines), name
    assert any("watermark-video" in line and "waiting-children -> " in line for line in lines)
    assert f"Flow {flow.pk} completed" in output
    printed = json.loads(output.split("Result: ", 1)[1])
    assert printed == flow.result and printed["watermark"] == "Flowsite"


def test_submit_flow_exits_1_when_the_flow_fails(command_env, alice, tmp_path):
    spec = tmp_path / "failing.json"
    spec.write_text(json.dumps({
        "flowname": "doomed", "name": "test-echo", "queueName": "default",
        "children": [{"name": "test-fail", "queueName": "default", "data": {"message": "no disk"}}],
    }))

    result = manage("submit_flow", str(spec), "--owner", "alice", "--wait", env=command_env)

    assert result.returncode == 1
    assert "failed" in result.stdout and "no disk" in result.stdout


def test_submit_flow_reports_every_validation_error_and_exits_2(command_env, alice, tmp_path):
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"flowname": "bad", "name": "x", "queueName": "nowhere", "children": [{}]}))

    result = manage("submit_flow", str(spec), "--owner", "alice", env=command_env)

    assert result.returncode == 2
    assert "queueName: Unknown queue 'nowhere'" in result.stderr
    assert "children[0].name: This field is required" in result.stderr
    assert not Flow.objects.exists()


def test_submit_flow_explains_invalid_json_and_unknown_owner(command_env, alice, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"flowname": "x",\n "name": }')

    result = manage("submit_flow", str(broken), "--owner", "alice", env=command_env)
    assert result.returncode == 2
    assert "is not valid JSON: Expecting value at line 2, column 10" in result.stderr

    result = manage("submit_flow", "examples/video-flow.json", "--owner", "nobody", env=command_env)
    assert result.returncode == 1
    assert "User 'nobody' does not exist" in result.stderr


def test_flow_status_prints_the_job_tree(command_env, alice):
    submitted = manage("submit_flow", "examples/image-flow.json", "--owner", "alice", "--wait", env=command_env)
    flow_id = submitted.stdout.splitlines()[0]

    result = manage("flow_status", flow_id, env=command_env)

    assert result.returncode == 0, result.stderr
    assert "status:    completed" in result.stdout
    assert "└── publish-gallery [image] completed" in result.stdout
    assert result.stdout.count("resize-image [image] completed") == 3
    as_json = json.loads(manage("flow_status", flow_id, "--json", env=command_env).stdout)
    assert as_json["result"] == {"published": True, "sizes": [320, 1024, 2048]}
    assert as_json["progress"]["completed"] == 4
    assert manage("flow_status", "nope", env=command_env).returncode == 1


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _web_processes(pid: int) -> list[int]:
    """The server's child processes that serve requests (not multiprocessing's resource tracker)."""
    from pathlib import Path

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


def test_up_in_service_mode_serves_the_api_from_several_processes_and_creates_no_user(command_env, alice, tmp_path):
    import http.client
    import subprocess
    import sys

    from accounts.services import api_token_create
    from tests.conftest import ROOT, wait_for

    _, token = api_token_create(user=alice)
    port = _free_port()
    env = {**command_env, "FLOWSITE_DATA_DIR": str(tmp_path)}
    server = subprocess.Popen(
        [sys.executable, "manage.py", "up", "--no-worker", "--workers", "2", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        def get(path: str):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
                response = conn.getresponse()
                return response.status, response.read()
            except OSError:
                return None

        wait_for(lambda: get("/health"), timeout=60, message="the server to answer")
        status, body = get("/api/flows")
        assert status == 200 and json.loads(body)["count"] == 0
        wait_for(lambda: len(_web_processes(server.pid)) == 2, timeout=30, message="two web processes")
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "service (PostgreSQL/Redis), 2 web processes" in output
    # No superuser is made up in service mode, and no password lands in the logs or on disk.
    assert not type(alice).objects.filter(is_superuser=True).exists()
    assert "password" not in output.lower()
    assert "manage.py createsuperuser" in output
    assert not (tmp_path / "admin-password").exists()


def test_up_refuses_several_web_processes_in_embedded_mode(tmp_path):
    import os

    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    result = manage("up", "--workers", "2", env={**env, "FLOWSITE_DATA_DIR": str(tmp_path)})

    assert result.returncode == 1
    assert "Embedded mode serves from one process" in result.stderr


def _embedded_env(tmp_path) -> dict[str, str]:
    import os

    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    return {**env, "FLOWSITE_DATA_DIR": str(tmp_path)}


def _start_and_stop_up(env: dict[str, str]) -> str:
    """Run ``manage.py up`` until it serves, stop it, and return everything it printed."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    server = subprocess.Popen(
        [sys.executable, "manage.py", "up", "--port", str(_free_port())],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    try:
        for line in server.stdout:
            lines.append(line)
            if line.startswith("Flowsite ("):
                break
    finally:
        server.terminate()
        lines.append(server.communicate(timeout=30)[0])
    output = "".join(lines)
    assert "Flowsite (embedded" in output, output
    return output


def test_up_in_embedded_mode_prints_the_admin_password_once_at_creation(tmp_path):
    import re
    import stat

    env = _embedded_env(tmp_path)

    first = _start_and_stop_up(env)
    match = re.search(r"Created admin user 'admin' with password '([^']+)'", first)
    assert match, first
    password = match.group(1)
    password_file = tmp_path / "admin-password"
    assert password_file.read_text().strip() == password  # for a local user who missed the output
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600

    second = _start_and_stop_up(env)
    assert password not in second and "Created admin user" not in second
    assert "admin-password" in second  # says where to find it

    # Once the admin's password is changed, the file no longer tells the truth: it goes.
    changed = manage(
        "shell", "-c",
        "from django.contrib.auth.models import User; u = User.objects.get(username='admin'); "
        "u.set_password('a-new-password-42'); u.save()",
        env=env,
    )
    assert changed.returncode == 0, changed.stderr
    third = _start_and_stop_up(env)
    assert not password_file.exists()
    assert password not in third and "a-new-password-42" not in third
