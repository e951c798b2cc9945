"""The job state machine and the cost of each transition (no workers: services called directly)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from flows.models import Flow
from flows.services import flow_cancel, flow_create, flow_delete, flow_retry
from jobs.models import Job, JobLog
from jobs.options import JobOptions
from jobs.services import job_cancel, job_delete, job_submit
from jobs.transitions import job_complete, job_fail, job_log, job_start, job_update_progress
from jobs.vocabulary import (
    CANCELLED_ERROR,
    CHILD_FAILED_ERROR,
    JOB_TRANSITIONS,
    TERMINAL_JOB_STATUSES,
    FlowStatus,
    JobStatus,
    sources_of,
)


def spec(children: int, queue: str = "default") -> dict:
    return {
        "flowname": "t",
        "name": "test-sum",
        "queueName": queue,
        "children": [{"name": "test-value", "queueName": queue} for _ in range(children)],
    }


def test_completed_and_cancelled_are_final_in_the_state_machine():
    assert JOB_TRANSITIONS[JobStatus.COMPLETED] == frozenset()
    assert JOB_TRANSITIONS[JobStatus.CANCELLED] == frozenset()
    assert JobStatus.COMPLETED not in sources_of(JobStatus.ACTIVE)
    assert set(JOB_TRANSITIONS) == set(JobStatus)
    assert TERMINAL_JOB_STATUSES <= set(JobStatus)


@pytest.mark.django_db
def test_a_finished_job_cannot_start_again(user):
    flow = flow_create(owner=user, spec=spec(1))
    child = Job.objects.get(flow=flow, parent__isnull=False)

    started = job_start(job_id=child.id)
    assert job_complete(job=started, result=1)

    assert job_start(job_id=child.id) is None
    assert not job_complete(job=started, result=2)
    assert not job_fail(job=started, exc=ValueError("late"), retry_delay_ms=None)
    child.refresh_from_db()
    assert (child.status, child.result, child.attempts_made) == (JobStatus.COMPLETED, 1, 1)


@pytest.mark.django_db
def test_a_parent_cannot_start_while_it_waits_for_children(user):
    flow = flow_create(owner=user, spec=spec(2))

    assert job_start(job_id=flow.root_job_id) is None
    assert Job.objects.get(pk=flow.root_job_id).status == JobStatus.WAITING_CHILDREN


@pytest.mark.django_db
def test_the_last_child_releases_its_parent(user):
    flow = flow_create(owner=user, spec=spec(2))
    first, second = Job.objects.filter(flow=flow, parent__isnull=False)

    job_complete(job=job_start(job_id=first.id), result=1)
    assert Job.objects.get(pk=flow.root_job_id).status == JobStatus.WAITING_CHILDREN
    job_complete(job=job_start(job_id=second.id), result=1)

    root = Job.objects.get(pk=flow.root_job_id)
    assert (root.status, root.pending_children) == (JobStatus.WAITING, 0)
    flow.refresh_from_db()
    assert flow.status == FlowStatus.RUNNING


def engine_queries(captured: CaptureQueriesContext) -> list[dict]:
    """The statements of a transition, without the webhooks' cached flag (read at most every 0.5 s)."""
    return [query for query in captured if "webhooks_webhook" not in query["sql"]]


@pytest.mark.django_db
def test_starting_and_completing_a_job_costs_one_statement_each(user):
    flow = flow_create(owner=user, spec=spec(3))
    first, second, _ = Job.objects.filter(flow=flow, parent__isnull=False)
    job_complete(job=job_start(job_id=first.id), result=1)  # the flow is now known to be running

    with CaptureQueriesContext(connection) as start_queries:
        started = job_start(job_id=second.id)
    with CaptureQueriesContext(connection) as complete_queries:
        job_complete(job=started, result=1)

    assert len(engine_queries(start_queries)) == 1
    # Inside the test transaction: the savepoint pair plus one statement that completes
    # the job and counts it off its parent.
    statements = [q["sql"] for q in engine_queries(complete_queries) if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 1
    assert statements[0].startswith("WITH done AS (UPDATE") and second.id in statements[0]


@pytest.mark.django_db
def test_the_per_job_statements_are_prepared_once_per_connection(user):
    flow = flow_create(owner=user, spec=spec(3))
    for child in Job.objects.filter(flow=flow, parent__isnull=False):
        job_complete(job=job_start(job_id=child.id), result=1)

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s OR statement LIKE %s",
            ["WITH started AS (UPDATE jobs_job%", "WITH done AS (UPDATE jobs_job%"],
        )
        prepared = [row[0] for row in cursor.fetchall()]
    # One start and one completion statement, each planned once and reused for all three jobs.
    assert len(prepared) == 2


@pytest.mark.django_db(transaction=True)
@override_settings(FLOWSITE_QUEUES=["held"])  # a queue no worker consumes: these threads are the workers
def test_siblings_completing_concurrently_lose_no_decrement(user):
    flow = flow_create(owner=user, spec=spec(200, queue="held"))
    children = list(Job.objects.filter(flow=flow, parent__isnull=False).values_list("id", flat=True))

    def run(job_id: str) -> bool:
        try:
            return job_complete(job=job_start(job_id=job_id), result=1)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(run, children))

    assert all(outcomes)
    root = Job.objects.get(pk=flow.root_job_id)
    assert (root.status, root.pending_children) == (JobStatus.WAITING, 0)
    assert Job.objects.filter(flow=flow, status=JobStatus.COMPLETED).count() == 200


@pytest.mark.django_db
def test_children_sharing_a_name_collect_their_values_in_order(user):
    from jobs.transitions import job_children_outcomes

    flow = flow_create(owner=user, spec=spec(5))
    for value, child in enumerate(Job.objects.filter(flow=flow, parent__isnull=False).order_by("position"), 1):
        job_complete(job=job_start(job_id=child.id), result=value)

    values, failures = job_children_outcomes(job_id=flow.root_job_id)

    assert values["test-value"] == [1, 2, 3, 4, 5]
    assert len(values) == 6 and failures == {}


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
@override_settings(FLOWSITE_QUEUES=["held"])  # no worker consumes it: the test runs the jobs itself
def test_a_worker_commits_without_waiting_and_waits_for_the_disk_outside_the_locks(user):
    flow = flow_create(owner=user, spec=spec(2, queue="held"))
    first, second = Job.objects.filter(flow=flow, parent__isnull=False)

    with CaptureQueriesContext(connection) as start_queries:
        started = job_start(job_id=first.id)
    with CaptureQueriesContext(connection) as complete_queries:
        assert job_complete(job=started, result=1)

    start_queries, complete_queries = engine_queries(start_queries), engine_queries(complete_queries)
    relaxed = "set_config('synchronous_commit', 'off', true)"
    assert relaxed in start_queries[0]["sql"]
    # The completion (and its parent's count-down) commits without waiting, then the
    # worker waits for the disk flush, holding no lock, before it goes on.
    assert relaxed in complete_queries[0]["sql"] and "WITH relaxed AS" in complete_queries[0]["sql"]
    assert complete_queries[1]["sql"] == "SELECT pg_current_xact_id()"
    assert len(complete_queries) == 2
    # Committed (another connection sees it), and the session's own setting is untouched.
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT status, pending_children FROM jobs_job WHERE id IN (%s, %s) ORDER BY status",
                           [first.id, flow.root_job_id])
            assert cursor.fetchall() == [(JobStatus.COMPLETED, 0), (JobStatus.WAITING_CHILDREN, 1)]
    finally:
        other.close()
    assert _synchronous_commit() == "on"


@pytest.mark.django_db(transaction=True)
@override_settings(FLOWSITE_QUEUES=["held"])
def test_a_start_inside_a_callers_transaction_leaves_its_durability_alone(user):
    from django.db import transaction

    flow = flow_create(owner=user, spec=spec(1, queue="held"))
    child = Job.objects.get(flow=flow, parent__isnull=False)
    with transaction.atomic():
        assert job_start(job_id=child.id) is not None
        assert _synchronous_commit() == "on"


@pytest.mark.django_db
def test_a_redelivered_message_of_a_waiting_or_finished_job_is_an_ordinary_delivery(user):
    flow = flow_create(owner=user, spec=spec(2))
    first, second = Job.objects.filter(flow=flow, parent__isnull=False)
    job_complete(job=job_start(job_id=first.id), result=1)

    # Finished: nothing happens. Waiting (restored at a worker's shutdown): it starts.
    assert job_start(job_id=first.id, redelivered=True) is None
    assert job_start(job_id=second.id, redelivered=True).attempts_made == 1
    first.refresh_from_db()
    assert (first.status, first.attempts_made) == (JobStatus.COMPLETED, 1)


def _run(job_id: str, result=None) -> bool:
    """Start a job and complete it, as a worker would."""
    return job_complete(job=job_start(job_id=job_id), result=result)


@pytest.mark.django_db
def test_a_cancelled_root_job_cannot_be_completed(user):
    flow = flow_create(owner=user, spec={"flowname": "t", "name": "test-value", "queueName": "default"})
    started = job_start(job_id=flow.root_job_id)
    flow_cancel(flow=flow)

    assert not job_complete(job=started, result="too late")

    root = Job.objects.get(pk=flow.root_job_id)
    assert (root.status, root.result) == (JobStatus.CANCELLED, None)
    flow.refresh_from_db()
    assert (flow.status, flow.result) == (FlowStatus.CANCELLED, None)


def _flow_with_an_attached_job(user) -> tuple[Flow, Job]:
    """A one-job flow whose root has completed while a job attached by ``flowId`` still waits."""
    flow = flow_create(owner=user, spec={"flowname": "t", "name": "test-value", "queueName": "default"})
    started = job_start(job_id=flow.root_job_id)
    attached = job_submit(name="test-value", queue_name="alt", data={"flowId": flow.id})
    assert job_complete(job=started, result="root done")
    return flow, attached


@pytest.mark.django_db
def test_a_flow_stays_running_without_completed_at_while_an_attached_job_waits(user):
    flow, attached = _flow_with_an_attached_job(user)

    flow.refresh_from_db()
    assert (flow.status, flow.completed_at, flow.result) == (FlowStatus.RUNNING, None, None)

    assert _run(attached.id, "attached done")
    flow.refresh_from_db()
    assert (flow.status, flow.result) == (FlowStatus.COMPLETED, "root done")
    assert flow.completed_at is not None


@pytest.mark.django_db
def test_deleting_the_attached_job_of_a_cancelled_flow_leaves_it_cancelled(
    user, django_capture_on_commit_callbacks
):
    flow, attached = _flow_with_an_attached_job(user)
    flow_cancel(flow=flow)

    with django_capture_on_commit_callbacks(execute=True):  # job_delete settles the flow after commit
        job_delete(job=Job.objects.get(pk=attached.pk))

    assert not Job.objects.filter(pk=attached.pk).exists()
    flow.refresh_from_db()
    assert (flow.status, flow.result, flow.total_jobs) == (FlowStatus.CANCELLED, None, 1)


def _waiting_tree(user, **child_fields) -> tuple[Flow, Job, Job]:
    flow = flow_create(owner=user, spec={
        "flowname": "t", "name": "test-echo", "queueName": "default",
        "children": [{"name": "test-value", "queueName": "default", **child_fields},
                     {"name": "test-value", "queueName": "default"}],
    })
    child = Job.objects.filter(flow=flow, parent__isnull=False).order_by("position").first()
    return flow, Job.objects.get(pk=flow.root_job_id), child


@pytest.mark.django_db
def test_a_child_cancelled_alone_fails_its_parent_and_the_flow(user):
    """It used to leave the parent waiting for it, and the flow open, for ever."""
    flow, root, child = _waiting_tree(user)

    assert job_cancel(job=child)

    root.refresh_from_db()
    flow.refresh_from_db()
    assert (root.status, root.error_type) == (JobStatus.FAILED, CHILD_FAILED_ERROR)
    assert (flow.status, flow.error_detail["type"], flow.error_detail["jobId"]) == (
        FlowStatus.FAILED, CANCELLED_ERROR, child.pk
    )


@pytest.mark.django_db
def test_a_child_cancelled_alone_under_ignore_dependency_releases_its_parent(user):
    flow, root, child = _waiting_tree(user, opts={"ignoreDependencyOnFailure": True})
    sibling = Job.objects.filter(flow=flow, parent__isnull=False).exclude(pk=child.pk).get()
    assert job_complete(job=job_start(job_id=sibling.id), result=1)

    assert job_cancel(job=child)

    root.refresh_from_db()
    assert root.status == JobStatus.WAITING
    assert job_complete(job=job_start(job_id=root.id), result="done")
    flow.refresh_from_db()
    assert flow.status == FlowStatus.COMPLETED


@pytest.mark.django_db
def test_the_root_cancelled_alone_fails_the_flow(user):
    flow = flow_create(owner=user, spec={"flowname": "t", "name": "test-value", "queueName": "default"})

    assert job_cancel(job=Job.objects.get(pk=flow.root_job_id))

    flow.refresh_from_db()
    assert (flow.status, flow.error_detail["type"]) == (FlowStatus.FAILED, CANCELLED_ERROR)


@pytest.mark.django_db
def test_an_attached_job_cancelled_alone_lets_its_flow_complete(user, django_capture_on_commit_callbacks):
    flow, attached = _flow_with_an_attached_job(user)

    with django_capture_on_commit_callbacks(execute=True):  # the flow settles after commit
        assert job_cancel(job=Job.objects.get(pk=attached.pk))

    flow.refresh_from_db()
    assert (flow.status, flow.result) == (FlowStatus.COMPLETED, "root done")


@pytest.mark.django_db
def test_retrying_a_flow_counts_a_sibling_whose_failure_was_ignored_as_done(user):
    flow = flow_create(owner=user, spec={
        "flowname": "t", "name": "test-echo", "queueName": "default",
        "children": [
            {"name": "test-fail", "queueName": "default", "opts": {"ignoreDependencyOnFailure": True}},
            {"name": "test-value", "queueName": "default"},
        ],
    })
    ignored, broken = Job.objects.filter(flow=flow, parent__isnull=False).order_by("position")
    assert job_fail(job=job_start(job_id=ignored.id), exc=ValueError("optional"), retry_delay_ms=None)
    assert job_fail(job=job_start(job_id=broken.id), exc=ValueError("real"), retry_delay_ms=None)
    flow.refresh_from_db()
    assert flow.status == FlowStatus.FAILED

    flow = flow_retry(flow=flow)

    root = Job.objects.get(pk=flow.root_job_id)
    assert (flow.status, root.status, root.pending_children) == (FlowStatus.RUNNING, JobStatus.WAITING_CHILDREN, 1)
    assert Job.objects.get(pk=ignored.pk).status == JobStatus.FAILED  # not re-run
    assert _run(broken.id, 1)
    assert Job.objects.get(pk=root.pk).status == JobStatus.WAITING  # released by its last real child
    assert _run(root.id, "done")
    flow.refresh_from_db()
    assert (flow.status, flow.result) == (FlowStatus.COMPLETED, "done")


@pytest.mark.parametrize(
    "backoff, delays",
    [
        ({"type": "exponential", "delay": 300}, [300, 600, 1200, None]),
        ({"type": "fixed", "delay": 400}, [400, 400, 400, None]),
        (250, [250, 250, 250, None]),
    ],
)
def test_the_retry_delay_after_each_failed_try_is_exact(backoff, delays):
    options = JobOptions.from_stored({"attempts": 4, "backoff": backoff})

    # After the 1st, 2nd, 3rd failed try, then none: 4 attempts are used up.
    assert [options.retry_delay_ms(tries) for tries in (1, 2, 3, 4)] == delays


@pytest.mark.django_db(transaction=True)
@override_settings(FLOWSITE_QUEUES=["held"])  # no worker consumes it: these threads are the running handlers
def test_a_flow_deleted_while_its_running_jobs_write_logs_and_progress_raises_nothing(user):
    """flow_delete and a running handler's ``ctx.log``/``ctx.update_progress`` are safe in any order."""
    for _ in range(25):
        flow = flow_create(owner=user, spec=spec(4, queue="held"))
        running = [job_start(job_id=job_id).id for job_id in
                   Job.objects.filter(flow=flow, parent__isnull=False).values_list("id", flat=True)]
        writing = threading.Barrier(len(running) + 1)
        stop = threading.Event()
        errors: list[BaseException] = []

        def handler(job_id: str) -> None:
            try:
                writing.wait()
                while not stop.is_set():
                    job_log(job_id=job_id, message="tick")
                    job_update_progress(job_id=job_id, progress=50)
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=handler, args=(job_id,)) for job_id in running]
        for thread in threads:
            thread.start()
        writing.wait()
        try:
            flow_delete(flow=flow)
        finally:
            stop.set()
            for thread in threads:
                thread.join()

        assert errors == []
        assert not Job.objects.filter(pk__in=running).exists()
        assert not JobLog.objects.filter(job_id__in=running).exists()
