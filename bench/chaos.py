#!/usr/bin/env python
"""Chaos run: flows of mixed shapes while worker process groups are SIGKILLed and Redis restarts.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and ``redis-server`` on
the PATH: the script starts its own Redis on a free port, because it restarts it, and
never touches the machine's shared Redis. Run from the project root::

    .venv/bin/python bench/chaos.py                    # 500 flows, a kill every 4 s, ~2 minutes
    .venv/bin/python bench/chaos.py --flows 60 --rate 5 --kills 3 --kill-interval 2.5   # the test's run, ~25 s
    .venv/bin/python bench/chaos.py --help

The slow test ``tests/test_chaos.py`` runs a small chaos run through this script.

What it does
------------
- Isolation: PostgreSQL database ``flowsite_bench_chaos`` (``--db-name``; created if
  missing, migrated, emptied at start), and a ``redis-server`` of its own on a free
  port (``--redis-port``), without persistence (``--save "" --appendonly no``), its
  files in a temporary directory. Everything it started is stopped at the end, on
  Ctrl-C, SIGTERM or an exception.
- Processes, all with short recovery settings (``FLOWSITE_HEARTBEAT_SECONDS=1``,
  ``FLOWSITE_STALLED_AFTER=4``, ``FLOWSITE_REDISPATCH_AFTER=5``,
  ``FLOWSITE_SWEEP_INTERVAL=1``; options below) and ``FLOWSITE_EVENTS=0``:
  ``--workers`` (3) ``celery -A flowsite worker -P prefork -c 2`` on the queues
  ``chaos-a,chaos-b``, each in its own process group (``start_new_session``), so that
  ``os.killpg(pgid, SIGKILL)`` kills the worker and its pool at once, as when a
  container or machine dies: nobody gives their messages back, only the sweep can
  recover their runs; and one ``celery -A flowsite beat`` sending the sweeps.
- Flows (``flows.services.flow_create``, in a thread of this process, as a web process
  would, ``--rate`` per second (5: about 22 jobs/s, which the workers keep up with
  under the chaos, so that the recovery figures are not a backlog's), seeded by
  ``--seed``): single jobs, 1 parent + 2-8 children, chains of depth 3-5, two-level
  trees, fan-ins with a child that fails its first attempt on purpose, and fan-ins with
  a child that always fails under ``ignoreDependencyOnFailure``. Every job has
  ``attempts`` 5 (``--attempts``) and a 200 ms backoff, so that a lost run (a failed
  attempt, ``JobLostError``) is retried. The handler (``bench/chaos_handlers.py``)
  sleeps 20-300 ms and records every run in files of its own, so duplicate runs are
  counted without trusting the engine under test.
- Chaos: every ``--kill-interval`` seconds (4), one random worker's process group is
  SIGKILLed and a replacement started at once. Once, at the first event after half of
  the flows were created, Redis is killed instead (SIGKILL) and started again on the
  same port ``--redis-down`` seconds (2) later, empty: queued messages, unacknowledged
  ones and kombu's bindings are gone, which the sweep must repair. The chaos stops when
  every flow was created and 80% have finished (or after ``--kills`` kills), or after
  ``--chaos-limit`` seconds; then the script waits (``--final-wait``, 180 s) for every
  flow to finish.
- Supervision: a worker (or beat) that exits although nobody killed it is started
  again at once, as systemd or a container restart policy would, and reported with
  the last CRITICAL line of its log. (Seen: a worker that loses Redis while it runs a
  job and waits for the next message exits with Celery's "Unrecoverable error:
  AttributeError(... 'hostname')".)

What is reported (a markdown table at the end; ``--json-out`` writes the figures)
------------------------------------------------------------------------------
- Flows completed / failed (with their error) / unfinished; jobs; wall time from the
  first flow created to the last one finished.
- Lost runs: the runs active on a killed process at the kill (the job rows read just
  after it), the lost attempts the engine recorded (``JobLostError`` log lines, matched
  one to one, by job and attempt, against the runs seen lost), and the sweep's
  counters ``QueueState.stalled_total`` / ``redispatched_total``.
- Duplicate handler runs = handler runs - runs that failed on purpose - jobs with a
  successful run: what at-least-once delivery cost. Split into runs interrupted by a
  kill (a start line and no end line) and successful runs of a job that had already
  run successfully (killed after its handler returned, before the completion was
  committed). Two runs of one job at the same time, or two runs with the same attempt
  number, would be engine bugs and are reported on their own.
- Recovery, per chaos event (one line each, then the extremes in the table):
  *recorded* = from the kill until the sweep recorded each lost run (the log line's
  time: the heartbeat must go silent for ``FLOWSITE_STALLED_AFTER``, then a sweep run);
  *next attempt* = from the kill until each lost run's next attempt started (the
  handler's run records: + the backoff and the wait in the queue);
  *all started again* = from the event until every job that was running on a killed
  process, or waiting/delayed at the event, or (Redis) became waiting while it was
  down, had started a run after the event (or finished without one). The longest of
  these over the run is the "longest recovery".
- Forbidden states: any job not final at the end; a completed flow with a job that is
  not completed (a failure under an ignore/remove policy excepted), a root that is not
  completed, or a result that is not the root's or not the number of its jobs that
  completed (each child counted once by its parent); ``attempts_made > max_attempts``;
  a parent that started before a child finished, or finished with children pending; a
  completed job without ``started_at``/``finished_at``; a handler run that started
  after its job had finished; a lost run the engine never recorded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on sys.path, where bench/flows.py would
# shadow the ``flows`` app: put the project root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.flows import log  # noqa: E402  (after the sys.path fix)

PG_SERVER = "postgres://postgres@127.0.0.1:5432"
PYTHON = sys.executable
QUEUES = ("chaos-a", "chaos-b")
HANDLER = "chaos-work"
LOST_MARKER = "of this job was lost before it finished"


@dataclass
class Config:
    flows: int = 500
    rate: float = 5.0  # flows created per second (~22 jobs/s: below what 3 x 2 processes do under the chaos)
    workers: int = 3
    concurrency: int = 2
    kill_interval: float = 4.0
    kills: int | None = None  # stop the chaos after this many kills (None: when 80% of the flows finished)
    redis_down: float = 2.0
    stop_at_finished: float = 0.8
    chaos_limit: float = 300.0
    final_wait: float = 180.0
    attempts: int = 5
    backoff_ms: int = 200
    heartbeat: int = 1
    stalled_after: int = 4
    redispatch_after: int = 5
    sweep_interval: int = 1
    visibility_timeout: int | None = None  # CELERY_VISIBILITY_TIMEOUT (None: the project's default)
    db_name: str = "flowsite_bench_chaos"
    redis_port: int = 0  # 0: a free port
    seed: int = 1
    keep: bool = False


# Environment, database ------------------------------------------------------------


def chaos_env(config: Config, redis_url: str, runs_dir: Path) -> dict[str, str]:
    """The environment of this process and of every process it starts."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FLOWSITE_READ_DOT_ENV_FILE", "CELERY_WORKER_PREFETCH_MULTIPLIER", "FLOWSITE_DATA_DIR",
                       "CELERY_VISIBILITY_TIMEOUT", "BENCH_BROKER_POOL_LIMIT")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="flowsite.settings",
        DATABASE_URL=f"{PG_SERVER}/{config.db_name}",
        REDIS_URL=redis_url,
        SECRET_KEY="chaos-secret-key-not-for-production",
        FLOWSITE_HANDLER_MODULES="bench.chaos_handlers",
        FLOWSITE_QUEUES=",".join(QUEUES),
        FLOWSITE_EVENTS="0",
        FLOWSITE_HEARTBEAT_SECONDS=str(config.heartbeat),
        FLOWSITE_STALLED_AFTER=str(config.stalled_after),
        FLOWSITE_REDISPATCH_AFTER=str(config.redispatch_after),
        FLOWSITE_SWEEP_INTERVAL=str(config.sweep_interval),
        CHAOS_RUNS_DIR=str(runs_dir),
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    if config.visibility_timeout:
        env["CELERY_VISIBILITY_TIMEOUT"] = str(config.visibility_timeout)
    return env


def ensure_database(name: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            log(f"creating PostgreSQL database {name}")
            conn.execute(f'CREATE DATABASE "{name}"')


def empty_tables() -> None:
    """Start from nothing: flows, jobs, logs, workers' heartbeats, queue counters."""
    from django.db import connection

    from flows.models import Flow
    from jobs.models import Job, JobLog, QueueState, Worker

    tables = ", ".join(model._meta.db_table for model in (JobLog, Job, Flow, QueueState, Worker))
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables} CASCADE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Processes --------------------------------------------------------------------------


def _own_group(command: list[str], *, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``command`` in a process group of its own (a Ctrl-C in the terminal does not reach it)."""
    with open(log_path, "a") as logfile:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(process: subprocess.Popen, *, grace: float = 20.0) -> None:
    """SIGTERM (a warm shutdown for Celery), then SIGKILL to the whole process group."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # leftovers of the group too (a pool child that hung)
    except ProcessLookupError:
        pass
    process.wait(5)


class RedisServer:
    """A ``redis-server`` of this run only: no persistence, so a restart loses every message."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port, self.directory = port, directory
        self.process: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--dir", str(self.directory), "--maxmemory-policy", "noeviction",
        ]
        self.process = _own_group(command, env=dict(os.environ), log_path=self.directory / "redis.log")
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}; see {self.directory}")
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        """As a crash would: SIGKILL, everything in memory lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process, grace=10)


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen
    started: float  # time.monotonic()


def start_worker(name: str, *, concurrency: int, env: dict[str, str], log_dir: Path) -> WorkerProcess:
    command = [
        PYTHON, "-m", "celery", "-A", "flowsite", "worker", "-Q", ",".join(QUEUES), "-c", str(concurrency),
        "-P", "prefork", "-l", "warning", "-n", f"{name}@%h", "--without-mingle", "--without-gossip",
    ]
    process = _own_group(command, env=env, log_path=log_dir / f"{name}.log")
    return WorkerProcess(name=name, process=process, started=time.monotonic())


def start_beat(*, env: dict[str, str], directory: Path) -> subprocess.Popen:
    """Celery beat, its schedule and pid files in the run's directory (not in the project)."""
    command = [
        PYTHON, "-m", "celery", "-A", "flowsite", "beat", "-l", "warning",
        "-s", str(directory / "beat-schedule"), "--pidfile", str(directory / "beat.pid"),
    ]
    return _own_group(command, env=env, log_path=directory / "beat.log")


def wait_for_workers(names: list[str], processes: list[WorkerProcess], timeout: float = 90.0) -> None:
    from flowsite.celery import app

    deadline = time.monotonic() + timeout
    while True:
        replies = app.control.ping(timeout=0.5) or []
        if set(names) <= {next(iter(reply)).split("@")[0] for reply in replies}:
            return
        if any(worker.process.poll() is not None for worker in processes):
            raise RuntimeError("a worker exited at start-up; see its log")
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not answer ping within {timeout:.0f} s")


def group_pids(pgid: int) -> list[int]:
    """Every process of the process group ``pgid`` (a worker's main process and its pool)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[2]) == pgid:
            pids.append(int(entry))
    return pids


# Flows --------------------------------------------------------------------------------


SHAPES = {  # name: weight
    "single": 25,
    "fan-in": 30,
    "chain": 20,
    "tree": 10,
    "flaky": 10,
    "ignored-failure": 5,
}


@dataclass
class SpecBuilder:
    """Random flow specifications; each also gives the root's expected result."""

    rng: random.Random
    attempts: int
    backoff_ms: int

    def node(self, children: list[dict] | None = None, **data: Any) -> dict:
        spec = {
            "name": HANDLER,
            "queueName": self.rng.choice(QUEUES),
            "data": {"ms": self.rng.randint(20, 300), **data},
            "opts": {"attempts": self.attempts, "backoff": self.backoff_ms},
        }
        if children:
            spec["children"] = children
        return spec

    def leaves(self, count: int) -> list[dict]:
        return [self.node() for _ in range(count)]

    def build(self, index: int) -> tuple[str, dict, int]:
        """(shape, spec, expected root result: the number of jobs that complete)."""
        shape = self.rng.choices(list(SHAPES), weights=list(SHAPES.values()))[0]
        if shape == "single":
            root, jobs = self.node(), 1
        elif shape == "fan-in":
            count = self.rng.randint(2, 8)
            root, jobs = self.node(self.leaves(count)), count + 1
        elif shape == "chain":
            depth = self.rng.randint(3, 5)
            root = self.node()
            for _ in range(depth - 1):
                root = self.node([root])
            jobs = depth
        elif shape == "tree":
            branches = [self.node(self.leaves(self.rng.randint(1, 3))) for _ in range(self.rng.randint(2, 3))]
            root = self.node(branches)
            jobs = 1 + sum(1 + len(branch["children"]) for branch in branches)
        elif shape == "flaky":  # a child, and sometimes the parent, fails its first attempt on purpose
            children = self.leaves(self.rng.randint(1, 4))
            children[0]["data"]["failAttempts"] = 1
            root = self.node(children, failAttempts=self.rng.choice([0, 1]))
            jobs = len(children) + 1
        else:  # ignored-failure: one child always fails; the parent must not wait for it
            children = self.leaves(self.rng.randint(1, 4))
            failing = self.node(alwaysFail=True)
            failing["opts"] = {"attempts": 2, "backoff": self.backoff_ms, "ignoreDependencyOnFailure": True}
            root = self.node([*children, failing])
            jobs = len(children) + 1
        return shape, {"flowname": f"chaos-{shape}", **root}, jobs


@dataclass
class CreatedFlow:
    id: str
    shape: str
    expected_result: int
    created_at: float


class _LogCounter(logging.Handler):
    """Counts log records (keeping the first one) instead of printing them."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.count, self.first = 0, ""

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.first = self.first or f"{record.name}: {record.getMessage().strip()[:200]}"


class ProcessNoise:
    """What went wrong in this (flow-creating) process while Redis was away, counted, not printed.

    - the engine's publish failures (``jobs.dispatch`` warnings; the sweep sends those jobs later);
    - errors of Celery's result backend, and exceptions raised where nobody can catch
      them (``AsyncResult.__del__``): ``send_task`` without ``ignore_result=True``
      subscribes to each task's result and unsubscribes when the result is dropped;
      with Redis down, that unsubscribe retried for up to 20 s inside ``flow_create``.
    """

    def __init__(self) -> None:
        self.publish = self._count("jobs.dispatch", logging.WARNING)
        self.backend = self._count("celery.backends", logging.ERROR)
        self.unraisable: list[str] = []
        sys.unraisablehook = lambda info: self.unraisable.append(
            f"{type(info.exc_value).__name__} in {getattr(info.object, '__qualname__', info.object)}")

    @staticmethod
    def _count(name: str, level: int) -> _LogCounter:
        counter = _LogCounter(level)
        logger = logging.getLogger(name)
        logger.addHandler(counter)
        logger.propagate = False
        return counter


# Chaos ----------------------------------------------------------------------------------


@dataclass
class ChaosEvent:
    kind: str  # "kill" or "redis"
    at: float  # time.time() of the SIGKILL
    target: str  # the worker killed, or "redis"
    pids: list[int] = field(default_factory=list)
    lost: dict[str, int] = field(default_factory=dict)  # job id -> attempt of the run lost
    pending: set[str] = field(default_factory=set)  # jobs waiting or delayed at the event (Redis: until back)
    back_at: float | None = None  # Redis: when it answered again


def _active_runs_on(pids: set[int]) -> dict[str, int]:
    """Job id -> attempt of the runs that processes ``pids`` of this machine had started."""
    from jobs.models import Job
    from jobs.vocabulary import JobStatus

    hostname = socket.gethostname()
    runs = {}
    for job_id, worker_id, attempt in Job.objects.filter(status=JobStatus.ACTIVE).values_list(
        "pk", "worker_id", "attempts_made"
    ):
        host, _, rest = (worker_id or "").partition(":")
        pid = rest.partition(":")[0]
        if host == hostname and pid.isdigit() and int(pid) in pids:
            runs[job_id] = attempt
    return runs


def _pending_jobs() -> set[str]:
    from jobs.models import Job
    from jobs.vocabulary import JobStatus

    return set(Job.objects.filter(status__in=(JobStatus.WAITING, JobStatus.DELAYED)).values_list("pk", flat=True))


@dataclass
class Death:
    """A process of the run that exited although nobody killed it."""

    name: str
    at: float
    exit_code: int | None
    reason: str


def _fatal_line(log_path: Path) -> str:
    """The last CRITICAL line of a log (Celery's "Unrecoverable error: ..."), or its last line."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    critical = [line for line in lines if "CRITICAL" in line]
    return (critical or lines or [""])[-1].strip()[:300]


class Chaos:
    """The workers, beat and Redis of the run, and the events done to them.

    It also stands in for a process supervisor (systemd, a container's restart
    policy): a worker or beat that exits although nobody killed it is started
    again at once, and recorded in ``deaths``, which the report shows.
    """

    def __init__(self, config: Config, env: dict[str, str], directory: Path, redis: RedisServer) -> None:
        self.config, self.env, self.directory, self.redis = config, env, directory, redis
        self.rng = random.Random(config.seed + 1)
        self.workers: list[WorkerProcess] = []
        self.beat: subprocess.Popen | None = None
        self.events: list[ChaosEvent] = []
        self.deaths: list[Death] = []
        self.generation = 0
        self.redis_event: ChaosEvent | None = None

    def start(self) -> None:
        for _ in range(self.config.workers):
            self.workers.append(self._new_worker())
        self.beat = start_beat(env=self.env, directory=self.directory)
        wait_for_workers([w.name for w in self.workers], self.workers)

    def _new_worker(self) -> WorkerProcess:
        self.generation += 1
        return start_worker(f"chaos{self.generation}", concurrency=self.config.concurrency, env=self.env,
                            log_dir=self.directory)

    @property
    def kills(self) -> int:
        return sum(1 for event in self.events if event.kind == "kill")

    @property
    def redis_down(self) -> bool:
        return self.redis_event is not None and self.redis_event.back_at is None

    def kill_worker(self) -> ChaosEvent | None:
        """SIGKILL a random worker's process group, start a replacement at once."""
        self.supervise()
        settled = [w for w in self.workers if time.monotonic() - w.started > self.config.kill_interval / 2]
        victim = self.rng.choice(settled or self.workers)
        pids = group_pids(victim.process.pid)
        at = time.time()
        try:
            os.killpg(victim.process.pid, signal.SIGKILL)
        except ProcessLookupError:  # it died on its own just now: the supervisor replaces it
            return None
        victim.process.wait(10)
        self.workers.remove(victim)
        self.workers.append(self._new_worker())
        # A start statement already sent by a killed process may still commit: read a moment later.
        time.sleep(0.3)
        event = ChaosEvent(kind="kill", at=at, target=victim.name, pids=sorted(pids),
                           lost=_active_runs_on(set(pids)), pending=_pending_jobs())
        self.events.append(event)
        log(f"killed {victim.name} (pids {event.pids}): {len(event.lost)} run(s) lost; started chaos{self.generation}")
        return event

    def kill_redis(self) -> None:
        pending = _pending_jobs()
        at = time.time()
        self.redis.kill()
        self.redis_event = ChaosEvent(kind="redis", at=at, target="redis", pending=pending)
        self.events.append(self.redis_event)
        log(f"killed Redis (port {self.redis.port}); {len(pending)} job(s) were queued")

    def restart_redis(self) -> None:
        self.redis.start()
        event = self.redis_event
        event.back_at = time.time()
        # Jobs that became due while Redis was down: their messages could not be sent.
        event.pending |= _pending_jobs()
        log(f"Redis back after {event.back_at - event.at:.1f} s, empty; {len(event.pending)} job(s) to recover")

    def supervise(self) -> None:
        """Start again a worker (or beat) that exited on its own, as a supervisor would."""
        for worker in list(self.workers):
            code = worker.process.poll()
            if code is None:
                continue
            self.workers.remove(worker)
            death = Death(worker.name, time.time(), code, _fatal_line(self.directory / f"{worker.name}.log"))
            self.deaths.append(death)
            self.workers.append(self._new_worker())
            log(f"!! {worker.name} exited on its own (code {code}): {death.reason}; started chaos{self.generation}")
        if self.beat is not None and self.beat.poll() is not None:
            self.deaths.append(Death("beat", time.time(), self.beat.returncode,
                                     _fatal_line(self.directory / "beat.log")))
            log(f"!! beat exited on its own (code {self.beat.returncode}); started again")
            self.beat = start_beat(env=self.env, directory=self.directory)

    def stop(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.terminate()  # warm shutdown: all of them at once
        for worker in self.workers:
            _stop(worker.process)
        if self.beat is not None:
            _stop(self.beat, grace=10)


class Creator(threading.Thread):
    """Creates the flows at ``config.rate`` per second, as a web process would, beside the chaos.

    A thread of its own, so that a ``flow_create`` that blocks (while Redis is down)
    delays neither the chaos nor Redis's return; the longest call is reported.
    """

    def __init__(self, config: Config, user) -> None:
        super().__init__(name="chaos-creator", daemon=True)
        self.config, self.user = config, user
        self.builder = SpecBuilder(random.Random(config.seed), config.attempts, config.backoff_ms)
        self.created: list[CreatedFlow] = []
        self.slowest = 0.0  # seconds, the longest flow_create call
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        from django.db import connections

        from flows.services import flow_create

        began = time.monotonic()
        try:
            while len(self.created) < self.config.flows and not self.halt.is_set():
                due = min(self.config.flows, int((time.monotonic() - began) * self.config.rate) + 1)
                while len(self.created) < due and not self.halt.is_set():
                    shape, spec, expected = self.builder.build(len(self.created))
                    called = time.monotonic()
                    flow = flow_create(owner=self.user, spec=spec)
                    self.slowest = max(self.slowest, time.monotonic() - called)
                    self.created.append(CreatedFlow(flow.pk, shape, expected, time.time()))
                time.sleep(0.02)
        except BaseException as exc:  # handed to the main thread
            self.error = exc
        finally:
            connections.close_all()


def run_chaos(config: Config, chaos: Chaos, creator: Creator) -> dict[str, float]:
    """Run the chaos while ``creator`` creates the flows; then wait for every flow to finish."""
    from flows.models import Flow
    from jobs.vocabulary import FINAL_FLOW_STATUSES

    timings: dict[str, float] = {"first_created": time.time()}
    began = time.monotonic()
    creator.start()
    next_event = began + config.kill_interval
    finished, next_count = 0, 0.0
    redis_done = False
    while True:
        now = time.monotonic()
        if creator.error is not None:
            raise RuntimeError("creating the flows failed") from creator.error
        if now >= next_count:
            finished = Flow.objects.filter(status__in=FINAL_FLOW_STATUSES).count()
            next_count = now + 0.5
        if chaos.redis_down:
            if time.time() - chaos.redis_event.at >= config.redis_down:
                chaos.restart_redis()
        elif now >= next_event:
            if not redis_done and len(creator.created) >= config.flows / 2:
                chaos.kill_redis()
                redis_done = True
            else:
                chaos.kill_worker()
            next_event = time.monotonic() + config.kill_interval
        chaos.supervise()
        all_created = not creator.is_alive() and len(creator.created) == config.flows
        enough = chaos.kills >= config.kills if config.kills is not None else (
            finished >= config.stop_at_finished * config.flows)
        if all_created and redis_done and not chaos.redis_down and enough:
            break
        if now - began > config.chaos_limit and not chaos.redis_down:
            log(f"chaos time limit ({config.chaos_limit:.0f} s) reached")
            break
        time.sleep(0.02)
    creator.halt.set()
    creator.join()
    if creator.error is not None:
        raise RuntimeError("creating the flows failed") from creator.error
    timings["chaos_end"] = time.time()
    log(f"chaos over: {chaos.kills} kill(s), Redis restarted {1 if redis_done else 0} time(s); "
        f"{finished}/{len(creator.created)} flows finished; waiting for the rest (at most {config.final_wait:.0f} s)")
    wait_for_final(config.final_wait, chaos)
    timings["all_final"] = time.time()
    return timings


def wait_for_final(timeout: float, chaos: Chaos) -> bool:
    """Wait until every flow is final and no job is left running or queued (bounded)."""
    from flows.models import Flow
    from jobs.models import Job
    from jobs.vocabulary import FINAL_FLOW_STATUSES, JobStatus

    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while time.monotonic() < deadline:
        chaos.supervise()
        open_flows = Flow.objects.exclude(status__in=FINAL_FLOW_STATUSES).count()
        busy = Job.objects.filter(status__in=(JobStatus.ACTIVE, JobStatus.WAITING, JobStatus.DELAYED)).count()
        if not open_flows and not busy:
            return True
        if time.monotonic() - last_report > 15:
            log(f"  {open_flows} flow(s) open, {busy} job(s) running or queued")
            last_report = time.monotonic()
        time.sleep(0.25)
    return False


# Analysis --------------------------------------------------------------------------------


@dataclass
class Run:
    job_id: str
    attempt: int
    pid: int
    start: float
    end: float | None = None
    outcome: str | None = None  # "ok", "raise", or None: interrupted


def read_runs(runs_dir: Path) -> list[Run]:
    """The handler's run records (bench/chaos_handlers.py); a torn last line is skipped."""
    runs: dict[tuple[int, str, int], Run] = {}
    for path in sorted(runs_dir.glob("*.runs")):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 5 or parts[4] not in ("start", "ok", "raise"):
                continue
            at, pid, job_id, attempt, event = float(parts[0]), int(parts[1]), parts[2], int(parts[3]), parts[4]
            key = (pid, job_id, attempt)
            if event == "start":
                runs[key] = Run(job_id=job_id, attempt=attempt, pid=pid, start=at)
            elif key in runs:
                runs[key].end, runs[key].outcome = at, event
    return sorted(runs.values(), key=lambda run: run.start)


def _epoch(value) -> float | None:
    return value.timestamp() if value is not None else None


@dataclass
class Report:
    config: dict
    seconds_total: float = 0.0
    seconds_flows: float = 0.0  # first flow created -> last flow finished
    flows: int = 0
    flows_by_status: dict[str, int] = field(default_factory=dict)
    failed_flows: list[str] = field(default_factory=list)
    shapes: dict[str, int] = field(default_factory=dict)
    jobs: int = 0
    jobs_by_status: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    redis_restarts: int = 0
    runs_lost_at_kills: int = 0
    lost_runs_recorded: int = 0
    lost_runs_not_recorded: list[str] = field(default_factory=list)
    lost_runs_recorded_not_seen: int = 0
    jobs_failed_by_lost_run: int = 0
    stalled_total: int = 0
    redispatched_total: int = 0
    publish_failures_here: int = 0
    backend_errors_here: int = 0
    backend_error_first: str = ""
    unraisable_here: list[str] = field(default_factory=list)
    slowest_flow_create: float = 0.0
    handler_runs: int = 0
    jobs_run: int = 0
    failed_on_purpose: int = 0
    duplicate_runs: int = 0
    duplicates_interrupted: int = 0
    duplicates_after_success: int = 0
    concurrent_runs: list[str] = field(default_factory=list)
    repeated_attempts: list[str] = field(default_factory=list)
    kill_detect_max: float | None = None
    kill_detect_median: float | None = None
    kill_restart_max: float | None = None
    kill_restart_median: float | None = None
    kill_recovery_max: float | None = None
    redis_recovery: float | None = None
    longest_recovery: float | None = None
    unrecovered: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)
    deaths: list[str] = field(default_factory=list)
    worker_log_errors: int = 0
    worker_log_messages: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # one line per chaos event, with its recovery
    directory: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.flows_by_status.get("completed", 0) == self.flows
            and not self.forbidden
            and not self.unrecovered
            and not self.concurrent_runs
            and not self.repeated_attempts
            and not self.lost_runs_not_recorded
        )


def check_states(created: list[CreatedFlow], runs: list[Run], report: Report) -> None:
    """Fill ``report.forbidden`` with every state the state machine and the flow rules forbid."""
    from flows.models import Flow
    from jobs.models import Job
    from jobs.vocabulary import IGNORED_FAILURE_POLICIES, TERMINAL_JOB_STATUSES, FlowStatus, JobStatus

    forbidden = report.forbidden
    expected = {flow.id: flow.expected_result for flow in created}
    jobs = {
        row["id"]: row
        for row in Job.objects.values(
            "id", "flow_id", "parent_id", "status", "attempts_made", "max_attempts", "failure_policy",
            "pending_children", "result", "started_at", "finished_at",
        )
    }
    children: dict[str, list[dict]] = defaultdict(list)
    by_flow: dict[str, list[dict]] = defaultdict(list)
    for job in jobs.values():
        by_flow[job["flow_id"]].append(job)
        if job["parent_id"]:
            children[job["parent_id"]].append(job)
    for job in jobs.values():
        name = f"job {job['id']}"
        if job["status"] not in TERMINAL_JOB_STATUSES:
            forbidden.append(f"{name} left {job['status']}")
        if job["attempts_made"] > job["max_attempts"]:
            forbidden.append(f"{name}: attempts_made {job['attempts_made']} > max_attempts {job['max_attempts']}")
        if job["status"] == JobStatus.COMPLETED:
            if job["started_at"] is None or job["finished_at"] is None or job["attempts_made"] < 1:
                forbidden.append(f"{name} completed without started_at/finished_at/attempt")
            kids = children.get(job["id"], [])
            if job["pending_children"]:
                forbidden.append(f"{name} completed with {job['pending_children']} child(ren) pending")
            for kid in kids:
                done = kid["status"] == JobStatus.COMPLETED or (
                    kid["status"] == JobStatus.FAILED and kid["failure_policy"] in IGNORED_FAILURE_POLICIES)
                if not done:
                    forbidden.append(f"{name} completed while its child {kid['id']} is {kid['status']}")
                elif kid["finished_at"] and job["started_at"] and job["started_at"] < kid["finished_at"]:
                    forbidden.append(f"{name} started before its child {kid['id']} finished")
    for flow in Flow.objects.values("id", "status", "result", "root_job_id", "error", "completed_at"):
        if flow["status"] != FlowStatus.COMPLETED:
            continue
        name = f"flow {flow['id']}"
        root = jobs.get(flow["root_job_id"])
        if root is None or root["status"] != JobStatus.COMPLETED:
            forbidden.append(f"{name} completed with its root {root and root['status']}")
            continue
        if flow["result"] != root["result"]:
            forbidden.append(f"{name}: result {flow['result']!r} is not its root's {root['result']!r}")
        if flow["id"] in expected and flow["result"] != expected[flow["id"]]:
            forbidden.append(f"{name}: result {flow['result']!r}, expected {expected[flow['id']]} completed jobs")
        for job in by_flow[flow["id"]]:
            if job["status"] != JobStatus.COMPLETED and not (
                job["status"] == JobStatus.FAILED and job["failure_policy"] in IGNORED_FAILURE_POLICIES
                and job["parent_id"]
            ):
                forbidden.append(f"{name} completed with job {job['id']} {job['status']}")
    # A run that starts after its job finished means the job left a final status.
    for run in runs:
        job = jobs.get(run.job_id)
        finished = _epoch(job["finished_at"]) if job else None
        if finished is not None and run.start > finished + 0.5:
            forbidden.append(f"job {run.job_id}: attempt {run.attempt} started {run.start - finished:.1f} s after "
                             f"the job finished ({job['status']})")


def count_duplicates(runs: list[Run], report: Report) -> None:
    """Handler runs beyond one successful run per job and the runs that failed on purpose."""
    by_job: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_job[run.job_id].append(run)
    report.handler_runs = len(runs)
    report.jobs_run = len(by_job)
    report.failed_on_purpose = sum(1 for run in runs if run.outcome == "raise")
    succeeded = sum(1 for job_runs in by_job.values() if any(run.outcome == "ok" for run in job_runs))
    report.duplicate_runs = report.handler_runs - report.failed_on_purpose - succeeded
    report.duplicates_interrupted = sum(1 for run in runs if run.outcome is None)
    report.duplicates_after_success = sum(
        max(sum(1 for run in job_runs if run.outcome == "ok") - 1, 0) for job_runs in by_job.values())
    for job_id, job_runs in by_job.items():
        attempts = Counter(run.attempt for run in job_runs)
        report.repeated_attempts += [f"job {job_id} attempt {a} ran {n} times" for a, n in attempts.items() if n > 1]
        for first in job_runs:  # a run that started while an earlier one was still going (and finished)
            for second in job_runs:
                if first.end is not None and first.start < second.start < first.end and first.pid != second.pid:
                    report.concurrent_runs.append(
                        f"job {job_id}: attempt {second.attempt} (pid {second.pid}) started while attempt "
                        f"{first.attempt} (pid {first.pid}) was running")


def measure_recovery(events: list[ChaosEvent], runs: list[Run], recorded: dict[tuple[str, int], float],
                     report: Report) -> None:
    """Per event: until the lost runs were recorded and ran again, and until every running or queued job started."""
    from jobs.models import Job

    starts: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        starts[run.job_id].append(run)
    involved = {job_id for event in events for job_id in (*event.lost, *event.pending)}
    finished = {
        job_id: (status, _epoch(at))
        for job_id, status, at in Job.objects.filter(pk__in=involved).values_list("pk", "status", "finished_at")
    }

    def recovered_at(job_id: str, after: float, attempt: int = 0) -> float | None:
        """When the job next started (a later attempt than ``attempt``), or finished without running."""
        for run in starts.get(job_id, []):
            if run.start >= after and run.attempt > attempt:
                return run.start
        status, at = finished.get(job_id, (None, None))
        if at is not None:
            return max(at, after)
        return None

    restarts: list[float] = []
    detections = [recorded[(job_id, attempt)] - event.at for event in events
                  for job_id, attempt in event.lost.items() if (job_id, attempt) in recorded]
    kill_recoveries: list[float] = []
    for event in events:
        lost_waits = []
        for job_id, attempt in event.lost.items():
            at = recovered_at(job_id, event.at, attempt)
            if at is None:
                report.unrecovered.append(f"job {job_id} (run lost at the kill of {event.target})")
                continue
            lost_waits.append(at - event.at)
        restarts += lost_waits
        waits = list(lost_waits)
        for job_id in event.pending - set(event.lost):
            at = recovered_at(job_id, event.at)
            if at is None:
                report.unrecovered.append(f"job {job_id} (queued at the {event.target} event)")
                continue
            waits.append(at - event.at)
        longest = max(waits, default=0.0)
        lost_waits.sort()
        report.events.append(
            f"{time.strftime('%H:%M:%S', time.localtime(event.at))} {event.kind} {event.target}: "
            + (_lost_summary(event, recorded, lost_waits) if event.kind == "kill"
               else f"down {event.back_at - event.at:.1f} s, " if event.back_at else "")
            + f"{len(event.pending)} queued; all started again after {longest:.1f} s")
        if event.kind == "kill":
            kill_recoveries.append(longest)
        else:
            report.redis_recovery = longest
    if detections:
        report.kill_detect_max = max(detections)
        report.kill_detect_median = statistics.median(detections)
    if restarts:
        report.kill_restart_max = max(restarts)
        report.kill_restart_median = statistics.median(restarts)
    if kill_recoveries:
        report.kill_recovery_max = max(kill_recoveries)
    report.longest_recovery = max([*kill_recoveries, report.redis_recovery or 0.0], default=None)


def _lost_summary(event: ChaosEvent, recorded: dict[tuple[str, int], float], restarted: list[float]) -> str:
    if not event.lost:
        return "no run lost, "
    found = sorted(recorded[run] - event.at for run in event.lost.items() if run in recorded)
    return (f"{len(event.lost)} run(s) lost (recorded after {', '.join(f'{w:.1f}' for w in found)} s, "
            f"next attempt after {', '.join(f'{w:.1f}' for w in restarted)} s), ")


def check_lost_runs(events: list[ChaosEvent], report: Report) -> dict[tuple[str, int], float]:
    """Match the runs seen lost at the kills with the lost attempts the engine recorded; return when each was."""
    from jobs.models import Job, JobLog, QueueState
    from jobs.vocabulary import TERMINAL_JOB_STATUSES

    recorded: dict[tuple[str, int], float] = {}
    for job_id, message, at in JobLog.objects.filter(message__contains=LOST_MARKER).values_list(
        "job_id", "message", "created_at"
    ):
        attempt = message.split()[1]  # "Attempt <n> of this job was lost ..."
        recorded[(job_id, int(attempt) if attempt.isdigit() else -1)] = at.timestamp()
    seen = {(job_id, attempt) for event in events for job_id, attempt in event.lost.items()}
    # A completion the killed process had already sent may still have committed after the
    # kill (and after the rows were read): that run finished, it was not lost.
    finished_in_flight = {
        (job_id, attempt)
        for job_id, attempt in Job.objects.filter(
            pk__in={job_id for job_id, _ in seen - set(recorded)}, status__in=TERMINAL_JOB_STATUSES
        ).values_list("pk", "attempts_made")
    } & (seen - set(recorded))
    seen -= finished_in_flight
    report.runs_lost_at_kills = len(seen)
    report.lost_runs_recorded = len(recorded)
    report.lost_runs_not_recorded = [f"job {job_id} attempt {attempt}"
                                     for job_id, attempt in sorted(seen - set(recorded))]
    report.lost_runs_recorded_not_seen = len(set(recorded) - seen)
    report.jobs_failed_by_lost_run = Job.objects.filter(status="failed", error_type="JobLostError").count()
    for stalled, redispatched in QueueState.objects.values_list("stalled_total", "redispatched_total"):
        report.stalled_total += stalled
        report.redispatched_total += redispatched
    return recorded


def count_log_errors(directory: Path) -> tuple[int, list[str]]:
    """ERROR/CRITICAL lines in the workers' and beat's logs: how many, and each message once, most frequent first."""
    messages: Counter[str] = Counter()
    for path in sorted(directory.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if " ERROR " in line or " CRITICAL " in line:
                # "2026-01-01 10:00:00,000 ERROR logger: message": the same message from any process once.
                text = line.split(" ", 2)[-1] if line[:4].isdigit() else line
                messages[text.strip()[:240]] += 1
    return sum(messages.values()), [f"{count} x {text}" for text, count in messages.most_common()]


def analyse(config: Config, chaos: Chaos, created: list[CreatedFlow], runs_dir: Path,
            timings: dict[str, float]) -> Report:
    from django.db.models import Count, Max

    from flows.models import Flow
    from jobs.models import Job

    report = Report(config=asdict(config))
    report.flows = len(created)
    report.shapes = dict(Counter(flow.shape for flow in created))
    report.flows_by_status = {row["status"]: row["n"] for row in Flow.objects.values("status").annotate(n=Count("pk"))}
    report.failed_flows = [f"flow {fid} ({name}): {error}" for fid, name, error in
                           Flow.objects.filter(status="failed").values_list("pk", "flowname", "error")]
    report.jobs_by_status = {row["status"]: row["n"] for row in Job.objects.values("status").annotate(n=Count("pk"))}
    report.jobs = sum(report.jobs_by_status.values())
    last = Flow.objects.aggregate(last=Max("completed_at"))["last"]
    if last is not None:
        report.seconds_flows = last.timestamp() - timings["first_created"]
    report.kills = chaos.kills
    report.redis_restarts = sum(1 for event in chaos.events if event.kind == "redis")
    runs = read_runs(runs_dir)
    count_duplicates(runs, report)
    recorded = check_lost_runs(chaos.events, report)
    measure_recovery(chaos.events, runs, recorded, report)
    check_states(created, runs, report)
    return report


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def render(report: Report, config: Config) -> str:
    status = report.flows_by_status
    unfinished = report.flows - sum(status.get(name, 0) for name in ("completed", "failed", "cancelled"))
    shapes = ", ".join(f"{name} {count}" for name, count in sorted(report.shapes.items()))
    jobs = ", ".join(f"{name} {count}" for name, count in sorted(report.jobs_by_status.items()))
    rows = [
        ("flows: completed / failed / unfinished",
         f"{status.get('completed', 0)} / {status.get('failed', 0)} / {unfinished} (of {report.flows}: {shapes})"),
        ("jobs", f"{report.jobs} ({jobs})"),
        ("wall time: first flow created -> last flow finished", _s(report.seconds_flows)),
        ("chaos: worker process groups SIGKILLed / Redis restarts",
         f"{report.kills} / {report.redis_restarts} (Redis down {config.redis_down:.0f} s, lost its data)"),
        ("runs lost at the kills (active on a killed process)", str(report.runs_lost_at_kills)),
        ("lost attempts recorded by the engine (JobLostError)",
         f"{report.lost_runs_recorded} ({len(report.lost_runs_not_recorded)} lost run(s) never recorded; "
         f"{report.jobs_failed_by_lost_run} job(s) out of attempts on a lost run)"),
        ("sweep counters: stalled_total / redispatched_total", f"{report.stalled_total} / {report.redispatched_total}"),
        ("handler runs (jobs run; failed on purpose)",
         f"{report.handler_runs} ({report.jobs_run}; {report.failed_on_purpose})"),
        ("duplicate handler runs (at-least-once)",
         f"{report.duplicate_runs}: {report.duplicates_interrupted} interrupted by a kill, "
         f"{report.duplicates_after_success} after a successful run"),
        ("two runs of a job at once / two runs of one attempt",
         f"{len(report.concurrent_runs)} / {len(report.repeated_attempts)}"),
        ("kill -> the sweep recorded the lost run (max; median)",
         f"{_s(report.kill_detect_max)}; {_s(report.kill_detect_median)}"),
        ("kill -> the lost run's next attempt started (max; median)",
         f"{_s(report.kill_restart_max)}; {_s(report.kill_restart_median)}"),
        ("worker kill -> every running or queued job started (max)", _s(report.kill_recovery_max)),
        ("Redis kill -> every queued job started", _s(report.redis_recovery)),
        ("longest recovery", _s(report.longest_recovery)),
        ("jobs never recovered", str(len(report.unrecovered))),
        ("processes that exited on their own (started again)", str(len(report.deaths))),
        ("longest flow_create call (Redis down included)", _s(report.slowest_flow_create)),
        ("forbidden states", "none" if not report.forbidden else str(len(report.forbidden))),
        ("settings",
         f"{config.workers} workers x prefork {config.concurrency}; heartbeat {config.heartbeat} s, stalled after "
         f"{config.stalled_after} s, redispatch after {config.redispatch_after} s, sweep every "
         f"{config.sweep_interval} s; attempts {config.attempts}, backoff {config.backoff_ms} ms; "
         f"{config.rate:g} flows/s; a kill every {config.kill_interval:g} s"),
    ]
    lines = ["| chaos run | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


# Main ---------------------------------------------------------------------------------------


def run(config: Config) -> Report:
    """One chaos run from start to report; everything started is stopped before it returns."""
    began = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="flowsite-chaos-"))
    runs_dir = directory / "runs"
    runs_dir.mkdir()
    redis = RedisServer(config.redis_port or free_port(), directory / "redis")
    env = chaos_env(config, redis.url, runs_dir)
    ensure_database(config.db_name)
    os.environ.clear()
    os.environ.update(env)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    empty_tables()
    user, _ = get_user_model().objects.get_or_create(username="chaos")
    noise = ProcessNoise()
    chaos = Chaos(config, env, directory, redis)
    creator = Creator(config, user)
    success = False
    try:
        redis.start()
        log(f"database {config.db_name} (migrated, emptied), Redis {redis.url}, files in {directory}")
        chaos.start()
        log(f"{config.workers} workers and beat up; creating {config.flows} flows at {config.rate:g}/s")
        timings = run_chaos(config, chaos, creator)
        chaos.stop()
        report = analyse(config, chaos, creator.created, runs_dir, timings)
        report.deaths = [f"{d.name} (exit {d.exit_code}, {d.at - timings['first_created']:.0f} s in): {d.reason}"
                         for d in chaos.deaths]
        report.slowest_flow_create = creator.slowest
        report.publish_failures_here = noise.publish.count
        report.backend_errors_here = noise.backend.count
        report.backend_error_first = noise.backend.first
        report.unraisable_here = noise.unraisable[:5] + ([f"... {len(noise.unraisable)} in all"]
                                                         if len(noise.unraisable) > 5 else [])
        report.worker_log_errors, error_lines = count_log_errors(directory)
        report.seconds_total = time.monotonic() - began
        report.directory = str(directory)
        report.worker_log_messages = error_lines[:12]
        success = report.ok
        return report
    finally:
        creator.halt.set()
        chaos.stop()
        redis.stop()
        if success and not config.keep:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            log(f"kept {directory} (worker logs, run records)")


def print_report(report: Report, config: Config) -> None:
    for title, items in (
        ("failed flows", report.failed_flows),
        ("forbidden states", report.forbidden),
        ("jobs never recovered", report.unrecovered),
        ("lost runs the engine never recorded", report.lost_runs_not_recorded),
        ("two runs of a job at once", report.concurrent_runs),
        ("two runs of one attempt", report.repeated_attempts),
    ):
        if items:
            print(f"\n## {title} ({len(items)})\n")
            for item in items[:30]:
                print(f"- {item}")
    if report.deaths:
        print(f"\n## processes that exited on their own, started again ({len(report.deaths)})\n")
        for death in report.deaths:
            print(f"- {death}")
    print(f"\nthe creating process: longest flow_create {report.slowest_flow_create:.1f} s; "
          f"{report.publish_failures_here} publish failure(s); {report.backend_errors_here} result-backend "
          f"error(s){' (first: ' + report.backend_error_first + ')' if report.backend_error_first else ''}; "
          f"uncatchable exceptions: {', '.join(report.unraisable_here) or 'none'}")
    print(f"ERROR/CRITICAL lines in the workers' and beat's logs: {report.worker_log_errors}")
    for line in report.worker_log_messages:
        print(f"  {line}")
    if report.events:
        print("\n## Chaos events\n")
        for line in report.events:
            print(f"- {line}")
    print("\n## Chaos run (paste into BENCHMARKS.md)\n")
    print(render(report, config))
    log(f"total time {report.seconds_total:.0f} s; {'OK' if report.ok else 'NOT OK'}")


def parse_args(argv: list[str] | None = None) -> tuple[Config, str | None]:
    defaults = Config()
    parser = argparse.ArgumentParser(
        description="Flowsite chaos run (see the module docstring: `head -90 bench/chaos.py`).")
    parser.add_argument("--flows", type=int, default=defaults.flows)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="flows created per second")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="prefork processes per worker")
    parser.add_argument("--kill-interval", type=float, default=defaults.kill_interval, help="seconds between events")
    parser.add_argument("--kills", type=int, default=None,
                        help="stop the chaos after this many kills (default: once 80%% of the flows finished)")
    parser.add_argument("--redis-down", type=float, default=defaults.redis_down, help="seconds Redis stays down")
    parser.add_argument("--stop-at-finished", type=float, default=defaults.stop_at_finished,
                        help="without --kills: stop the chaos once this share of the flows finished (0-1)")
    parser.add_argument("--chaos-limit", type=float, default=defaults.chaos_limit, help="longest chaos, seconds")
    parser.add_argument("--final-wait", type=float, default=defaults.final_wait,
                        help="after the chaos, wait this long at most for every flow to finish")
    parser.add_argument("--attempts", type=int, default=defaults.attempts)
    parser.add_argument("--backoff-ms", type=int, default=defaults.backoff_ms)
    parser.add_argument("--heartbeat", type=int, default=defaults.heartbeat, help="FLOWSITE_HEARTBEAT_SECONDS")
    parser.add_argument("--stalled-after", type=int, default=defaults.stalled_after, help="FLOWSITE_STALLED_AFTER")
    parser.add_argument("--redispatch-after", type=int, default=defaults.redispatch_after,
                        help="FLOWSITE_REDISPATCH_AFTER")
    parser.add_argument("--sweep-interval", type=int, default=defaults.sweep_interval, help="FLOWSITE_SWEEP_INTERVAL")
    parser.add_argument("--visibility-timeout", type=int, default=None,
                        help="CELERY_VISIBILITY_TIMEOUT (default: the project's)")
    parser.add_argument("--db-name", default=defaults.db_name)
    parser.add_argument("--redis-port", type=int, default=0, help="port of the run's own Redis (default: a free one)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, run records)")
    parser.add_argument("--json-out", help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    config = Config(**{name: getattr(args, name) for name in Config.__dataclass_fields__})
    if config.redis_port == 6379:
        parser.error("the chaos run restarts its Redis: never the shared one on 6379")
    return config, args.json_out


def main(argv: list[str] | None = None) -> int:
    config, json_out = parse_args(argv)

    def terminate(signum, frame):  # run the finally blocks: stop everything this script started
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    report = run(config)
    print_report(report, config)
    if json_out:
        Path(json_out).write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=2, default=str))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
