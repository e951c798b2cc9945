"""Which events become deliveries of which webhook: types, filters, isolation between users.

The session's job workers run real flows and write the deliveries in the
transactions of their changes; nothing is sent here (no webhooks worker), so the
rows are read as the engine left them.
"""

from __future__ import annotations

import pytest

from flows.services import flow_cancel, flow_create
from jobs.vocabulary import DeliveryStatus, FlowStatus, JobStatus, WebhookEvent
from tests.conftest import wait_for, wait_for_flow
from webhooks import services
from webhooks.models import Delivery, Webhook, event_mask

pytestmark = pytest.mark.usefixtures("engine_db")

TARGET = "https://93.184.215.14/hook"


def flow_spec(flowname="watched", **root):
    return {
        "flowname": flowname, "name": "test-value", "queueName": "default", "data": {"value": 3},
        "children": [
            {"name": "test-value", "queueName": "image", "data": {"value": 2}},
            {"name": "test-progress", "queueName": "default"},
        ],
        **root,
    }


def hooks(owner, **named) -> dict[str, Webhook]:
    """Webhooks written at once; the last, through the service, waits until every process records them."""
    made = {
        name: Webhook.objects.create(owner=fields.pop("owner", owner), url=TARGET,
                                     event_mask=event_mask(fields.pop("events", [WebhookEvent.ALL])), **fields)
        for name, fields in named.items()
    }
    services.webhook_create(owner=owner, url=TARGET, events=[WebhookEvent.DELTA], flowname="barrier-only")
    return made


def rows(webhook: Webhook) -> list[Delivery]:
    return list(Delivery.objects.filter(webhook=webhook).order_by("seq"))


def kinds(webhook: Webhook) -> list[str]:
    return [row.event_type for row in rows(webhook)]


def test_each_event_type_and_filter_gets_its_own_events(user, other_user, staff_user):
    made = hooks(
        user,
        every={},
        completed={"events": [WebhookEvent.COMPLETED]},
        failed={"events": [WebhookEvent.FAILED]},
        progress={"events": [WebhookEvent.PROGRESS]},
        delta={"events": [WebhookEvent.DELTA]},
        image_queue={"queue_name": "image"},
        other_flowname={"flowname": "unwatched"},
        same_flowname={"flowname": "watched"},
        other_flow={"flow_id": "0" * 32},
        inactive={"active": False},
        mallorys={"owner": other_user},
        staff_all={"owner": staff_user, "all_flows": True},
        staff_own={"owner": staff_user},
    )

    flow = wait_for_flow(flow_create(owner=user, spec=flow_spec()))
    assert flow.status == FlowStatus.COMPLETED
    every = wait_for(lambda: rows(made["every"]) if any(r.event_type == "progress" and "jobId" not in r.data
                                                        for r in rows(made["every"])) else None,
                     message="the flow's coalesced progress")

    assert all(row.status == DeliveryStatus.PENDING and row.flow_id == flow.pk for row in every)
    assert [row.seq for row in every] == sorted({row.seq for row in every})
    assert {row.event_type for row in every} == {"delta", "completed", "progress"}
    job_done = [r.data for r in every if r.event_type == "completed" and "jobId" in r.data]
    assert sorted(d["name"] for d in job_done) == ["test-progress", "test-value", "test-value"]
    assert {d["queueName"] for d in job_done} == {"default", "image"}
    job_progress = [r.data for r in every if r.event_type == "progress" and "jobId" in r.data]
    assert [d["progress"] for d in job_progress] == [{"step": 1, "of": 2}, 100]
    flow_done = [r.data for r in every if r.event_type == "completed" and "jobId" not in r.data]
    assert flow_done == [{"flowId": flow.pk, "status": "completed", "result": 3, "seq": flow_done[0]["seq"]}]

    assert set(kinds(made["completed"])) == {"completed"} and len(kinds(made["completed"])) == 4
    assert kinds(made["failed"]) == []
    assert set(kinds(made["progress"])) == {"progress"}
    assert set(kinds(made["delta"])) == {"delta", "completed"}  # every status change, ends included
    assert len(rows(made["delta"])) == len([r for r in every if r.event_type != "progress"])
    image = rows(made["image_queue"])
    assert image and {r.data["queueName"] for r in image} == {"image"}
    assert rows(made["other_flowname"]) == [] and rows(made["other_flow"]) == [] and rows(made["inactive"]) == []
    assert len(rows(made["same_flowname"])) == len(every)
    assert rows(made["mallorys"]) == [] and rows(made["staff_own"]) == []
    assert len(rows(made["staff_all"])) == len(every)


def test_a_failure_and_a_cancellation_are_delivered(user):
    made = hooks(user, failed={"events": [WebhookEvent.FAILED]}, delta={"events": [WebhookEvent.DELTA]})

    failed = wait_for_flow(flow_create(owner=user, spec=flow_spec(name="test-fail", children=[])))
    waiting = flow_create(owner=user, spec=flow_spec(
        flowname="long", name="test-value", children=[{"name": "test-sleep", "queueName": "default",
                                                        "data": {"ms": 60_000}}]))
    wait_for(lambda: waiting.jobs.filter(status=JobStatus.ACTIVE).exists(), message="the sleeper to start")
    flow_cancel(flow=waiting)

    assert failed.status == FlowStatus.FAILED
    failures = rows(made["failed"])
    assert [("jobId" in r.data, r.data["status"]) for r in failures] == [(True, "failed"), (False, "failed")]
    assert failures[1].data["error"]["message"].startswith("Job test-fail") and failures[1].data["error"]["type"] == "ValueError"  # the REST error object
    cancelled = [r.data for r in rows(made["delta"]) if r.flow_id == waiting.pk]
    assert cancelled[-1] == {"flowId": waiting.pk, "status": "cancelled", "seq": cancelled[-1]["seq"]}
    assert any(d.get("jobId") and d["status"] == "cancelled" for d in cancelled)


def test_without_an_active_webhook_nothing_is_recorded(user):
    Webhook.objects.create(owner=user, url=TARGET, event_mask=event_mask([WebhookEvent.ALL]), active=False)

    wait_for_flow(flow_create(owner=user, spec=flow_spec()))

    assert not Delivery.objects.exists()
