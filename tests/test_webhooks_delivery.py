"""Sending webhook deliveries: signed POSTs to a real local receiver, retries, order, timeouts, 410.

Real processes: the session's job workers run the flows (and write the deliveries
in their transactions), a ``celery worker -Q webhooks`` of this module's own sends
them (short timeouts and retries, private addresses allowed: the receiver is on
127.0.0.1), and the receiver is an HTTP server in a thread of the test process.
"""

from __future__ import annotations

import json
import signal

import pytest

from flows.services import flow_create
from jobs.vocabulary import DeliveryStatus, FlowStatus, JobStatus, WebhookEvent
from tests.conftest import wait_for, wait_for_flow
from tests.webhook_receiver import Reply, stop_receiver
from tests.webhook_workers import kill, start_webhook_worker, webhook_worker_running
from webhooks import services
from webhooks.models import Delivery, RecordedEvent, Webhook, new_secret
from webhooks.signing import InvalidSignature, verify_signature

pytestmark = pytest.mark.usefixtures("engine_db")


@pytest.fixture(scope="module")
def webhook_worker(celery_workers):
    with webhook_worker_running("webhooks-test", allow_private=True) as process:
        yield process


@pytest.fixture(autouse=True)
def private_targets(settings):
    """This process saves webhooks to 127.0.0.1 (the worker has its own setting)."""
    settings.FLOWSITE_WEBHOOK_ALLOW_PRIVATE = True


def subscribe(owner, url, events=(WebhookEvent.ALL,), **filters) -> Webhook:
    return services.webhook_create(owner=owner, url=url, events=list(events), **filters)


def tree(flowname="hooked", queue="default", children=3):
    return {
        "flowname": flowname, "name": "test-sum", "queueName": queue, "data": {"value": 1},
        "children": [{"name": "test-value", "queueName": queue, "data": {"value": n}} for n in range(children)],
    }


def settled(webhook: Webhook, *, count: int | None = None, timeout: float = 30.0) -> list[Delivery]:
    """Wait until no event waits to become deliveries and the webhook has no pending delivery
    (and ``count`` of them); return them oldest first."""

    def done():
        if RecordedEvent.objects.exists():
            return None
        rows = list(Delivery.objects.filter(webhook=webhook).order_by("seq", "id"))
        if any(row.status == DeliveryStatus.PENDING for row in rows):
            return None
        return rows if count is None or len(rows) == count else None

    return wait_for(done, timeout=timeout, message=f"the deliveries of webhook {webhook.pk}")


def test_a_flows_events_arrive_signed_complete_and_in_order(user, webhook_worker, receiver):
    webhook = subscribe(user, receiver.url())
    receiver.script("/hook", Reply(500))  # the first event is retried: the others wait for it

    flow = wait_for_flow(flow_create(owner=user, spec=tree()))
    deliveries = settled(webhook)
    flow.refresh_from_db()

    assert flow.status == FlowStatus.COMPLETED
    assert all(d.status == DeliveryStatus.SUCCEEDED for d in deliveries)
    assert deliveries[0].attempts == 2 and all(d.attempts == 1 for d in deliveries[1:])
    requests = receiver.at("/hook")
    assert len(requests) == len(deliveries) + 1
    bodies = [verify_signature(webhook.secret, r.headers, r.body) for r in requests]
    assert bodies[0] == bodies[1]  # the retry: the same event, the same bytes
    for request, body in zip(requests, bodies):
        assert request.headers["webhook-id"] == body["id"] == f"evt_{body['data']['seq']}"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["webhook-signature"].startswith("v1,")
        assert set(body) == {"type", "id", "timestamp", "data"} and body["data"]["flowId"] == flow.pk
    bodies = bodies[1:]
    assert sorted(b["data"]["seq"] for b in bodies) == [d.seq for d in deliveries]
    # Sent in causal order: the flow's creation first, each job's start before its end,
    # the children before their parent, every job before the flow's end.
    assert (bodies[0]["type"], bodies[0]["data"]) == (
        WebhookEvent.DELTA, {"flowId": flow.pk, "status": FlowStatus.PENDING, "seq": deliveries[0].seq}
    )
    job_events = [b for b in bodies if "jobId" in b["data"]]
    position = {(b["data"]["jobId"], b["data"]["status"]): index for index, b in enumerate(bodies) if "jobId" in b["data"]}
    jobs = {b["data"]["jobId"] for b in job_events}
    assert len(jobs) == 4 and len(job_events) == 8  # active and completed, each once
    for job in jobs:
        assert position[(job, JobStatus.ACTIVE)] < position[(job, JobStatus.COMPLETED)]
    root = next(b["data"]["jobId"] for b in job_events if b["data"]["name"] == "test-sum")
    children_done = [position[(job, JobStatus.COMPLETED)] for job in jobs if job != root]
    assert max(children_done) < position[(root, JobStatus.ACTIVE)]
    jobs_done = [b["data"] for b in job_events if b["type"] == WebhookEvent.COMPLETED]
    assert sorted(d["result"] for d in jobs_done) == [0, 1, 2, 4]
    assert all(b["type"] == WebhookEvent.DELTA for b in job_events if b["data"]["status"] == JobStatus.ACTIVE)
    # The flow's end comes after every job event; its progress (coalesced) may follow it.
    final_index, final = next((i, b) for i, b in enumerate(bodies) if "jobId" not in b["data"]
                              and b["type"] == WebhookEvent.COMPLETED)
    assert (final["data"]["status"], final["data"]["result"]) == (FlowStatus.COMPLETED, 4)
    assert final_index > max(position.values())
    running = [i for i, b in enumerate(bodies) if b["data"] == {"flowId": flow.pk, "status": FlowStatus.RUNNING,
                                                                "seq": b["data"]["seq"]}]
    assert len(running) == 1 and bodies[running[0]]["type"] == WebhookEvent.DELTA
    assert min(i for (job, status), i in position.items() if status == JobStatus.ACTIVE) < running[0] < final_index
    progress = [b["data"] for b in bodies if b["type"] == WebhookEvent.PROGRESS]
    assert progress and progress[-1]["progress"]["completed"] == 4 and progress[-1]["status"] == FlowStatus.COMPLETED


def test_a_tampered_body_or_another_secret_fails_verification(user, webhook_worker, receiver):
    webhook = subscribe(user, receiver.url(), events=[WebhookEvent.COMPLETED])
    wait_for_flow(flow_create(owner=user, spec=tree(children=1)))
    settled(webhook)
    request = receiver.at("/hook")[-1]

    with pytest.raises(InvalidSignature):
        verify_signature(webhook.secret, request.headers, request.body.replace(b"}", b" }", 1))
    with pytest.raises(InvalidSignature):
        verify_signature(new_secret(), request.headers, request.body)
    with pytest.raises(InvalidSignature):
        verify_signature(webhook.secret, {**request.headers, "webhook-timestamp": "1000000000"}, request.body)


def test_a_dead_target_gives_up_after_the_last_attempt_and_says_why(user, webhook_worker, receiver):
    webhook = subscribe(user, receiver.url())
    stop_receiver(receiver)  # nothing listens on that port any more

    wait_for_flow(flow_create(owner=user, spec=tree(children=1)))
    deliveries = settled(webhook)

    for delivery in deliveries:
        assert delivery.status == DeliveryStatus.FAILED
        assert delivery.attempts == 3  # FLOWSITE_WEBHOOK_RETRY_DELAYS=1,1
        assert delivery.last_error.startswith("Gave up after 3 attempts:")
        assert "Could not connect:" in delivery.last_error and "Connection refused" in delivery.last_error
        assert delivery.last_status_code is None


def test_a_hanging_target_is_cut_at_the_read_timeout_and_does_not_hold_up_another(user, webhook_worker, receiver):
    slow = subscribe(user, receiver.url("/slow"), events=[WebhookEvent.COMPLETED])
    fast = subscribe(user, receiver.url("/fast"), events=[WebhookEvent.COMPLETED])
    receiver.script("/slow", Reply(hang=60), Reply(200))

    wait_for_flow(flow_create(owner=user, spec=tree(children=0)))

    def fast_done_while_slow_hangs():
        hanging = Delivery.objects.filter(webhook=slow).order_by("seq").first()
        done = list(Delivery.objects.filter(webhook=fast))
        if len(done) != 2 or any(d.status != DeliveryStatus.SUCCEEDED for d in done):  # the job and the flow
            return False
        assert hanging.attempts == 1 and hanging.last_error == "" and hanging.leased_until is not None
        return True
    wait_for(lambda: receiver.at("/slow"), message="the slow target's first request")
    wait_for(fast_done_while_slow_hangs, message="the fast target's deliveries while the slow one hangs")
    cut = wait_for(lambda: Delivery.objects.filter(webhook=slow, last_error__contains="read timeout").first(),
                   message="the read timeout")
    assert cut.last_status_code is None and cut.status == DeliveryStatus.PENDING
    assert all(d.status == DeliveryStatus.SUCCEEDED for d in settled(slow, count=2))


def test_410_gone_disables_the_webhook(user, webhook_worker, receiver):
    webhook = subscribe(user, receiver.url(), events=[WebhookEvent.COMPLETED])
    receiver.script("/hook", Reply(410))

    wait_for_flow(flow_create(owner=user, spec=tree(children=0)))

    webhook = wait_for(lambda: Webhook.objects.filter(pk=webhook.pk, active=False).first(), message="disabled")
    assert "410" in webhook.disabled_reason
    first = Delivery.objects.filter(webhook=webhook).order_by("seq").first()
    assert (first.status, first.last_status_code, first.attempts) == (DeliveryStatus.FAILED, 410, 1)
    assert len(receiver.at("/hook")) == 1  # the flow's event waits: the webhook is disabled


def test_a_redirect_is_not_followed_even_to_an_allowed_address(user, webhook_worker, receiver):
    webhook = subscribe(user, receiver.url(), events=[WebhookEvent.COMPLETED])
    internal = receiver.url("/internal")
    receiver.script("/hook", Reply(302, location=internal), Reply(307, location="http://169.254.169.254/latest/"),
                    Reply(301, location=internal))

    wait_for_flow(flow_create(owner=user, spec=tree(children=0)))
    first, second = settled(webhook, count=2)

    assert (first.status, first.attempts, first.last_status_code) == (DeliveryStatus.FAILED, 3, 301)
    assert first.last_error == f"Gave up after 3 attempts: HTTP 301: redirects are not followed (Location: {internal})"
    assert second.status == DeliveryStatus.SUCCEEDED
    assert len(receiver.at("/hook")) == 4 and receiver.at("/internal") == []


def test_ping_is_sent_at_once_from_the_api(user, receiver):
    from tests.conftest import token_client

    webhook = subscribe(user, receiver.url("/ping"))

    response = token_client(user).post(f"/api/webhooks/{webhook.pk}/test")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["eventType"], body["status"], body["lastStatusCode"], body["attempts"]) == ("ping", "succeeded", 200, 1)
    sent = json.loads(receiver.at("/ping")[0].body)
    assert sent["type"] == "ping" and sent["data"]["webhookId"] == webhook.pk


def test_a_webhook_worker_killed_mid_send_delivers_after_a_restart(user, celery_workers, receiver, tmp_path):
    """The delivery is committed with the job; its sender dies mid-POST; a new one (and the sweep) send it."""
    import subprocess
    import sys

    from django.db import connection

    from tests.conftest import ROOT, service_env

    webhook = subscribe(user, receiver.url(), events=[WebhookEvent.COMPLETED])
    receiver.script("/hook", Reply(hang=60))
    doomed = start_webhook_worker("webhooks-doomed", allow_private=True)
    try:
        flow = wait_for_flow(flow_create(owner=user, spec=tree(children=0)))
        wait_for(lambda: receiver.at("/hook"), message="the first POST")
    finally:
        kill(doomed, signal.SIGKILL)
    first = Delivery.objects.filter(webhook=webhook).order_by("seq").first()
    assert first.status == DeliveryStatus.PENDING and first.attempts == 1 and first.leased_until is not None

    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "flowsite", "beat", "-l", "info", "-s", str(tmp_path / "schedule")],
        cwd=ROOT, env=service_env(connection.settings_dict["NAME"]), stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    again = start_webhook_worker("webhooks-again", allow_private=True)
    try:
        deliveries = settled(webhook, count=2, timeout=60)
    finally:
        kill(again)
        beat.terminate()
        beat.wait(15)
    assert [d.status for d in deliveries] == [DeliveryStatus.SUCCEEDED] * 2
    assert deliveries[0].attempts == 2
    bodies = [json.loads(r.body) for r in receiver.at("/hook")]
    assert [b["data"].get("jobId") is None for b in bodies] == [False, False, True]
    assert bodies[-1]["data"]["flowId"] == flow.pk
