"""The handler of ``bench/chaos.py`` (loaded via FLOWSITE_HANDLER_MODULES=bench.chaos_handlers).

``chaos-work`` sleeps ``data.ms`` milliseconds, fails on purpose while
``ctx.attempt <= data.failAttempts`` (or always, with ``data.alwaysFail``), and
otherwise returns ``1 +`` the sum of its children's values: the root of a flow
returns how many of its jobs completed, so the flow's result shows whether the
fan-in saw every child exactly once.

Every run is recorded, because the chaos run counts duplicate runs and must not
depend on the engine it is testing to do so. Each record is one line appended
with a single ``write()`` to a file of this process (``CHAOS_RUNS_DIR/<pid>.runs``,
opened ``O_APPEND``)::

    <unix time> <pid> <job id> <attempt> start|ok|raise

A line is written before the sleep (``start``) and one when the handler ends
(``ok`` or ``raise``). A process killed with SIGKILL loses nothing that was
written (the data is in the kernel's page cache, whatever happens to the
process), at worst the line of a write that had not begun: a run with a
``start`` and no end was interrupted.
"""

from __future__ import annotations

import os
import time

from jobs.handlers import JobContext, job_handler

RUNS_DIR_ENV = "CHAOS_RUNS_DIR"

_files: dict[int, int] = {}  # pid -> file descriptor (a pool process forks with its parent's dict)


class ChaosFailure(RuntimeError):
    """The failure a job was asked to raise (``failAttempts`` / ``alwaysFail``)."""


def _record(ctx: JobContext, event: str) -> None:
    pid = os.getpid()
    fd = _files.get(pid)
    if fd is None:
        path = os.path.join(os.environ[RUNS_DIR_ENV], f"{pid}.runs")
        fd = _files[pid] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"{time.time():.6f} {pid} {ctx.job_id} {ctx.attempt} {event}\n".encode())


@job_handler("chaos-work")
def work(ctx: JobContext) -> int:
    _record(ctx, "start")
    time.sleep(ctx.data.get("ms", 50) / 1000)
    if ctx.data.get("alwaysFail") or ctx.attempt <= ctx.data.get("failAttempts", 0):
        _record(ctx, "raise")
        raise ChaosFailure(f"attempt {ctx.attempt} fails on purpose")
    # children_values is keyed by job id (32 hex characters) and by name: ids only.
    value = 1 + sum(child for key, child in ctx.children_values.items() if len(key) == 32)
    _record(ctx, "ok")
    return value
