#!/usr/bin/env python
"""Legacy migration benchmark: legacy Prisma flows from a SQLite file into PostgreSQL.

Run from the project root (PostgreSQL on 127.0.0.1:5432)::

    .venv/bin/python bench/legacy.py                   # 10,000 flows of 5 jobs, 3 runs (~1 minute)
    .venv/bin/python bench/legacy.py --flows 2000 --repeat 1
    .venv/bin/python bench/legacy.py --help

What it measures: ``manage.py migrate_legacy_flows --source sqlite:///...``
(the ``flows.legacy`` service, in this process, as the command runs it) on a
legacy SQLite file made with Prisma's DDL: ``--flows`` flows of 5 jobs each (a
root, two children, one grandchild under each child), cuid ids, DateTime as
integer milliseconds, JSON as TEXT, owned by 100 legacy users that do not
exist in Flowsite yet (so the run creates them). Target: at least 500 flows/s.

Timing: the service's own wall clock, from opening the source to the final
report (reading, planning, writing a transaction per batch of ``--batch-size``
flows, creating the users).
Each run starts from empty Flowsite tables; the median of ``--repeat`` runs is
reported, then a second run over the same source (everything already migrated)
and a dry run are timed once each.

Isolation: PostgreSQL database ``flowsite_bench_legacy`` (created if missing,
migrated; its flow, job and user tables are emptied before every run) and a
temporary directory for the SQLite file.

The last thing printed is a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on sys.path, where bench/flows.py
# would shadow the ``flows`` app: put the project root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_SERVER = "postgres://postgres@127.0.0.1:5432"
DB_NAME = "flowsite_bench_legacy"
USERS = 100
TARGET_FLOWS_PER_S = 500


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_database() -> None:
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone():
            log(f"creating PostgreSQL database {DB_NAME}")
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def build_source(path: Path, flows: int) -> int:
    """Write the legacy SQLite file; return the number of job rows."""
    from tests.legacy_fixtures import sqlite_ddl

    conn = sqlite3.connect(path)
    conn.executescript(sqlite_ddl(integer_ids=False))
    base = 1_700_000_000_000
    users = [(f"cuser{n:020d}", f"legacy{n}@example.com", f"User {n}") for n in range(USERS)]
    conn.executemany('INSERT INTO "User" ("id", "email", "name") VALUES (?, ?, ?)', users)
    flow_rows, job_rows = [], []
    for n in range(flows):
        flow_id = f"cflow{n:020d}"
        created = base + n * 1000
        flow_rows.append((flow_id, "render-video", created, created + 900, users[n % USERS][0]))
        job_rows += _job_rows(flow_id, n, created)
    conn.executemany(
        'INSERT INTO "Flow" ("id", "name", "createdAt", "updatedAt", "userId") VALUES (?, ?, ?, ?, ?)', flow_rows
    )
    conn.executemany(
        'INSERT INTO "FlowJob" ("id", "jobId", "flowId", "queueName", "data", "opts", "status", "result", '
        '"error", "children", "createdAt", "updatedAt") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        job_rows,
    )
    conn.commit()
    conn.close()
    return len(job_rows)


def _job_rows(flow_id: str, n: int, created: int) -> list[tuple]:
    """A root, two children, a grandchild under each: 5 rows, as the legacy service stored them."""
    def definition(name: str, queue: str, data: dict, children: list | None = None) -> dict:
        return {"name": name, "queueName": queue, "data": data, "opts": {"attempts": 2}, "children": children or []}

    grandchildren = [definition("fetch", "default", {"part": part, "flow": n}) for part in (0, 1)]
    children = [definition("encode", "video", {"part": part, "flow": n}, [grandchildren[part]]) for part in (0, 1)]
    rows = [("root", "video", {"title": f"video {n}"}, children)]
    rows += [(f"child{part}", "video", children[part]["data"], [grandchildren[part]]) for part in (0, 1)]
    rows += [(f"grand{part}", "default", grandchildren[part]["data"], []) for part in (0, 1)]
    return [
        (
            f"{flow_id}-{key}", f"bull-{n}-{key}", flow_id, queue,
            json.dumps({**data, "flowId": flow_id}), json.dumps({"attempts": 2}), "completed",
            json.dumps({"ok": key}), None, json.dumps(kids), created + index, created + 500 + index,
        )
        for index, (key, queue, data, kids) in enumerate(rows)
    ]


def empty_tables() -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from flows.models import Flow
    from jobs.models import Job

    with connection.cursor() as cursor:
        tables = [Job._meta.db_table, Flow._meta.db_table]
        cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
    get_user_model().objects.filter(email__startswith="legacy").delete()


def run(source: str, **options) -> tuple[float, object]:
    from flows.legacy import migrate_legacy_flows

    report = migrate_legacy_flows(source_url=source, **options)
    return report.elapsed, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=10_000, help="legacy flows (5 jobs each; default 10,000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs from empty tables (median reported)")
    parser.add_argument("--batch-size", type=int, default=500, help="the command's --batch-size")
    args = parser.parse_args()

    ensure_database()
    os.environ.update(
        DJANGO_SETTINGS_MODULE="flowsite.settings",
        DATABASE_URL=f"{PG_SERVER}/{DB_NAME}",
        SECRET_KEY="bench-secret-key-not-for-production",
        LOG_LEVEL="WARNING",
    )
    os.environ.pop("FLOWSITE_READ_DOT_ENV_FILE", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)

    with tempfile.TemporaryDirectory(prefix="flowsite-legacy-bench-") as tmp:
        path = Path(tmp) / "legacy.db"
        began = time.monotonic()
        jobs = build_source(path, args.flows)
        log(f"legacy SQLite file: {args.flows:,} flows, {jobs:,} jobs, {USERS} users "
            f"({time.monotonic() - began:.1f}s to build)")
        source = f"sqlite:///{path}"
        times = []
        for attempt in range(args.repeat):
            empty_tables()
            elapsed, report = run(source, batch_size=args.batch_size)
            assert report.ok and report.flows_migrated == args.flows, report.lines()
            times.append(elapsed)
            log(f"run {attempt + 1}: {elapsed:.2f}s, {args.flows / elapsed:,.0f} flows/s, "
                f"{jobs / elapsed:,.0f} jobs/s")
        again, report = run(source, batch_size=args.batch_size)
        assert report.flows_already_migrated == args.flows, report.lines()
        log(f"second run (nothing left to migrate): {again:.2f}s")
        empty_tables()
        dry, report = run(source, batch_size=args.batch_size, dry_run=True)
        log(f"dry run: {dry:.2f}s")

    median = statistics.median(times)
    rate = args.flows / median
    verdict = "meets" if rate >= TARGET_FLOWS_PER_S else "MISSES"
    print()
    print(f"Legacy migration, SQLite -> PostgreSQL, {args.flows:,} flows x 5 jobs, median of {args.repeat}:")
    print()
    print("| run | time | flows/s | jobs/s |")
    print("|---|---|---|---|")
    print(f"| migrate (empty Flowsite) | {median:.2f}s | {rate:,.0f} | {jobs / median:,.0f} |")
    print(f"| second run (all already migrated) | {again:.2f}s | {args.flows / again:,.0f} | - |")
    print(f"| --dry-run | {dry:.2f}s | {args.flows / dry:,.0f} | - |")
    print()
    print(f"Target: >= {TARGET_FLOWS_PER_S} flows/s: {verdict} ({rate:,.0f} flows/s).")
    # Other processes on this 2-core machine (workers, test runs) slow every figure above.
    print(f"Load average at the end (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())}.")


if __name__ == "__main__":
    main()
