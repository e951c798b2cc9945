#!/usr/bin/env python
"""Live events benchmark: what events cost the engine, and how fast they reach clients.

Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379. From the project root::

    .venv/bin/python bench/events.py               # both parts, ~6-8 minutes on a quiet 2-CPU machine
    .venv/bin/python bench/events.py --part cost   # engine throughput, events off / on / on with clients
    .venv/bin/python bench/events.py --part latency --clients 100

Part 1, cost (same run, same two prefork workers as bench/flows.py, handlers doing nothing):
shapes A (200 flows of 1+10) and B (1+2,000) run tracked with the workers started
with ``FLOWSITE_EVENTS=0``, then ``1`` with nobody connected, then ``1`` with
``--watchers`` (default 10) websocket clients connected to ``/ws/flows/`` as a
staff user (so every event of every flow reaches them), through the real server
(``manage.py up --no-worker --workers 2``). Plain Celery chords run in the same
rounds as the baseline. Reported: jobs/s and the ratios on/off.

Part 2, latency: ``--clients`` websocket clients (default 100) in one asyncio
process, against the same server and workers with events on:
- one stream: every client watches ``/ws/flows/`` (staff) while one flow of
  1+300 children runs; every client receives every event;
- separate flows: each client watches its own flow (``/ws/flows/{flowId}/``) of
  1+3 children; the flows are created on a paused queue, the clients connect,
  then the queue is resumed.
Latency = time a client receives a ``flow:job:updated`` minus the job's
``started_at`` (active) or ``finished_at`` (completed) in the database, both on
this machine's clock; those timestamps are taken just before the statement that
commits the change, so the figure includes the commit. Events/s = frames
received by all clients per second.

Isolation: PostgreSQL database ``flowsite_bench_events``, Redis DB 12 (flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on sys.path, where bench/flows.py would
# shadow the ``flows`` app: put the project root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench.flows as bf  # noqa: E402  (after the sys.path fix)

bf.REDIS_URL = "redis://127.0.0.1:6379/12"
bf.DB_NAME = "flowsite_bench_events"
log = bf.log
# The paced stream of the latency part.
PACED_FLOWS_PER_S = 4
PACED_SECONDS = 10


# Server and clients -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, log_dir: Path) -> subprocess.Popen:
    env = bf.service_env(ALLOWED_HOSTS="127.0.0.1,localhost")
    logfile = open(log_dir / "server.log", "w")
    process = subprocess.Popen(
        [bf.PYTHON, "manage.py", "up", "--no-worker", "--workers", "2", "--port", str(port), "--host", "127.0.0.1"],
        cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
    )
    logfile.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited; see {log_dir / 'server.log'}")
            time.sleep(0.2)
    raise RuntimeError("the server did not start within 60 s")


stop_server = bf.stop_process_group


class Clients:
    """Websocket clients in a background asyncio loop; each records (receipt time, frame)."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.received: list[list[tuple[float, dict]]] = []
        self.sockets = []
        self.tasks = []

    def connect(self, paths: list[str]) -> None:
        asyncio.run_coroutine_threadsafe(self._connect(paths), self.loop).result(120)

    async def _connect(self, paths: list[str]) -> None:
        import websockets

        for path in paths:
            ws = await websockets.connect(
                f"ws://127.0.0.1:{self.port}{path}", subprotocols=["flowsite", self.token],
                origin="http://127.0.0.1", max_size=None, ping_interval=None,
            )
            inbox: list[tuple[float, dict]] = []
            self.received.append(inbox)
            self.sockets.append(ws)
            self.tasks.append(asyncio.ensure_future(self._read(ws, inbox)))
        # A round trip on every socket: each has joined its groups before anything is measured.
        for ws in self.sockets:
            await ws.send(json.dumps({"action": "ping"}))

        async def all_ponged():
            while not all(any(frame.get("event") == "pong" for _, frame in inbox) for inbox in self.received):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(all_ponged(), 60)

    async def _read(self, ws, inbox) -> None:
        try:
            async for text in ws:
                inbox.append((time.time(), json.loads(text)))
        except Exception:
            pass

    def quiet(self, *, idle: float = 1.0, timeout: float = 120.0) -> None:
        """Wait until no frame has arrived for ``idle`` seconds: every client has caught up."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            count = self.frames()
            if count == last:
                return
            last = count
            time.sleep(idle)

    def frames(self) -> int:
        return sum(len(inbox) for inbox in self.received)

    def close(self) -> None:
        async def close_all():
            for ws in self.sockets:
                await ws.close()
            for task in self.tasks:
                task.cancel()

        asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)


class WatcherProcess:
    """``Clients`` in a process of their own, so that reading their frames does not take
    the GIL from this process, which creates the flows being measured."""

    def __init__(self, port: int, token: str, paths: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--watch", str(port), *paths],
            env={**os.environ, "BENCH_TOKEN": token}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the watching clients did not connect")

    def close(self) -> int:
        """Disconnect the clients; return how many frames they received."""
        self.process.stdin.close()
        frames = self.process.stdout.read().strip()
        self.process.wait(60)
        return int(frames or 0)

    def frames(self) -> int:
        """How many frames the clients have received so far."""
        self.process.stdin.write("count\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())


class HeldOpen:
    """Keeps the listening key alive as a web process with a connection would (``flows.events``)."""

    def __init__(self) -> None:
        from flows import events

        self.stopped = threading.Event()
        time.sleep(events.open_gate())

        def renew() -> None:
            while not self.stopped.wait(events.LISTENING_RENEW_SECONDS):
                events.open_gate()

        threading.Thread(target=renew, daemon=True).start()

    def close(self) -> None:
        import redis
        from flows import events

        self.stopped.set()
        redis.Redis.from_url(bf.REDIS_URL).delete(events._listening_key())


def watch(port: int, paths: list[str]) -> None:
    """The body of a ``WatcherProcess``: connect, say ready, answer ``count`` lines, stop at EOF."""
    clients = Clients(port, os.environ["BENCH_TOKEN"])
    clients.connect(paths)
    print("ready", flush=True)
    for _ in sys.stdin:
        print(clients.frames(), flush=True)
    frames = clients.frames()
    clients.close()
    print(frames, flush=True)


# Part 1: cost ----------------------------------------------------------------------


def part_cost(user, token: str, *, repeat: int, watchers: int, log_dir: Path) -> dict:
    from django.conf import settings

    rows: dict[str, dict[str, list[bf.Measurement]]] = {}

    def record(mode: str, shape: str, measurement: bf.Measurement) -> None:
        rows.setdefault(mode, {}).setdefault(shape, []).append(measurement)
        log(f"  {shape:5s} {mode:22s} {bf.describe(measurement)}")

    port = free_port()
    server = start_server(port, log_dir) if watchers else None
    # "held open": events on and published, as if somebody listened, with no server and no
    # client: what numbering and publishing cost the engine alone.
    modes = [("events off", "0", 0), ("events on, nobody", "1", 0), ("events on, held open", "1", -1)]
    if watchers:
        modes.append((f"events on, {watchers} clients", "1", watchers))
    try:
        for index in range(repeat):
            log(f"cost round {index + 1}/{repeat}")
            for mode, events_on, clients in modes:
                workers = bf.start_workers(count=2, concurrency=1, log_dir=log_dir, label=f"ev{events_on}-{index}-{clients}",
                                           FLOWSITE_EVENTS=events_on)
                settings.FLOWSITE_EVENTS = events_on == "1"  # this process creates the flows
                watching = None
                try:
                    if events_on == "1" and not clients:
                        wait_until_nobody_listens()
                    if clients < 0:
                        watching = HeldOpen()
                    bf.warm_up(user)
                    if clients > 0:
                        watching = WatcherProcess(port, token, ["/ws/flows/"] * clients)
                    for shape in ("A", "B2000"):
                        record(mode, shape, bf.run_tracked(shape, user))
                        if events_on == "0":
                            record("plain Celery", shape, bf.run_plain(shape))
                finally:
                    if isinstance(watching, HeldOpen):
                        watching.close()
                    elif watching is not None:
                        log(f"  the {clients} clients received {watching.close()} frames")
                    bf.stop_workers(workers)
    finally:
        if server is not None:
            stop_server(server)
    return rows


def wait_until_nobody_listens(timeout: float = 60.0) -> None:
    """Wait until the listening key of the last round's clients has expired (``flows.events``)."""
    import redis
    from flows import events

    client = redis.Redis.from_url(bf.REDIS_URL)
    deadline = time.monotonic() + timeout
    while client.exists(events._listening_key()):
        if time.monotonic() > deadline:
            raise RuntimeError("the listening key is still alive: is a client still connected?")
        time.sleep(0.5)


def render_cost(rows: dict) -> str:
    def median(mode: str, shape: str) -> float | None:
        runs = rows.get(mode, {}).get(shape, [])
        return statistics.median(m.jobs_per_s for m in runs) if runs else None

    modes = list(rows)
    off = "events off"
    lines = ["| mode | A jobs/s | B jobs/s | A vs events off | B vs events off |", "|---|---|---|---|---|"]
    for mode in modes:
        a, b = median(mode, "A"), median(mode, "B2000")
        lines.append(
            f"| {mode} | {bf.fmt(a)} | {bf.fmt(b)} | {bf.ratio(a, median(off, 'A'))} | {bf.ratio(b, median(off, 'B2000'))} |"
        )
    return "\n".join(lines)


# Part 2: latency ------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def latencies(clients: Clients, flow_ids: list[str]) -> list[float]:
    from jobs.models import Job

    times = {
        job_id: (started, finished)
        for job_id, started, finished in Job.objects.filter(flow_id__in=flow_ids).values_list(
            "id", "started_at", "finished_at"
        )
    }
    found = []
    for inbox in clients.received:
        for received, frame in inbox:
            if frame.get("event") != "flow:job:updated" or frame["data"]["jobId"] not in times:
                continue
            started, finished = times[frame["data"]["jobId"]]
            at = {"active": started, "completed": finished}.get(frame["data"]["jobStatus"])
            if at is not None:
                found.append((received - at.timestamp()) * 1000)
    return found


def wait_for_flows(flow_ids: list[str], timeout: float = 120) -> None:
    from flows.models import Flow
    from jobs.vocabulary import FINAL_FLOW_STATUSES

    deadline = time.monotonic() + timeout
    while Flow.objects.filter(pk__in=flow_ids).exclude(status__in=FINAL_FLOW_STATUSES).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("flows did not finish")
        time.sleep(0.05)


def part_latency(user, token: str, *, clients: int, log_dir: Path) -> list[tuple[str, list[float], float, int]]:
    from flows.services import flow_create
    from jobs.services import queue_pause, queue_resume

    results = []
    port = free_port()
    server = start_server(port, log_dir)
    workers = bf.start_workers(count=2, concurrency=1, log_dir=log_dir, label="latency", FLOWSITE_EVENTS="1")
    try:
        bf.warm_up(user)
        bf.truncate_tables()
        # One stream: everybody watches every flow while flows arrive at a steady pace.
        watching = Clients(port, token)
        watching.connect(["/ws/flows/"] * clients)
        start = time.time()
        paced = []
        for n in range(int(PACED_SECONDS * PACED_FLOWS_PER_S)):
            paced.append(flow_create(owner=user, spec=bf.fan_in_spec(1, f"latency-paced-{n}")).pk)
            time.sleep(max(0.0, start + (n + 1) / PACED_FLOWS_PER_S - time.time()))
        wait_for_flows(paced)
        watching.quiet()
        frames, elapsed = watching.frames(), max(t for inbox in watching.received for t, _ in inbox) - start
        results.append((f"one stream, {PACED_FLOWS_PER_S} flows/s of 1+1 jobs (/ws/flows/)",
                        latencies(watching, paced), frames / elapsed, frames))
        watching.close()

        # The same stream, in a burst: one flow of 1+300 jobs, as fast as the workers go.
        bf.truncate_tables()
        watching = Clients(port, token)
        watching.connect(["/ws/flows/"] * clients)
        start = time.time()
        flow = flow_create(owner=user, spec=bf.fan_in_spec(300, "latency-burst"))
        wait_for_flows([flow.pk])
        watching.quiet()
        frames, elapsed = watching.frames(), max(t for inbox in watching.received for t, _ in inbox) - start
        results.append(("one stream, burst of 1+300 jobs (/ws/flows/)", latencies(watching, [flow.pk]),
                        frames / elapsed, frames))
        watching.close()

        # Separate flows: each client its own flow, created on a paused queue.
        bf.truncate_tables()
        queue_pause(name=bf.QUEUE)
        flows = [flow_create(owner=user, spec=bf.fan_in_spec(3, f"latency-{n}")) for n in range(clients)]
        watching = Clients(port, token)
        watching.connect([f"/ws/flows/{flow.pk}/" for flow in flows])
        start = time.time()
        queue_resume(name=bf.QUEUE)
        wait_for_flows([flow.pk for flow in flows])
        watching.quiet()
        frames, elapsed = watching.frames(), max(t for inbox in watching.received for t, _ in inbox) - start
        results.append(("separate flows (/ws/flows/{id}/)", latencies(watching, [f.pk for f in flows]),
                        frames / elapsed, frames))
        watching.close()
    finally:
        bf.stop_workers(workers)
        stop_server(server)
    return results


def render_latency(results, clients: int) -> str:
    lines = [
        f"| {clients} clients | deliveries measured | p50 ms | p95 ms | p99 ms | frames/s |",
        "|---|---|---|---|---|---|",
    ]
    for label, values, rate, frames in results:
        if not values:
            lines.append(f"| {label} | 0 | - | - | - | {rate:.0f} |")
            continue
        lines.append(
            f"| {label} | {len(values)} | {percentile(values, 50):.1f} | {percentile(values, 95):.1f} | "
            f"{percentile(values, 99):.1f} | {rate:.0f} |"
        )
    return "\n".join(lines)


# Part 3: fan-out -------------------------------------------------------------------


def _group_cpu(pgid: int) -> float:
    """CPU seconds used so far by the processes of one process group (the server's)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) != pgid:
                    continue
            except OSError:
                continue
            stat = bf._read_stat(int(entry))
            total += stat[2] if stat else 0.0
    return total


def part_fanout(user, token: str, *, watchers: int, count: int, rate: int, log_dir: Path) -> dict:
    """Web-tier CPU per delivered frame: synthetic events published as a worker does.

    No workers and no database writes: ``count`` ``flow:job:updated`` events of 50
    flows owned by the watching staff user, numbered in order, are published at
    ``rate`` events/s with the workers' publisher (``flows.events.publish_now``), and
    ``watchers`` clients on ``/ws/flows/`` receive each once. Reported: CPU of the
    server's processes and of the clients' process per frame received.
    """
    from flows import events
    from jobs.vocabulary import FlowEvent, JobStatus

    port = free_port()
    server = start_server(port, log_dir)
    watching = None
    try:
        watching = WatcherProcess(port, token, ["/ws/flows/"] * watchers)
        flows = [f"fanout-{index:03d}-{time.time_ns()}" for index in range(50)]
        seqs = dict.fromkeys(flows, 1)  # seq 1 would be flow:created: start after it
        server_before, client_before = _group_cpu(server.pid), bf._read_stat(watching.process.pid)[2]
        started = time.monotonic()
        batch = max(1, rate // 100)
        for sent in range(0, count, batch):
            batch_events = []
            for index in range(sent, min(count, sent + batch)):
                flow_id = flows[index % len(flows)]
                seqs[flow_id] += 1
                data = events.job_updated_data(
                    flow_id=flow_id, job_id=f"job-{index}", name="bench-noop", queue_name="bench",
                    status=JobStatus.COMPLETED, attempts_made=1, result={"value": index},
                )
                data["seq"] = seqs[flow_id]
                batch_events.append(events.Event(name=FlowEvent.JOB_UPDATED, flow_id=flow_id, owner_id=user.pk,
                                                 data=data))
            events.publish_now(batch_events)
            delay = started + (sent + batch) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        expected = (count + 1) * watchers  # and the pong of the round trip at connection
        deadline = time.monotonic() + 120
        received = watching.frames()
        while received < expected and time.monotonic() < deadline:
            time.sleep(0.5)
            received = watching.frames()
        elapsed = time.monotonic() - started
        server_cpu = _group_cpu(server.pid) - server_before
        client_cpu = bf._read_stat(watching.process.pid)[2] - client_before
    finally:
        if watching is not None:
            watching.close()
        stop_server(server)
    return {"watchers": watchers, "events": count, "rate": rate, "expected": expected, "received": received,
            "seconds": elapsed, "server_us": 1e6 * server_cpu / max(received, 1),
            "client_us": 1e6 * client_cpu / max(received, 1)}


def render_fanout(row: dict) -> str:
    return "\n".join([
        "| clients | events | events/s | frames received | server CPU us/frame | clients' CPU us/frame |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {row['watchers']} | {row['events']:,} | {row['rate']:,} | {row['received']:,} of {row['expected']:,} "
        f"| {row['server_us']:.1f} | {row['client_us']:.1f} |",
    ])


def main() -> None:
    if sys.argv[1:2] == ["--watch"]:  # a WatcherProcess
        return watch(int(sys.argv[2]), sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["cost", "latency", "fanout", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the cost part; medians are reported")
    parser.add_argument("--watchers", type=int, default=10,
                        help="clients watching every flow in the cost part (0: no server, no such mode)")
    parser.add_argument("--clients", type=int, default=100, help="clients of the latency part")
    parser.add_argument("--events", type=int, default=10_000, help="events published in the fanout part")
    parser.add_argument("--rate", type=int, default=500, help="events/s published in the fanout part")
    args = parser.parse_args()

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    bf.ensure_database()
    env = bf.service_env()
    os.environ.clear()
    os.environ.update(env)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from accounts.services import api_token_create

    call_command("migrate", interactive=False, verbosity=0)
    bf.truncate_tables()
    user, _ = get_user_model().objects.get_or_create(username="bench-events", defaults={"is_staff": True})
    _, token = api_token_create(user=user)
    bf.flush_redis()
    log_dir = Path(tempfile.mkdtemp(prefix="flowsite-bench-events-"))
    log(f"bench DB {bf.DB_NAME}, Redis {bf.REDIS_URL}, logs in {log_dir}")
    out = []
    if args.part in ("cost", "both"):
        rows = part_cost(user, token, repeat=args.repeat, watchers=args.watchers, log_dir=log_dir)
        out.append(render_cost(rows))
        out.append("CPU ms per job by process group (web processes count as other load):\n" + bf.render_cost_cpu(rows))
    if args.part in ("latency", "both"):
        out.append(render_latency(part_latency(user, token, clients=args.clients, log_dir=log_dir), args.clients))
    if args.part == "fanout":
        out.append(render_fanout(part_fanout(user, token, watchers=args.watchers, count=args.events,
                                             rate=args.rate, log_dir=log_dir)))
    bf.flush_redis()
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
