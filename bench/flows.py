#!/usr/bin/env python
"""Flowsite engine benchmark: tracked flows vs. plain Celery canvas, same workers.

Run from the project root (PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379)::

    .venv/bin/python bench/flows.py                 # the benchmark (~2-3 minutes)
    .venv/bin/python bench/flows.py --profile       # + py-spy profile of the workers during shape A
    .venv/bin/python bench/flows.py --variants      # + extra rows: prefetch 4, 2x2 worker processes
    .venv/bin/python bench/flows.py --help

What it measures (handlers do no work, so the engine's own cost shows):

A. 200 flows of 1 parent + 10 children (2,200 jobs), all submitted, then waited for.
B. one flow of 1 parent + 2,000 children, and one of 1 parent + 50 children:
   jobs/s and the per-job cost ratio 2,000 vs 50 (target: within 1.25x).
C. a chain of depth 50 (each job the only child of the next).

Every shape runs twice: tracked (``flows.services.flow_create``: PostgreSQL rows,
``jobs.run`` tasks, fan-in counted in the database) and as plain Celery with no
database at all: A and B as ``chord(group(children), parent)`` (the parent gets
the list of child results), C as 50 nested chords and, for reference, as a plain
``chain`` of 50. The plain tasks (``bench.noop``/``bench.collect`` in
bench/handlers.py) use the Redis result backend and run on *the same two worker
processes* as the tracked jobs: two ``celery -A flowsite worker -P prefork -c 1``
instances (``--workers``/``--concurrency``), started and stopped by this script,
with the project's Celery settings (prefetch multiplier 1, acks_late). Tracked
and plain runs alternate, shape by shape; each shape is repeated ``--repeat``
times and the median is reported.

Timing: from just before the first submission to the last completion as recorded
server-side (tracked: the flows' ``completed_at``; plain: the final task's
``date_done`` in the result backend). jobs/s = jobs / that time.

Isolation: Redis DB 14 (flushed at start and end), PostgreSQL database
``flowsite_bench`` (created if missing, migrated, job/flow tables truncated
before every measurement). Shape A is also run in embedded mode (SQLite +
kombu filesystem broker + in-process threads worker) in a subprocess with a
temporary FLOWSITE_DATA_DIR.

``--profile`` attaches ``py-spy record --subprocesses --idle`` (pip package
``py-spy``) to both workers while shape A (tracked) runs ``--profile-rounds``
times, and prints where the worker processes' time goes.

The last thing printed is a markdown table for BENCHMARKS.md.
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


def _classify(pid: int, ppid: int, comm: str) -> str:
    if pid == os.getpid():
        return "client"
    if pid in _worker_pids:
        return "worker main"
    if ppid in _worker_pids:
        return "pool children"
    if comm.startswith("redis-server"):
        return "redis"
    if comm.startswith("postgres"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return "postgres"
        # Backends of other databases (e.g. a test suite running meanwhile) are not ours.
        if " postgres " in cmdline and f" {DB_NAME} " not in cmdline and cmdline.count(" ") > 4:
            return "other processes"
        return "postgres"
    return "other processes"


def cpu_snapshot() -> tuple[dict[int, tuple[str, float]], float]:
    """CPU seconds used so far by every process (with its group), and the machine's busy seconds."""
    per_pid: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(entry)
        used = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime
        if used or pid == os.getpid():
            per_pid[pid] = (_classify(pid, int(fields[1]), comm), used)
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    busy = (sum(values[:8]) - values[3] - values[4]) / _CLK_TCK
    return per_pid, busy


def cpu_delta(before, after) -> dict[str, float]:
    """CPU seconds per group between two snapshots (processes that exited meanwhile are lost)."""
    (pids_before, busy_before), (pids_after, busy_after) = before, after
    groups = dict.fromkeys(CPU_GROUPS, 0.0)
    for pid, (group, used) in pids_after.items():
        groups[group] += used - pids_before.get(pid, (group, 0.0))[1]
    groups["machine busy"] = busy_after - busy_before
    return groups


@dataclass
class Measurement:
    jobs: int
    seconds: float  # first submission -> last completion
    submit_seconds: float  # time spent submitting
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process group

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


def _epoch(value: dt.datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


def run_tracked(shape: str, user, *, timeout: float = 120.0) -> Measurement:
    from django.db.models import Max

    from flows.models import Flow
    from flows.services import flow_create
    from jobs.vocabulary import FINAL_FLOW_STATUSES, FlowStatus

    truncate_tables()
    specs = tracked_specs(shape)
    jobs = SHAPES[shape][1]
    cpu_before = cpu_snapshot()
    start = time.time()
    ids = [flow_create(owner=user, spec=spec).pk for spec in specs]
    submitted = time.time()
    flows = Flow.objects.filter(pk__in=ids)
    deadline = time.monotonic() + timeout
    while flows.exclude(status__in=FINAL_FLOW_STATUSES).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"tracked {shape}: flows not finished after {timeout} s")
        time.sleep(0.02)
    bad = flows.exclude(status=FlowStatus.COMPLETED).count()
    if bad:
        raise RuntimeError(f"tracked {shape}: {bad} flow(s) did not complete")
    cpu = cpu_delta(cpu_before, cpu_snapshot())
    end = _epoch(flows.aggregate(end=Max("completed_at"))["end"])
    return Measurement(jobs=jobs, seconds=end - start, submit_seconds=submitted - start, cpu=cpu)


def run_plain(shape: str, *, timeout: float = 120.0) -> Measurement:
    signatures = plain_signatures(shape)
    jobs = SHAPES["C" if shape == "Cchain" else shape][1]
    cpu_before = cpu_snapshot()
    start = time.time()
    results = [sig.apply_async() for sig in signatures]
    submitted = time.time()
    end = 0.0
    for result in results:
        value = result.get(timeout=timeout, follow_parents=False, disable_sync_subtasks=False)
        if value is None:
            raise RuntimeError(f"plain {shape}: unexpected result {value!r}")
        end = max(end, _epoch(result.date_done))
    cpu = cpu_delta(cpu_before, cpu_snapshot())
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


def embedded_child(concurrency: int | None) -> None:
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
    try:
        for _ in range(2):
            run_tracked("B50", user)
        measurement = run_tracked("A", user, timeout=240)
    finally:
        worker.stop()
    print(
        "EMBEDDED-RESULT "
        + json.dumps(
            {
                "jobs": measurement.jobs,
                "seconds": measurement.seconds,
                "submit_seconds": measurement.submit_seconds,
                "concurrency": concurrency or settings.FLOWSITE_EMBEDDED_CONCURRENCY,
            }
        ),
        flush=True,
    )


def run_embedded(concurrency: int | None) -> tuple[Measurement, int]:
    with tempfile.TemporaryDirectory(prefix="flowsite-bench-embedded-") as data_dir:
        command = [PYTHON, str(Path(__file__).resolve()), "--embedded-child"]
        if concurrency:
            command += ["--embedded-concurrency", str(concurrency)]
        proc = subprocess.run(
            command, cwd=ROOT, env=embedded_env(data_dir), capture_output=True, text=True, timeout=300
        )
    for line in proc.stdout.splitlines():
        if line.startswith("EMBEDDED-RESULT "):
            data = json.loads(line.split(" ", 1)[1])
            return Measurement(data["jobs"], data["seconds"], data["submit_seconds"]), data["concurrency"]
    raise RuntimeError(f"embedded run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


# Profiling ----------------------------------------------------------------------


PROCESS_RE = re.compile(r"^process (\d+):")
FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for raw in stack.split(";"):
        match = FRAME_RE.match(raw)
        if match:
            frames.append((match["func"], match["file"] or ""))
        else:
            frames.append((raw, ""))
    return frames


# Categories of a pool child's time, by the first matching frame from the leaf up
# (order matters: the most specific first).
CHILD_CATEGORIES = [
    ("job_start: UPDATE ... RETURNING (+flow_mark_running)", ("job_start",)),
    ("job_children_outcomes: SELECT children", ("job_children_outcomes",)),
    ("enqueue_jobs: publish the parent", ("enqueue_jobs",)),
    ("flow_settle: count jobs, finish flow", ("flow_settle",)),
    ("job_complete: UPDATE ... (+parent countdown)", ("job_complete",)),
    ("handler + JobOptions + rest of run_job", ("run_job",)),
    ("Celery trace around the task (signals, Django fixup, ack)", ("trace_task", "fast_trace_task")),
    ("idle: waiting for the next task", ("workloop",)),
]
MAIN_CATEGORIES = [
    ("idle: event loop waiting (epoll)", ("poll", "_poll", "select")),
]


def analyse_profile(raw_files: list[Path], worker_pids: list[int]) -> str:
    """Summarise py-spy raw (collapsed) stacks of the workers' main and pool processes."""
    roles: dict[str, collections.Counter] = {"pool child": collections.Counter(), "worker main": collections.Counter()}
    inclusive: dict[str, collections.Counter] = {"pool child": collections.Counter(), "worker main": collections.Counter()}
    leaves: dict[str, collections.Counter] = {"pool child": collections.Counter(), "worker main": collections.Counter()}
    totals: collections.Counter = collections.Counter()
    sql_in_run_job = 0
    run_job_total = 0
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
            frames = _frames(";".join(parts))
            funcs = [func for func, _ in frames]
            # py-spy --subprocesses prefixes "process <worker>:...;process <child>:..." for a pool child.
            role = "pool child" if len(pids) > 1 or (pids and pids[-1] not in worker_pids) else "worker main"
            totals[role] += count
            # inclusive time per function (counted once per stack)
            seen = set()
            for func, file in frames:
                key = f"{func} ({Path(file).name})"
                if key not in seen:
                    seen.add(key)
                    inclusive[role][key] += count
            if frames:
                func, file = frames[-1]
                leaves[role][f"{func} ({_short(file)})"] += count
            categories = CHILD_CATEGORIES if role == "pool child" else MAIN_CATEGORIES
            label = None
            for name, markers in categories:
                if any(marker in funcs for marker in markers):
                    if role == "worker main" and funcs[-1] not in markers:
                        continue
                    label = name
                    break
            if role == "pool child" and "run_job" in funcs:
                run_job_total += count
                if any(f in ("execute", "fetchone", "_execute_send", "wait", "wait_c") for f in funcs[funcs.index("run_job"):]) and any(
                    "psycopg" in file for _, file in frames
                ):
                    sql_in_run_job += count
            if label is None:
                label = "other (Celery/kombu: receive, deserialize, ack, pool I/O)" if role == "worker main" else "other (pool I/O, result send)"
            roles[role][label] += count

    lines = []
    for role in ("pool child", "worker main"):
        total = totals[role]
        if not total:
            continue
        lines.append(f"\n{role} processes: {total} samples (wall-clock incl. idle)")
        lines.append("  where the time goes:")
        for label, count in roles[role].most_common():
            lines.append(f"    {100 * count / total:5.1f}%  {label}")
        if role == "pool child" and run_job_total:
            lines.append(
                f"  of run_job's time, {100 * sql_in_run_job / run_job_total:.1f}% is inside psycopg (SQL round trips)"
            )
        lines.append("  top functions, inclusive (% of this role's samples):")
        skip = {"<module>", "_run_module_as_main", "_run_code", "main", "start", "run", "__call__", "invoke",
                "_main", "__main__", "worker_main"}
        shown = 0
        for key, count in inclusive[role].most_common(80):
            if key.split(" (")[0] in skip:
                continue
            lines.append(f"    {100 * count / total:5.1f}%  {key}")
            shown += 1
            if shown >= 25:
                break
        lines.append("  top functions, self (leaf) time:")
        for key, count in leaves[role].most_common(15):
            lines.append(f"    {100 * count / total:5.1f}%  {key}")
    return "\n".join(lines)


def _short(file: str) -> str:
    marker = "site-packages/"
    if marker in file:
        return file.split(marker, 1)[1]
    try:
        return str(Path(file).resolve().relative_to(ROOT))
    except ValueError:
        return Path(file).name


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
                 "--rate", "250", "--format", "raw", "--output", str(raw)],
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
        f"py-spy (250 Hz, nonblocking, --idle) on both workers during {rounds} x shape A tracked "
        f"(jobs/s while profiled: {rates}); raw stacks in {out_dir}"
    )
    return header + analyse_profile(existing, workers.pids)


# Orchestration ------------------------------------------------------------------


@dataclass
class Results:
    tracked: dict[str, list[Measurement]] = field(default_factory=lambda: collections.defaultdict(list))
    plain: dict[str, list[Measurement]] = field(default_factory=lambda: collections.defaultdict(list))

    def median(self, side: str, shape: str) -> float | None:
        runs = getattr(self, side).get(shape)
        return statistics.median(m.jobs_per_s for m in runs) if runs else None

    def median_per_job(self, side: str, shape: str) -> float | None:
        runs = getattr(self, side).get(shape)
        return statistics.median(m.seconds / m.jobs for m in runs) if runs else None

    def spread(self, side: str, shape: str) -> str:
        runs = getattr(self, side).get(shape)
        if not runs:
            return "-"
        rates = [m.jobs_per_s for m in runs]
        return f"{min(rates):.0f}-{max(rates):.0f}"


def measure_round(results: Results, user, shapes: list[str], *, plain: bool = True) -> None:
    for shape in shapes:
        tracked = run_tracked(shape, user)
        results.tracked[shape].append(tracked)
        line = f"  {shape:6s} tracked {tracked.jobs_per_s:7.0f} jobs/s ({tracked.seconds:.3f} s, submit {tracked.submit_seconds:.3f} s)"
        if plain:
            baseline = run_plain(shape)
            results.plain[shape].append(baseline)
            line += f" | plain {baseline.jobs_per_s:7.0f} jobs/s ({baseline.seconds:.3f} s, submit {baseline.submit_seconds:.3f} s)"
            if shape == "C":
                chained = run_plain("Cchain")
                results.plain["Cchain"].append(chained)
                line += f" | plain chain {chained.jobs_per_s:7.0f} jobs/s"
        log(line)


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def render(results: Results, *, workers: int, concurrency: int, embedded: tuple[Measurement, int] | None,
           variants: list[tuple[str, Results]], repeat: int, cpu_info: str) -> str:
    rows = []
    names = {
        "A": f"A: {A_FLOWS} flows x (1 parent + {A_CHILDREN} children)",
        "B2000": f"B: 1 parent + {B_WIDE:,} children",
        "B50": f"B: 1 parent + {B_NARROW} children",
        "C": f"C: chain of depth {C_DEPTH} (plain: nested chords)",
    }
    rows.append("| Shape | Jobs | Flowsite tracked, jobs/s | Plain Celery, jobs/s | Tracked / plain |")
    rows.append("|---|---:|---:|---:|---:|")
    for shape in ("A", "B2000", "B50", "C"):
        t, p = results.median("tracked", shape), results.median("plain", shape)
        rows.append(f"| {names[shape]} | {SHAPES[shape][1]:,} | {fmt(t)} | {fmt(p)} | {ratio(t, p)} |")
    t, p = results.median("tracked", "C"), results.median("plain", "Cchain")
    rows.append(f"| C reference: plain `chain` of {C_DEPTH} | {C_DEPTH} | {fmt(t)} | {fmt(p)} | {ratio(t, p)} |")
    tw, tn = results.median_per_job("tracked", "B2000"), results.median_per_job("tracked", "B50")
    pw, pn = results.median_per_job("plain", "B2000"), results.median_per_job("plain", "B50")
    rows.append(
        f"| B: per-job cost, {B_WIDE:,} vs {B_NARROW} children (target <= 1.25x) | - | "
        f"{ratio(tw, tn)} ({fmt(tw * 1e3 if tw else None, 2)} vs {fmt(tn * 1e3 if tn else None, 2)} ms) | "
        f"{ratio(pw, pn)} ({fmt(pw * 1e3 if pw else None, 2)} vs {fmt(pn * 1e3 if pn else None, 2)} ms) | - |"
    )
    if embedded:
        measurement, threads = embedded
        rows.append(
            f"| A, embedded mode (SQLite + filesystem broker, in-process worker, {threads} threads) | "
            f"{measurement.jobs:,} | {measurement.jobs_per_s:,.0f} | - | - |"
        )
    for label, variant in variants:
        t, p = variant.median("tracked", "A"), variant.median("plain", "A")
        rows.append(f"| A, variant: {label} | {SHAPES['A'][1]:,} | {fmt(t)} | {fmt(p)} | {ratio(t, p)} |")
    notes = (
        f"\nMedian of {repeat} runs per cell; time = first submission to last completion (server-side timestamps). "
        f"Service mode: PostgreSQL + Redis on the same machine ({cpu_info}), {workers} x "
        f"`celery -A flowsite worker -P prefork -c {concurrency}` shared by both columns, project Celery settings "
        f"(prefetch multiplier 1, acks_late); plain Celery uses the Redis result backend and broker_pool_limit="
        f"{BROKER_POOL_LIMIT}. Handlers do no work. Command: `.venv/bin/python bench/flows.py`."
    )
    return "\n".join(rows) + "\n" + notes


def check_nested_chord_default_pool(timeout: float) -> str:
    """Does plain Celery finish 50 nested chords with the default broker_pool_limit (10)? Separate process."""
    code = (
        "import os, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import django; django.setup()\n"
        "from bench import flows as b\n"
        "from flowsite.celery import app\n"
        "print('broker_pool_limit', app.conf.broker_pool_limit, flush=True)\n"
        "t = time.time(); m = b.run_plain('C', timeout=%r); print('OK %%.3f' %% m.seconds, flush=True)\n" % timeout
    )
    env = service_env()
    env.pop("BENCH_BROKER_POOL_LIMIT")
    try:
        proc = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout + 30)
        out = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += "\n(client hung: killed)"
    last = [line for line in out.splitlines() if line.strip()][-1:] or ["(no output)"]
    return last[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per shape and side (median reported)")
    parser.add_argument("--workers", type=int, default=2, help="celery worker instances (default 2)")
    parser.add_argument("--concurrency", type=int, default=1, help="prefork processes per worker (default 1)")
    parser.add_argument("--profile", action="store_true", help="py-spy the workers during shape A (tracked)")
    parser.add_argument("--profile-only", action="store_true", help="only the profile, no benchmark")
    parser.add_argument("--profile-rounds", type=int, default=3)
    parser.add_argument("--variants", action="store_true",
                        help="extra rows for shape A: prefetch multiplier 4; 2 workers x 2 processes")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded-mode run")
    parser.add_argument("--check-default-pool", action="store_true",
                        help="also try plain nested chords (C) with the default broker_pool_limit")
    parser.add_argument("--keep-logs", action="store_true", help="keep worker logs / profiles (temp dir)")
    parser.add_argument("--analyse-profile", metavar="DIR",
                        help="only summarise the py-spy profile-<pid>.txt files kept in DIR by --profile")
    parser.add_argument("--embedded-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--embedded-concurrency", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.analyse_profile:
        files = sorted(Path(args.analyse_profile).glob("profile-*.txt"))
        pids = [int(f.stem.split("-")[1]) for f in files]
        print(analyse_profile(files, pids))
        return
    if args.embedded_child:
        embedded_child(args.embedded_concurrency)
        return

    began = time.monotonic()
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
    cpu_info = f"{os.cpu_count()} CPUs"
    log(f"bench DB {DB_NAME}, Redis {REDIS_URL}, worker logs in {log_dir}")

    results = Results()
    variants: list[tuple[str, Results]] = []
    embedded = None
    profile_text = None
    default_pool_check = None
    shapes = ["A", "B2000", "B50", "C"]
    try:
        workers = start_workers(count=args.workers, concurrency=args.concurrency, log_dir=log_dir, label="main")
        try:
            from bench.handlers import pool_limit

            info = pool_limit.apply_async().get(timeout=30)
            log(f"workers up ({args.workers} x prefork -c {args.concurrency}); worker settings: {info}")
            warm_up(user)
            if not args.profile_only:
                for index in range(args.repeat):
                    log(f"round {index + 1}/{args.repeat}")
                    measure_round(results, user, shapes)
                    # B50 is short (tens of ms): sample it more often to steady the 2000-vs-50 ratio.
                    for _ in range(2):
                        measure_round(results, user, ["B50"])
                if args.check_default_pool:
                    log("plain nested chords (C) with the default broker_pool_limit ...")
                    default_pool_check = check_nested_chord_default_pool(60)
                    log(f"  -> {default_pool_check}")
            if args.profile or args.profile_only:
                log("profiling shape A (tracked) with py-spy ...")
                profile_text = profile_workers(workers, user, args.profile_rounds, log_dir)
        finally:
            stop_workers(workers)

        if args.variants and not args.profile_only:
            for label, count, concurrency, extra in (
                ("prefetch multiplier 4", args.workers, args.concurrency, {"CELERY_WORKER_PREFETCH_MULTIPLIER": "4"}),
                (f"{args.workers} workers x 2 processes", args.workers, 2, {}),
            ):
                variant = Results()
                workers = start_workers(count=count, concurrency=concurrency, log_dir=log_dir,
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
            log("embedded mode, shape A (subprocess, temporary FLOWSITE_DATA_DIR) ...")
            embedded = run_embedded(None)
            log(f"  embedded A: {embedded[0].jobs_per_s:.0f} jobs/s ({embedded[0].seconds:.2f} s)")
    finally:
        truncate_tables()
        flush_redis()
        if not args.keep_logs and not (args.profile or args.profile_only):
            shutil.rmtree(log_dir, ignore_errors=True)

    if profile_text:
        print("\n## Profile\n")
        print(profile_text)
    if not args.profile_only:
        print("\n## Results (jobs/s, higher is better)\n")
        for shape in ("A", "B2000", "B50", "C", "Cchain"):
            for side in ("tracked", "plain"):
                if getattr(results, side).get(shape):
                    print(f"  {shape:6s} {side:7s} median {fmt(results.median(side, shape)):>7s} jobs/s "
                          f"(runs: {results.spread(side, shape)})")
        if default_pool_check:
            print(f"\n  plain nested chords with default broker_pool_limit: {default_pool_check}")
        print()
        print(render(results, workers=args.workers, concurrency=args.concurrency, embedded=embedded,
                     variants=variants, repeat=args.repeat, cpu_info=cpu_info))
    log(f"total bench time {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
