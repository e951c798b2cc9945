"""The flow engine end to end: PostgreSQL, Redis and two real Celery worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.models import Flow
from flows.selectors import flow_progress
from flows.services import flow_cancel, flow_create, flow_delete
from jobs.exceptions import FlowClosed, InvalidTransition
from jobs.models import Job, JobLog
from jobs.services import job_submit
from jobs.dispatch import JobRef, enqueue_jobs
from jobs.vocabulary import FailurePolicy, FlowStatus, JobStatus
from tests.conftest import ROOT, wait_for, wait_for_deliveries, wait_for_flow, worker_log

pytestmark = pytest.mark.usefixtures("engine_db")


def leaf(name: str = "test-value", queue: str = "default", *, value=None, **fields) -> dict:
    """One job spec; ``value`` goes into its data (the test handlers read it)."""
    if value is not None:
        fields["data"] = {**fields.get("data", {}), "value": value}
    return {"name": name, "queueName": queue, **fields}


def flow_of(root: dict, flowname: str = "test-flow") -> dict:
    return {"flowname": flowname, **root}


def job_named(flow: Flow, name: str) -> Job:
    return Job.objects.get(flow=flow, name=name)


def test_video_example_flow_returns_the_watermarked_file(user):
    spec = json.loads(Path(ROOT / "examples/video-flow.json").read_text())

    flow = wait_for_flow(flow_create(owner=user, spec=spec))

    assert flow.status == FlowStatus.COMPLETED
    download = job_named(flow, "download-video")
    assert flow.result["outputPath"] == download.result["filePath"].replace(".mp4", "-watermarked.mp4")
    assert flow.result["thumbnailPath"] == job_named(flow, "generate-thumbnail").result["thumbnailPath"]
    assert flow.started_at is not None and flow.completed_at >= flow.started_at
    assert flow.updated_at == flow.completed_at
    assert set(Job.objects.filter(flow=flow).values_list("status", flat=True)) == {JobStatus.COMPLETED}
    assert JobLog.objects.filter(job=download, message__startswith="Downloading").exists()
    assert download.progress == 100


def test_three_level_tree_runs_children_before_parents(user):
    spec = flow_of(
        leaf("test-sum", value=100, children=[
            leaf("test-sum", value=10, children=[leaf(value=1), leaf(value=2)]),
            leaf("test-sum", value=20, queue="video", children=[leaf(value=3, queue="image")]),
        ])
    )

    flow = wait_for_flow(flow_create(owner=user, spec=spec))

    assert flow.status == FlowStatus.COMPLETED
    assert flow.result == 100 + (10 + 1 + 2) + (20 + 3)
    jobs = list(Job.objects.filter(flow=flow).select_related("parent"))
    assert len(jobs) == 6
    for job in jobs:
        assert job.status == JobStatus.COMPLETED
        assert job.attempts_made == 1
        if job.parent:
            assert job.finished_at <= job.parent.started_at
    assert flow_progress(flow=flow)["percentage"] == 100.0


def test_siblings_run_in_parallel_on_several_workers(user):
    spec = flow_of(leaf("test-value", children=[leaf("test-sleep", data={"ms": 800}) for _ in range(4)]))

    flow = wait_for_flow(flow_create(owner=user, spec=spec))

    runs = [job.result for job in Job.objects.filter(flow=flow, name="test-sleep")]
    assert len(runs) == 4
    # All four overlapped: the last to start began before the first to finish ended.
    assert max(run["start"] for run in runs) < min(run["end"] for run in runs)
    assert len({run["pid"] for run in runs}) >= 2


def test_parent_receives_children_values_by_name_and_job_id(user):
    spec = flow_of(
        leaf("test-echo", data={"label": "root"}, children=[
            leaf(value={"filePath": "/a.mp4"}),
            leaf("test-echo", queue="image", data={"label": "child"}),
        ])
    )

    flow = wait_for_flow(flow_create(owner=user, spec=spec))

    value_job = job_named(flow, "test-value")
    echo_child = Job.objects.get(flow=flow, name="test-echo", parent__isnull=False)
    values = flow.result["childrenValues"]
    assert values["test-value"] == {"filePath": "/a.mp4"}
    assert values[value_job.id] == {"filePath": "/a.mp4"}
    assert values[echo_child.id]["data"] == {"label": "child"}
    assert values["test-echo"]["flowId"] == flow.id
    assert flow.result["data"] == {"label": "root"}
    injected_at = flow.result["metadata"]["injectedAt"]
    assert flow.result["metadata"] == {
        "flowId": flow.id, "flowname": "test-flow", "rootJobId": flow.root_job_id, "parentJobId": None,
        "parentFlowName": "test-flow", "injectedAt": injected_at,
    }
    assert echo_child.data["_flowMetadata"]["injectedAt"] == injected_at  # one time for the whole tree
    assert echo_child.data["_flowMetadata"]["parentJobId"] == flow.root_job_id
    assert flow.job_structure["jobId"] == flow.root_job_id
    assert {c["jobId"] for c in flow.job_structure["children"]} == {value_job.id, echo_child.id}


def _attempt_times(job: Job) -> list[float]:
    return [float(line.message.rsplit(" ", 1)[1]) for line in job.logs.filter(message__startswith="attempt")]


def test_retries_with_fixed_backoff_then_succeeds(user):
    spec = flow_of(leaf("test-flaky", data={"succeedOnAttempt": 3}, opts={
        "attempts": 3, "backoff": {"type": "fixed", "delay": 400},
    }))

    flow = wait_for_flow(flow_create(owner=user, spec=spec))

    job = Job.objects.get(pk=flow.root_job_id)
    assert flow.status == FlowStatus.COMPLETED
    assert flow.result == {"attempt": 3}
    assert job.attempts_made == 3
    times = _attempt_times(job)
    assert len(times) == 3
    assert all(later - earlier >= 0.4 for earlier, later in zip(times, times[1:]))


def test_exponential_backoff_doubles_the_wait_and_gives_up_after_attempts(user):
    spec = flow_of(leaf("test-fail", data={"message": "still broken"}, opts={
        "attempts": 3, "backoff": {"type": "exponential", "delay": 300},
    }))

    flow = wait_for_flow(flow_create(owner=user, spec=spec))

    job = Job.objects.get(pk=flow.root_job_id)
    assert flow.status == FlowStatus.FAILED
    assert job.status == JobStatus.FAILED
    assert job.attempts_made == 3
    assert job.error == "still broken" and job.error_type == "ValueError"
    assert "ValueError: still broken" in job.stacktrace
    first, second, third = _attempt_times(job)
    assert second - first >= 0.3
    assert third - second >= 0.6


def test_final_failure_fails_ancestors_without_running_them_and_the_flow_at_once(user):
    spec = flow_of(
        leaf("test-echo", children=[
            leaf("test-echo", children=[leaf("test-fail", data={"message": "disk full"})]),
            leaf("test-sleep", data={"ms": 3000}),
        ])
    )

    flow = flow_create(owner=user, spec=spec)
    wait_for(lambda: Flow.objects.get(pk=flow.pk).status == FlowStatus.FAILED, message="the flow to fail")

    # The slow sibling is still running: the flow failed as soon as the leaf did.
    assert job_named(flow, "test-sleep").status == JobStatus.ACTIVE
    flow.refresh_from_db()
    assert "disk full" in flow.error
    for parent in Job.objects.filter(flow=flow, name="test-echo"):
        assert parent.status == JobStatus.FAILED
        assert parent.started_at is None
        assert parent.error_type == "ChildFailed"
    wait_for(lambda: job_named(flow, "test-sleep").status == JobStatus.COMPLETED, message="the sibling")
    flow.refresh_from_db()
    assert flow.status == FlowStatus.FAILED
    assert Job.objects.get(pk=flow.root_job_id).started_at is None


def test_ignore_dependency_on_failure_runs_the_parent_with_the_failure(user):
    spec = flow_of(leaf("test-echo", children=[
        leaf(value=7),
        leaf("test-fail", data={"message": "optional step broke"}, opts={"ignoreDependencyOnFailure": True}),
    ]))

    # Seconds, not the default minute: a parent never released fails the test fast.
    flow = wait_for_flow(flow_create(owner=user, spec=spec), timeout=10)

    failed = job_named(flow, "test-fail")
    assert failed.status == JobStatus.FAILED
    assert failed.failure_policy == FailurePolicy.IGNORE
    assert flow.status == FlowStatus.COMPLETED
    assert flow.result["childrenValues"]["test-value"] == 7
    assert flow.result["childrenFailures"]["test-fail"] == {
        "jobId": failed.id, "name": "test-fail", "error": "optional step broke", "errorType": "ValueError",
    }
    assert flow.result["childrenFailures"][failed.id]["error"] == "optional step broke"


def test_remove_dependency_on_failure_runs_the_parent_as_if_the_child_did_not_exist(user):
    spec = flow_of(leaf("test-echo", children=[
        leaf(value=7),
        leaf("test-fail", opts={"removeDependencyOnFailure": True}),
    ]))

    flow = wait_for_flow(flow_create(owner=user, spec=spec), timeout=10)

    failed = job_named(flow, "test-fail")
    assert flow.status == FlowStatus.COMPLETED
    assert set(flow.result["childrenValues"]) == {"test-value", job_named(flow, "test-value").id}
    assert flow.result["childrenFailures"] == {}
    assert failed.id not in json.dumps(flow.result)


def test_fail_parent_on_failure_false_leaves_the_parent_waiting_and_fails_the_flow(user):
    spec = flow_of(leaf("test-echo", children=[leaf("test-fail", opts={"failParentOnFailure": False})]))

    flow = wait_for_flow(flow_create(owner=user, spec=spec), timeout=10)

    assert flow.status == FlowStatus.FAILED
    assert Job.objects.get(pk=flow.root_job_id).status == JobStatus.WAITING_CHILDREN


def test_delay_holds_the_job_before_it_runs(user):
    spec = flow_of(leaf(value="late", opts={"delay": 1200}))

    flow = flow_create(owner=user, spec=spec)
    job = Job.objects.get(pk=flow.root_job_id)
    assert job.status == JobStatus.DELAYED
    flow = wait_for_flow(flow)

    job.refresh_from_db()
    assert flow.result == "late"
    assert (job.started_at - job.created_at).total_seconds() >= 1.2


def test_timeout_fails_the_attempt_and_retries_like_any_failure(user):
    spec = flow_of(leaf("test-sleep", data={"ms": 3000}, opts={"timeout": 300, "attempts": 2}))

    flow = wait_for_flow(flow_create(owner=user, spec=spec))

    job = Job.objects.get(pk=flow.root_job_id)
    assert flow.status == FlowStatus.FAILED
    assert job.status == JobStatus.FAILED
    assert job.attempts_made == 2
    assert job.error_type == "JobTimeoutError"
    assert job.error == "Job timed out after 300 ms"
    assert (job.finished_at - job.created_at).total_seconds() < 3


def test_a_job_whose_worker_process_dies_is_retried_like_any_failure(user):
    spec = flow_of(leaf("test-die-first-time", opts={"attempts": 2, "backoff": {"type": "fixed", "delay": 200}}))

    flow = wait_for_flow(flow_create(owner=user, spec=spec))

    job = Job.objects.get(pk=flow.root_job_id)
    assert flow.status == FlowStatus.COMPLETED, job.error
    assert flow.result == {"survived": 2}
    assert job.attempts_made == 2
    assert JobLog.objects.filter(job=job, message__contains="Attempt 1 of this job was lost").exists()


def test_a_job_whose_worker_loses_the_database_is_retried_when_it_is_back(user):
    spec = flow_of(leaf("test-lose-database-first-time", opts={"attempts": 2}))

    flow = wait_for_flow(flow_create(owner=user, spec=spec), timeout=90)

    job = Job.objects.get(pk=flow.root_job_id)
    assert flow.status == FlowStatus.COMPLETED, job.error
    assert flow.result == {"attempt": 2}
    assert job.attempts_made == 2
    assert JobLog.objects.filter(job=job, message__contains="Attempt 1 of this job was lost").exists()


def test_a_job_whose_worker_process_dies_with_no_attempt_left_fails_its_flow(user):
    spec = flow_of(leaf("test-sum", children=[leaf("test-die-first-time"), leaf(value=1)]))

    flow = wait_for_flow(flow_create(owner=user, spec=spec))

    dead = job_named(flow, "test-die-first-time")
    assert flow.status == FlowStatus.FAILED
    assert (dead.status, dead.attempts_made, dead.error_type) == (JobStatus.FAILED, 1, "JobLostError")
    assert "was lost" in flow.error
    assert Job.objects.get(pk=flow.root_job_id).status == JobStatus.FAILED


def test_a_timed_out_handler_is_interrupted_not_left_running(user):
    spec = flow_of(leaf("test-sleep", data={"ms": 2000}, opts={"timeout": 300}))

    flow = wait_for_flow(flow_create(owner=user, spec=spec))

    job = Job.objects.get(pk=flow.root_job_id)
    assert (flow.status, job.error_type) == (FlowStatus.FAILED, "JobTimeoutError")
    # The handler logs the exception that stopped its sleep, then re-raises it: it got an
    # exception where it was, before the job was failed, and runs no more. An abandoned
    # handler would have logged nothing yet, and "end" later.
    logs = list(JobLog.objects.filter(job=job).values_list("message", flat=True))
    assert len(logs) == 2 and logs[0].startswith("start "), logs
    assert logs[1] == "interrupted by SoftTimeLimitExceeded"


def test_a_handler_timed_out_inside_a_database_query_leaves_a_working_worker(user):
    spec = flow_of(leaf("test-db-sleep", data={"ms": 3000}, opts={"timeout": 300, "attempts": 2}))

    # Seconds, not the default minute: a worker stuck on a busy connection fails the test fast.
    flow = wait_for_flow(flow_create(owner=user, spec=spec), timeout=10)

    job = Job.objects.get(pk=flow.root_job_id)
    assert (flow.status, job.error_type, job.attempts_made) == (FlowStatus.FAILED, "JobTimeoutError", 2)
    # Both workers still run jobs (neither kept a connection stuck mid-query).
    more = flow_of(leaf("test-sum", children=[leaf(value=1)] * 4))
    after = wait_for_flow(flow_create(owner=user, spec=more), timeout=10)
    assert after.status == FlowStatus.COMPLETED


def test_cancel_mid_flow_stops_everything_that_has_not_run(user):
    spec = flow_of(leaf("test-echo", children=[
        leaf("test-sleep", data={"ms": 1500}),
        leaf("test-echo", children=[leaf("test-value", opts={"delay": 1000})]),
    ]))
    flow = flow_create(owner=user, spec=spec)
    sleeper, delayed = job_named(flow, "test-sleep"), job_named(flow, "test-value")
    wait_for(lambda: Job.objects.get(pk=sleeper.pk).status == JobStatus.ACTIVE, message="the sleeper to start")

    flow = flow_cancel(flow=flow)

    assert flow.status == FlowStatus.CANCELLED
    assert set(Job.objects.filter(flow=flow).values_list("status", flat=True)) == {JobStatus.CANCELLED}
    # The sleeper finishes its run and the delayed job comes due (or is revoked).
    wait_for_deliveries([sleeper.id, delayed.id])
    for job in Job.objects.filter(flow=flow):
        assert job.status == JobStatus.CANCELLED
        assert job.result is None
    assert Job.objects.get(pk=delayed.pk).started_at is None
    assert Job.objects.get(pk=flow.root_job_id).started_at is None
    flow.refresh_from_db()
    assert flow.status == FlowStatus.CANCELLED
    with pytest.raises(InvalidTransition):
        flow_cancel(flow=flow)


def test_delete_cancels_then_removes_every_row(user):
    flow = flow_create(owner=user, spec=flow_of(leaf("test-echo", children=[leaf("test-sleep", data={"ms": 500})])))
    sleeper = job_named(flow, "test-sleep")
    wait_for(lambda: JobLog.objects.filter(job=sleeper).exists(), message="the sleeper to log its start")

    flow_delete(flow=flow)

    assert not Flow.objects.filter(pk=flow.pk).exists()
    assert not Job.objects.filter(flow_id=flow.pk).exists()
    assert not JobLog.objects.filter(job=sleeper).exists()
    # The sleeper's run ends after the delete (logging "end", completing): it writes nothing.
    wait_for_deliveries([sleeper.id])
    assert not Job.objects.filter(flow_id=flow.pk).exists()
    assert not JobLog.objects.filter(job_id=sleeper.id).exists()


def test_a_duplicated_delivery_changes_nothing(user):
    flow = wait_for_flow(flow_create(owner=user, spec=flow_of(leaf("test-sum", children=[leaf("test-sleep")]))))
    before = {job.id: (job.status, job.attempts_made, job.result, job.finished_at) for job in flow.jobs.all()}
    logs_before = JobLog.objects.filter(job__flow=flow).count()

    def ignored() -> dict[str, int]:
        log = worker_log()
        return {job_id: log.count(f"Job {job_id} is not startable; delivery ignored") for job_id in before}

    ignored_before = ignored()
    enqueue_jobs([JobRef(id=job_id, queue_name="default", opts={}) for job_id in before] * 2)
    wait_for_deliveries(before)

    # Both duplicates of each job were consumed by a worker, which refused to start them.
    assert ignored() == {job_id: count + 2 for job_id, count in ignored_before.items()}
    after = {job.id: (job.status, job.attempts_made, job.result, job.finished_at) for job in flow.jobs.all()}
    assert after == before
    assert JobLog.objects.filter(job__flow=flow).count() == logs_before


def test_a_job_delivered_twice_at_once_runs_once(user):
    flow = flow_create(owner=user, spec=flow_of(leaf("test-sleep", data={"ms": 600}, opts={"delay": 500})))

    enqueue_jobs([JobRef(id=flow.root_job_id, queue_name="default", opts={})] * 3)
    wait_for_flow(flow)

    job = Job.objects.get(pk=flow.root_job_id)
    assert job.attempts_made == 1
    assert job.logs.filter(message__startswith="start").count() == 1


def test_a_chain_of_depth_50_completes(user):
    node = leaf("test-sum", value=1)
    for _ in range(49):
        node = leaf("test-sum", value=1, children=[node])

    flow = wait_for_flow(flow_create(owner=user, spec=flow_of(node)), timeout=120)

    assert flow.status == FlowStatus.COMPLETED
    assert flow.result == 50
    assert Job.objects.filter(flow=flow, status=JobStatus.COMPLETED).count() == 50


def test_500_siblings_finishing_together_lose_no_update(user):
    spec = flow_of(leaf("test-sum", children=[leaf(value=1, queue=("default", "video")[i % 2]) for i in range(500)]))

    flow = wait_for_flow(flow_create(owner=user, spec=spec), timeout=180)

    root = Job.objects.get(pk=flow.root_job_id)
    assert flow.status == FlowStatus.COMPLETED
    assert flow.result == 500
    assert root.pending_children == 0 and root.child_count == 500
    assert root.attempts_made == 1
    assert Job.objects.filter(flow=flow, status=JobStatus.COMPLETED).count() == 501
    assert flow_progress(flow=flow)["completed"] == 501


def test_a_job_submitted_by_a_handler_joins_the_flow_on_another_queue(user):
    flow = flow_create(owner=user, spec=flow_of(leaf("test-submit", data={"ms": 800})))
    wait_for(lambda: Job.objects.filter(flow=flow, queue_name="alt").exists(), message="the attached job")

    # The root finished, but the flow waits for the job its handler submitted.
    wait_for(lambda: Job.objects.get(pk=flow.root_job_id).status == JobStatus.COMPLETED, message="the root")
    flow.refresh_from_db()
    assert flow.status == FlowStatus.RUNNING
    flow = wait_for_flow(flow)

    attached = Job.objects.get(flow=flow, queue_name="alt")
    assert flow.status == FlowStatus.COMPLETED
    assert flow.result == {"submitted": attached.id}
    assert attached.status == JobStatus.COMPLETED and attached.parent is None
    assert attached.data["flowId"] == flow.id
    assert attached.data["_flowMetadata"]["flowId"] == flow.id
    assert flow.total_jobs == 2
    assert flow_progress(flow=flow)["total"] == 2


def test_a_job_submitted_with_a_flow_id_in_its_data_is_attached(user):
    flow = flow_create(owner=user, spec=flow_of(leaf("test-sleep", data={"ms": 500})))

    job = job_submit(name="test-value", queue_name="alt", data={"flowId": flow.id, "value": 3})

    assert job.flow_id == flow.id
    flow = wait_for_flow(flow)
    assert flow.status == FlowStatus.COMPLETED
    assert Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED
    assert flow_progress(flow=flow)["completed"] == 2
    with pytest.raises(FlowClosed):
        job_submit(name="test-value", queue_name="alt", data={"flowId": flow.id})


def test_a_standalone_job_runs_without_a_flow(user):
    job = job_submit(name="test-value", queue_name="image", data={"value": "solo"})

    wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED, message="the job")
    assert Job.objects.get(pk=job.pk).result == "solo"


def test_a_result_that_is_not_json_fails_the_job_clearly(user):
    flow = wait_for_flow(flow_create(owner=user, spec=flow_of(leaf("test-unserialisable"))))

    job = Job.objects.get(pk=flow.root_job_id)
    assert job.status == JobStatus.FAILED
    assert job.error_type == "TypeError"
    assert "JSON serializable" in job.error
