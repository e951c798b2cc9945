"""Which events become deliveries of which webhook: types, filters, isolation between users.

The session's job workers run real flows and record the events in the
transactions of their changes; nothing is sent here (no webhooks worker): the
tests turn the recorded events into deliveries as the dispatcher does
(``recording.expand_events``) and read the rows it leaves.
"""

from __future__ import annotations

import time

import pytest

from flows.services import flow_cancel, flow_create
from jobs.vocabulary import DeliveryStatus, FlowStatus, JobStatus, WebhookEvent
from tests.conftest import wait_for, wait_for_flow
from webhooks import recording, services
from webhooks.models import Delivery, RecordedEvent, Webhook, event_mask

pytestmark = pytest.mark.usefixtures("engine_db", "quiet_at_the_end")

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
    recording.expand_events()
    return list(Delivery.objects.filter(webhook=webhook).order_by("seq"))


@pytest.fixture
def quiet_at_the_end():
    """Let the workers' last coalesced flow progress be recorded before the database is flushed.

    It is recorded up to ``FLOWSITE_WEBHOOK_PROGRESS_INTERVAL_MS`` after a flow's last change; a flush (TRUNCATE of every
    table) that meets that transaction midway can deadlock with it.
    """
    yield
    recorded_when_settled()


def recorded_when_settled() -> int:
    """How many events are recorded, once the flows' coalesced progress (up to one interval after) has come too."""
    from django.conf import settings

    def steady():
        before = RecordedEvent.objects.count()
        time.sleep(settings.FLOWSITE_WEBHOOK_PROGRESS_INTERVAL_MS / 1000 + 0.35)
        return (before,) if RecordedEvent.objects.count() == before else None

    return wait_for(steady, message="the recorded events to settle")[0]


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
    assert kinds(made["failed"]) == [], [r.data for r in rows(made["failed"])]
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

    assert not RecordedEvent.objects.exists()
    assert recording.expand_events() == 0 and not Delivery.objects.exists()


def test_an_event_is_recorded_once_however_many_webhooks_want_it(user, other_user):
    made = hooks(user, **{f"hook{n}": {} for n in range(5)}, mallorys={"owner": other_user})

    flow = wait_for_flow(flow_create(owner=user, spec=flow_spec(children=[])))
    recorded = wait_for(lambda: list(RecordedEvent.objects.filter(flow_id=flow.pk, event_type="completed"))
                        if RecordedEvent.objects.filter(flow_id=flow.pk, event_type="completed").count() == 2 else None,
                        message="the job's and the flow's end, recorded")

    # One row per event (the job's end and the flow's), not one per webhook.
    assert sorted("jobId" in event.data for event in recorded) == [False, True]
    assert all(event.owner_id == user.pk and event.flowname == "watched" for event in recorded)
    events = recorded_when_settled()
    written = recording.expand_events()
    assert not RecordedEvent.objects.exists()
    assert written == 5 * events  # the barrier-only webhook wants none of them; mallory's neither
    for n in range(5):
        assert [row.seq for row in rows(made[f"hook{n}"])] == [row.seq for row in rows(made["hook0"])]
        assert all(row.data["seq"] == row.seq and row.event_id == f"evt_{row.seq}" for row in rows(made[f"hook{n}"]))
    assert rows(made["mallorys"]) == []


def test_expansion_follows_the_webhooks_of_its_time_and_outlives_the_flow(user):
    made = hooks(user, kept={}, deleted={}, paused={})
    flow = wait_for_flow(flow_create(owner=user, spec=flow_spec(children=[])))
    wait_for(lambda: RecordedEvent.objects.filter(flow_id=flow.pk, event_type="completed").count() == 2,
             message="the flow's end, recorded")
    events = recorded_when_settled()

    made["deleted"].delete()
    Webhook.objects.filter(pk=made["paused"].pk).update(active=False)
    flow.delete()  # its events keep the owner and flowname they matched on

    assert recording.expand_events() == events
    assert len(rows(made["kept"])) == events
    assert not Delivery.objects.exclude(webhook=made["kept"]).exists()


def test_concurrent_expansions_write_each_delivery_once_in_order(user):
    import threading

    from django.db import connection

    made = hooks(user, **{f"hook{n}": {} for n in range(3)})
    for _ in range(3):
        wait_for_flow(flow_create(owner=user, spec=flow_spec()))
    events = recorded_when_settled()
    assert events > 10

    results: list[int] = []

    def expand():
        try:
            results.append(recording.expand_events(batch=4))
        finally:
            connection.close()

    threads = [threading.Thread(target=expand) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(results) == 3 * events and not RecordedEvent.objects.exists()
    for hook in made.values():
        written = rows(hook)
        assert len(written) == events and len({row.seq for row in written}) == events
        # Written in event order: ids follow the numbers.
        assert [row.pk for row in written] == sorted(row.pk for row in written)


def test_a_flows_progress_summary_comes_at_most_once_per_interval_while_nobody_watches(user, settings):
    made = hooks(user, progress={"events": [WebhookEvent.PROGRESS]})
    node = {"name": "test-sleep", "queueName": "default", "data": {"ms": 400}}
    for _ in range(5):  # a chain: one job after another, each a change of the flow's progress
        node = {"name": "test-sleep", "queueName": "default", "data": {"ms": 400}, "children": [node]}
    flow = wait_for_flow(flow_create(owner=user, spec={"flowname": "chain", **node}), timeout=60)
    recorded_when_settled()

    summaries = [row for row in rows(made["progress"]) if "jobId" not in row.data]
    interval = settings.FLOWSITE_WEBHOOK_PROGRESS_INTERVAL_MS / 1000
    assert len(summaries) >= 2  # the flow ran for about 2.4 s
    gaps = [(later.created_at - earlier.created_at).total_seconds() for earlier, later in zip(summaries, summaries[1:])]
    assert min(gaps) >= 0.75 * interval, gaps  # not every 250 ms: nobody watches live
    assert summaries[-1].data["status"] == FlowStatus.COMPLETED and summaries[-1].data["progress"]["completed"] == 6
    assert flow.status == FlowStatus.COMPLETED
