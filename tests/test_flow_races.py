"""Concurrent requests on one flow: retries, cancels, attaches and reports serialise (no 500, one winner).

Each test sends its requests from several threads at once (a barrier lines them up),
against the real PostgreSQL, over many trials: the races they guard against showed in
a few trials out of ten or thirty before the fixes.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.test import override_settings

from flows.models import Flow
from jobs.models import Job
from jobs.vocabulary import CHILD_FAILED_ERROR, FlowStatus, JobStatus
from tests.conftest import token_client
from tests.factories import make_flow

pytestmark = pytest.mark.django_db(transaction=True)

# A queue no test worker consumes (the session's Celery workers may be up): the jobs stay
# as the requests leave them.
held_queue = override_settings(FLOWSITE_QUEUES=["held"])


def _all_at_once(calls):
    """Run ``calls`` (each ``fn(client)``) in threads started together; return their responses in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        client, fn = call
        client.raise_request_exception = False  # a server error is a 500 answer, as in production
        try:
            barrier.wait(timeout=30)
            return fn(client)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def _failed_flow(user, children: int = 3) -> Flow:
    flow = make_flow(user, children=children, queue="held")
    Job.objects.filter(flow=flow, parent__isnull=False).update(
        status=JobStatus.FAILED, error="boom", error_type="ValueError"
    )
    Job.objects.filter(pk=flow.root_job_id).update(status=JobStatus.FAILED, error_type=CHILD_FAILED_ERROR)
    Flow.objects.filter(pk=flow.pk).update(status=FlowStatus.FAILED)
    return flow


@held_queue
def test_concurrent_retries_of_one_flow_one_acts_the_others_409(user):
    clients = [token_client(user) for _ in range(20)]
    wrong = []
    for trial in range(10):
        flow = _failed_flow(user, children=20)
        url = f"/api/flows/{flow.pk}/retry"
        responses = _all_at_once([(client, lambda c: c.post(url)) for client in clients])

        codes = sorted(response.status_code for response in responses)
        if codes != [200] + [409] * 19:
            wrong.append((trial, [r.content[:120] for r in responses if r.status_code not in (200, 409)][:1]))
            continue
        assert set(Job.objects.filter(flow=flow, parent__isnull=False).values_list("status", flat=True)) == {
            JobStatus.WAITING
        }
        assert Job.objects.get(pk=flow.root_job_id).status == JobStatus.WAITING_CHILDREN
    assert wrong == [], f"{len(wrong)} of 10 trials went wrong: {wrong}"


@held_queue
def test_jobs_attached_while_the_flow_is_cancelled_are_refused_or_cancelled(user):
    clients = [token_client(user) for _ in range(11)]
    wrong = []
    for trial in range(15):
        flow = make_flow(user, children=2, queue="held")
        cancel = (clients[0], lambda c: c.post(f"/api/flows/{flow.pk}/cancel"))
        attach = [
            (client, lambda c, i=i: c.post("/api/jobs/held", {"name": "test-value", "data": {"value": i}, "flowId": flow.pk}, format="json"))
            for i, client in enumerate(clients[1:])
        ]
        responses = _all_at_once([cancel, *attach])

        assert responses[0].status_code == 200, responses[0].content
        assert {response.status_code for response in responses[1:]} <= {201, 409}, [r.content for r in responses]
        attached = [response.json()["jobId"] for response in responses[1:] if response.status_code == 201]
        flow.refresh_from_db()
        assert flow.status == FlowStatus.CANCELLED
        statuses = dict(Job.objects.filter(flow=flow).values_list("id", "status"))
        assert flow.total_jobs == len(statuses) == 3 + len(attached)
        not_cancelled = [status for status in statuses.values() if status != JobStatus.CANCELLED]
        if not_cancelled:
            wrong.append((trial, not_cancelled))
    assert wrong == [], f"{len(wrong)} of 15 trials left attached jobs open in the cancelled flow: {wrong}"


@held_queue
def test_a_report_and_a_cancel_of_a_one_job_flow_one_wins(user):
    reporter, canceller = token_client(user), token_client(user)
    wrong = []
    for trial in range(30):
        flow = make_flow(user, children=0, queue="held")
        job_url = f"/api/flows/{flow.pk}/jobs/{flow.root_job_id}"
        report = (reporter, lambda c: c.put(job_url, {"status": "completed", "result": 1}, format="json"))
        cancel = (canceller, lambda c: c.post(f"/api/flows/{flow.pk}/cancel"))
        reported, cancelled = _all_at_once([report, cancel])

        codes = (reported.status_code, cancelled.status_code)
        if codes not in {(200, 409), (409, 200)}:
            wrong.append((trial, codes))
            continue
        flow.refresh_from_db()
        job = Job.objects.get(pk=flow.root_job_id)
        if codes == (200, 409):
            assert (flow.status, job.status) == (FlowStatus.COMPLETED, JobStatus.COMPLETED)
            assert cancelled.json()["currentStatus"] == FlowStatus.COMPLETED
        else:
            assert (flow.status, job.status) == (FlowStatus.CANCELLED, JobStatus.CANCELLED)
            assert reported.json()["currentStatus"] == JobStatus.CANCELLED
    assert wrong == [], f"{len(wrong)} of 30 trials did not have exactly one winner: {wrong}"
