"""The one event point: what the engine publishes, numbered, in commit order, to whom.

A real Redis subscriber listens where the web processes' channel layers listen
(the pub/sub groups of flows/events.py), while real workers run real flows.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import redis
from channels.layers import get_channel_layer
from django.conf import settings

from flows import events
from flows.selectors import flow_payload_of
from flows.services import flow_cancel, flow_create, flow_delete, flow_retry
from jobs.models import Job
from jobs.selectors import JOB_STATE_FIELDS, job_state_payload
from jobs.vocabulary import CHILD_FAILED_ERROR, FlowEvent, FlowStatus, JobStatus
from tests.conftest import wait_for, wait_for_flow

pytestmark = pytest.mark.usefixtures("engine_db")


def leaf(name, **extra):
    return {"name": name, "queueName": "default", **extra}


def flow_of(root, flowname="events"):
    return {"flowname": flowname, **root}


class Listener:
    """Subscribes to channel-layer groups exactly as a web process does, and collects messages."""

    def __init__(self, *groups: str) -> None:
        config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
        self.prefix = config["prefix"]
        self.layer = get_channel_layer()
        self.pubsub = redis.Redis.from_url(config["hosts"][0]).pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(*(f"{self.prefix}__group__{group}" for group in groups))
        self.received: list[dict] = []
        # Keep the listening key alive as a web process with a connection does
        # (``events.Presence``), and wait as its first connection would.
        self.stopped = threading.Event()
        time.sleep(events.open_gate())
        threading.Thread(target=self._renew, daemon=True).start()

    def _renew(self) -> None:
        while not self.stopped.wait(events.LISTENING_RENEW_SECONDS):
            events.open_gate()

    def drain(self) -> list[dict]:
        while (message := self.pubsub.get_message(timeout=0.01)) is not None:
            self.received.append(self.layer.deserialize(message["data"]))
        return self.received

    def of_flow(self, flow_id: str) -> list[dict]:
        return [m for m in self.drain() if m["data"].get("flowId") == flow_id]

    def wait_for_event(self, flow_id: str, name: str, timeout: float = 10) -> list[dict]:
        wait_for(lambda: any(m["event"] == name for m in self.of_flow(flow_id)), timeout=timeout,
                 message=f"{name} of flow {flow_id}")
        return self.of_flow(flow_id)

    def close(self) -> None:
        self.stopped.set()
        self.pubsub.close()


@pytest.fixture
def listen():
    listeners = []

    def make(*groups):
        listener = Listener(*groups)
        listeners.append(listener)
        return listener

    yield make
    for listener in listeners:
        listener.close()


def by_seq(messages):
    return sorted(messages, key=lambda m: m["data"]["seq"])


def assert_numbered_without_holes(messages):
    """Numbers 1..n, each once (a flow's own subscribers also get flow:progress, sharing flow:updated's)."""
    seqs = [m["data"]["seq"] for m in messages if m["event"] != FlowEvent.PROGRESS]
    assert sorted(seqs) == list(range(1, len(seqs) + 1)), sorted(seqs)


def test_a_completed_flow_publishes_every_change_numbered_in_commit_order(user, listen):
    owner = listen(events.user_group(user.pk))
    flow = flow_create(owner=user, spec=flow_of(leaf("test-sum", children=[leaf("test-value", data={"value": n}) for n in (1, 2, 3)])))
    wait_for_flow(flow, timeout=15)
    messages = owner.wait_for_event(flow.pk, FlowEvent.COMPLETED)
    # The coalesced progress comes at most FLOW_UPDATE_INTERVAL after the last change.
    wait_for(lambda: any(m["event"] == FlowEvent.UPDATED and m["data"]["status"] == FlowStatus.COMPLETED
                         for m in owner.of_flow(flow.pk)), timeout=5, message="the final flow:updated")
    messages = owner.of_flow(flow.pk)
    assert_numbered_without_holes(messages)
    ordered = by_seq(messages)

    created = ordered[0]
    assert created["event"] == FlowEvent.CREATED
    assert created["data"]["flowId"] == flow.pk and created["data"]["status"] == FlowStatus.PENDING
    assert {job["jobId"] for job in created["data"]["jobs"]} == set(flow.jobs.values_list("id", flat=True))
    assert created["data"]["jobStructure"] == {"root": flow.job_structure}
    # The REST detail's shape: progress with the legacy summary and jobs map.
    assert created["data"]["progress"]["summary"]["total"] == 4 and created["data"]["progress"]["summary"]["waiting"] == 3
    assert set(created["data"]["progress"]["jobs"]) == set(flow.jobs.values_list("id", flat=True))

    job_events = [m["data"] for m in ordered if m["event"] == FlowEvent.JOB_UPDATED]
    per_job = {}
    for data in job_events:
        per_job.setdefault(data["jobId"], []).append(data["jobStatus"])
    assert len(per_job) == 4
    assert all(statuses == [JobStatus.ACTIVE, JobStatus.COMPLETED] for statuses in per_job.values())
    root = next(data for data in job_events if data["jobId"] == flow.root_job_id and data["jobStatus"] == JobStatus.COMPLETED)
    assert root["result"] == 6 and root["name"] == "test-sum" and root["queueName"] == "default"
    assert root["attemptsMade"] == 1 and "error" not in root

    completed = next(m for m in ordered if m["event"] == FlowEvent.COMPLETED)
    assert completed["data"] == {
        "flowId": flow.pk, "result": 6, "completedAt": completed["data"]["completedAt"], "seq": completed["data"]["seq"],
    }
    assert completed["data"]["seq"] > max(data["seq"] for data in job_events)
    # The parent's start follows all its children's completions.
    root_start = next(d["seq"] for d in job_events if d["jobId"] == flow.root_job_id and d["jobStatus"] == JobStatus.ACTIVE)
    children_done = [d["seq"] for d in job_events if d["jobId"] != flow.root_job_id and d["jobStatus"] == JobStatus.COMPLETED]
    assert max(children_done) < root_start


def test_flow_progress_goes_to_the_flows_own_subscribers_only(user, listen):
    flow = flow_create(owner=user, spec=flow_of(leaf("test-sleep", data={"ms": 300})))
    own = listen(events.flow_group(flow.pk))
    owner = listen(events.user_group(user.pk))
    wait_for_flow(flow, timeout=15)
    own.wait_for_event(flow.pk, FlowEvent.COMPLETED)
    progress = own.wait_for_event(flow.pk, FlowEvent.PROGRESS)
    final = [m["data"] for m in progress if m["event"] == FlowEvent.PROGRESS][-1]
    assert set(final) == {"flowId", "status", "progress", "seq"}
    told_twice = [m for m in progress if m["data"]["seq"] == final["seq"]]
    assert sorted(m["event"] for m in told_twice) == [FlowEvent.PROGRESS, FlowEvent.UPDATED]
    assert not any(m["event"] == FlowEvent.PROGRESS for m in owner.of_flow(flow.pk))
    updated = [m["data"] for m in owner.of_flow(flow.pk) if m["event"] == FlowEvent.UPDATED]
    assert updated and set(updated[-1]) == {"flowId", "status", "progress", "updatedAt", "seq"}


def test_a_failing_flow_ends_with_flow_failed_after_every_job_event(user, listen):
    owner = listen(events.user_group(user.pk))
    spec = flow_of(leaf("test-sum", children=[leaf("test-value", data={"value": 1}), leaf("test-fail")]))
    flow = wait_for_flow(flow_create(owner=user, spec=spec), timeout=15)
    assert flow.status == FlowStatus.FAILED
    ordered = by_seq(owner.wait_for_event(flow.pk, FlowEvent.FAILED))
    # The last one: a sibling still running when the flow failed gets it sent again.
    failed = [m for m in ordered if m["event"] == FlowEvent.FAILED][-1]
    # The REST flow's error object, built by the same function.
    failing = flow.jobs.get(name="test-fail")
    assert failed["data"]["error"] == flow_payload_of(flow)["error"] == {
        "message": flow.error, "type": "ValueError", "jobId": failing.pk,
    }
    assert failed["data"]["errorMessage"] == flow.error and failed["data"]["failedAt"]
    job_events = [m["data"] for m in ordered if m["event"] == FlowEvent.JOB_UPDATED]
    assert failed["data"]["seq"] > max(data["seq"] for data in job_events)
    finals = {data["jobId"]: data for data in job_events if data["jobStatus"] == JobStatus.FAILED}
    assert flow.root_job_id in finals  # the parent, failed by its child
    root_row = Job.objects.values(*JOB_STATE_FIELDS).get(pk=flow.root_job_id)
    assert finals[flow.root_job_id]["error"] == job_state_payload(root_row)["error"]
    assert finals[flow.root_job_id]["error"]["message"].startswith("Child job test-fail")
    assert finals[flow.root_job_id]["error"]["type"] == CHILD_FAILED_ERROR
    assert finals[failing.pk]["error"] == {"message": "boom", "type": "ValueError"}
    assert finals[failing.pk]["errorMessage"] == "boom"


def test_a_job_that_finishes_after_its_flow_failed_is_followed_by_the_final_event_again(user, listen):
    owner = listen(events.user_group(user.pk))
    spec = flow_of(leaf("test-sum", children=[leaf("test-sleep", data={"ms": 1500}), leaf("test-fail")]))
    flow = flow_create(owner=user, spec=spec)
    slow = flow.jobs.get(name="test-sleep")
    wait_for(lambda: Job.objects.filter(pk=slow.pk, status=JobStatus.COMPLETED).exists(), timeout=15,
             message="the slow sibling to finish after the failure")
    flow.refresh_from_db()
    assert flow.status == FlowStatus.FAILED

    def last_job_event_then_failed():
        ordered = by_seq(owner.of_flow(flow.pk))
        names = [m["event"] for m in ordered]
        if FlowEvent.FAILED not in names or FlowEvent.JOB_UPDATED not in names:
            return None
        last_failed = max(i for i, name in enumerate(names) if name == FlowEvent.FAILED)
        last_job = max(i for i, name in enumerate(names) if name == FlowEvent.JOB_UPDATED)
        return last_failed > last_job and ordered[last_job]["data"]["jobId"] == slow.pk and ordered

    ordered = wait_for(last_job_event_then_failed, timeout=10, message="flow:failed after the sibling's completion")
    assert_numbered_without_holes(ordered)
    failed = [m for m in ordered if m["event"] == FlowEvent.FAILED]
    assert len(failed) == 2  # when the flow failed, and again after the late sibling
    assert failed[0]["data"] | {"seq": 0} == failed[1]["data"] | {"seq": 0}


def test_cancel_and_delete_publish_their_events(user, listen):
    owner = listen(events.user_group(user.pk))
    flow = flow_create(owner=user, spec=flow_of(leaf("test-sum", children=[leaf("test-sleep", data={"ms": 3000})])))
    wait_for(lambda: flow.jobs.filter(status=JobStatus.ACTIVE).exists(), timeout=10, message="the sleeper to start")
    flow_cancel(flow=flow)
    ordered = by_seq(owner.wait_for_event(flow.pk, FlowEvent.CANCELLED))
    cancelled = [m["data"]["jobId"] for m in ordered if m["event"] == FlowEvent.JOB_UPDATED
                 and m["data"]["jobStatus"] == JobStatus.CANCELLED]
    assert sorted(cancelled) == sorted(flow.jobs.values_list("id", flat=True))
    last_job_seq = max(m["data"]["seq"] for m in ordered if m["event"] == FlowEvent.JOB_UPDATED)
    assert next(m for m in ordered if m["event"] == FlowEvent.CANCELLED)["data"]["seq"] > last_job_seq

    flow.refresh_from_db()
    flow_delete(flow=flow)
    deleted = next(m for m in owner.wait_for_event(flow.pk, FlowEvent.DELETED) if m["event"] == FlowEvent.DELETED)
    assert deleted["data"] == {"flowId": flow.pk, "seq": deleted["data"]["seq"]}
    assert deleted["data"]["seq"] == flow.event_seq + 1


def test_a_retry_publishes_the_reset_jobs(user, listen):
    owner = listen(events.user_group(user.pk))
    spec = flow_of(leaf("test-sum", children=[leaf("test-fail"), leaf("test-value", data={"value": 2})]))
    flow = wait_for_flow(flow_create(owner=user, spec=spec), timeout=15)
    before = flow.event_seq
    flow_retry(flow=flow)
    wait_for(lambda: len([m for m in owner.of_flow(flow.pk) if m["data"]["seq"] > before
                          and m["event"] == FlowEvent.JOB_UPDATED]) >= 2, timeout=10, message="the retry's events")
    reset = {m["data"]["jobId"]: m["data"]["jobStatus"] for m in owner.of_flow(flow.pk)
             if m["data"]["seq"] in (before + 1, before + 2)}
    failing = flow.jobs.get(name="test-fail").pk
    assert reset == {flow.root_job_id: JobStatus.WAITING_CHILDREN, failing: JobStatus.WAITING}


def test_another_users_groups_hear_nothing(user, other_user, listen):
    other = listen(events.user_group(other_user.pk))
    owner = listen(events.user_group(user.pk))
    flow = wait_for_flow(flow_create(owner=user, spec=flow_of(leaf("test-value", data={"value": 1}))), timeout=15)
    owner.wait_for_event(flow.pk, FlowEvent.COMPLETED)
    assert other.drain() == []


def test_staff_hear_every_flow(user, listen):
    staff = listen(events.STAFF_GROUP)
    flow = wait_for_flow(flow_create(owner=user, spec=flow_of(leaf("test-value", data={"value": 1}))), timeout=15)
    names = [m["event"] for m in by_seq(staff.wait_for_event(flow.pk, FlowEvent.COMPLETED))]
    assert names[0] == FlowEvent.CREATED and FlowEvent.COMPLETED in names


def test_a_wide_flow_coalesces_its_progress_and_sends_one_after_the_last_change(user, listen):
    owner = listen(events.user_group(user.pk))
    width = 300
    spec = flow_of(leaf("test-sum", children=[leaf("test-value", data={"value": 1}) for _ in range(width)]))
    flow = wait_for_flow(flow_create(owner=user, spec=spec), timeout=60)
    owner.wait_for_event(flow.pk, FlowEvent.COMPLETED)
    wait_for(lambda: any(m["event"] == FlowEvent.UPDATED and m["data"]["progress"]["completed"] == width + 1
                         for m in owner.of_flow(flow.pk)), timeout=5, message="the final progress")
    counts = Counter(m["event"] for m in owner.of_flow(flow.pk))
    assert counts[FlowEvent.JOB_UPDATED] == 2 * (width + 1)  # every status change
    assert counts[FlowEvent.UPDATED] < (width + 1) / 4  # coalesced
    assert_numbered_without_holes(owner.of_flow(flow.pk))


def test_progress_is_counted_only_for_flows_somebody_listens_to(user, other_user, staff_user, listen):
    flow = wait_for_flow(flow_create(owner=user, spec=flow_of(leaf("test-value", data={"value": 1}))), timeout=15)
    # A staff Socket.IO client of an earlier test that left without waiting is only
    # noticed by the server at its Engine.IO ping timeout (25 + 20 s): until then it
    # still hears every flow. (In the suite's order this module runs before those tests.)
    wait_for(lambda: not events._get_publisher().listening({events.STAFF_GROUP}), timeout=60,
             message="no staff listener left from an earlier test")
    assert events._listened({flow.pk}) == set()
    listen(events.user_group(other_user.pk))
    assert events._listened({flow.pk}) == set()
    for group in (events.user_group(user.pk), events.flow_group(flow.pk), events.STAFF_GROUP):
        listener = listen(group)
        assert events._listened({flow.pk}) == {flow.pk}, group
        listener.close()


def test_with_events_off_nothing_is_numbered_or_sent(user, listen, settings, monkeypatch):
    from flows import services
    from jobs import transitions
    from jobs.transitions import job_complete, job_start

    settings.FLOWSITE_EVENTS = False
    owner = listen(events.user_group(user.pk))
    # The job runs here, in this process, where events are off (the workers have them
    # on): its message is not published.
    monkeypatch.setattr(services, "enqueue_jobs", lambda refs: None)
    monkeypatch.setattr(transitions, "enqueue_jobs", lambda refs: None)
    flow = flow_create(owner=user, spec=flow_of(leaf("test-sum", children=[leaf("test-value", data={"value": 1})]),
                                                 flowname="quiet"))
    child = flow.jobs.get(parent__isnull=False)
    started = job_start(job_id=child.pk)
    flow.refresh_from_db()
    assert flow.status == FlowStatus.RUNNING  # unnumbered, the start still moves the flow
    assert started is not None and job_complete(job=started, result=1)
    flow.refresh_from_db()
    assert flow.event_seq == 0
    settings.FLOWSITE_EVENTS = True
    flow_cancel(flow=flow)  # events on again: this is the first numbered event
    ordered = by_seq(owner.wait_for_event(flow.pk, FlowEvent.CANCELLED))
    assert ordered[0]["data"]["seq"] == 1
    assert not any(m["event"] == FlowEvent.CREATED for m in ordered)


def test_with_nobody_listening_nothing_is_numbered_until_somebody_listens(user, listen):
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    client = redis.Redis.from_url(config["hosts"][0])
    client.delete(events._listening_key())  # no web process here has a connection
    events._gate.forget()
    # The workers read the key at most every GATE_POLL_SECONDS: until then they may still
    # number (an earlier test of this module opened it), which is harmless but not this test.
    time.sleep(3 * events.GATE_POLL_SECONDS)
    raw = client.pubsub(ignore_subscribe_messages=True)  # hears without holding the key open
    raw.subscribe(f"{config['prefix']}__group__{events.user_group(user.pk)}")
    spec = flow_of(leaf("test-sum", children=[leaf("test-value", data={"value": 2})]), flowname="unheard")
    quiet = wait_for_flow(flow_create(owner=user, spec=spec), timeout=15)
    assert quiet.status == FlowStatus.COMPLETED
    assert quiet.event_seq == 0
    assert raw.get_message(timeout=0.5) is None
    raw.close()

    owner = listen(events.user_group(user.pk))  # a connection: the key opens, workers number again
    heard = wait_for_flow(flow_create(owner=user, spec=spec), timeout=15)
    ordered = by_seq(owner.wait_for_event(heard.pk, FlowEvent.COMPLETED))
    assert [m["event"] for m in ordered][0] == FlowEvent.CREATED
    assert_numbered_without_holes(ordered)
    flow_delete(flow=quiet)
    deleted = owner.wait_for_event(quiet.pk, FlowEvent.DELETED)
    assert_numbered_without_holes(deleted)
    assert deleted[0]["data"]["seq"] == 1


def test_a_retried_attempt_and_an_attached_job_have_their_events(user, listen):
    owner = listen(events.user_group(user.pk))
    spec = flow_of(leaf("test-submit", children=[
        leaf("test-flaky", data={"succeedOnAttempt": 2}, opts={"attempts": 2, "backoff": 50}),
    ]))
    flow = wait_for_flow(flow_create(owner=user, spec=spec), timeout=15)
    assert flow.status == FlowStatus.COMPLETED
    ordered = by_seq(owner.wait_for_event(flow.pk, FlowEvent.COMPLETED))
    flaky = flow.jobs.get(name="test-flaky").pk
    attempts = [(m["data"]["jobStatus"], m["data"]["attemptsMade"], m["data"].get("error"))
                for m in ordered if m["event"] == FlowEvent.JOB_UPDATED and m["data"]["jobId"] == flaky]
    assert attempts == [
        (JobStatus.ACTIVE, 1, None), (JobStatus.DELAYED, 1, {"message": "failing attempt 1", "type": "RuntimeError"}),
        (JobStatus.ACTIVE, 2, None), (JobStatus.COMPLETED, 2, None),
    ]
    attached = flow.jobs.get(name="test-sleep").pk
    statuses = [m["data"]["jobStatus"] for m in ordered if m["event"] == FlowEvent.JOB_UPDATED
                and m["data"]["jobId"] == attached]
    assert statuses == [JobStatus.WAITING, JobStatus.ACTIVE, JobStatus.COMPLETED]
    assert ordered[-1]["event"] in (FlowEvent.COMPLETED, FlowEvent.UPDATED)


def test_flow_created_is_the_flow_as_the_rest_detail_shows_it(user, listen, monkeypatch):
    from flows import services
    from tests.conftest import token_client

    owner = listen(events.user_group(user.pk))
    monkeypatch.setattr(services, "enqueue_jobs", lambda refs: None)  # nothing runs: the detail stays as created
    flow = flow_create(owner=user, spec=flow_of(leaf("test-sum", data={"k": [1, "two"]}, children=[
        leaf("test-value", data={"value": n}, opts={"attempts": 2}) for n in range(3)
    ])))
    created = owner.wait_for_event(flow.pk, FlowEvent.CREATED)[0]["data"]
    assert created.pop("seq") == 1
    detail = token_client(user).get(f"/api/flows/{flow.pk}").json()
    assert created == detail
