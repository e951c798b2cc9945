"""No job is ever stranded: lost runs, lost messages, a broker or a database that goes away.

Real processes throughout: the session's Celery workers, workers of the tests' own
on the ``isolated`` queue (killed as a machine would lose them), Celery beat sending
the sweeps, PostgreSQL and Redis. The suite runs with short recovery settings
(pytest.ini): heartbeat 1 s, stalled after 4 s, redispatch after 3 s, a sweep a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from flows.models import Flow
from flows.services import flow_create
from jobs import liveness, sweeps
from jobs.models import Job, JobLog, QueueState, Worker
from jobs.vocabulary import FlowStatus, JobStatus
from tests.conftest import ISOLATED_QUEUE, ROOT, service_env, wait_for, wait_for_flow

pytestmark = pytest.mark.usefixtures("engine_db")

BACKOFF_MS = 200


def flow_of(root, flowname="stranded"):
    return {"flowname": flowname, **root}


def leaf(name="test-value", queue="default", **extra):
    return {"name": name, "queueName": queue, **extra}


def start_worker(env, name: str, *, queue: str = ISOLATED_QUEUE, log_path=None, extra_env=None) -> subprocess.Popen:
    """A ``celery worker`` in a process group of its own (``os.killpg`` kills it with its pool)."""
    log = open(log_path or settings.DATA_DIR / f"{name}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "flowsite", "worker", "-Q", queue, "-c", "1", "-P", "prefork",
         "-l", "info", "-n", f"{name}@%h", "--without-mingle", "--without-gossip"],
        cwd=ROOT, env={**env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def wait_until_consuming(name: str) -> None:
    from flowsite.celery import app

    def up():
        return any(name in next(iter(reply)) for reply in app.control.ping(timeout=0.5) or [])

    wait_for(up, timeout=60, interval=0.2, message=f"worker {name} to start")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def env(engine_db):
    return service_env(connection.settings_dict["NAME"])


@pytest.fixture
def workers(env):
    """Start workers of the test's own; every one is stopped at the end."""
    started = []

    def start(name: str, **kwargs) -> subprocess.Popen:
        process = start_worker(env, name, **kwargs)
        started.append(process)
        wait_until_consuming(name)
        return process

    yield start
    for process in started:
        stop(process)


@pytest.fixture
def beat(env, tmp_path):
    """``celery beat``: sends ``jobs.sweep`` every FLOWSITE_SWEEP_INTERVAL to the sweep queue."""
    log = open(tmp_path / "beat.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "flowsite", "beat", "-l", "info", "-s", str(tmp_path / "schedule")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    yield process
    process.terminate()
    process.wait(15)
    log.close()


def active_run(job_id: str) -> Job:
    return wait_for(
        lambda: Job.objects.filter(pk=job_id, status=JobStatus.ACTIVE, worker_id__isnull=False).first(),
        timeout=30, message=f"job {job_id} to run",
    )


# A WHOLE WORKER DIES
# ------------------------------------------------------------------------------


def test_a_whole_worker_killed_mid_job_is_retried_and_its_flow_completes(user, workers, beat):
    first = workers("doomed")
    spec = flow_of(leaf("test-sum", children=[
        leaf("test-hang-first-time", queue=ISOLATED_QUEUE,
             opts={"attempts": 2, "backoff": {"type": "fixed", "delay": BACKOFF_MS}}),
        leaf(data={"value": 1}),
    ]))
    flow = flow_create(owner=user, spec=spec)
    hanging = flow.jobs.get(name="test-hang-first-time")
    run = active_run(hanging.pk)
    assert run.worker_id.split(":")[1] != str(first.pid)  # the pool process, not the main one
    workers("rescuer")  # the only other consumer of the queue: idle until the job comes back

    os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool, as a lost machine or OOM kill
    killed_at = time.monotonic()
    flow = wait_for_flow(flow, timeout=60)
    took = time.monotonic() - killed_at

    hanging.refresh_from_db()
    assert flow.status == FlowStatus.COMPLETED, flow.error
    assert hanging.attempts_made == 2
    assert (hanging.result, flow.result) == (2, 3)
    assert JobLog.objects.filter(job=hanging, message__contains="Attempt 1 of this job was lost").exists()
    assert took < settings.FLOWSITE_STALLED_AFTER + settings.FLOWSITE_SWEEP_INTERVAL + BACKOFF_MS / 1000, took
    assert QueueState.objects.get(name=ISOLATED_QUEUE).stalled_total >= 1


def make_active_run(user, *, worker_id: str, started_ago: float) -> Job:
    """A flow whose only job is ``active`` on ``worker_id`` (on the queue nobody consumes here)."""
    flow = flow_create(owner=user, spec=flow_of(leaf(queue=ISOLATED_QUEUE, data={"value": 1},
                                                     opts={"attempts": 2, "backoff": BACKOFF_MS})))
    job = flow.jobs.get()
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.ACTIVE, attempts_made=1, worker_id=worker_id,
        started_at=timezone.now() - timedelta(seconds=started_ago),
    )
    Flow.objects.filter(pk=flow.pk).update(status=FlowStatus.RUNNING)
    return job


def test_a_run_on_a_worker_of_another_machine_is_lost_only_once_its_heartbeat_is_stale(user):
    now = timezone.now()
    worker = Worker.objects.create(id="elsewhere:4242:cafe", hostname="elsewhere", pid=4242,
                                   queues=[ISOLATED_QUEUE], started_at=now, last_seen_at=now)
    job = make_active_run(user, worker_id=worker.pk, started_ago=60)

    sweeps.recover_lost_runs(ISOLATED_QUEUE)  # the worker was heard from just now: alive
    job.refresh_from_db()
    assert (job.status, job.attempts_made) == (JobStatus.ACTIVE, 1)
    assert liveness.live_workers_per_queue().get(ISOLATED_QUEUE) == 1

    Worker.objects.filter(pk=worker.pk).update(
        last_seen_at=now - timedelta(seconds=settings.FLOWSITE_STALLED_AFTER + 1)
    )
    assert sweeps.recover_lost_runs(ISOLATED_QUEUE) == 1
    job.refresh_from_db()
    assert (job.status, job.error_type, job.attempts_made) == (JobStatus.DELAYED, "JobLostError", 1)
    assert "elsewhere:4242:cafe" in job.error
    assert sweeps.recover_lost_runs(ISOLATED_QUEUE) == 0  # recorded once
    assert ISOLATED_QUEUE not in liveness.live_workers_per_queue()


def test_a_run_whose_worker_never_wrote_a_heartbeat_is_lost_after_the_stall_time(user):
    fresh = make_active_run(user, worker_id="elsewhere:1:0000", started_ago=1)
    stale = make_active_run(user, worker_id="elsewhere:2:0000", started_ago=settings.FLOWSITE_STALLED_AFTER + 1)

    assert sweeps.recover_lost_runs(ISOLATED_QUEUE) == 1

    fresh.refresh_from_db()
    stale.refresh_from_db()
    assert fresh.status == JobStatus.ACTIVE
    assert (stale.status, stale.error_type) == (JobStatus.DELAYED, "JobLostError")


def test_a_last_attempt_lost_fails_the_flow_with_its_failure_policy(user):
    flow = flow_create(owner=user, spec=flow_of(leaf("test-sum", children=[
        leaf(queue=ISOLATED_QUEUE, data={"value": 1}), leaf(data={"value": 2}),
    ])))
    lost = flow.jobs.get(queue_name=ISOLATED_QUEUE)
    Job.objects.filter(pk=lost.pk).update(
        status=JobStatus.ACTIVE, attempts_made=1, worker_id="elsewhere:3:0000",
        started_at=timezone.now() - timedelta(seconds=settings.FLOWSITE_STALLED_AFTER + 1),
    )

    assert sweeps.recover_lost_runs(ISOLATED_QUEUE) == 1

    flow = wait_for_flow(flow, timeout=15)
    lost.refresh_from_db()
    assert (lost.status, lost.error_type) == (JobStatus.FAILED, "JobLostError")
    assert flow.status == FlowStatus.FAILED
    assert Job.objects.get(pk=flow.root_job_id).status == JobStatus.FAILED


def test_a_flow_whose_root_finished_unnoticed_is_settled_by_the_sweep(user):
    # The worker that completed the root died before it settled the flow: the root's
    # message, redelivered, finds the job completed and does nothing.
    flow = flow_create(owner=user, spec=flow_of(leaf(queue=ISOLATED_QUEUE, data={"value": 1})))
    long_ago = timezone.now() - timedelta(seconds=settings.FLOWSITE_REDISPATCH_AFTER + 1)
    Job.objects.filter(pk=flow.root_job_id).update(status=JobStatus.COMPLETED, result=41, attempts_made=1,
                                                   started_at=long_ago, finished_at=long_ago)
    Flow.objects.filter(pk=flow.pk).update(status=FlowStatus.RUNNING)

    assert sweeps.settle_finished_flows() == 1

    flow.refresh_from_db()
    assert (flow.status, flow.result) == (FlowStatus.COMPLETED, 41)
    assert sweeps.settle_finished_flows() == 0


def test_a_flow_whose_root_just_finished_is_left_to_its_worker(user):
    flow = flow_create(owner=user, spec=flow_of(leaf(queue=ISOLATED_QUEUE, data={"value": 1})))
    Job.objects.filter(pk=flow.root_job_id).update(status=JobStatus.COMPLETED, result=1, finished_at=timezone.now())
    Flow.objects.filter(pk=flow.pk).update(status=FlowStatus.RUNNING)

    assert sweeps.settle_finished_flows() == 0


def test_two_sweeps_at_once_do_not_both_run(user):
    with sweeps._exclusive() as first:
        assert first
        from django.db import connections

        # Another connection, as another worker's sweep would have.
        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [sweeps._LOCK_KEY])
                assert cursor.fetchone()[0] is False
        finally:
            other.close()
    assert sweeps.sweep().ran


# REDELIVERY OF A LIVE RUN
# ------------------------------------------------------------------------------


def test_a_healthy_long_job_whose_message_comes_back_is_not_marked_lost_and_runs_once(user, workers, tmp_path):
    log_path = tmp_path / "short-visibility.log"
    # Messages unacknowledged for 2 s go back to the queue, while the job runs for 7 s.
    workers("short-visibility", log_path=log_path, extra_env={"CELERY_VISIBILITY_TIMEOUT": "2"})
    workers("second-consumer", extra_env={"CELERY_VISIBILITY_TIMEOUT": "2"})
    flow = flow_create(owner=user, spec=flow_of(leaf("test-sleep", queue=ISOLATED_QUEUE, data={"ms": 7000},
                                                     opts={"attempts": 3})))
    job = flow.jobs.get()
    active_run(job.pk)

    flow = wait_for_flow(flow, timeout=60)

    job.refresh_from_db()
    assert flow.status == FlowStatus.COMPLETED, flow.error
    assert job.attempts_made == 1
    runs = JobLog.objects.filter(job=job, message__startswith="start ").count()
    assert runs == 1
    logs = log_path.read_text() + (settings.DATA_DIR / "second-consumer.log").read_text()
    assert f"Job {job.pk} is not startable; delivery ignored" in logs  # the message did come back


def test_a_delay_longer_than_the_visibility_timeout_runs_the_job_once(user, workers):
    workers("short-visibility", extra_env={"CELERY_VISIBILITY_TIMEOUT": "2"})
    workers("second-consumer", extra_env={"CELERY_VISIBILITY_TIMEOUT": "2"})
    # The delayed message waits, unacknowledged, three visibility timeouts in a worker:
    # Redis gives it out again meanwhile, and both copies come due together.
    flow = flow_create(owner=user, spec=flow_of(leaf("test-sleep", queue=ISOLATED_QUEUE, data={"ms": 10},
                                                     opts={"delay": 6000, "attempts": 3})))

    flow = wait_for_flow(flow, timeout=60)

    job = flow.jobs.get()
    assert flow.status == FlowStatus.COMPLETED, flow.error
    assert job.attempts_made == 1
    assert JobLog.objects.filter(job=job, message__startswith="start ").count() == 1


# MESSAGES THAT NEVER ARRIVE
# ------------------------------------------------------------------------------


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the probe is closed


def test_a_flow_created_while_the_broker_is_down_is_201_and_completes_when_the_sweep_publishes_it(
    alice, env, beat, tmp_path
):
    from tests.live import run_server

    down = {**env, "REDIS_URL": f"redis://127.0.0.1:{closed_port()}/15"}
    spec = flow_of(leaf("test-sum", children=[leaf(data={"value": 2}), leaf(data={"value": 3})]))
    QueueState.objects.get_or_create(name="default")
    republished_before = QueueState.objects.get(name="default").redispatched_total
    with run_server(down, tmp_path) as server:
        request = urllib.request.Request(
            f"{server.url}/api/flows", data=json.dumps(spec).encode(), method="POST",
            headers={"Authorization": f"Bearer {alice.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 201
            body = json.loads(response.read())
        assert "Could not publish 2 job message(s)" in server.log()
    flow = wait_for_flow(Flow.objects.get(pk=body["flowId"]), timeout=30)  # nobody does anything more

    assert (flow.status, flow.result) == (FlowStatus.COMPLETED, 5)
    # The two leaves were published by the sweep (their only messages were never sent).
    assert QueueState.objects.get(name="default").redispatched_total >= republished_before + 2


def test_submit_flow_with_the_broker_down_warns_and_exits_zero(user, env, beat):
    down = {**env, "REDIS_URL": f"redis://127.0.0.1:{closed_port()}/15"}
    spec = json.dumps(flow_of(leaf(data={"value": 7})))
    done = subprocess.run(
        [sys.executable, "manage.py", "submit_flow", "--owner", user.username, "-"],
        cwd=ROOT, env=down, input=spec, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    flow_id = done.stdout.strip().splitlines()[-1]
    assert "could not be reached" in done.stderr
    assert "Traceback" not in done.stderr

    flow = wait_for_flow(Flow.objects.get(pk=flow_id), timeout=30)
    assert (flow.status, flow.result) == (FlowStatus.COMPLETED, 7)


def status_counts():
    from django.db.models import Count

    return (dict(Job.objects.values_list("status").annotate(n=Count("pk")).order_by()),
            list(Job.objects.exclude(status="completed").values_list("status", "name", "error_type", "error",
                                                                     "attempts_made", "worker_id")[:4]))


def test_every_flow_completes_when_the_broker_is_flushed_mid_run(user, beat):
    from flowsite.celery import app

    spec = flow_of(leaf("test-sum", children=[leaf(data={"value": 1}), leaf(data={"value": 2})]))
    flows = [flow_create(owner=user, spec=spec) for _ in range(200)]
    wait_for(lambda: Flow.objects.filter(status=FlowStatus.COMPLETED).count() >= 20, timeout=60,
             message=f"the run to get going {status_counts()}")
    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()  # every queued and unacknowledged message is gone

    wait_for(lambda: Flow.objects.filter(pk__in=[f.pk for f in flows], status=FlowStatus.COMPLETED).count() == 200,
             timeout=120, interval=0.5, message="all 200 flows to complete")
    assert not Job.objects.exclude(status=JobStatus.COMPLETED).filter(flow__in=flows).exists()


def test_every_flow_completes_when_postgresql_drops_every_worker_connection_mid_run(user):
    retry = {"attempts": 3, "backoff": BACKOFF_MS}  # a run cut off from the database is a lost attempt
    spec = flow_of(leaf("test-echo", opts=retry,
                        children=[leaf("test-sleep", data={"ms": 50}, opts=retry) for _ in range(3)]))
    flows = [flow_create(owner=user, spec=spec) for _ in range(40)]
    wait_for(lambda: Job.objects.filter(flow__in=flows, status=JobStatus.COMPLETED).count() >= 10, timeout=60,
             message="the run to get going")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cursor.fetchone()[0] >= 1

    wait_for(lambda: Flow.objects.filter(pk__in=[f.pk for f in flows], status=FlowStatus.COMPLETED).count() == 40,
             timeout=120, interval=0.5, message=f"all 40 flows to complete {status_counts()}")


# WHAT OPERATORS SEE
# ------------------------------------------------------------------------------


def test_the_dashboard_and_queues_show_live_workers_and_the_oldest_waiting_job(user, api, staff_user):
    from tests.conftest import token_client

    flow = flow_create(owner=user, spec=flow_of(leaf(queue=ISOLATED_QUEUE, data={"value": 1})))
    Job.objects.filter(flow=flow).update(created_at=timezone.now() - timedelta(seconds=90))
    wait_for(lambda: liveness.live_workers_per_queue().get("default", 0) >= 4, timeout=15,
             message="the session's four pool processes to be live")

    queues = {row["name"]: row for row in api.get("/api/queues").json()}
    assert queues["default"]["liveWorkers"] >= 4
    assert queues[ISOLATED_QUEUE]["liveWorkers"] == 0
    assert queues[ISOLATED_QUEUE]["oldestWaitingSeconds"] >= 90
    assert queues["default"]["oldestWaitingSeconds"] is None or queues["default"]["oldestWaitingSeconds"] < 90

    by_name = token_client(staff_user).get("/api/dashboard").json()["queueHealth"]
    assert by_name[ISOLATED_QUEUE]["liveWorkers"] == 0
    assert by_name[ISOLATED_QUEUE]["oldestWaitingSeconds"] >= 90
    assert {"stalledTotal", "redispatchedTotal"} <= set(by_name["default"])


def test_the_embedded_modes_sweeper_thread_runs_the_sweeps(user):
    from flowsite.embedded import _Sweeper

    # A standalone job whose message was never published (as if its process died at commit).
    job = Job.objects.create(owner=user, name="test-value", queue_name="alt", data={"value": 1},
                             status=JobStatus.WAITING, redispatch_at=timezone.now() - timedelta(seconds=1))

    sweeper = _Sweeper()
    try:
        wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.COMPLETED).exists(), timeout=15,
                 message="the sweeper thread to publish the stranded job, and a worker to run it")
    finally:
        sweeper.stop(5)
    assert QueueState.objects.get(name="alt").redispatched_total >= 1
