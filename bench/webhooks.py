#!/usr/bin/env python
"""Webhooks benchmark: what subscribed webhooks cost the engine, and how fast deliveries go out.

Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379. From the project root::

    .venv/bin/python bench/webhooks.py                  # both parts, ~4 minutes on a quiet 2-CPU machine
    .venv/bin/python bench/webhooks.py --part cost      # engine throughput, 0 vs 10 webhooks
    .venv/bin/python bench/webhooks.py --part send      # deliveries/s to a local receiver

Part 1, cost (same run, the same two prefork workers as bench/flows.py, handlers
doing nothing, events off so that only webhooks number them): shapes A (200 flows
of 1+10) and B (1+2,000) with no webhook, then with ``--webhooks`` (default 10)
active webhooks subscribed to ``completed`` only (a job's or flow's end: about 1
event per job), then to ``all`` (every job status change, job and flow progress,
flow ends: about 2-3 events per job). The engine's transactions record each event
once; turning them into deliveries (one per webhook) is the dispatcher's work.
"all" runs with no dispatcher, so the figure is what recording costs the engine
(the events are expanded after the timed run, which prints the deliveries/s of
that); "all, expanded meanwhile" runs a process beside the workers that expands
every 50 ms, as the webhooks worker does after the kicks, so its database work
competes with the engine's. Sending is part 2. Plain Celery chords run in the same
rounds as the baseline.

Part 2, send: ``--deliveries`` (default 2,000) pending deliveries are sent by one
``celery worker -Q webhooks -P threads -c 8`` to a local receiver (a threaded
``http.server`` in this process that answers 200 at once):
- "parallel": spread over 10 webhooks x 20 flows (200 ordered lines);
- "one line": one webhook, one flow (strictly in order, one at a time).
Deliveries/s = deliveries / (first claim -> last success). Each is signed, checked
against the SSRF rules after resolving ``127.0.0.1`` (allowed here:
``FLOWSITE_WEBHOOK_ALLOW_PRIVATE=1`` for the worker), POSTed on a new connection
and recorded.

Isolation: PostgreSQL database ``flowsite_bench_webhooks``, Redis DB 6 (flushed).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on sys.path, where bench/flows.py would
# shadow the ``flows`` app: put the project root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench.flows as bf  # noqa: E402  (after the sys.path fix)

bf.REDIS_URL = "redis://127.0.0.1:6379/6"
bf.DB_NAME = "flowsite_bench_webhooks"
log = bf.log


# Receiver -----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def start_receiver() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    Thread(target=server.serve_forever, daemon=True).start()
    return server


# Part 1: engine cost --------------------------------------------------------------------


def subscribe(user, count: int, url: str, events: str = "all") -> None:
    from webhooks.models import Webhook, event_mask
    from webhooks.services import webhook_create

    Webhook.objects.all().delete()
    for _ in range(count - 1):
        Webhook.objects.create(owner=user, url=url, event_mask=event_mask([events]))
    if count:
        webhook_create(owner=user, url=url, events=[events])  # waits until every worker records them
    else:
        time.sleep(1.0)  # the workers' cached flag (0.5 s) notices that none is left


def clear_deliveries() -> None:
    """Empty the delivery log and the recorded events (DELETEs: the workers' progress threads may still write)."""
    from webhooks.models import Delivery, RecordedEvent

    time.sleep(0.5)  # the last coalesced flow progress (every 250 ms) is recorded
    RecordedEvent.objects.all()._raw_delete(RecordedEvent.objects.db)
    Delivery.objects.all()._raw_delete(Delivery.objects.db)


EXPAND_EVERY = 0.05  # seconds: the kicks' pace (webhooks.recording.KICK_INTERVAL_SECONDS)


def expand_loop() -> None:
    """``--expand-loop``: turn recorded events into deliveries every ``EXPAND_EVERY`` s, as the dispatcher does."""
    import django

    django.setup()
    from webhooks.recording import expand_events

    while True:
        expand_events()
        time.sleep(EXPAND_EVERY)


def start_expander(log_dir: Path) -> subprocess.Popen:
    logfile = open(log_dir / "expander.log", "w")
    process = subprocess.Popen([bf.PYTHON, __file__, "--expand-loop"], cwd=ROOT, env=bf.service_env(),
                               stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
    logfile.close()
    return process


def part_cost(user, *, repeat: int, webhooks: int, url: str, log_dir: Path, modes: list[str]) -> dict:
    from django.conf import settings

    from webhooks.models import Delivery, RecordedEvent
    from webhooks.recording import expand_events

    rows: dict[str, dict[str, list[bf.Measurement]]] = {}

    def record(mode: str, shape: str, measurement: bf.Measurement, extra: str = "") -> None:
        rows.setdefault(mode, {}).setdefault(shape, []).append(measurement)
        log(f"  {shape:5s} {mode:28s} {bf.describe(measurement)}{extra}")

    settings.FLOWSITE_EVENTS = False
    workers = bf.start_workers(count=2, concurrency=1, log_dir=log_dir, label="webhooks-cost", FLOWSITE_EVENTS="0")
    chosen = modes
    modes = [("0 webhooks", 0, "", False)] + [
        mode for key, mode in (
            ("completed", (f"{webhooks} x completed", webhooks, "completed", False)),
            ("all", (f"{webhooks} x all", webhooks, "all", False)),
            ("expanded", (f"{webhooks} x all, expanded meanwhile", webhooks, "all", True)),
        ) if key in chosen
    ]
    try:
        subscribe(user, 0, url)
        bf.warm_up(user)
        for index in range(repeat):
            log(f"cost round {index + 1}/{repeat}")
            for mode, count, events, expanding in modes:
                subscribe(user, count, url, events)
                for shape in ("A", "B2000"):
                    clear_deliveries()  # before run_tracked's TRUNCATE of the flows, which waits for nobody
                    expander = start_expander(log_dir) if expanding else None
                    try:
                        measurement = bf.run_tracked(shape, user)
                    finally:
                        if expander is not None:
                            bf.stop_process_group(expander)
                    extra = ""
                    if count:
                        time.sleep(0.5)  # the last coalesced flow progress
                        recorded = RecordedEvent.objects.count()
                        started = time.perf_counter()
                        expanded = expand_events()
                        seconds = time.perf_counter() - started
                        deliveries = Delivery.objects.count()
                        extra = (f", {recorded / measurement.jobs:.2f} events/job left to expand"
                                 f" -> {deliveries / measurement.jobs:.1f} deliveries/job"
                                 f" ({expanded / seconds:.0f} deliveries/s expanded)" if expanded else
                                 f", {deliveries / measurement.jobs:.1f} deliveries/job")
                    record(mode, shape, measurement, extra)
                    if not count:
                        record("plain Celery", shape, bf.run_plain(shape))
    finally:
        subscribe(user, 0, url)
        clear_deliveries()
        bf.stop_workers(workers)
    return rows


def render_cost(rows: dict, webhooks: int) -> str:
    def median(mode: str, shape: str) -> float | None:
        runs = rows.get(mode, {}).get(shape, [])
        return statistics.median(m.jobs_per_s for m in runs) if runs else None

    base = "0 webhooks"
    lines = ["| mode | A jobs/s | B jobs/s | A vs 0 webhooks | B vs 0 webhooks |", "|---|---|---|---|---|"]
    for mode in rows:
        a, b = median(mode, "A"), median(mode, "B2000")
        lines.append(
            f"| {mode} | {bf.fmt(a)} | {bf.fmt(b)} | {bf.ratio(a, median(base, 'A'))} | {bf.ratio(b, median(base, 'B2000'))} |"
        )
    return "\n".join(lines)


# Part 2: sending ------------------------------------------------------------------------


def start_webhook_worker(log_dir: Path) -> subprocess.Popen:
    from flowsite.celery import app
    from jobs.vocabulary import WEBHOOK_QUEUE

    env = bf.service_env(FLOWSITE_WEBHOOK_ALLOW_PRIVATE="1")
    logfile = open(log_dir / "webhooks-worker.log", "w")
    process = subprocess.Popen(
        [bf.PYTHON, "-m", "celery", "-A", "flowsite", "worker", "-Q", WEBHOOK_QUEUE, "-P", "threads", "-c", "8",
         "-l", "warning", "-n", "bench-webhooks@%h", "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
    )
    logfile.close()
    deadline = time.monotonic() + 60
    while not any("bench-webhooks" in next(iter(r)) for r in app.control.ping(timeout=0.5) or []):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the webhooks worker did not start; see {log_dir}")
    return process




def send_round(user, url: str, *, deliveries: int, webhooks: int, flows: int) -> tuple[float, float]:
    """Write ``deliveries`` pending deliveries, ask for them, wait; return (deliveries/s, seconds)."""
    from django.db.models import Max, Min
    from django.utils import timezone

    from jobs.vocabulary import DeliveryStatus, WebhookEvent
    from webhooks.models import Delivery, Webhook, event_mask
    from jobs.vocabulary import WEBHOOK_QUEUE
    from webhooks.tasks import dispatch

    Webhook.objects.all().delete()
    clear_deliveries()
    hooks = [Webhook.objects.create(owner=user, url=url, event_mask=event_mask([WebhookEvent.ALL]))
             for _ in range(webhooks)]
    now = timezone.now()
    Delivery.objects.bulk_create([
        Delivery(webhook=hooks[n % webhooks], event_id=f"evt_bench_{n}", event_type=WebhookEvent.DELTA,
                 flow_id=f"flow{(n // webhooks) % flows}", seq=n, data={"flowId": "bench", "seq": n},
                 next_attempt_at=now, created_at=now, updated_at=now)
        for n in range(deliveries)
    ], batch_size=1000)
    dispatch.apply_async(queue=WEBHOOK_QUEUE)
    deadline = time.monotonic() + 600
    while Delivery.objects.filter(status=DeliveryStatus.PENDING).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("deliveries still pending after 600 s")
        time.sleep(0.1)
    failed = Delivery.objects.exclude(status=DeliveryStatus.SUCCEEDED).count()
    if failed:
        raise RuntimeError(f"{failed} deliveries did not succeed: {Delivery.objects.exclude(status=DeliveryStatus.SUCCEEDED).first().last_error}")
    span = Delivery.objects.aggregate(first=Min("updated_at"), last=Max("delivered_at"))
    # The first attempt's start: its delivery's claim minus the attempt (duration) is close enough;
    # the span from the request for them (now) to the last success is what a user waits.
    seconds = (span["last"] - now).total_seconds()
    return deliveries / seconds, seconds


def part_send(user, *, deliveries: int, repeat: int, url: str, log_dir: Path) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    worker = start_webhook_worker(log_dir)
    try:
        for index in range(repeat):
            for name, webhooks, flows, count in (
                ("parallel (10 webhooks x 20 flows)", 10, 20, deliveries),
                ("one line (1 webhook, 1 flow)", 1, 1, max(deliveries // 4, 100)),
            ):
                rate, seconds = send_round(user, url, deliveries=count, webhooks=webhooks, flows=flows)
                results.setdefault(name, []).append(rate)
                log(f"  send {name}: {count} deliveries in {seconds:.2f} s, {rate:.0f}/s")
    finally:
        bf.stop_process_group(worker)
        clear_deliveries()
    return results


def render_send(results: dict[str, list[float]]) -> str:
    lines = ["| deliveries | deliveries/s (median) | runs |", "|---|---:|---|"]
    for name, rates in results.items():
        lines.append(f"| {name} | {statistics.median(rates):.0f} | {', '.join(f'{r:.0f}' for r in rates)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["cost", "send", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--webhooks", type=int, default=10, help="active webhooks in the cost part")
    parser.add_argument("--modes", default="completed,all,expanded",
                        help="cost part: which of completed, all, expanded to run besides 0 webhooks")
    parser.add_argument("--deliveries", type=int, default=2000, help="deliveries sent in the send part")
    parser.add_argument("--expand-loop", action="store_true", help=argparse.SUPPRESS)  # the cost part's expander
    args = parser.parse_args()
    if args.expand_loop:
        expand_loop()
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    bf.ensure_database()
    env = bf.service_env()
    os.environ.clear()
    os.environ.update(env)
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    bf.truncate_tables()
    user, _ = get_user_model().objects.get_or_create(username="bench-webhooks")
    bf.flush_redis()
    settings.FLOWSITE_WEBHOOK_ALLOW_PRIVATE = True  # this process saves webhooks to the local receiver
    receiver = start_receiver()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    log_dir = Path(tempfile.mkdtemp(prefix="flowsite-bench-webhooks-"))
    log(f"bench DB {bf.DB_NAME}, Redis {bf.REDIS_URL}, logs in {log_dir}")
    out = []
    if args.part in ("cost", "both"):
        rows = part_cost(user, repeat=args.repeat, webhooks=args.webhooks, url=url, log_dir=log_dir,
                         modes=args.modes.split(","))
        out.append(render_cost(rows, args.webhooks))
        out.append(bf.render_cost_cpu(rows))
    if args.part in ("send", "both"):
        out.append(render_send(part_send(user, deliveries=args.deliveries, repeat=args.repeat, url=url,
                                         log_dir=log_dir)))
    bf.flush_redis()
    receiver.shutdown()
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
