"""Celery workers of the webhooks queue for the tests, in process groups of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connection

from jobs.vocabulary import WEBHOOK_QUEUE
from tests.conftest import ROOT, service_env, wait_for

# Short timeouts and retries: a test sees every outcome within seconds.
FAST = {
    "FLOWSITE_WEBHOOK_CONNECT_TIMEOUT": "1",
    "FLOWSITE_WEBHOOK_READ_TIMEOUT": "1",
    "FLOWSITE_WEBHOOK_RETRY_DELAYS": "1,1",
}


def start_webhook_worker(name: str, *, allow_private: bool, threads: int = 4) -> subprocess.Popen:
    """A ``celery worker -Q webhooks -P threads`` on the test database; ``allow_private`` for local receivers."""
    env = {**service_env(connection.settings_dict["NAME"]), **FAST,
           "FLOWSITE_WEBHOOK_ALLOW_PRIVATE": "1" if allow_private else "0"}
    log = open(settings.DATA_DIR / f"{name}.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "flowsite", "worker", "-Q", WEBHOOK_QUEUE, "-P", "threads",
         "-c", str(threads), "-l", "info", "-n", f"{name}@%h", "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    from flowsite.celery import app

    def up():
        return any(name in next(iter(reply)) for reply in app.control.ping(timeout=0.5) or [])

    wait_for(up, timeout=60, interval=0.2, message=f"webhook worker {name} to start")
    return process


def kill(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a worker and its threads (``SIGKILL``: as a machine would lose it)."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def webhook_worker_running(name: str, *, allow_private: bool) -> Iterator[subprocess.Popen]:
    """``start_webhook_worker`` for the length of a ``with`` block (a module's fixture)."""
    process = start_webhook_worker(name, allow_private=allow_private)
    try:
        yield process
    finally:
        kill(process)
