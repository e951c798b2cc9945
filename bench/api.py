"""API latency and create rate against the real ASGI server (uvicorn) and PostgreSQL.

    .venv/bin/python bench/api.py [--clients 4] [--requests 400]

Starts the server as deployed (``manage.py up --no-worker``: uvicorn with httptools,
WEB_CONCURRENCY processes) on a dedicated PostgreSQL database, seeds 50
flows and one 1,000-job flow, then runs concurrent keep-alive clients against:
list (50 flows per page), detail (the 1,000-job flow) and create (1+5 jobs).
Prints p50/p95 per endpoint and the create rate. Jobs are not executed (no
workers): the API's own cost is what is measured.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "flowsite_bench_api"
PORT = 8765


def env() -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        "REDIS_URL": "redis://127.0.0.1:6379/13",
        "SECRET_KEY": "bench-secret",
        "FLOWSITE_QUEUES": "default",
        "FLOWSITE_EXAMPLES": "1",  # the seeded and created flows name the example handlers
        "LOG_LEVEL": "WARNING",
        "CONN_MAX_AGE": "600",
    }


def manage(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env(), check=True, capture_output=True, text=True
    ).stdout


def prepare() -> str:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"DROP DATABASE IF EXISTS {DB_NAME}"], check=True)
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"CREATE DATABASE {DB_NAME}"], check=True)
    manage("migrate", "-v0")
    seed = (
        "from django.contrib.auth.models import User; from flows.services import flow_create;"
        "u=User.objects.create_user('bench');"
        "s=lambda n: {'flowname':'bench','name':'download-video','queueName':'default',"
        "'children':[{'name':'download-video','queueName':'default'} for _ in range(n)]};"
        "[flow_create(owner=u, spec=s(5)) for _ in range(50)];"
        "print(flow_create(owner=u, spec=s(999)).id)"
    )
    big = manage("shell", "-c", seed).strip().splitlines()[-1]
    subprocess.run(["redis-cli", "-n", "13", "flushdb"], check=True, capture_output=True)
    return big


def token() -> str:
    return manage("create_api_token", "bench").strip()


def timed(method: str, path: str, body: bytes | None, headers: dict, conn_cache: dict) -> float:
    conn = conn_cache.get("conn")
    if conn is None:
        conn = conn_cache["conn"] = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    start = time.perf_counter()
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    elapsed = time.perf_counter() - start
    assert response.status in (200, 201), (path, response.status)
    return elapsed


def _ready(_: int) -> None:
    return None


def _client(job: tuple) -> list[float]:
    index, method, path, body, headers, count = job
    # Connect one after another, as real clients do: connections opened at the same
    # instant are all accepted by whichever web process wakes first.
    time.sleep(0.1 * index)
    cache: dict = {}
    timed(method, path, body, headers, cache)  # warm-up: the connection
    return [timed(method, path, body, headers, cache) for _ in range(count)]


def run(label: str, method: str, path: str, body: bytes | None, auth: str, clients: int, requests: int) -> dict:
    headers = {"Authorization": f"Bearer {auth}", "Content-Type": "application/json"}
    per_client = requests // clients
    # Each client is its own process (as real clients are): threads would share one GIL
    # and add their own queueing to the server's latency.
    with ProcessPoolExecutor(clients) as pool:
        list(pool.map(_ready, range(clients)))  # processes started before the clock
        start = time.perf_counter()
        chunks = pool.map(_client, [(index, method, path, body, headers, per_client) for index in range(clients)])
        samples = [s for chunk in chunks for s in chunk]
    wall = time.perf_counter() - start
    samples.sort()
    return {
        "endpoint": label,
        "p50_ms": round(1000 * statistics.median(samples), 1),
        "p95_ms": round(1000 * samples[int(0.95 * len(samples)) - 1], 1),
        "rate_per_s": round(len(samples) / wall, 1),
        "n": len(samples),
    }


def machine_speed_ms() -> float:
    """A fixed pure-Python workload (median of 5, ms): how fast this shared machine is right now.

    Absolute latencies move with it (the same code measured 1.7x apart on one day);
    compare figures taken at similar speeds.
    """
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        samples.append(1000 * (time.perf_counter() - start))
    return round(statistics.median(samples), 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--web-workers", type=int, default=None, help="web processes (default: the project's)")
    args = parser.parse_args()
    speed_before = machine_speed_ms()
    big = prepare()
    auth = token()
    # The shipped server command (uvicorn, httptools), with its default process count
    # (WEB_CONCURRENCY: twice the CPU count) unless --web-workers says otherwise.
    command = [sys.executable, "manage.py", "up", "--no-worker", "--host", "127.0.0.1", "--port", str(PORT)]
    if args.web_workers:
        command += ["--workers", str(args.web_workers)]
    server = subprocess.Popen(command, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                http.client.HTTPConnection("127.0.0.1", PORT, timeout=1).request("GET", "/health")
                break
            except OSError:
                time.sleep(0.1)
        create_body = json.dumps({
            "flowname": "bench-create", "name": "download-video", "queueName": "default",
            "children": [{"name": "download-video", "queueName": "default"} for _ in range(5)],
        }).encode()
        rows = [
            run("list (50 flows)", "GET", "/api/flows?pageSize=50", None, auth, args.clients, args.requests),
            run("detail (1,000-job flow)", "GET", f"/api/flows/{big}", None, auth, args.clients, args.requests // 2),
            run("create (6-job flow)", "POST", "/api/flows", create_body, auth, args.clients, args.requests // 2),
        ]
    finally:
        server.terminate()
        server.wait(10)
        subprocess.run(["redis-cli", "-n", "13", "flushdb"], capture_output=True)
    workers = args.web_workers or f"{2 * (os.cpu_count() or 1)} (default)"
    print(f"\n{args.clients} concurrent keep-alive clients, manage.py up --workers {workers}, PostgreSQL\n")
    print(f"machine speed: a fixed Python loop took {speed_before} ms before and {machine_speed_ms()} ms after "
          "(lower is faster)\n")
    print("| endpoint | p50 ms | p95 ms | requests/s |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['endpoint']} | {row['p50_ms']} | {row['p95_ms']} | {row['rate_per_s']} |")


if __name__ == "__main__":
    main()
