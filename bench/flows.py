#!/usr/bin/env python
"""Flowsite engine benchmark: tracked flows vs. the same shapes as plain Celery, on the same workers.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and Redis on
127.0.0.1:6379. Run from the project root::

    .venv/bin/python bench/flows.py                  # the benchmark, ~3-4 minutes on a quiet 2-CPU machine
    .venv/bin/python bench/flows.py --profile-only   # where the workers' time goes (shape A), ~1 minute
    .venv/bin/python bench/flows.py --profile        # both in one go
    .venv/bin/python bench/flows.py --variants       # + rows for prefetch multiplier 4 and 2x2 processes (+3 min)
    .venv/bin/python bench/flows.py --shapes A --variants --no-embedded   # just the variant rows
    .venv/bin/python bench/flows.py --check-default-pool   # + do plain nested chords hang with broker_pool_limit=10?
    .venv/bin/python bench/flows.py --help

``--profile`` needs py-spy in the venv (``.venv/bin/pip install py-spy==0.4.3``).

Shapes (the handlers do no work, so the engine's own cost shows)
-----------------------------------------------------------------
A. 200 flows of 1 parent + 10 children (2,200 jobs), all submitted, then waited for.
B. one flow of 1 parent + 2,000 children, and one of 1 parent + 50 children: jobs/s,
   and the per-job cost at 2,000 vs 50 children (target: within 1.25x).
C. a chain of depth 50 (each job the only child of the next).

Each shape runs tracked -- ``flows.services.flow_create`` with handlers ``bench-leaf`` /
``bench-parent`` (bench/handlers.py), PostgreSQL rows, one ``jobs.run`` task per job,
fan-in counted in the database -- and as plain Celery with no database at all, the
baseline: A and B as ``chord(group(children), parent)`` (the parent task receives the
list of child results), C as 49 nested chords and, for reference, as a plain ``chain``
of 50. The plain tasks (``bench.noop`` / ``bench.collect``) use the Redis result backend.

Setup
-----
- Both sides run on the same two worker processes: two ``celery -A flowsite worker
  -P prefork -c 1 -Q bench`` instances started and stopped by this script
  (``--workers`` / ``--concurrency``), with the project's Celery settings (prefetch
  multiplier 1, acks_late, Redis priority queues) and the environment
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/flowsite_bench,
  REDIS_URL=redis://127.0.0.1:6379/14, FLOWSITE_HANDLER_MODULES=bench.handlers,
  FLOWSITE_QUEUES=bench, SECRET_KEY=(dummy).
- ``broker_pool_limit`` is raised to 200 (``BENCH_BROKER_POOL_LIMIT``, applied by
  bench/handlers.py) in the workers and in this process: with Celery's default of 10,
  *submitting* 49 nested chords blocks forever in ``producer_pool.acquire``
  (``--check-default-pool`` shows it). Flowsite's path holds one pooled connection at a
  time, so the limit does not change it.
- Isolation: Redis DB 14 (flushed at start and end), PostgreSQL database
  ``flowsite_bench`` (created if missing, migrated; job and flow tables truncated
  before every measurement). The script refuses to start if workers already answer
  on Redis DB 14.
- Order: after a warm-up, rounds of A, B2000, B50, C, each tracked then plain;
  ``--repeat`` rounds (default 3), B50 three times per round. The median is reported.
- Embedded mode: shape A once more in a subprocess with a temporary
  FLOWSITE_DATA_DIR and no DATABASE_URL/REDIS_URL (SQLite + kombu filesystem broker),
  with ``flowsite.embedded.start_embedded_worker()`` (threads pool, default 4 threads).
  If the in-process worker thread dies during a run (seen: the kombu filesystem
  broker can read a message file before it is written, JSONDecodeError), the run is
  discarded, a new worker is started, and the crash is reported.

What is reported
----------------
- jobs/s = jobs / (time from just before the first submission to the last completion,
  as recorded server-side: tracked, the flows' ``completed_at``; plain, the final
  task's ``date_done``). Submission is included: the submitting process shares the machine.
- CPU ms/job = CPU time (utime+stime from /proc) of the bench's processes per job:
  this process (submit + wait), the worker main and pool processes, the bench
  database's PostgreSQL backends (+ WAL writer/checkpointer; backends that exit
  during the run count up to their last 0.2 s reading), redis-server. On a
  CPU-bound machine this is the figure least disturbed by other load.
- Other load: CPU used by anything else on the machine during a measurement, as a
  share of its capacity. Before each measurement the script waits (bounded) for the
  machine to calm down; a measurement with more than 15% other load is run once more
  (bounded) and noisy runs are left out of a cell's median when it has quieter ones.
- The last block printed is a markdown table for BENCHMARKS.md.

Profile (``--profile`` / ``--profile-only``)
--------------------------------------------
``py-spy record --subprocesses --idle --nonblocking`` on both worker main processes
(following their pool processes) while shape A (tracked) runs ``--profile-rounds``
times; the raw stacks are summarised by phase of a job's life (job_start,
job_complete, waiting for the next task, ack, ...) and by what each sample was
waiting on (PostgreSQL, Redis, pipe/event loop) or on CPU. ``--analyse-profile DIR``
re-reads kept raw files (``--keep-logs``).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on sys.path, where this file would
# shadow the ``flows`` app: put the project root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUEUE = "bench"
REDIS_URL = "redis://127.0.0.1:6379/14"
PG_SERVER = "postgres://postgres@127.0.0.1:5432"
DB_NAME = "flowsite_bench"
PYTHON = sys.executable
BROKER_POOL_LIMIT = 200

A_FLOWS, A_CHILDREN = 200, 10
B_WIDE, B_NARROW = 2000, 50
C_DEPTH = 50


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# Environments -----------------------------------------------------------------


def service_env(**extra: str) -> dict[str, str]:
    """Environment of the bench process and its workers (service mode, bench DB/Redis DB)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FLOWSITE_READ_DOT_ENV_FILE", "CELERY_WORKER_PREFETCH_MULTIPLIER", "FLOWSITE_DATA_DIR")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="flowsite.settings",
        DATABASE_URL=f"{PG_SERVER}/{DB_NAME}",
        REDIS_URL=REDIS_URL,
        SECRET_KEY="bench-secret-key-not-for-production",
        FLOWSITE_HANDLER_MODULES="bench.handlers",
        FLOWSITE_QUEUES=QUEUE,
        BENCH_QUEUE=QUEUE,
        BENCH_BROKER_POOL_LIMIT=str(BROKER_POOL_LIMIT),
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def embedded_env(data_dir: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in (
            "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "SECRET_KEY_FILE", "FLOWSITE_READ_DOT_ENV_FILE",
            "BENCH_BROKER_POOL_LIMIT", "CELERY_WORKER_PREFETCH_MULTIPLIER", "DJANGO_SETTINGS_MODULE",
        )
    }
    env.update(
        DJANGO_SETTINGS_MODULE="flowsite.settings",
        FLOWSITE_DATA_DIR=data_dir,
        FLOWSITE_HANDLER_MODULES="bench.handlers",
        FLOWSITE_QUEUES=QUEUE,
        BENCH_QUEUE=QUEUE,
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    return env


# Database and Redis set-up ---------------------------------------------------


def ensure_database() -> None:
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone()
        if not exists:
            log(f"creating PostgreSQL database {DB_NAME}")
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def truncate_tables() -> None:
    from django.db import connection

    from flows.models import Flow
    from jobs.models import Job, JobLog

    tables = [model._meta.db_table for model in (JobLog, Job, Flow)]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
        else:
            for table in tables:
                cursor.execute(f"DELETE FROM {table}")


# Workers ------------------------------------------------------------------------


@dataclass
class Workers:
    processes: list[subprocess.Popen]
    names: list[str]
    log_dir: Path
    label: str

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]


def start_workers(*, count: int, concurrency: int, log_dir: Path, label: str, **extra_env: str) -> Workers:
    from flowsite.celery import app

    stale = [next(iter(reply)) for reply in app.control.ping(timeout=0.5) or []]
    if stale:
        raise RuntimeError(
            f"workers already answer on {REDIS_URL}: {', '.join(stale)} (left over from an interrupted run?). "
            "Stop them first: the benchmark needs the bench queue to itself."
        )
    env = service_env(**extra_env)
    processes, names = [], []
    for index in range(count):
        name = f"bench{index}-{label}"
        names.append(name)
        logfile = open(log_dir / f"{name}.log", "w")
        processes.append(
            subprocess.Popen(
                [
                    PYTHON, "-m", "celery", "-A", "flowsite", "worker",
                    "-Q", QUEUE, "-c", str(concurrency), "-P", "prefork", "-l", "warning",
                    "-n", f"{name}@%h", "--without-mingle", "--without-gossip",
                ],
                cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
            )
        )
        logfile.close()
    workers = Workers(processes=processes, names=names, log_dir=log_dir, label=label)
    _worker_pids.clear()
    _worker_pids.update(workers.pids)
    deadline = time.monotonic() + 60
    while True:
        replies = app.control.ping(timeout=0.5) or []
        up = {next(iter(reply)).split("@")[0] for reply in replies}
        if set(names) <= up:
            break
        for process in processes:
            if process.poll() is not None:
                stop_workers(workers)
                raise RuntimeError(f"a worker exited at start-up; see logs in {log_dir}")
        if time.monotonic() > deadline:
            stop_workers(workers)
            raise RuntimeError(f"workers did not answer ping within 60 s; see logs in {log_dir}")
    return workers


def stop_workers(workers: Workers) -> None:
    for process in workers.processes:
        if process.poll() is None:
            process.terminate()  # warm shutdown of the worker and its pool children
    for process in workers.processes:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            # The worker's own process group (start_new_session): the worker and its children only.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def stop_process_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM a process started with ``start_new_session`` and its children; SIGKILL after ``grace``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


# Shapes -------------------------------------------------------------------------


def fan_in_spec(children: int, flowname: str) -> dict:
    return {
        "flowname": flowname,
        "name": "bench-parent",
        "queueName": QUEUE,
        "children": [{"name": "bench-leaf", "queueName": QUEUE} for _ in range(children)],
    }


def chain_spec(depth: int) -> dict:
    node: dict = {"name": "bench-leaf", "queueName": QUEUE}
    for _ in range(depth - 1):
        node = {"name": "bench-parent", "queueName": QUEUE, "children": [node]}
    return {"flowname": f"bench-chain-{depth}", **node}


SHAPES: dict[str, tuple[int, int]] = {
    # name: (flows, jobs)
    "A": (A_FLOWS, A_FLOWS * (A_CHILDREN + 1)),
    "B2000": (1, B_WIDE + 1),
    "B50": (1, B_NARROW + 1),
    "C": (1, C_DEPTH),
}


def tracked_specs(shape: str) -> list[dict]:
    if shape == "A":
        return [fan_in_spec(A_CHILDREN, "bench-a") for _ in range(A_FLOWS)]
    if shape == "B2000":
        return [fan_in_spec(B_WIDE, "bench-b2000")]
    if shape == "B50":
        return [fan_in_spec(B_NARROW, "bench-b50")]
    if shape == "C":
        return [chain_spec(C_DEPTH)]
    raise ValueError(shape)


def plain_signatures(shape: str) -> list:
    from celery import chain, chord, group

    from bench.handlers import collect, noop

    def fan_in(children: int):
        return chord(group(noop.si() for _ in range(children)), collect.s())

    if shape == "A":
        return [fan_in(A_CHILDREN) for _ in range(A_FLOWS)]
    if shape == "B2000":
        return [fan_in(B_WIDE)]
    if shape == "B50":
        return [fan_in(B_NARROW)]
    if shape == "C":  # nested chords: each level's header is the level below
        sig = noop.si()
        for _ in range(C_DEPTH - 1):
            sig = chord([sig], collect.s())
        return [sig]
    if shape == "Cchain":
        return [chain(noop.si(), *[collect.s() for _ in range(C_DEPTH - 1)])]
    raise ValueError(shape)


CPU_GROUPS = ("client", "worker main", "pool children", "postgres", "redis", "other processes")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_worker_pids: set[int] = set()


PG_SHARED = ("background writer", "checkpointer", "walwriter", "logical replication", "autovacuum launcher",
             "archiver", "stats collector", "startup", "/usr/lib/postgresql")


def _classify(pid: int, ppid: int, comm: str) -> str:
    if pid == os.getpid():
        return "client"
    if pid in _worker_pids:
        return "worker main"
    if ppid in _worker_pids:
        return "pool children"
    if comm.startswith("redis-server"):
        return "redis"  # shared with anything else using this Redis server
    if comm.startswith("postgres"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                title = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            return "postgres"
        if DB_NAME in title.split():
            return "postgres"  # a backend (or autovacuum worker) of the bench database
        if any(marker in title for marker in PG_SHARED):
            return "postgres"  # server-wide processes (WAL writer, checkpointer...): shared
        return "other processes"  # backends of other databases
    return "other processes"


def _read_stat(pid: int) -> tuple[int, str, float] | None:
    """(ppid, comm, CPU seconds used so far) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime


def _machine_busy() -> float:
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / _CLK_TCK


def cpu_snapshot(classes: dict[int, str] | None = None) -> tuple[dict[int, tuple[str, float]], float]:
    """CPU seconds used so far by every process (with its group), and the machine's busy seconds."""
    classes = {} if classes is None else classes
    per_pid: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        stat = _read_stat(pid)
        if stat is None:
            continue
        ppid, comm, used = stat
        if pid not in classes:
            classes[pid] = _classify(pid, ppid, comm)
        per_pid[pid] = (classes[pid], used)
    return per_pid, _machine_busy()


def cpu_delta(before, after) -> dict[str, float]:
    """CPU seconds per group between two snapshots."""
    (pids_before, busy_before), (pids_after, busy_after) = before, after
    groups = dict.fromkeys(CPU_GROUPS, 0.0)
    for pid, (group, used) in pids_after.items():
        groups[group] += used - pids_before.get(pid, (group, 0.0))[1]
    groups["machine busy"] = busy_after - busy_before
    return groups


class CpuMeter:
    """CPU used per process group between start and stop, counting processes that exit meanwhile.

    PostgreSQL backends come and go during a run (Celery's Django fixup reconnects
    every CELERY_DB_REUSE_MAX tasks; autovacuum workers): a background thread reads
    their CPU every 0.2 s so that an exited process still counts up to its last reading.
    """

    def __init__(self) -> None:
        self.classes: dict[int, str] = {}
        self.before = cpu_snapshot(self.classes)
        self.seen = dict(self.before[0])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="cpu-meter", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                pid = int(entry)
                group = self.classes.get(pid)
                if group is not None and group != "postgres":
                    continue  # only processes that may exit before the end matter here
                stat = _read_stat(pid)
                if stat is None:
                    continue
                if group is None:
                    group = self.classes[pid] = _classify(pid, stat[0], stat[1])
                    if group != "postgres":
                        self.seen.setdefault(pid, (group, 0.0))  # born during the run: counts from 0
                        continue
                self.seen[pid] = (group, stat[2])

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        after, busy = cpu_snapshot(self.classes)
        return cpu_delta(self.before, ({**self.seen, **after}, busy))


BENCH_GROUPS = ("client", "worker main", "pool children", "postgres", "redis")


@dataclass
class Measurement:
    jobs: int
    seconds: float  # first submission -> last completion
    submit_seconds: float  # time spent submitting
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process group

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds

    @property
    def cpu_ms_per_job(self) -> float | None:
        """CPU of the bench's own processes (client, workers, PostgreSQL, Redis) per job, in ms."""
        if not self.cpu:
            return None
        return 1000 * sum(self.cpu[group] for group in BENCH_GROUPS) / self.jobs

    @property
    def foreign_load(self) -> float | None:
        """Share of the machine's CPU capacity used by anything else during the measurement."""
        if not self.cpu:
            return None
        foreign = self.cpu["machine busy"] - sum(self.cpu[group] for group in BENCH_GROUPS)
        return max(foreign, 0.0) / (self.seconds * (os.cpu_count() or 1))


def machine_busy_fraction(window: float = 0.3) -> float:
    def read() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return sum(values[:8]), values[3] + values[4]

    total0, idle0 = read()
    time.sleep(window)
    total1, idle1 = read()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


class QuietGate:
    """Before each measurement, wait (a bounded time) until other load on the machine has calmed down."""

    def __init__(self, *, threshold: float, max_wait: float, budget: float) -> None:
        self.threshold, self.max_wait, self.budget = threshold, max_wait, budget
        self.waited = 0.0
        self.noisy_starts = 0

    def wait(self) -> None:
        if self.threshold >= 1:
            return
        began = time.monotonic()
        while machine_busy_fraction() > self.threshold:
            spent = time.monotonic() - began
            if spent > self.max_wait or self.waited + spent > self.budget:
                self.noisy_starts += 1
                break
        self.waited += time.monotonic() - began


GATE = QuietGate(threshold=1.0, max_wait=0, budget=0)


def _epoch(value: dt.datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


class WorkerDied(RuntimeError):
    pass


def run_tracked(shape: str, user, *, timeout: float = 120.0, alive=None) -> Measurement:
    from django.db.models import Max

    from flows.models import Flow
    from flows.services import flow_create
    from jobs.vocabulary import FINAL_FLOW_STATUSES, FlowStatus

    truncate_tables()
    specs = tracked_specs(shape)
    jobs = SHAPES[shape][1]
    GATE.wait()
    meter = CpuMeter()
    start = time.time()
    ids = [flow_create(owner=user, spec=spec).pk for spec in specs]
    submitted = time.time()
    flows = Flow.objects.filter(pk__in=ids)
    deadline = time.monotonic() + timeout
    while flows.exclude(status__in=FINAL_FLOW_STATUSES).exists():
        if alive is not None and not alive():
            raise WorkerDied(f"tracked {shape}: the worker died")
        if time.monotonic() > deadline:
            raise RuntimeError(f"tracked {shape}: flows not finished after {timeout} s")
        time.sleep(0.02)
    bad = flows.exclude(status=FlowStatus.COMPLETED).count()
    if bad:
        raise RuntimeError(f"tracked {shape}: {bad} flow(s) did not complete")
    cpu = meter.stop()
    end = _epoch(flows.aggregate(end=Max("completed_at"))["end"])
    return Measurement(jobs=jobs, seconds=end - start, submit_seconds=submitted - start, cpu=cpu)


def run_plain(shape: str, *, timeout: float = 120.0) -> Measurement:
    signatures = plain_signatures(shape)
    jobs = SHAPES["C" if shape == "Cchain" else shape][1]
    GATE.wait()
    meter = CpuMeter()
    start = time.time()
    results = [sig.apply_async() for sig in signatures]
    submitted = time.time()
    end = 0.0
    for result in results:
        value = result.get(timeout=timeout, follow_parents=False, disable_sync_subtasks=False)
        if value is None:
            raise RuntimeError(f"plain {shape}: unexpected result {value!r}")
        end = max(end, _epoch(result.date_done))
    cpu = meter.stop()
    for result in results:
        result.forget()
    return Measurement(jobs=jobs, seconds=end - start, submit_seconds=submitted - start, cpu=cpu)


def warm_up(user) -> None:
    """Open every worker process's DB and broker connections before measuring."""
    from flows.services import flow_create  # noqa: F401  (import cost out of the first sample)

    for _ in range(3):
        run_tracked("B50", user)
        run_plain("B50")
    truncate_tables()


# Embedded mode -----------------------------------------------------------------


def embedded_child(concurrency: int | None, quiet_threshold: float) -> None:
    """In a subprocess with a fresh FLOWSITE_DATA_DIR: migrate, start the in-process worker, run A."""
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from flowsite.embedded import start_embedded_worker

    assert settings.EMBEDDED and settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")
    call_command("migrate", interactive=False, verbosity=0)
    user = get_user_model().objects.create_user(username="bench")
    worker = start_embedded_worker(queues=[QUEUE], concurrency=concurrency)
    GATE.threshold, GATE.max_wait, GATE.budget = quiet_threshold, 10.0, 20.0

    def foreign(m: Measurement) -> float:
        # Everything here runs in this one process: any other CPU used meanwhile is someone else's.
        return max(m.cpu["machine busy"] - m.cpu["client"], 0.0) / (m.seconds * (os.cpu_count() or 1))

    crashes = []

    def run(shape: str) -> Measurement | None:
        """Run a shape; if the embedded worker thread dies meanwhile, note it and start a new one."""
        nonlocal worker
        try:
            return run_tracked(shape, user, timeout=240, alive=worker.thread.is_alive)
        except WorkerDied:
            crashes.append(shape)
            for leftover in (settings.BROKER_DIR / "queue").glob("*.msg"):
                leftover.unlink(missing_ok=True)  # messages of the abandoned flows
            worker = start_embedded_worker(queues=[QUEUE], concurrency=concurrency)
            return None

    runs: list[Measurement] = []
    try:
        for _ in range(2):
            run("B50")
        for attempt in range(4):
            measurement = run("A")
            if measurement is not None:
                runs.append(measurement)
                if foreign(measurement) <= NOISY or len(runs) == 2:
                    break
    finally:
        worker.stop()
    if not runs:
        raise RuntimeError(f"the embedded worker died in every run ({len(crashes)} times)")
    measurement = min(runs, key=foreign)
    print(
        "EMBEDDED-RESULT "
        + json.dumps(
            {
                "jobs": measurement.jobs,
                "seconds": measurement.seconds,
                "submit_seconds": measurement.submit_seconds,
                "concurrency": concurrency or settings.FLOWSITE_EMBEDDED_CONCURRENCY,
                "cpu_ms_per_job": 1000 * measurement.cpu["client"] / measurement.jobs,
                "foreign_load": foreign(measurement),
                "runs": [round(m.jobs_per_s) for m in runs],
                "worker_crashes": len(crashes),
            }
        ),
        flush=True,
    )


EMBEDDED_INFO: dict = {}


def run_embedded(concurrency: int | None, quiet_threshold: float) -> tuple[Measurement, int]:
    with tempfile.TemporaryDirectory(prefix="flowsite-bench-embedded-") as data_dir:
        command = [PYTHON, str(Path(__file__).resolve()), "--embedded-child", "--quiet-threshold", str(quiet_threshold)]
        if concurrency:
            command += ["--embedded-concurrency", str(concurrency)]
        proc = subprocess.run(
            command, cwd=ROOT, env=embedded_env(data_dir), capture_output=True, text=True, timeout=300
        )
    for line in proc.stdout.splitlines():
        if line.startswith("EMBEDDED-RESULT "):
            data = json.loads(line.split(" ", 1)[1])
            EMBEDDED_INFO.update(data)
            return Measurement(data["jobs"], data["seconds"], data["submit_seconds"]), data["concurrency"]
    raise RuntimeError(f"embedded run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


# Profiling ----------------------------------------------------------------------


PROCESS_RE = re.compile(r"^process (\d+):")
FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
PROFILE_RATE = 100

# Phases of a pool child's time: the first phase (in this order) with a marker among
# the sample's frames wins. Markers are bare function names (py-spy's qualname, last part).
CHILD_PHASES = [
    ("flow_mark_running: UPDATE flow (1st job of a flow per process)", {"flow_mark_running"}),
    ("job_start: UPDATE job -> active RETURNING", {"job_start"}),
    ("job_children_outcomes: SELECT children (parents only)", {"job_children_outcomes"}),
    ("handler (no work)", {"bench_leaf", "bench_parent"}),
    ("enqueue_jobs: publish the released parent", {"enqueue_jobs"}),
    ("flow_settle: count jobs + UPDATE flow (roots only)", {"flow_settle"}),
    ("job_complete: UPDATE job (+ parent countdown CTE)", {"job_complete"}),
    ("run_job, rest (JobOptions, json.dumps, context)", {"run_job"}),
    ("Celery trace outside the task (signals, Django fixup)", {"trace_task", "fast_trace_task"}),
    ("between tasks: waiting for / reading the next task", {"workloop"}),
]
MAIN_PHASES = [
    ("ack each task (Redis MULTI/EXEC; acks_late)", {"ack_log_error", "basic_ack"}),
    ("read message from Redis (BRPOP) -> Request -> pool", {"_brpop_read", "task_message_handler"}),
    ("write the task to the pool child (pipe)", {"_write_job", "schedule_writes"}),
    ("read the result from the pool child", {"on_result_readable", "_recv_message"}),
    ("re-arm BRPOP / poll bookkeeping", {"on_poll_start", "_register_BRPOP"}),
    ("idle: event loop waiting (epoll)", {"poll"}),
]
WAIT_KINDS = ("wait PostgreSQL", "wait Redis", "wait pipe/loop")


def _wait_kind(frames: list[tuple[str, str]]) -> str | None:
    """What a sample is blocked on, judged from its innermost frames; None = on CPU."""
    if not frames:
        return None
    func, file = frames[-1]
    name = func.rsplit(".", 1)[-1]
    tail_files = " ".join(f for _, f in frames[-4:])
    if name in ("wait", "wait_conn", "wait_c", "select", "wait_epoll", "wait_select") and "psycopg" in tail_files:
        return "wait PostgreSQL"
    if name in ("_read_from_socket", "read_response", "can_read_destructive") and "redis" in file:
        return "wait Redis"
    if name in ("_recv", "poll", "select", "_poll") or (name == "recv" and "billiard" in file):
        return "wait pipe/loop"
    return None


def analyse_profile(raw_files: list[Path], worker_pids: list[int], rate: int = PROFILE_RATE) -> str:
    """Summarise py-spy raw (collapsed) stacks of the workers' main and pool processes."""
    roles = ("pool child", "worker main")
    phase_wall = {role: collections.Counter() for role in roles}
    phase_kind = {role: collections.Counter() for role in roles}
    busy_self = {role: collections.Counter() for role in roles}
    busy_incl = {role: collections.Counter() for role in roles}
    totals = collections.Counter()
    busy_totals = collections.Counter()
    processes = {role: set() for role in roles}
    for raw_file in raw_files:
        for line in raw_file.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            parts = stack.split(";")
            pids = []
            while parts and PROCESS_RE.match(parts[0]):
                pids.append(int(PROCESS_RE.match(parts[0]).group(1)))
                parts = parts[1:]
            while parts and parts[0].startswith("thread "):
                parts = parts[1:]
            frames = []
            for raw in parts:
                match = FRAME_RE.match(raw)
                frames.append((match["func"], match["file"] or "") if match else (raw, ""))
            # py-spy --subprocesses prefixes "process <worker>:...;process <child>:..." for a pool child.
            role = "pool child" if len(pids) > 1 or (pids and pids[-1] not in worker_pids) else "worker main"
            if pids:
                processes[role].add(pids[-1])
            names = {func.rsplit(".", 1)[-1] for func, _ in frames}
            phases = CHILD_PHASES if role == "pool child" else MAIN_PHASES
            phase = next((label for label, markers in phases if names & markers), "other")
            kind = _wait_kind(frames)
            totals[role] += count
            phase_wall[role][phase] += count
            phase_kind[role][(phase, kind or "CPU")] += count
            if kind is None and frames:
                busy_totals[role] += count
                func, file = frames[-1]
                busy_self[role][f"{func} ({_short(file)})"] += count
                seen = set()
                # Count only frames below the process's main loop (its ancestors are in every sample).
                anchor = next((i for i, (func, _) in enumerate(frames)
                               if func.rsplit(".", 1)[-1] in ("workloop", "create_loop")), -1)
                for func, file in frames[anchor + 1:]:
                    if "/work/main/" in file or file.startswith(("jobs/", "flows/", "bench/")) or "celery/" in file \
                            or "kombu/" in file or "billiard/" in file or "django/" in file or "psycopg/" in file \
                            or "redis/" in file:
                        key = f"{func} ({_short(file)})"
                        if key not in seen:
                            seen.add(key)
                            busy_incl[role][key] += count
    lines = []
    for role in roles:
        total = totals[role]
        if not total:
            continue
        busy = busy_totals[role]
        lines.append(
            f"\n### {role} processes ({len(processes[role])} processes, {total / rate:.1f} s of samples; "
            f"on CPU or runnable {100 * busy / total:.0f}% of the time)\n"
        )
        lines.append(f"| {role}: phase | % of wall time | on CPU* | wait PostgreSQL | wait Redis | wait pipe/loop |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        ordered = [label for label, _ in (CHILD_PHASES if role == "pool child" else MAIN_PHASES)] + ["other"]
        for label in ordered:
            wall = phase_wall[role][label]
            if not wall:
                continue
            cells = [f"{100 * phase_kind[role][(label, kind)] / total:.1f}%" for kind in ("CPU", *WAIT_KINDS)]
            lines.append(f"| {label} | {100 * wall / total:.1f}% | " + " | ".join(cells) + " |")
        cells = [
            f"{100 * sum(v for (_, k), v in phase_kind[role].items() if k == kind) / total:.1f}%"
            for kind in ("CPU", *WAIT_KINDS)
        ]
        lines.append(f"| **total** | 100% | " + " | ".join(cells) + " |")
        if busy:
            lines.append("\n*on CPU = not blocked in a socket/pipe/epoll wait; on a saturated machine this includes time "
                         "the process was runnable but preempted (the /proc CPU accounting above is exact).")
            lines.append(f"Top functions by on-CPU time, inclusive (% of this role's on-CPU samples):")
            skip_names = {"<module>", "main", "__call__", "invoke", "start", "run", "worker", "caller", "new_func",
                          "_run_module_as_main", "_run_code"}
            shown = 0
            for key, count in busy_incl[role].most_common(200):
                bare = key.split(" (")[0].rsplit(".", 1)[-1]
                if bare in skip_names:
                    continue
                lines.append(f"    {100 * count / busy:5.1f}%  {key}")
                shown += 1
                if shown >= 20:
                    break
            lines.append("Top functions by on-CPU self time:")
            for key, count in busy_self[role].most_common(12):
                lines.append(f"    {100 * count / busy:5.1f}%  {key}")
    return "\n".join(lines)


def _short(file: str) -> str:
    marker = "site-packages/"
    if marker in file:
        return file.split(marker, 1)[1]
    try:
        return str(Path(file).resolve().relative_to(ROOT))
    except ValueError:
        return file


def profile_workers(workers: Workers, user, rounds: int, out_dir: Path) -> str:
    py_spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(py_spy).exists():
        return "py-spy not found: install it with `.venv/bin/pip install py-spy` (see the report)"
    spies = []
    raw_files = []
    for pid in workers.pids:
        raw = out_dir / f"profile-{pid}.txt"
        raw_files.append(raw)
        spies.append(
            subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--subprocesses", "--idle", "--nonblocking",
                 "--rate", str(PROFILE_RATE), "--format", "raw", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
        )
    time.sleep(1.5)  # let py-spy attach to the worker and its pool children
    measurements = []
    for _ in range(rounds):
        measurements.append(run_tracked("A", user))
    time.sleep(0.2)
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    errors = []
    for spy in spies:
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if not any(f.exists() and f.stat().st_size for f in raw_files):
            errors.append(err[-1000:])
    existing = [f for f in raw_files if f.exists() and f.stat().st_size]
    if not existing:
        return "py-spy produced no output:\n" + "\n".join(errors)
    rates = ", ".join(f"{m.jobs_per_s:.0f}" for m in measurements)
    header = (
        f"py-spy ({PROFILE_RATE} Hz, nonblocking, --idle) on both workers during {rounds} x shape A tracked "
        f"(jobs/s while profiled: {rates}); raw stacks in {out_dir}"
    )
    return header + analyse_profile(existing, workers.pids)


# Orchestration ------------------------------------------------------------------


@dataclass
class Results:
    tracked: dict[str, list[Measurement]] = field(default_factory=lambda: collections.defaultdict(list))
    plain: dict[str, list[Measurement]] = field(default_factory=lambda: collections.defaultdict(list))

    def runs(self, side: str, shape: str) -> list[Measurement]:
        """The runs of a cell; those with little other load on the machine if there are any."""
        runs = getattr(self, side).get(shape) or []
        clean = [m for m in runs if m.foreign_load is None or m.foreign_load <= NOISY]
        return clean or runs

    def noisy_cells(self) -> list[str]:
        cells = []
        for side in ("tracked", "plain"):
            for shape, runs in getattr(self, side).items():
                if runs and all(m.foreign_load is not None and m.foreign_load > NOISY for m in runs):
                    cells.append(f"{shape} {side}")
        return cells

    def median(self, side: str, shape: str, attribute: str = "jobs_per_s") -> float | None:
        values = [getattr(m, attribute) for m in self.runs(side, shape)]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def per_job_ms(self, side: str, shape: str) -> float | None:
        runs = self.runs(side, shape)
        return 1000 * statistics.median(m.seconds / m.jobs for m in runs) if runs else None

    def spread(self, side: str, shape: str) -> str:
        runs = getattr(self, side).get(shape) or []
        rates = [m.jobs_per_s for m in runs]
        used = len(self.runs(side, shape))
        return f"{min(rates):.0f}-{max(rates):.0f}, {used} of {len(runs)} runs used" if rates else "-"

    def all_runs(self) -> list[Measurement]:
        return [m for side in (self.tracked, self.plain) for runs in side.values() for m in runs]


def describe(m: Measurement) -> str:
    foreign = m.foreign_load
    return (
        f"{m.jobs_per_s:6.0f} jobs/s ({m.seconds:6.3f} s, submit {m.submit_seconds:6.3f} s, "
        f"cpu {m.cpu_ms_per_job or 0:5.2f} ms/job, other load {100 * (foreign or 0):3.0f}%)"
    )


def render_cost_cpu(rows: dict) -> str:
    """CPU per job by process group (medians), and the share of the machine used by everything else."""
    groups = BENCH_GROUPS
    lines = [
        "| mode | shape | " + " | ".join(groups) + " | other load |",
        "|---|---|" + "---:|" * (len(groups) + 1),
    ]
    for mode, shapes in rows.items():
        for shape, runs in shapes.items():
            cells = [statistics.median(1000 * m.cpu.get(g, 0.0) / m.jobs for m in runs) for g in groups]
            other = statistics.median(m.foreign_load or 0.0 for m in runs)
            lines.append(f"| {mode} | {shape} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {100 * other:.0f}% |")
    return "\n".join(lines)


NOISY = 0.15  # a run during which other processes used more than this share of the machine is "noisy"
RETRY_BUDGET = {"seconds": 45.0}


def measure(results: Results, side: str, shape: str, run) -> None:
    """Run one measurement; if other load disturbed it, run it once more (within a time budget)."""
    measurement = run()
    getattr(results, side)[shape].append(measurement)
    log(f"  {shape:6s} {side:7s} {describe(measurement)}")
    if (measurement.foreign_load or 0) > NOISY and RETRY_BUDGET["seconds"] > measurement.seconds:
        RETRY_BUDGET["seconds"] -= measurement.seconds
        measurement = run()
        getattr(results, side)[shape].append(measurement)
        log(f"  {shape:6s} {side:7s} {describe(measurement)}  (re-run: the previous one was noisy)")


def measure_round(results: Results, user, shapes: list[str], *, plain: bool = True) -> None:
    for shape in shapes:
        measure(results, "tracked", shape, lambda: run_tracked(shape, user))
        if plain:
            measure(results, "plain", shape, lambda: run_plain(shape))
            if shape == "C":
                measure(results, "plain", "Cchain", lambda: run_plain("Cchain"))


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


SHAPE_NAMES = {
    "A": f"A: {A_FLOWS} flows x (1 parent + {A_CHILDREN} children)",
    "B2000": f"B: 1 parent + {B_WIDE:,} children",
    "B50": f"B: 1 parent + {B_NARROW} children",
    "C": f"C: chain of depth {C_DEPTH} (plain: {C_DEPTH - 1} nested chords)",
    "Cchain": f"C reference: plain `chain` of {C_DEPTH}",
}


def cpu_breakdown(results: Results) -> str:
    lines = ["| Shape, side | " + " | ".join(BENCH_GROUPS) + " | total (ms CPU per job) |", "|---|" + "---:|" * 6]
    for shape in ("A", "B2000", "C"):
        for side in ("tracked", "plain"):
            runs = results.runs(side, shape)
            if not runs:
                continue
            cells = [statistics.median(1000 * m.cpu[g] / m.jobs for m in runs) for g in BENCH_GROUPS]
            lines.append(
                f"| {shape} {side} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {sum(cells):.2f} |"
            )
    return "\n".join(lines)


def render(results: Results, *, workers: int, concurrency: int, embedded: tuple[Measurement, int] | None,
           variants: list[tuple[str, Results]], repeat: int) -> str:
    rows = [
        "| Shape | Jobs | Flowsite tracked, jobs/s | Plain Celery, jobs/s | Tracked / plain | "
        "CPU ms/job tracked | CPU ms/job plain |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for shape in ("A", "B2000", "B50", "C", "Cchain"):
        tracked_shape = "C" if shape == "Cchain" else shape
        t, p = results.median("tracked", tracked_shape), results.median("plain", shape)
        tc, pc = results.median("tracked", tracked_shape, "cpu_ms_per_job"), results.median("plain", shape, "cpu_ms_per_job")
        rows.append(
            f"| {SHAPE_NAMES[shape]} | {SHAPES[tracked_shape][1]:,} | {fmt(t)} | {fmt(p)} | {ratio(t, p)} | "
            f"{fmt(tc, 2)} | {fmt(pc, 2)} |"
        )
    tw, tn = results.per_job_ms("tracked", "B2000"), results.per_job_ms("tracked", "B50")
    pw, pn = results.per_job_ms("plain", "B2000"), results.per_job_ms("plain", "B50")
    twc, tnc = results.median("tracked", "B2000", "cpu_ms_per_job"), results.median("tracked", "B50", "cpu_ms_per_job")
    pwc, pnc = results.median("plain", "B2000", "cpu_ms_per_job"), results.median("plain", "B50", "cpu_ms_per_job")
    rows.append(
        f"| B: per-job cost, {B_WIDE:,} vs {B_NARROW} children (target <= 1.25x) | - | "
        f"{ratio(tw, tn)} ({fmt(tw, 2)} vs {fmt(tn, 2)} ms) | {ratio(pw, pn)} ({fmt(pw, 2)} vs {fmt(pn, 2)} ms) | - | "
        f"{ratio(twc, tnc)} | {ratio(pwc, pnc)} |"
    )
    if embedded:
        measurement, threads = embedded
        rows.append(
            f"| A, embedded mode (SQLite + filesystem broker, in-process worker, {threads} threads) | "
            f"{measurement.jobs:,} | {measurement.jobs_per_s:,.0f} | - | - | "
            f"{fmt(EMBEDDED_INFO.get('cpu_ms_per_job'), 2)} | - |"
        )
    for label, variant in variants:
        t, p = variant.median("tracked", "A"), variant.median("plain", "A")
        tc, pc = variant.median("tracked", "A", "cpu_ms_per_job"), variant.median("plain", "A", "cpu_ms_per_job")
        rows.append(
            f"| A, variant: {label} | {SHAPES['A'][1]:,} | {fmt(t)} | {fmt(p)} | {ratio(t, p)} | "
            f"{fmt(tc, 2)} | {fmt(pc, 2)} |"
        )
    loads = [m.foreign_load for m in results.all_runs() if m.foreign_load is not None]
    noisy = results.noisy_cells()
    notes = (
        f"\nMedian of {repeat} runs per cell ({B_NARROW}-children flow: {3 * repeat} runs). jobs/s = jobs / time from "
        f"the first submission to the last completion (server-side timestamps: flows' `completed_at`, the final "
        f"task's `date_done`). CPU ms/job = CPU time of the submitting process, both Celery workers (main + pool "
        f"processes), the bench database's PostgreSQL backends (+ WAL writer/checkpointer) and redis-server, per job. "
        f"Machine: {os.cpu_count()} CPUs running everything (PostgreSQL, Redis, workers, submitter). Service mode: "
        f"{workers} x `celery -A flowsite worker -P prefork -c {concurrency}` run both columns (same processes), "
        f"project Celery settings (prefetch multiplier 1, acks_late, Redis priority queues); plain Celery uses the "
        f"Redis result backend, `chord(group(children), parent)` for A/B, and `broker_pool_limit={BROKER_POOL_LIMIT}` "
        f"(needed by the nested chords). Handlers do no work. Other load on the machine during the runs: median "
        f"{100 * statistics.median(loads) if loads else 0:.0f}%, max {100 * max(loads) if loads else 0:.0f}% of its "
        f"CPU; runs with more than {100 * NOISY:.0f}% are left out of a cell's median when it has quieter ones"
        + (f" (all runs noisy: {', '.join(noisy)})" if noisy else "")
        + ". Command: `.venv/bin/python bench/flows.py`."
    )
    if EMBEDDED_INFO.get("worker_crashes"):
        notes += (
            f" Embedded mode: the in-process worker died {EMBEDDED_INFO['worker_crashes']} time(s) (kombu filesystem "
            "broker read a half-written message file); the affected runs were discarded."
        )
    return "\n".join(rows) + "\n" + notes


def check_nested_chord_default_pool(timeout: float) -> str:
    """Do plain nested chords (C) finish with Celery's default broker_pool_limit (10)? Separate process."""
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import django; django.setup()\n"
        "from bench import flows as b\n"
        "from flowsite.celery import app\n"
        "print('client broker_pool_limit', app.conf.broker_pool_limit, flush=True)\n"
        f"m = b.run_plain('C', timeout={timeout!r}); print('finished in %.3f s' % m.seconds, flush=True)\n"
    )
    env = service_env()
    env.pop("BENCH_BROKER_POOL_LIMIT")
    try:
        proc = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout + 10)
        out = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += f"\nclient hung in apply_async (killed after {timeout + 10:.0f} s)"
    last = [line for line in out.splitlines() if line.strip()][-1:] or ["(no output)"]
    return last[0]


def pg_statement_profile(user) -> str:
    """PostgreSQL's own account of one tracked shape-A run: per statement, plan vs execution time."""
    from django.db import connection
    from django.db.utils import DatabaseError

    try:
        with connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            cursor.execute("SELECT pg_stat_statements_reset()")
    except DatabaseError as exc:
        return (f"pg_stat_statements is not available ({str(exc).strip()}): run "
                "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements', restart PostgreSQL "
                "and, for planning times, ALTER SYSTEM SET pg_stat_statements.track_planning = on.")
    m = run_tracked("A", user)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT calls, total_plan_time, total_exec_time, wal_records, query FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND query NOT ILIKE '%%pg_stat_statements%%' AND query NOT ILIKE 'TRUNCATE%%' "
            "ORDER BY total_plan_time + total_exec_time DESC LIMIT 12"
        )
        rows = cursor.fetchall()
    total = sum(plan + execute for _, plan, execute, _, _ in rows)
    lines = [
        f"One tracked shape-A run ({m.jobs} jobs, {m.jobs_per_s:.0f} jobs/s); statements by total time "
        f"(the top {len(rows)}: {total / m.jobs:.2f} ms per job).\n",
        "| statement | calls per job | plan ms / call | exec ms / call | ms per job | WAL records / call |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for calls, plan, execute, wal, query in rows:
        text = re.sub(r"\s+", " ", query)[:80].replace("|", "\\|")
        lines.append(f"| `{text}` | {calls / m.jobs:.2f} | {plan / calls:.3f} | {execute / calls:.3f} | "
                     f"{(plan + execute) / m.jobs:.3f} | {wal / calls:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Flowsite engine benchmark (see the module docstring: `head -60 bench/flows.py`)."
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per shape and side; the median is reported")
    parser.add_argument("--workers", type=int, default=2, help="celery worker instances (default 2)")
    parser.add_argument("--concurrency", type=int, default=1, help="prefork processes per worker (default 1)")
    parser.add_argument("--shapes", default="A,B2000,B50,C", help="comma list of A,B2000,B50,C")
    parser.add_argument("--profile", action="store_true", help="also py-spy the workers during shape A (tracked)")
    parser.add_argument("--profile-only", action="store_true", help="only the profile, no benchmark")
    parser.add_argument("--profile-rounds", type=int, default=3, help="shape A runs while profiling")
    parser.add_argument("--variants", action="store_true",
                        help="extra rows for shape A: prefetch multiplier 4; 2 processes per worker")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded-mode run")
    parser.add_argument("--pg-statements", action="store_true",
                        help="also profile PostgreSQL per statement during one tracked shape-A run "
                             "(needs pg_stat_statements in shared_preload_libraries)")
    parser.add_argument("--check-default-pool", action="store_true",
                        help="also try plain nested chords (C) with Celery's default broker_pool_limit in the client")
    parser.add_argument("--quiet-threshold", type=float, default=0.35,
                        help="before each measurement wait until the machine is less busy than this (0-1; 1 = off)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir with worker logs and profiles")
    parser.add_argument("--analyse-profile", metavar="DIR",
                        help="only summarise the py-spy profile-<pid>.txt files that --profile left in DIR")
    parser.add_argument("--embedded-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--embedded-concurrency", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.analyse_profile:
        files = sorted(Path(args.analyse_profile).glob("profile-*.txt"))
        print(analyse_profile(files, [int(f.stem.split("-")[1]) for f in files]))
        return
    if args.embedded_child:
        embedded_child(args.embedded_concurrency, args.quiet_threshold)
        return

    def terminate(signum, frame):  # run the finally blocks: stop the workers this script started
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    began = time.monotonic()
    GATE.threshold, GATE.max_wait, GATE.budget = args.quiet_threshold, 8.0, 40.0
    ensure_database()
    env = service_env()
    os.environ.clear()
    os.environ.update(env)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    truncate_tables()
    user, _ = get_user_model().objects.get_or_create(username="bench")
    flush_redis()
    log_dir = Path(tempfile.mkdtemp(prefix="flowsite-bench-"))
    log(f"bench DB {DB_NAME} (migrated, emptied), Redis {REDIS_URL} (flushed), worker logs in {log_dir}")

    shapes = [shape.strip() for shape in args.shapes.split(",") if shape.strip()]
    results = Results()
    variants: list[tuple[str, Results]] = []
    embedded = None
    profile_text = None
    pg_text = None
    default_pool_check = None
    try:
        workers = start_workers(count=args.workers, concurrency=args.concurrency, log_dir=log_dir, label="main")
        try:
            from bench.handlers import pool_limit

            info = pool_limit.apply_async().get(timeout=30)
            log(f"workers up ({args.workers} x prefork -c {args.concurrency}); a pool process reports {info}")
            warm_up(user)
            if not args.profile_only:
                for index in range(args.repeat):
                    log(f"round {index + 1}/{args.repeat}")
                    measure_round(results, user, shapes)
                    if "B50" in shapes:
                        # B50 takes a fraction of a second: sample it more to steady the 2000-vs-50 ratio.
                        measure_round(results, user, ["B50", "B50"])
            if args.pg_statements:
                log("PostgreSQL statement profile of shape A (tracked) ...")
                pg_text = pg_statement_profile(user)
            if args.profile or args.profile_only:
                log(f"profiling shape A (tracked) x {args.profile_rounds} with py-spy ...")
                profile_text = profile_workers(workers, user, args.profile_rounds, log_dir)
            if args.check_default_pool and not args.profile_only:
                # Last: a hung publisher leaves part of its canvas in the queue.
                log("plain nested chords (C) with Celery's default broker_pool_limit in the client ...")
                default_pool_check = check_nested_chord_default_pool(20)
                log(f"  -> {default_pool_check}")
        finally:
            stop_workers(workers)

        if args.variants and not args.profile_only:
            for label, concurrency, extra in (
                ("prefetch multiplier 4", args.concurrency, {"CELERY_WORKER_PREFETCH_MULTIPLIER": "4"}),
                (f"{args.workers} workers x 2 processes", 2, {}),
            ):
                variant = Results()
                workers = start_workers(count=args.workers, concurrency=concurrency, log_dir=log_dir,
                                        label=re.sub(r"\W+", "-", label), **extra)
                try:
                    log(f"variant: {label}")
                    warm_up(user)
                    for _ in range(args.repeat):
                        measure_round(variant, user, ["A"])
                finally:
                    stop_workers(workers)
                variants.append((label, variant))

        if not args.no_embedded and not args.profile_only:
            log("embedded mode, shape A (subprocess, temporary FLOWSITE_DATA_DIR, SQLite + filesystem broker) ...")
            embedded = run_embedded(None, args.quiet_threshold)
            log(f"  embedded A: {embedded[0].jobs_per_s:.0f} jobs/s ({embedded[0].seconds:.2f} s, "
                f"{embedded[1]} worker threads, cpu {EMBEDDED_INFO['cpu_ms_per_job']:.2f} ms/job, "
                f"other load {100 * EMBEDDED_INFO['foreign_load']:.0f}%, runs {EMBEDDED_INFO['runs']})")
            if EMBEDDED_INFO.get("worker_crashes"):
                log(f"  !! the embedded worker thread died {EMBEDDED_INFO['worker_crashes']} time(s) during the run "
                    "(kombu filesystem broker read a message file before it was written: JSONDecodeError); "
                    "those runs were discarded")
    finally:
        truncate_tables()
        flush_redis()
        if not args.keep_logs and not (args.profile or args.profile_only):
            shutil.rmtree(log_dir, ignore_errors=True)

    if pg_text:
        print("\n## PostgreSQL per statement (shape A, tracked)\n")
        print(pg_text)
    if profile_text:
        print("\n## Where the workers' time goes (shape A, tracked)\n")
        print(profile_text)
    if not args.profile_only:
        print("\n## Runs (median jobs/s; min-max of all runs)\n")
        for shape in ("A", "B2000", "B50", "C", "Cchain"):
            for side in ("tracked", "plain"):
                if results.runs(side, shape):
                    print(f"  {shape:6s} {side:7s} {fmt(results.median(side, shape)):>7s} jobs/s "
                          f"({results.spread(side, shape)}; {results.per_job_ms(side, shape):.2f} ms per job)")
        if default_pool_check:
            print(f"\n  plain nested chords (C) with the default broker_pool_limit: {default_pool_check}")
        if GATE.waited or GATE.noisy_starts:
            print(f"\n  waited {GATE.waited:.0f} s in total for other load to calm down; "
                  f"{GATE.noisy_starts} measurement(s) started while the machine was busy")
        print("\n## CPU per job by process group (ms, median)\n")
        print(cpu_breakdown(results))
        print("\n## Results (paste into BENCHMARKS.md)\n")
        print(render(results, workers=args.workers, concurrency=args.concurrency, embedded=embedded,
                     variants=variants, repeat=args.repeat))
    log(f"total bench time {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
