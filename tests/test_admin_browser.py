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
import shutil
from pathlib import Path

import pytest

from flows.models import Flow
from flows.services import flow_create
from jobs.models import Job
from jobs.vocabulary import FlowStatus, JobStatus
from tests.conftest import ISOLATED_QUEUE, wait_for

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
