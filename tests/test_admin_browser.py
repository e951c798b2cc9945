"""The operators' console in a real browser: headless Chromium (Debian's) driven by Playwright.

Against ``manage.py up`` in service mode with the real Celery workers: an operator logs
in, watches a running flow's slow job turn completed without a reload, and cancels
another flow from the list with the action. Screenshots of the flow list and of the
flow pages (a 2,000-job flow included) go to ``var/test-artifacts/`` (see the README).

Without the browser the test is skipped, saying why; in CI (``CI=true``) it fails
instead: ``scripts/test`` installs Chromium from Debian's packages when it can.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from flows.models import Flow
from flows.services import flow_create
from jobs.models import Job
from jobs.vocabulary import FlowStatus, JobStatus
from tests.conftest import ISOLATED_QUEUE, wait_for, wait_for_flow

ARTIFACTS = Path(__file__).resolve().parent.parent / "var" / "test-artifacts"
CHROMIUM = os.environ.get("FLOWSITE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]
# How long the page may take to show a change (a browser on a busy two-core machine).
UI_TIMEOUT_MS = 20_000
PASSWORD = "pw-console-123"


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -r requirements-dev.txt)"
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium; scripts/test does it as root)"
    return None


@pytest.fixture(scope="module")
def chromium():
    missing = _browser_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"The browser test must run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def operator_page(chromium, live_asgi_server, engine_db, django_user_model, monkeypatch, settings):
    """A browser page logged into the admin as a superuser."""
    # Playwright's sync API runs an event loop in this thread: let the ORM calls of the test through.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    # The server checks passwords with its own hashers, not the test process's fast one.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    user = django_user_model.objects.create_superuser(username="console-op", password=PASSWORD, email="op@example.com")
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(f"{live_asgi_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#fs-dashboard")
    page.operator = user
    yield page
    context.close()


def screenshot(page, name: str, *, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


def job_badge(page, job_id: str):
    return page.locator(f'li.fs-job[data-job-id="{job_id}"] .fs-line .fs-badge').first


def test_an_operator_watches_a_job_complete_live_and_cancels_a_flow_from_the_list(
    operator_page, live_asgi_server, tmp_path
):
    page = operator_page
    owner = page.operator
    release = tmp_path / "release"
    watched = flow_create(owner=owner, spec={
        "flowname": "console-watched", "name": "test-echo", "queueName": "default",
        "children": [
            {"name": "test-wait-for-file", "queueName": "default", "data": {"path": str(release)}},
            {"name": "test-value", "queueName": "default", "data": {"value": 1}},
        ],
    })
    slow = Job.objects.get(flow=watched, name="test-wait-for-file")
    wait_for(lambda: Job.objects.filter(pk=slow.pk, status=JobStatus.ACTIVE).exists(), message="the slow job to start")
    doomed = flow_create(owner=owner, spec={"flowname": "console-doomed", "name": "test-until-cancelled", "queueName": "default"})

    # The flow page: the slow job is active; it turns completed without a reload.
    page.goto(f"{live_asgi_server.url}/admin/flows/flow/{watched.pk}/change/")
    page.evaluate("window.fsSamePage = true")
    assert job_badge(page, slow.pk).text_content() == JobStatus.ACTIVE
    page.wait_for_selector('#fs-live-banner[data-state="live"]')
    release.write_text("go")
    page.wait_for_function(
        "([id, done]) => document.querySelector(`li.fs-job[data-job-id='${id}'] .fs-badge`).textContent === done",
        arg=[slow.pk, JobStatus.COMPLETED],
    )
    page.wait_for_selector(f'[data-flow-status="{watched.pk}"][data-status="{FlowStatus.COMPLETED}"]')
    assert page.evaluate("window.fsSamePage") is True  # no reload happened
    assert "released" in page.locator(f'li.fs-job[data-job-id="{slow.pk}"]').inner_text()
    page.wait_for_timeout(500)  # the progress bar's CSS transition, for the screenshot only
    screenshot(page, "flow-page.png", full_page=True)

    # The flow list: cancel the second flow with the action.
    page.goto(f"{live_asgi_server.url}/admin/flows/flow/")
    page.wait_for_selector('#fs-live-banner[data-state="live"]')
    screenshot(page, "flow-list.png")
    page.check(f'input[name="_selected_action"][value="{doomed.pk}"]')
    page.select_option('select[name="action"]', "cancel_flows")
    page.click('button[name="index"]')
    page.wait_for_selector("ul.messagelist >> text=Cancelled 1 flow.")
    doomed.refresh_from_db()
    assert doomed.status == FlowStatus.CANCELLED
    assert page.locator(f'[data-flow-status="{doomed.pk}"]').text_content() == FlowStatus.CANCELLED

    # The other pages, for the record.
    for name, path in [("dashboard.png", "/admin/"), ("queues.png", "/admin/jobs/queuestate/"),
                       ("job-page.png", f"/admin/jobs/job/{slow.pk}/change/")]:
        page.goto(f"{live_asgi_server.url}{path}")
        screenshot(page, name, full_page=True)


def test_a_2000_job_flow_page_renders_in_the_browser(operator_page, live_asgi_server):
    page = operator_page
    spec = {
        "flowname": "console-2000", "name": "test-sum", "queueName": ISOLATED_QUEUE,
        "children": [{"name": "test-value", "queueName": ISOLATED_QUEUE, "data": {"value": i}} for i in range(2000)],
    }
    flow = flow_create(owner=page.operator, spec=spec)  # nobody consumes the isolated queue: it waits
    page.goto(f"{live_asgi_server.url}/admin/flows/flow/{flow.pk}/change/")
    page.wait_for_selector('#fs-live-banner[data-state="live"]')
    assert page.locator("li.fs-job").count() == 2001
    screenshot(page, "flow-page-2000-jobs.png")
    assert Flow.objects.get(pk=flow.pk).status == FlowStatus.PENDING


def test_the_flow_page_says_it_is_disconnected_and_catches_up_after_reconnecting(
    operator_page, live_asgi_server, tmp_path
):
    """The websocket goes through a Playwright route: the test cuts it and refuses reconnections
    while the slow job completes, so the page can only learn it from its snapshot on reconnect."""
    page = operator_page
    release = tmp_path / "release"
    flow = flow_create(owner=page.operator, spec={
        "flowname": "console-reconnect", "name": "test-wait-for-file", "queueName": "default",
        "data": {"path": str(release)},
    })
    slow = Job.objects.get(pk=flow.root_job_id)
    wait_for(lambda: Job.objects.filter(pk=slow.pk, status=JobStatus.ACTIVE).exists(), message="the slow job to start")

    state = {"refuse": False}
    connections, sent = [], []

    def route(ws):
        if state["refuse"]:
            ws.close(code=1011, reason="the test refuses")
            return
        server = ws.connect_to_server()
        connections.append((ws, server))
        ws.on_message(lambda message: (sent.append(message), server.send(message)))
        server.on_message(ws.send)

    page.route_web_socket(re.compile(r"/ws/flows/"), route)
    page.goto(f"{live_asgi_server.url}/admin/flows/flow/{flow.pk}/change/")
    page.wait_for_selector('#fs-live-banner[data-state="live"]')
    page.evaluate("""() => {
        window.fsSamePage = true;
        window.fsStates = [];
        const banner = document.getElementById("fs-live-banner");
        new MutationObserver(() => fsStates.push(banner.dataset.state)).observe(banner, {attributes: true});
    }""")

    state["refuse"] = True
    ws, server = connections[0]
    ws.close(code=1012, reason="server restart")
    server.close()
    page.wait_for_function("() => fsStates.includes('disconnected')")
    assert "reconnecting" in page.locator("#fs-live-banner").text_content()

    release.write_text("go")

    def completed() -> bool:
        page.wait_for_timeout(50)  # lets Playwright answer the page's reconnection attempts meanwhile
        return Job.objects.filter(pk=slow.pk, status=JobStatus.COMPLETED).exists()

    wait_for(completed, message="the slow job to complete")
    assert job_badge(page, slow.pk).text_content() == JobStatus.ACTIVE  # it missed the change

    state["refuse"] = False
    page.wait_for_function(
        "([id, done]) => document.querySelector(`li.fs-job[data-job-id='${id}'] .fs-badge`).textContent === done",
        arg=[slow.pk, JobStatus.COMPLETED],
    )
    assert page.evaluate("window.fsSamePage") is True
    assert page.evaluate("fsStates.at(-1)") == "live"
    assert len(connections) == 2
    snapshots = [message for message in sent if '"snapshot"' in message]
    assert len(snapshots) == 2  # one per connection


def test_a_gap_in_seq_makes_the_flow_page_take_a_snapshot(operator_page, live_asgi_server, tmp_path):
    """The route drops the event of the child's completion: the page sees the next seq jump and asks for a snapshot."""
    page = operator_page
    child_file, root_file = tmp_path / "child", tmp_path / "root"
    flow = flow_create(owner=page.operator, spec={
        "flowname": "console-gap", "name": "test-wait-for-file", "queueName": "default", "data": {"path": str(root_file)},
        "children": [{"name": "test-wait-for-file", "queueName": "default", "data": {"path": str(child_file)}}],
    })
    child = Job.objects.get(flow=flow, parent__isnull=False)
    wait_for(lambda: Job.objects.filter(pk=child.pk, status=JobStatus.ACTIVE).exists(), message="the child to start")
    sent, dropped = [], []

    def route(ws):
        server = ws.connect_to_server()
        ws.on_message(lambda message: (sent.append(message), server.send(message)))

        def from_server(message):
            if f'"jobStatus": "{JobStatus.COMPLETED}"' in message.replace('":"', '": "') and child.pk in message:
                dropped.append(message)
            else:
                ws.send(message)

        server.on_message(from_server)

    page.route_web_socket(re.compile(r"/ws/flows/"), route)
    page.goto(f"{live_asgi_server.url}/admin/flows/flow/{flow.pk}/change/")
    page.wait_for_selector('#fs-live-banner[data-state="live"]')
    assert job_badge(page, child.pk).text_content() == JobStatus.ACTIVE

    child_file.write_text("go")
    page.wait_for_function(
        "([id, done]) => document.querySelector(`li.fs-job[data-job-id='${id}'] .fs-badge`).textContent === done",
        arg=[child.pk, JobStatus.COMPLETED],
    )
    assert len(dropped) == 1
    assert len([message for message in sent if '"snapshot"' in message]) == 2  # on connect, then on the gap
    root_file.write_text("go")
    assert wait_for_flow(flow).status == FlowStatus.COMPLETED
