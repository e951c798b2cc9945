"""Handlers used by the test suite (loaded through FLOWSITE_HANDLER_MODULES)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from jobs.handlers import JobContext, job_handler


def _user_data(ctx: JobContext) -> dict:
    return {k: v for k, v in ctx.data.items() if k not in ("flowId", "_flowMetadata")}


@job_handler("test-value")
def value(ctx: JobContext):
    return ctx.data.get("value")


@job_handler("test-sum")
def add(ctx: JobContext):
    """Add ``data.value`` (default 0) and every child's numeric value."""
    total = ctx.data.get("value", 0)
    seen = set()
    for key, child in ctx.children_values.items():
        if len(key) == 32 and key not in seen:  # job ids only: each child once
            seen.add(key)
            total += child
    return total


@job_handler("test-echo")
def echo(ctx: JobContext):
    return {
        "data": _user_data(ctx),
        "flowId": ctx.flow_id,
        "jobId": ctx.job_id,
        "metadata": ctx.data.get("_flowMetadata"),
        "childrenValues": ctx.children_values,
        "childrenFailures": ctx.children_failures,
    }


@job_handler("test-sleep")
def sleep(ctx: JobContext):
    start = time.time()
    ctx.log(f"start {start}")
    try:
        time.sleep(ctx.data.get("ms", 100) / 1000)
    except BaseException as exc:  # a timeout interrupting it: say so, and stop
        ctx.log(f"interrupted by {type(exc).__name__}")
        raise
    end = time.time()
    ctx.log(f"end {end}")
    return {"start": start, "end": end, "pid": os.getpid()}


@job_handler("test-fail")
def fail(ctx: JobContext):
    ctx.log(f"attempt {ctx.attempt} at {time.time()}")
    raise ValueError(ctx.data.get("message", "boom"))


@job_handler("test-flaky")
def flaky(ctx: JobContext):
    ctx.log(f"attempt {ctx.attempt} at {time.time()}")
    if ctx.attempt < ctx.data["succeedOnAttempt"]:
        raise RuntimeError(f"failing attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@job_handler("test-submit")
def submit(ctx: JobContext):
    job_id = ctx.submit("test-sleep", queue_name="alt", data={"ms": ctx.data.get("ms", 300)})
    return {"submitted": job_id}


@job_handler("test-unserialisable")
def unserialisable(ctx: JobContext):
    return {"when": object()}


@job_handler("test-fail-first-time")
def fail_first_time(ctx: JobContext):
    """Fail until the marker file exists (the first run creates it): a retry then succeeds."""
    marker = Path(ctx.data["marker"])
    if not marker.exists():
        marker.write_text("failed once")
        raise RuntimeError("first run fails")
    return {"recovered": True}


@job_handler("test-die-first-time")
def die_first_time(ctx: JobContext):
    """Kill its own worker process on the first attempt (as the OOM killer would), then succeed."""
    if ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"survived": ctx.attempt}


@job_handler("test-lose-database-first-time")
def lose_database_first_time(ctx: JobContext):
    """On the first attempt, have PostgreSQL drop this worker's connection (as a restart would)."""
    from django.db import OperationalError, connection

    if ctx.attempt == 1:
        with connection.cursor() as cursor:
            try:
                cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            except OperationalError:
                pass
    return {"attempt": ctx.attempt}


@job_handler("test-db-sleep")
def db_sleep(ctx: JobContext):
    """Wait inside a database query (a timeout interrupts it mid-query)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [ctx.data.get("ms", 100) / 1000])
    return {"slept": True}


@job_handler("test-progress")
def progress(ctx: JobContext):
    ctx.update_progress({"step": 1, "of": 2})
    ctx.update_progress(100)
    return "done"


@job_handler("test-hang-first-time")
def hang_first_time(ctx: JobContext):
    """Hang on the first attempt (its worker is killed meanwhile), then succeed at once with the attempt number."""
    ctx.log(f"attempt {ctx.attempt} in pid {os.getpid()}")
    if ctx.attempt == 1:
        time.sleep(ctx.data.get("ms", 60_000) / 1000)
    return ctx.attempt


@job_handler("test-until-cancelled")
def until_cancelled(ctx: JobContext):
    """Poll ``ctx.cancelled`` until the job is cancelled, then stop early."""
    ctx.log(f"start in pid {os.getpid()}")
    try:
        while not ctx.cancelled:
            time.sleep(0.05)
    except BaseException as exc:
        ctx.log(f"interrupted by {type(exc).__name__}")
        raise
    ctx.log("saw ctx.cancelled")
    return "stopped"


@job_handler("test-wait-for-file")
def wait_for_file(ctx: JobContext):
    """Run until the file ``data.path`` exists (at most ``data.ms``, default 60 s): the test decides when it ends."""
    path = Path(ctx.data["path"])
    ctx.log(f"waiting for {path.name}")
    deadline = time.monotonic() + ctx.data.get("ms", 60_000) / 1000
    while not path.exists() and time.monotonic() < deadline and not ctx.cancelled:
        time.sleep(0.05)
    ctx.log("released" if path.exists() else "gave up")
    return {"released": path.exists()}
