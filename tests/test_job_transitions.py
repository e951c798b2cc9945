"""The job state machine and the cost of each transition (no workers: services called directly)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from flows.services import flow_create
from jobs.models import Job
from jobs.transitions import job_complete, job_fail, job_start
from jobs.vocabulary import JOB_TRANSITIONS, TERMINAL_JOB_STATUSES, FlowStatus, JobStatus, sources_of


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


@pytest.mark.django_db
def test_starting_and_completing_a_job_costs_one_statement_each(user):
    flow = flow_create(owner=user, spec=spec(3))
    first, second, _ = Job.objects.filter(flow=flow, parent__isnull=False)
    job_complete(job=job_start(job_id=first.id), result=1)  # the flow is now known to be running

    with CaptureQueriesContext(connection) as start_queries:
        started = job_start(job_id=second.id)
    with CaptureQueriesContext(connection) as complete_queries:
        job_complete(job=started, result=1)

    assert len(start_queries) == 1
    # Inside the test transaction: the savepoint pair plus one statement that completes
    # the job and counts it off its parent.
    statements = [q["sql"] for q in complete_queries if "SAVEPOINT" not in q["sql"]]
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
