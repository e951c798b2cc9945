"""Legacy Prisma databases for the migration tests: the real DDL, rows in every format.

``LegacyDB`` writes rows the way the legacy service's Prisma clients did: on
SQLite, DateTime as integer milliseconds, ISO-8601 text or ``YYYY-MM-DD
HH:MM:SS`` and JSON as TEXT (so it can be invalid); on PostgreSQL,
``timestamp(3)`` and ``jsonb``. Ids are cuid strings or integers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

# The DDL of `prisma migrate` for the legacy schema (String @id @default(cuid())).
SQLITE_DDL = """
CREATE TABLE "User" (
    "id" {id} NOT NULL PRIMARY KEY{autoincrement},
    "email" TEXT NOT NULL,
    "name" TEXT,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE "Flow" (
    "id" {id} NOT NULL PRIMARY KEY{autoincrement},
    "name" TEXT NOT NULL,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" DATETIME NOT NULL,
    "userId" {id},
    CONSTRAINT "Flow_userId_fkey" FOREIGN KEY ("userId") REFERENCES "User" ("id") ON DELETE SET NULL ON UPDATE CASCADE
);
CREATE TABLE "FlowJob" (
    "id" {id} NOT NULL PRIMARY KEY{autoincrement},
    "jobId" TEXT NOT NULL,
    "flowId" {id} NOT NULL,
    "queueName" TEXT NOT NULL,
    "data" TEXT,
    "opts" TEXT,
    "status" TEXT NOT NULL,
    "result" TEXT,
    "error" TEXT,
    "children" TEXT,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" DATETIME NOT NULL,
    CONSTRAINT "FlowJob_flowId_fkey" FOREIGN KEY ("flowId") REFERENCES "Flow" ("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");
CREATE UNIQUE INDEX "FlowJob_jobId_key" ON "FlowJob"("jobId");
"""

POSTGRES_DDL = """
CREATE TABLE "User" (
    "id" {id} NOT NULL,
    "email" TEXT NOT NULL,
    "name" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "User_pkey" PRIMARY KEY ("id")
);
CREATE TABLE "Flow" (
    "id" {id} NOT NULL,
    "name" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    "userId" {ref},
    CONSTRAINT "Flow_pkey" PRIMARY KEY ("id")
);
CREATE TABLE "FlowJob" (
    "id" {id} NOT NULL,
    "jobId" TEXT NOT NULL,
    "flowId" {ref} NOT NULL,
    "queueName" TEXT NOT NULL,
    "data" JSONB,
    "opts" JSONB,
    "status" TEXT NOT NULL,
    "result" JSONB,
    "error" TEXT,
    "children" JSONB,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    CONSTRAINT "FlowJob_pkey" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");
CREATE UNIQUE INDEX "FlowJob_jobId_key" ON "FlowJob"("jobId");
ALTER TABLE "Flow" ADD CONSTRAINT "Flow_userId_fkey" FOREIGN KEY ("userId") REFERENCES "User"("id") ON DELETE SET NULL ON UPDATE CASCADE;
ALTER TABLE "FlowJob" ADD CONSTRAINT "FlowJob_flowId_fkey" FOREIGN KEY ("flowId") REFERENCES "Flow"("id") ON DELETE CASCADE ON UPDATE CASCADE;
"""

# How a SQLite row stores a DateTime: the three ways Prisma wrote them.
MILLIS, ISO, SQL_TEXT = "millis", "iso", "sql"


def sqlite_ddl(*, integer_ids: bool) -> str:
    if integer_ids:
        return SQLITE_DDL.format(id="INTEGER", autoincrement=" AUTOINCREMENT")
    return SQLITE_DDL.format(id="TEXT", autoincrement="")


def postgres_ddl(*, integer_ids: bool) -> str:
    if integer_ids:
        return POSTGRES_DDL.format(id="SERIAL", ref="INTEGER")
    return POSTGRES_DDL.format(id="TEXT", ref="TEXT")


def encode_time(value: dt.datetime, style: str) -> Any:
    """A UTC datetime as one of Prisma's SQLite DateTime representations."""
    value = value.astimezone(dt.UTC)
    if style == MILLIS:
        return int(value.timestamp() * 1000)
    if style == ISO:
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return value.strftime("%Y-%m-%d %H:%M:%S")


class LegacyDB:
    """Writes legacy rows into an open SQLite or PostgreSQL connection (DDL already applied)."""

    _counter = itertools.count(1)

    def __init__(self, conn: Any, *, vendor: str, integer_ids: bool, time_style: str = MILLIS) -> None:
        self.conn = conn
        self.vendor = vendor
        self.integer_ids = integer_ids
        self.time_style = time_style
        self.mark = "?" if vendor == "sqlite" else "%s"

    def cuid(self) -> str:
        return f"c{next(self._counter):08d}legacy{id(self) % 10_000:04d}xyz"

    def user(self, *, email: str, name: str | None = None) -> Any:
        return self._insert("User", {"email": email, "name": name})

    def flow(self, *, name: str, user: Any = None, created: dt.datetime, updated: dt.datetime | None = None,
             style: str | None = None) -> Any:
        return self._insert("Flow", {
            "name": name,
            "userId": user,
            "createdAt": self._time(created, style),
            "updatedAt": self._time(updated or created, style),
        })

    def job(self, *, flow: Any, queue: str, data: Any = None, status: str = "completed", children: Any = None,
            opts: Any = None, result: Any = None, error: str | None = None, job_id: str | None = None,
            created: dt.datetime, updated: dt.datetime | None = None, style: str | None = None,
            raw_json: bool = False) -> Any:
        """Insert a FlowJob. JSON values are encoded unless ``raw_json`` (then they are TEXT as given)."""
        encode = (lambda value: value) if raw_json else _json
        return self._insert("FlowJob", {
            "jobId": job_id or f"bull-{next(self._counter)}",
            "flowId": flow,
            "queueName": queue,
            "data": encode(data),
            "opts": encode(opts),
            "status": status,
            "result": encode(result),
            "error": error,
            "children": encode(children),
            "createdAt": self._time(created, style),
            "updatedAt": self._time(updated or created, style),
        })

    def commit(self) -> None:
        self.conn.commit()

    def delete_user(self, user: Any) -> None:
        """Delete a user row as a careless script would: its flows keep the dangling userId."""
        with self.without_foreign_keys():
            self.conn.cursor().execute(f'DELETE FROM "User" WHERE "id" = {self.mark}', [user])

    @contextlib.contextmanager
    def without_foreign_keys(self) -> Iterator[None]:
        """Write rows that break the foreign keys (SQLite does not enforce them by default)."""
        if self.vendor == "sqlite":
            yield
            return
        cursor = self.conn.cursor()
        cursor.execute("SET session_replication_role = replica")
        try:
            yield
        finally:
            cursor.execute("SET session_replication_role = DEFAULT")

    def _time(self, value: dt.datetime, style: str | None) -> Any:
        if self.vendor == "postgresql":
            return value.astimezone(dt.UTC).replace(tzinfo=None)  # timestamp(3): naive UTC
        return encode_time(value, style or self.time_style)

    def _insert(self, table: str, values: dict[str, Any]) -> Any:
        if not self.integer_ids:
            values = {"id": self.cuid(), **values}
        columns = ", ".join(f'"{column}"' for column in values)
        marks = ", ".join(self._mark(column) for column in values)
        cursor = self.conn.cursor()
        sql = f'INSERT INTO "{table}" ({columns}) VALUES ({marks})'
        if self.vendor == "postgresql":
            cursor.execute(sql + ' RETURNING "id"', list(values.values()))
            return cursor.fetchone()[0]
        cursor.execute(sql, list(values.values()))
        return values["id"] if not self.integer_ids else cursor.lastrowid

    def _mark(self, column: str) -> str:
        if self.vendor == "postgresql" and column in ("data", "opts", "result", "children"):
            return f"{self.mark}::jsonb"
        return self.mark


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def create_sqlite(path: str, *, integer_ids: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.executescript(sqlite_ddl(integer_ids=integer_ids))
    return conn


T0 = dt.datetime(2024, 3, 1, 10, 0, 0, 123000, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def build_scenario(db: LegacyDB) -> dict[str, Any]:
    """Every case the migration must handle, in one legacy database; returns the legacy ids.

    Flow names are the root jobs' names (the legacy service's convention).
    """
    ids: dict[str, Any] = {}
    alice = db.user(email="Alice@Example.com", name="Alice")  # matches Flowsite's alice@example.com
    bob = db.user(email="bob@example.com", name="Bob Legacy")  # no Flowsite account yet
    ghost = db.user(email="ghost@example.com")

    # A: a completed flow; children inserted before the root; data with the injected flowId.
    ids["video"] = video = db.flow(name="watermark-video", user=alice, created=at(0), updated=at(3))
    ids["video.download"] = db.job(
        flow=video, queue="video", job_id="bull-download",
        data={"url": "https://example.com/cats.mp4", "flowId": str(video)},
        result={"filePath": "/tmp/cats.mp4"}, created=at(0.001), updated=at(1),
    )
    ids["video.thumb"] = db.job(
        flow=video, queue="image", opts={"attempts": 3}, result={"thumb": "/tmp/t.png"},
        created=at(0.002), updated=at(2), style=SQL_TEXT,
    )
    ids["video.root"] = db.job(
        flow=video, queue="video", job_id="bull-watermark",
        data={"watermark": "Flowsite", "flowId": str(video), "_flowMetadata": {"flowId": str(video)}},
        result={"outputPath": "/tmp/cats-watermarked.mp4"}, created=at(0), updated=at(3), style=ISO,
        children=[
            {"name": "download-video", "queueName": "video", "data": {"url": "https://example.com/cats.mp4"}},
            {"name": "generate-thumbnail", "queueName": "image", "opts": {"attempts": 3}},
        ],
    )

    # B: running; two siblings with equal queue and data; a grandchild defined only in the root's JSON.
    ids["gallery"] = gallery = db.flow(name="publish-gallery", user=bob, created=at(10), style=ISO)
    db.job(
        flow=gallery, queue="default", status="waiting-children", data={"album": 1}, created=at(10), style=ISO,
        children=[
            {"name": "resize-image", "queueName": "image", "data": {"size": 100}},
            {"name": "resize-image", "queueName": "image", "data": {"size": 100}},
            {"name": "resize-image", "queueName": "image", "data": {"size": 300},
             "children": [{"name": "fetch-original", "queueName": "default", "data": {"id": 7}}]},
        ],
    )
    ids["gallery.first"] = db.job(flow=gallery, queue="image", data={"size": 100}, status="completed",
                                  created=at(11), style=ISO)
    ids["gallery.second"] = db.job(flow=gallery, queue="image", data={"size": 100}, status="active",
                                   created=at(12), style=ISO)
    db.job(flow=gallery, queue="image", data={"size": 300}, status="waiting-children", created=at(13), style=ISO)
    db.job(flow=gallery, queue="default", data={"id": 7}, status="completed", created=at(14), style=ISO)

    # C: a failure fails the flow; a failure under ignoreDependencyOnFailure does not count.
    ids["doomed"] = doomed = db.flow(name="doomed", user=alice, created=at(20), style=SQL_TEXT)
    db.job(
        flow=doomed, queue="default", status="waiting-children", created=at(20), style=SQL_TEXT,
        children=[
            {"name": "test-fail", "queueName": "default", "data": {"message": "no disk"}},
            {"name": "optional", "queueName": "default", "data": {"n": 1},
             "opts": {"ignoreDependencyOnFailure": True}},
        ],
    )
    db.job(flow=doomed, queue="default", data={"message": "no disk"}, status="failed", error="Error: no disk",
           created=at(21), updated=at(22), style=SQL_TEXT)
    db.job(flow=doomed, queue="default", data={"n": 1}, opts={"ignoreDependencyOnFailure": True},
           status="failed", error="meh", created=at(21), updated=at(23), style=SQL_TEXT)

    # D: statuses in other spellings, and one Flowsite does not know.
    ids["statuses"] = statuses = db.flow(name="statuses", user=alice, created=at(30))
    db.job(
        flow=statuses, queue="default", status="Waiting_Children", created=at(30),
        children=[{"name": n, "queueName": "default", "data": {"n": n}} for n in ("a", "b", "c")],
    )
    db.job(flow=statuses, queue="default", data={"n": "a"}, status="COMPLETED", created=at(31))
    db.job(flow=statuses, queue="default", data={"n": "b"}, status="success", created=at(31))
    ids["statuses.zombie"] = db.job(flow=statuses, queue="default", data={"n": "c"}, status="zombie", created=at(31))

    # E: no jobs at all.
    ids["empty"] = db.flow(name="empty", user=alice, created=at(40))

    # F, G: owners that are gone (the user row deleted; no userId at all).
    with db.without_foreign_keys():
        ids["ghosted"] = ghosted = db.flow(name="ghosted", user=ghost, created=at(50))
    db.job(flow=ghosted, queue="default", status="completed", created=at(50))
    db.delete_user(ghost)
    ids["nobody"] = nobody = db.flow(name="nobody", created=at(55))
    db.job(flow=nobody, queue="default", status="completed", created=at(55))

    # H: a row whose children cannot be read (they cannot be placed): the whole flow is skipped and reported.
    ids["broken"] = broken = db.flow(name="broken", user=alice, created=at(60))
    db.job(flow=broken, queue="default", status="waiting-children", created=at(60),
           children=[{"name": "x", "queueName": "default", "data": {"size": 1}}])
    if db.vendor == "sqlite":
        ids["broken.row"] = db.job(flow=broken, queue="default", data='{"size": 1}', children='[{"name": ',
                                   raw_json=True, created=at(61))
        ids["broken.reason"] = "children is not valid JSON"
    else:  # jsonb cannot hold invalid JSON; it can hold the wrong kind of value
        ids["broken.row"] = db.job(flow=broken, queue="default", data={"size": 1}, children={"name": "y"},
                                   created=at(61))
        ids["broken.reason"] = "children is not a JSON array"

    # I: a job row whose flow is gone.
    with db.without_foreign_keys():
        ids["orphan.row"] = db.job(flow="gone" if not db.integer_ids else 999_999, queue="default",
                                   job_id="bull-orphan", created=at(70))

    # J: cancelled; K: nothing started yet; L: a row no definition names.
    ids["cancelled"] = cancelled = db.flow(name="cancelled", user=bob, created=at(80))
    db.job(flow=cancelled, queue="default", status="cancelled", created=at(80),
           children=[{"name": "c1", "queueName": "default", "data": {}}])
    db.job(flow=cancelled, queue="default", status="completed", created=at(81))
    ids["waiting"] = waiting = db.flow(name="waiting", user=bob, created=at(90))
    db.job(flow=waiting, queue="default", status="waiting-children", created=at(90),
           children=[{"name": "w1", "queueName": "image", "data": {"k": 1}}])
    db.job(flow=waiting, queue="image", data={"k": 1}, status="waiting", created=at(91))
    ids["unmatched"] = unmatched = db.flow(name="unmatched", user=bob, created=at(100))
    db.job(flow=unmatched, queue="default", created=at(100),
           children=[{"name": "known", "queueName": "default", "data": {"x": 1}}])
    db.job(flow=unmatched, queue="default", data={"x": 1}, created=at(101))
    ids["unmatched.extra"] = db.job(flow=unmatched, queue="default", data={"x": 2}, created=at(102))
    db.commit()
    return ids


def build_clean(db: LegacyDB, *, flows: int = 3) -> list[Any]:
    """``flows`` sound flows of a root and two children, owned by bob@example.com."""
    bob = db.user(email="bob@example.com")
    ids = []
    for n in range(flows):
        flow = db.flow(name="root", user=bob, created=at(n))
        db.job(flow=flow, queue="default", created=at(n),
               children=[{"name": "leaf", "queueName": "default", "data": {"i": i}} for i in range(2)])
        for i in range(2):
            db.job(flow=flow, queue="default", data={"i": i}, created=at(n))
        ids.append(flow)
    db.commit()
    return ids
