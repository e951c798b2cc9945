"""The operators' console in the Django admin, through the test client (the browser test is test_admin_browser.py).

Permission matrix, read-only engine fields, every flow action in every flow status,
jobs and queues pages, the dashboard's figures, and constant query counts. The flows
are made by ``flows.services.flow_create``; their statuses are set directly where a
test needs a flow in a given state (the engine's own tests cover how flows get there).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from flows.models import Flow
from jobs.models import Job, JobLog, QueueState
from jobs.vocabulary import FlowStatus, JobStatus
from tests.conftest import token_client
from tests.factories import make_flow

pytestmark = pytest.mark.django_db

ARTIFACTS = Path(__file__).resolve().parent.parent / "var" / "test-artifacts"


def staff(django_user_model, username: str, *perms: str):
    """A staff user with these permissions (``app.codename``)."""
    user = django_user_model.objects.create_user(username=username, password="pw", is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser(username="root", password="pw", email="root@example.com")


@pytest.fixture
def root(client, admin_user):
    client.force_login(admin_user)
    return client


def set_flow_status(flow: Flow, flow_status: str, job_status: str, *, error_type: str = "") -> Flow:
    """Put a flow and all its jobs in a status, as the engine would have left them."""
    Job.objects.filter(flow=flow).update(status=job_status, error_type=error_type, error="boom" if error_type else "")
    Flow.objects.filter(pk=flow.pk).update(status=flow_status)
    flow.refresh_from_db()
    return flow


def failed_flow(owner) -> Flow:
    """A flow whose first leaf failed by itself and whose root failed because of it."""
    flow = make_flow(owner, children=2)
    leaf = Job.objects.filter(flow=flow, parent__isnull=False).order_by("position").first()
    Job.objects.filter(pk=leaf.pk).update(status=JobStatus.FAILED, error_type="ValueError", error="boom")
    Job.objects.filter(pk=flow.root_job_id).update(status=JobStatus.FAILED, error_type="ChildFailed", error="child")
    Flow.objects.filter(pk=flow.pk).update(status=FlowStatus.FAILED)
    flow.refresh_from_db()
    return flow


def flow_in(owner, status: str) -> Flow:
    if status == FlowStatus.FAILED:
        return failed_flow(owner)
    flow = make_flow(owner)
    job_status = {
        FlowStatus.PENDING: JobStatus.WAITING, FlowStatus.RUNNING: JobStatus.ACTIVE,
        FlowStatus.COMPLETED: JobStatus.COMPLETED, FlowStatus.CANCELLED: JobStatus.CANCELLED,
    }[status]
    if status == FlowStatus.PENDING:
        return flow
    return set_flow_status(flow, status, job_status)


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]] if response.context else []


# PERMISSIONS
# ------------------------------------------------------------------------------


def console_urls(flow: Flow) -> dict[str, tuple[str, str]]:
    """Page -> (url, the view permission it needs)."""
    job = Job.objects.get(pk=flow.root_job_id)
    return {
        "flow list": (reverse("admin:flows_flow_changelist"), "flows.view_flow"),
        "flow page": (reverse("admin:flows_flow_change", args=[flow.pk]), "flows.view_flow"),
        "job list": (reverse("admin:jobs_job_changelist"), "jobs.view_job"),
        "job page": (reverse("admin:jobs_job_change", args=[job.pk]), "jobs.view_job"),
        "queues": (reverse("admin:jobs_queuestate_changelist"), "jobs.view_queuestate"),
    }


@pytest.mark.parametrize("page", ["flow list", "flow page", "job list", "job page", "queues"])
def test_each_page_needs_staff_and_its_model_permission(client, django_user_model, user, page):
    flow = make_flow(user)
    url, perm = console_urls(flow)[page]
    login = reverse("admin:login")

    anonymous = client.get(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith(login)

    client.force_login(user)  # not staff
    refused = client.get(url)
    assert refused.status_code == 302 and refused["Location"].startswith(login)

    client.force_login(staff(django_user_model, "no-perms"))
    assert client.get(url).status_code == 403

    client.force_login(staff(django_user_model, "viewer", perm))
    assert client.get(url).status_code == 200


def test_a_viewer_sees_no_actions_and_cannot_post_them(client, django_user_model, user):
    flow = flow_in(user, FlowStatus.RUNNING)
    client.force_login(staff(django_user_model, "viewer", "flows.view_flow"))

    page = client.get(reverse("admin:flows_flow_changelist"))
    assert page.status_code == 200
    assert "cancel_flows" not in page.content.decode()
    assert client.post(reverse("admin:flows_flow_cancel", args=[flow.pk])).status_code == 403
    refused = client.post(
        reverse("admin:flows_flow_changelist"), {"action": "cancel_flows", "_selected_action": [flow.pk]}
    )
    assert refused.status_code == 200  # Django answers "No action selected" for an action not offered
    flow.refresh_from_db()
    assert flow.status == FlowStatus.RUNNING


def test_staff_with_change_permission_can_cancel_from_the_flow_page(client, django_user_model, user):
    flow = flow_in(user, FlowStatus.RUNNING)
    client.force_login(staff(django_user_model, "operator", "flows.view_flow", "flows.change_flow"))
    response = client.post(reverse("admin:flows_flow_cancel", args=[flow.pk]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("admin:flows_flow_change", args=[flow.pk])
    assert messages_of(response) == ["Cancelled 1 flow."]
    flow.refresh_from_db()
    assert flow.status == FlowStatus.CANCELLED
    assert set(Job.objects.filter(flow=flow).values_list("status", flat=True)) == {JobStatus.CANCELLED}


def test_the_flow_page_actions_answer_only_post(root, user):
    flow = flow_in(user, FlowStatus.RUNNING)
    assert root.get(reverse("admin:flows_flow_cancel", args=[flow.pk])).status_code == 405
    assert root.get(reverse("admin:flows_flow_retry", args=[flow.pk])).status_code == 405


def test_the_dashboard_needs_the_view_permissions(client, django_user_model, user):
    make_flow(user)
    client.force_login(staff(django_user_model, "no-perms"))
    page = client.get(reverse("admin:index"))
    assert page.status_code == 200 and 'id="fs-dashboard"' not in page.content.decode()

    client.force_login(staff(django_user_model, "flow-viewer", "flows.view_flow"))
    page = client.get(reverse("admin:index")).content.decode()
    assert 'id="fs-flow-counts"' in page and 'id="fs-queue-counts"' not in page


# READ-ONLY ENGINE FIELDS
# ------------------------------------------------------------------------------


def test_posting_a_changed_flow_status_changes_nothing(root, user):
    flow = flow_in(user, FlowStatus.RUNNING)
    url = reverse("admin:flows_flow_change", args=[flow.pk])
    page = root.get(url).content.decode()
    assert 'name="status"' not in page and 'name="_save"' not in page

    response = root.post(url, {"status": FlowStatus.COMPLETED, "result": "42", "error": "x", "flowname": "renamed"})
    assert response.status_code == 302
    flow.refresh_from_db()
    assert (flow.status, flow.result, flow.error, flow.flowname) == (FlowStatus.RUNNING, None, "", "api-flow")


def test_posting_changed_job_fields_changes_nothing(root, user):
    flow = flow_in(user, FlowStatus.RUNNING)
    job = Job.objects.filter(flow=flow, parent__isnull=False).first()
    url = reverse("admin:jobs_job_change", args=[job.pk])
    form = {
        "status": JobStatus.COMPLETED, "attempts_made": "5", "pending_children": "0", "result": "1", "error": "x",
        "parent": "", "flow": "", "started_at_0": "2020-01-01", "logs-TOTAL_FORMS": "0", "logs-INITIAL_FORMS": "0",
    }
    assert root.post(url, form).status_code == 302
    after = Job.objects.get(pk=job.pk)
    assert (after.status, after.attempts_made, after.result, after.error, after.parent_id, after.flow_id) == (
        JobStatus.ACTIVE, 0, None, "", job.parent_id, flow.pk,
    )
    assert after.started_at == job.started_at


def test_flows_and_jobs_cannot_be_added_in_the_admin(root):
    assert root.get(reverse("admin:flows_flow_add")).status_code == 403
    assert root.get(reverse("admin:jobs_job_add")).status_code == 403


# ACTIONS ON FLOWS IN EACH STATUS
# ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "changes"),
    [
        (FlowStatus.PENDING, True), (FlowStatus.RUNNING, True), (FlowStatus.COMPLETED, False),
        (FlowStatus.FAILED, False), (FlowStatus.CANCELLED, False),
    ],
)
def test_cancel_action_in_each_status(root, user, status, changes):
    flow = flow_in(user, status)
    other = flow_in(user, FlowStatus.RUNNING)
    response = root.post(
        reverse("admin:flows_flow_changelist"),
        {"action": "cancel_flows", "_selected_action": [flow.pk, other.pk]}, follow=True,
    )
    flow.refresh_from_db()
    other.refresh_from_db()
    assert other.status == FlowStatus.CANCELLED
    if changes:
        assert flow.status == FlowStatus.CANCELLED
        assert messages_of(response) == ["Cancelled 2 flows."]
    else:
        assert flow.status == status
        assert messages_of(response) == [
            "Cancelled 1 flow.", f"Could not cancel 1 flow: {flow.flowname} ({flow.pk}): {status}.",
        ]


@pytest.mark.parametrize(
    "status", [FlowStatus.PENDING, FlowStatus.RUNNING, FlowStatus.COMPLETED, FlowStatus.FAILED, FlowStatus.CANCELLED]
)
def test_retry_action_in_each_status(root, user, status):
    flow = flow_in(user, status)
    response = root.post(
        reverse("admin:flows_flow_changelist"), {"action": "retry_flows", "_selected_action": [flow.pk]}, follow=True,
    )
    flow.refresh_from_db()
    if status == FlowStatus.FAILED:
        assert messages_of(response) == ["Retried 1 flow."]
        assert flow.status == FlowStatus.RUNNING
        statuses = dict(Job.objects.filter(flow=flow).values_list("id", "status"))
        assert statuses[flow.root_job_id] == JobStatus.WAITING_CHILDREN
        # The failed leaf runs again; the completed-or-waiting sibling keeps its state.
        assert sorted(statuses.values()) == sorted([JobStatus.WAITING_CHILDREN, JobStatus.WAITING, JobStatus.WAITING])
    else:
        assert flow.status == status
        assert messages_of(response) == [f"Could not retry 1 flow: {flow.flowname} ({flow.pk}): {status}."]


def test_retry_keeps_completed_results(root, user):
    flow = failed_flow(user)
    done = Job.objects.filter(flow=flow, status=JobStatus.WAITING).get()
    Job.objects.filter(pk=done.pk).update(status=JobStatus.COMPLETED, result=1)
    root.post(reverse("admin:flows_flow_retry", args=[flow.pk]))
    done.refresh_from_db()
    assert (done.status, done.result) == (JobStatus.COMPLETED, 1)
    root_job = Job.objects.get(pk=flow.root_job_id)
    assert (root_job.status, root_job.pending_children) == (JobStatus.WAITING_CHILDREN, 1)


@pytest.mark.parametrize(
    "status", [FlowStatus.PENDING, FlowStatus.RUNNING, FlowStatus.COMPLETED, FlowStatus.FAILED, FlowStatus.CANCELLED]
)
def test_delete_action_asks_for_confirmation_then_deletes_in_each_status(root, user, status):
    flow = flow_in(user, status)
    JobLog.objects.create(job_id=flow.root_job_id, message="hello")
    url = reverse("admin:flows_flow_changelist")
    confirm = root.post(url, {"action": "delete_selected", "_selected_action": [flow.pk]})
    page = confirm.content.decode()
    assert confirm.status_code == 200 and "Are you sure" in page
    assert "its 3 jobs and their log lines" in page
    assert Flow.objects.filter(pk=flow.pk).exists()

    done = root.post(url, {"action": "delete_selected", "_selected_action": [flow.pk], "post": "yes"}, follow=True)
    assert messages_of(done) == ["Successfully deleted 1 flow."]
    assert not Flow.objects.filter(pk=flow.pk).exists()
    assert not Job.objects.filter(flow_id=flow.pk).exists()
    assert not JobLog.objects.filter(job_id=flow.root_job_id).exists()


def test_delete_from_the_flow_page(root, user):
    flow = flow_in(user, FlowStatus.RUNNING)
    url = reverse("admin:flows_flow_delete", args=[flow.pk])
    assert "Are you sure" in root.get(url).content.decode()
    root.post(url, {"post": "yes"})
    assert not Flow.objects.filter(pk=flow.pk).exists()


# PAGES
# ------------------------------------------------------------------------------


def test_flow_list_shows_badges_progress_and_finds_a_flow_by_job_id(root, user):
    flow = flow_in(user, FlowStatus.RUNNING)
    Job.objects.filter(flow=flow, parent__isnull=False).update(status=JobStatus.COMPLETED)
    other = make_flow(user, flowname="other-flow")
    page = root.get(reverse("admin:flows_flow_changelist")).content.decode()
    assert f'data-flow-status="{flow.pk}"' in page
    assert re.search(rf'data-flow-progress="{flow.pk}".*?<span class="fs-bar-text">2/3</span>', page)
    assert 'id="fs-console-config"' in page and "console/console.js" in page

    leaf = Job.objects.filter(flow=other, parent__isnull=False).first()
    found = root.get(reverse("admin:flows_flow_changelist"), {"q": leaf.pk}).context["cl"].result_list
    assert [f.pk for f in found] == [other.pk]
    by_id = root.get(reverse("admin:flows_flow_changelist"), {"q": flow.pk}).context["cl"].result_list
    assert [f.pk for f in by_id] == [flow.pk]


def test_flow_list_filters_by_status_queue_and_owner(root, user, other_user):
    running = flow_in(user, FlowStatus.RUNNING)
    video = make_flow(other_user, queue="video")
    url = reverse("admin:flows_flow_changelist")

    def listed(**params):
        return {flow.pk for flow in root.get(url, params).context["cl"].result_list}

    assert listed(status__exact=FlowStatus.RUNNING) == {running.pk}
    assert listed(queue="video") == {video.pk}
    assert listed(owner__id__exact=other_user.pk) == {video.pk}


def test_flow_list_orders_by_duration(root, user):
    from datetime import timedelta

    from django.utils import timezone

    short, long = make_flow(user, flowname="short"), make_flow(user, flowname="long")
    now = timezone.now()
    Flow.objects.filter(pk=short.pk).update(started_at=now - timedelta(seconds=5), completed_at=now)
    Flow.objects.filter(pk=long.pk).update(started_at=now - timedelta(hours=1), completed_at=now)
    index = FlowAdminColumns.index("duration")
    listed = root.get(reverse("admin:flows_flow_changelist"), {"o": f"-{index}"}).context["cl"].result_list
    assert [flow.flowname for flow in listed][:2] == ["long", "short"]


FlowAdminColumns = ["action_checkbox", "flowname", "flow_id", "status_badge", "progress_bar", "queue_name", "owner",
                    "created_at", "started_at", "duration"]


def test_flow_page_draws_the_job_tree_with_data_results_errors_and_logs(root, user):
    flow = failed_flow(user)
    leaf = Job.objects.get(flow=flow, status=JobStatus.FAILED, error_type="ValueError")
    JobLog.objects.create(job=leaf, message="first <line>")
    Job.objects.filter(flow=flow, status=JobStatus.WAITING).update(status=JobStatus.COMPLETED, result={"value": 1})
    page = root.get(reverse("admin:flows_flow_change", args=[flow.pk])).content.decode()

    tree = page[page.index('id="fs-job-tree"'):]
    root_at, leaf_at = tree.index(f'data-job-id="{flow.root_job_id}"'), tree.index(f'data-job-id="{leaf.pk}"')
    assert root_at < leaf_at  # the parent above its children
    assert tree.count('class="fs-job"') == 3
    assert "first &lt;line&gt;" in tree  # log lines, escaped
    assert 'error (ValueError)' in tree and "boom" in tree
    assert '<b>result</b> <code>{&quot;value&quot;:1}</code>' in tree
    assert "attempts <span class=\"fs-attempts\">0/1</span>" in tree
    assert f'"wsPath": "/ws/flows/{flow.pk}/"' in page


def test_long_json_is_folded(root, user):
    flow = make_flow(user)
    Job.objects.filter(pk=flow.root_job_id).update(result={"text": "x" * 500})
    page = root.get(reverse("admin:flows_flow_change", args=[flow.pk])).content.decode()
    assert re.search(r'<details class="fs-kv fs-result"><summary><b>result</b>.*\(\d+ characters\)</summary><pre>\{\n  &quot;text&quot;', page)


def test_job_list_filters_by_queue_status_flow_and_handler(root, user):
    flow = make_flow(user)
    video = make_flow(user, queue="video")
    Job.objects.filter(pk=flow.root_job_id).update(status=JobStatus.FAILED)
    url = reverse("admin:jobs_job_changelist")

    def listed(**params):
        response = root.get(url, params)
        assert response.status_code == 200, response.content[:500]
        return {job.pk for job in response.context["cl"].result_list}

    assert listed(queue="video") == set(Job.objects.filter(flow=video).values_list("pk", flat=True))
    assert listed(status__exact=JobStatus.FAILED) == {flow.root_job_id}
    assert listed(flow=flow.pk) == set(Job.objects.filter(flow=flow).values_list("pk", flat=True))
    assert listed(handler="test-sum") == {flow.root_job_id, video.root_job_id}
    assert listed(handler="test-value", flow=video.pk) == set(
        Job.objects.filter(flow=video, name="test-value").values_list("pk", flat=True)
    )


def test_job_actions_cancel_and_retry(root, user):
    from jobs.services import job_submit

    standalone = job_submit(name="test-value", queue_name="default", owner=user)
    Job.objects.filter(pk=standalone.pk).update(status=JobStatus.FAILED, error="boom", error_type="ValueError")
    flow = flow_in(user, FlowStatus.RUNNING)
    active = Job.objects.filter(flow=flow, parent__isnull=False).first()
    url = reverse("admin:jobs_job_changelist")

    retried = root.post(url, {"action": "retry_jobs", "_selected_action": [standalone.pk, active.pk]}, follow=True)
    assert messages_of(retried) == ["Retried 1 job.", f"Could not retry 1 job: {active.pk}: {JobStatus.ACTIVE}."]
    assert Job.objects.get(pk=standalone.pk).status == JobStatus.WAITING

    cancelled = root.post(url, {"action": "cancel_jobs", "_selected_action": [active.pk]}, follow=True)
    assert messages_of(cancelled) == ["Cancelled 1 job."]
    assert Job.objects.get(pk=active.pk).status == JobStatus.CANCELLED
    again = root.post(url, {"action": "cancel_jobs", "_selected_action": [active.pk]}, follow=True)
    assert messages_of(again) == [f"Could not cancel 1 job: {active.pk}: {JobStatus.CANCELLED}."]


def test_a_standalone_job_can_be_deleted_a_job_of_a_tree_cannot(root, user):
    from jobs.services import job_submit

    standalone = job_submit(name="test-value", queue_name="default", owner=user)
    flow = make_flow(user)
    leaf = Job.objects.filter(flow=flow, parent__isnull=False).first()
    url = reverse("admin:jobs_job_changelist")

    refused = root.post(url, {"action": "delete_selected", "_selected_action": [leaf.pk], "post": "yes"})
    assert "is part of flow" in refused.content.decode()
    assert Job.objects.filter(pk=leaf.pk).exists()
    assert root.get(reverse("admin:jobs_job_delete", args=[leaf.pk])).status_code == 403

    done = root.post(url, {"action": "delete_selected", "_selected_action": [standalone.pk], "post": "yes"}, follow=True)
    assert messages_of(done) == ["Successfully deleted 1 job."]
    assert not Job.objects.filter(pk=standalone.pk).exists()


def test_queue_page_lists_every_queue_and_pauses_and_resumes(root, user, settings):
    flow = make_flow(user, queue="video")
    page = root.get(reverse("admin:jobs_queuestate_changelist")).content.decode()
    for name in settings.FLOWSITE_QUEUES:
        assert f'data-queue="{name}"' in page

    response = root.post(reverse("admin:jobs_queuestate_pause", args=["video"]), follow=True)
    assert messages_of(response) == ["Paused queue video: 2 jobs paused."]
    assert QueueState.objects.get(name="video").paused
    assert Job.objects.filter(flow=flow, status=JobStatus.PAUSED).count() == 2
    assert "<b>paused</b>" in response.content.decode()

    response = root.post(reverse("admin:jobs_queuestate_resume", args=["video"]), follow=True)
    assert messages_of(response) == ["Resumed queue video: 2 jobs back to waiting."]
    assert not QueueState.objects.get(name="video").paused
    assert root.post(reverse("admin:jobs_queuestate_pause", args=["nope"])).status_code == 404


def test_a_queue_viewer_cannot_pause(client, django_user_model):
    client.force_login(staff(django_user_model, "viewer", "jobs.view_queuestate"))
    page = client.get(reverse("admin:jobs_queuestate_changelist")).content.decode()
    assert "Pause</button>" not in page
    assert client.post(reverse("admin:jobs_queuestate_pause", args=["video"])).status_code == 403
    assert not QueueState.objects.filter(name="video", paused=True).exists()


def test_the_dashboard_shows_the_api_dashboards_figures(root, admin_user, user):
    flow_in(user, FlowStatus.RUNNING)
    failed_flow(user)
    make_flow(user, queue="image")
    api = token_client(admin_user).get("/api/dashboard").json()
    context = root.get(reverse("admin:index")).context

    assert [count for _, count in context["flow_counts"]] == list(api["flows"].values())
    assert {row["name"]: row["counts"] for row in context["queue_rows"]} == {
        name: list(counts.values()) for name, counts in api["queues"].items()
    }
    assert [job["jobId"] for job in context["latest_failures"]] == [job["jobId"] for job in api["latestFailures"]]
    assert context["flows_last_24h"] == sum(slot["count"] for slot in api["flowsPerHour"]) == 3
    assert len(api["flowsPerHour"]) == 24 and api["flowsPerHour"][-1]["count"] == 3
    assert str(context["flows_per_hour"]).count("<rect") == 24


# QUERY COUNTS
# ------------------------------------------------------------------------------


def queries_of(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_list_pages_make_a_constant_number_of_queries(root, user, django_assert_max_num_queries):
    from jobs.services import job_submit

    urls = [
        reverse("admin:flows_flow_changelist"), reverse("admin:jobs_job_changelist"),
        reverse("admin:jobs_queuestate_changelist"), reverse("admin:index"),
    ]
    make_flow(user)
    job_submit(name="test-value", queue_name="default", owner=user)
    few = {url: queries_of(root, url) for url in urls}
    for index in range(15):
        flow = make_flow(user, children=3, queue=("default", "video", "image")[index % 3])
        if index % 2:
            failed_flow(user)
        set_flow_status(flow, FlowStatus.RUNNING, JobStatus.ACTIVE)
        job_submit(name="test-value", queue_name="video", owner=user, flow_id=flow.pk)
    for url in urls:
        with django_assert_max_num_queries(few[url]):
            root.get(url)


def test_the_flow_page_makes_a_constant_number_of_queries(root, user, django_assert_max_num_queries):
    small = make_flow(user, children=2)
    large = make_flow(user, children=200)
    for job in Job.objects.filter(flow=large)[:50]:
        JobLog.objects.create(job=job, message="a line")
    few = queries_of(root, reverse("admin:flows_flow_change", args=[small.pk]))
    with django_assert_max_num_queries(few):
        root.get(reverse("admin:flows_flow_change", args=[large.pk]))


def test_a_2000_job_flow_page_renders_completely(root, user):
    flow = make_flow(user, children=2000)
    url = reverse("admin:flows_flow_change", args=[flow.pk])
    root.get(url)  # warm up (templates, caches)
    start = time.perf_counter()
    response = root.get(url)
    elapsed = time.perf_counter() - start
    page = response.content.decode()
    assert response.status_code == 200
    assert page.count('class="fs-job"') == 2001
    assert page.rstrip().endswith("</html>")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / "console-timings.log", "a") as log:  # a record, not an assertion
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} flow page, 2,001 jobs: {elapsed * 1000:.0f} ms, "
                  f"{len(page) / 1e6:.1f} MB of HTML\n")
