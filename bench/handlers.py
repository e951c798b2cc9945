"""Handlers and plain-Celery tasks for ``bench/flows.py`` (loaded via FLOWSITE_HANDLER_MODULES=bench.handlers).

Both sides do no work, so what the benchmark measures is the engine's own cost:

- tracked (Flowsite) jobs: ``bench-leaf`` returns 1, ``bench-parent`` returns how
  many child values it received (the engine has already fetched them);
- plain Celery baseline: ``bench.noop`` returns 1, ``bench.collect`` receives the
  list of its children's results (chord body) or the previous result (chain) and
  returns its length.

The plain tasks are registered on the project's own Celery app (``flowsite``), so
the very same worker processes run both, with the project's Celery settings
(acks_late, prefetch multiplier, Redis priority queues, Redis result backend).

``BENCH_BROKER_POOL_LIMIT`` (set by bench/flows.py for its workers and for
itself) raises ``broker_pool_limit``: plain Celery needs more than the default 10
pooled broker connections to publish 50 nested chords. Flowsite's own path holds
at most one pooled connection per process at a time, so the limit does not
change it.
"""

from __future__ import annotations

import os

from celery import shared_task

from flowsite.celery import app
from jobs.handlers import JobContext, job_handler

BENCH_QUEUE = os.environ.get("BENCH_QUEUE", "bench")

_pool_limit = os.environ.get("BENCH_BROKER_POOL_LIMIT")
if _pool_limit:
    app.conf.broker_pool_limit = int(_pool_limit)


# Tracked (Flowsite) handlers ---------------------------------------------------


@job_handler("bench-leaf")
def bench_leaf(ctx: JobContext) -> int:
    return 1


@job_handler("bench-parent")
def bench_parent(ctx: JobContext) -> int:
    # children_values is keyed by job id (32 hex chars) and by name: count ids only.
    return sum(1 for key in ctx.children_values if len(key) == 32)


# Plain Celery baseline ---------------------------------------------------------


@shared_task(name="bench.noop", queue=BENCH_QUEUE)
def noop() -> int:
    return 1


@shared_task(name="bench.collect", queue=BENCH_QUEUE)
def collect(results) -> int:
    return len(results) if isinstance(results, list) else 1


@shared_task(name="bench.pool_limit", queue=BENCH_QUEUE)
def pool_limit() -> dict:
    """Report this worker process's broker pool limit and prefetch setting (sanity check)."""
    return {
        "pid": os.getpid(),
        "broker_pool_limit": app.conf.broker_pool_limit,
        "pool_limit": app.pool.limit,
        "prefetch_multiplier": app.conf.worker_prefetch_multiplier,
    }
