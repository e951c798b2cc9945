"""manage.py migrate_legacy_flows: legacy Prisma tables (SQLite and PostgreSQL) into Flowsite.

The legacy databases are built with Prisma's DDL and hold every format and
messy case (tests/legacy_fixtures.py). Results are checked through the ORM.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import sqlite3
import uuid

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from flows.status import derive_flow_status, flow_job_counts
from flows.legacy.plan import UNKNOWN_JOB_NAME
from flows.legacy.tree import rebuild_tree
from flows.legacy.values import FALLBACK_JOB_STATUS, BadValue, map_status, parse_json, parse_timestamp, signature
from flows.models import Flow
from jobs.models import Job
from jobs.vocabulary import FlowStatus, JobStatus
from tests.conftest import manage, service_env
from tests.legacy_fixtures import (
    ISO,
    MILLIS,
    SQL_TEXT,
    LegacyDB,
    at,
    build_clean,
    build_scenario,
    create_sqlite,
    encode_time,
    postgres_ddl,
    sqlite_ddl,
)

PG_SERVER = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
PG_LEGACY_DB = "flowsite_legacy_test"
KINDS = ["sqlite-cuid", "sqlite-int", "postgresql-cuid", "postgresql-int"]


# Fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_legacy_database():
    """A PostgreSQL database for legacy schemas, created for this module and dropped after."""
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{PG_LEGACY_DB}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{PG_LEGACY_DB}"')
    yield f"{PG_SERVER}/{PG_LEGACY_DB}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{PG_LEGACY_DB}" WITH (FORCE)')


@pytest.fixture
def make_legacy(tmp_path, request):
    """``make_legacy(kind)`` -> (LegacyDB, --source URL): an empty legacy database with Prisma's tables.

    PostgreSQL ones live in a fresh schema of ``flowsite_legacy_test``, named by
    Prisma's ``?schema=`` URL parameter.
    """
    opened = []

    def make(kind: str) -> tuple[LegacyDB, str]:
        vendor, ids = kind.split("-")
        integer_ids = ids == "int"
        if vendor == "sqlite":
            path = tmp_path / f"legacy-{len(opened)}.db"
            conn = create_sqlite(str(path), integer_ids=integer_ids)
            opened.append(conn)
            return LegacyDB(conn, vendor="sqlite", integer_ids=integer_ids), f"sqlite:///{path}"
        server = request.getfixturevalue("pg_legacy_database")
        schema = f"legacy_{uuid.uuid4().hex[:8]}"
        conn = psycopg.connect(server, options=f"-c search_path={schema}")
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(postgres_ddl(integer_ids=integer_ids))
        conn.commit()
        opened.append(conn)
        request.addfinalizer(lambda: _drop_schema(server, schema))
        return LegacyDB(conn, vendor="postgresql", integer_ids=integer_ids), f"{server}?schema={schema}"

    yield make
    for conn in opened:
        conn.close()


def _drop_schema(server: str, schema: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user(username="alice", email="alice@example.com")


@pytest.fixture
def keeper(django_user_model):
    """The --owner of flows whose legacy user is gone."""
    return django_user_model.objects.create_user(username="keeper", email="keeper@example.com")


def migrate(*args: str) -> tuple[int, str, str]:
    """Run the command in-process; return (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("migrate_legacy_flows", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return exc.returncode, out.getvalue(), err.getvalue() + str(exc)
    return 0, out.getvalue(), err.getvalue()


def migrated(legacy_id) -> Flow:
    return Flow.objects.select_related("owner").get(legacy_id=str(legacy_id))


def tree(flow: Flow) -> tuple:
    """(name, queue, status, [children...]) from the Job rows, children by position."""
    jobs = list(Job.objects.filter(flow=flow).order_by("position", "created_at"))

    def node(job: Job) -> tuple:
        kids = [node(child) for child in jobs if child.parent_id == job.id]
        return (job.name, job.queue_name, job.status, kids)

    return node(next(job for job in jobs if job.id == flow.root_job_id))


def structure_tree(node: dict) -> tuple:
    """The same shape from ``job_structure``, statuses read from the jobs its ``jobId``s name."""
    status = Job.objects.get(pk=node["jobId"]).status
    return (node["name"], node["queueName"], status, [structure_tree(c) for c in node.get("children", [])])


def expected_time(value: dt.datetime, style: str, vendor: str) -> dt.datetime:
    """What survives a round trip: 'YYYY-MM-DD HH:MM:SS' text has no milliseconds."""
    if vendor == "sqlite" and style == SQL_TEXT:
        return value.replace(microsecond=0)
    return value


def snapshot() -> dict:
    from django.contrib.auth import get_user_model

    return {
        "flows": sorted(Flow.objects.values_list(), key=str),
        "jobs": sorted(Job.objects.values_list(), key=str),
        "users": sorted(get_user_model().objects.values_list(), key=str),
    }


# The whole migration, every source ------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("kind", KINDS)
def test_migrates_every_case_of_every_source(kind, make_legacy, alice, keeper, django_user_model):
    db, url = make_legacy(kind)
    vendor = db.vendor
    ids = build_scenario(db)

    code, out, _ = migrate("--source", url, "--owner", "keeper")

    assert code == 1, out  # a bad row and an orphan job were skipped
    assert "flows: 10 migrated, 0 already migrated, 1 skipped (of 11)" in out
    assert "users: 1 matched by email, 1 created" in out
    assert Flow.objects.count() == 10

    # A: completed, tree rebuilt from the root's children JSON, legacy timestamps kept in UTC.
    video = migrated(ids["video"])
    assert (video.flowname, video.name, video.queue_name) == ("watermark-video", "watermark-video", "video")
    assert video.status == FlowStatus.COMPLETED and video.owner == alice
    assert video.result == {"outputPath": "/tmp/cats-watermarked.mp4"}
    assert tree(video) == ("watermark-video", "video", JobStatus.COMPLETED, [
        ("download-video", "video", JobStatus.COMPLETED, []),
        ("generate-thumbnail", "image", JobStatus.COMPLETED, []),
    ])
    assert structure_tree(video.job_structure) == tree(video)
    assert video.job_structure["data"] == {"watermark": "Flowsite"}
    assert video.created_at == at(0) and video.updated_at == at(3)
    assert video.created_at.tzinfo is not None and video.created_at.utcoffset() == dt.timedelta(0)
    # No start times in legacy rows: a flow started when its first job was created.
    assert video.started_at == min(job.created_at for job in video.jobs.all()) and video.completed_at == at(3)
    download = Job.objects.get(flow=video, legacy_id="bull-download")
    assert download.created_at == at(0.001) and download.finished_at == at(1)
    assert download.result == {"filePath": "/tmp/cats.mp4"}
    assert download.data["url"] == "https://example.com/cats.mp4"
    assert download.data["flowId"] == video.id and download.data["_flowMetadata"]["rootJobId"] == video.root_job_id
    thumb = Job.objects.get(flow=video, name="generate-thumbnail")
    assert thumb.created_at == expected_time(at(0.002), SQL_TEXT, vendor)
    assert thumb.max_attempts == 3 and thumb.owner_id == alice.pk
    assert Job.objects.get(pk=video.root_job_id).legacy_id == "bull-watermark"

    # B: running; equal siblings keep their order; the grandchild comes from the root's JSON.
    gallery = migrated(ids["gallery"])
    assert gallery.status == FlowStatus.RUNNING and gallery.total_jobs == 5
    assert tree(gallery) == ("publish-gallery", "default", JobStatus.WAITING_CHILDREN, [
        ("resize-image", "image", JobStatus.COMPLETED, []),
        ("resize-image", "image", JobStatus.ACTIVE, []),
        ("resize-image", "image", JobStatus.WAITING_CHILDREN, [
            ("fetch-original", "default", JobStatus.COMPLETED, []),
        ]),
    ])
    assert structure_tree(gallery.job_structure) == tree(gallery)
    assert gallery.created_at == at(10) and gallery.completed_at is None
    bob = gallery.owner
    assert (bob.email, bob.is_active, bob.has_usable_password()) == ("bob@example.com", False, False)

    # C: failed by its first real failure; the ignored failure does not count.
    doomed = migrated(ids["doomed"])
    assert doomed.status == FlowStatus.FAILED
    assert "test-fail" in doomed.error and "no disk" in doomed.error
    assert doomed.created_at == expected_time(at(20), SQL_TEXT, vendor)

    # D: other spellings mapped; an unknown status falls back and is reported.
    statuses = migrated(ids["statuses"])
    assert statuses.status == FlowStatus.RUNNING
    assert [child[2] for child in tree(statuses)[3]] == [JobStatus.COMPLETED, JobStatus.COMPLETED, FALLBACK_JOB_STATUS]
    assert f"unknown status 'zombie' -> {FALLBACK_JOB_STATUS} (1 jobs: FlowJob {ids['statuses.zombie']})" in out
    assert f"status 'success' -> {JobStatus.COMPLETED} (1 jobs)" in out

    # E, J, K, L
    empty = migrated(ids["empty"])
    assert (empty.status, empty.total_jobs, empty.job_structure) == (FlowStatus.PENDING, 0, {})
    assert f"Flow {ids['empty']}: has no jobs" in out
    assert migrated(ids["cancelled"]).status == FlowStatus.CANCELLED
    assert migrated(ids["waiting"]).status == FlowStatus.PENDING
    unmatched = migrated(ids["unmatched"])
    assert unmatched.status == FlowStatus.COMPLETED and unmatched.total_jobs == 3
    extra = Job.objects.get(flow=unmatched, parent=None, name=UNKNOWN_JOB_NAME)
    assert extra.data["x"] == 2
    assert f"FlowJob {ids['unmatched.extra']}: matches no child definition" in out

    # F, G: owners gone -> --owner.
    assert migrated(ids["ghosted"]).owner == keeper
    assert migrated(ids["nobody"]).owner == keeper

    # H, I: skipped, with the row's legacy id and the reason.
    assert not Flow.objects.filter(legacy_id=str(ids["broken"])).exists()
    assert f"FlowJob {ids['broken.row']}: {ids['broken.reason']}" in out
    assert f"FlowJob {ids['orphan.row']}: its flow " in out and "does not exist (jobId bull-orphan)" in out

    # Every flow's status is the engine's rule applied to its migrated jobs.
    for flow in Flow.objects.exclude(status=FlowStatus.CANCELLED):
        counts, ignored = flow_job_counts(flow_id=flow.pk)
        assert flow.status == derive_flow_status(counts, ignored_failures=ignored), flow.flowname
    assert django_user_model.objects.filter(email__iexact="alice@example.com").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("kind", KINDS)  # integer ids too: they are compared as text
def test_a_second_run_changes_nothing(kind, make_legacy, alice, keeper):
    db, url = make_legacy(kind)
    build_scenario(db)
    migrate("--source", url, "--owner", "keeper")
    before = snapshot()

    code, out, _ = migrate("--source", url, "--owner", "keeper")

    assert code == 1  # the bad row is reported again
    assert "flows: 0 migrated, 10 already migrated, 1 skipped (of 11)" in out
    assert snapshot() == before


@pytest.mark.django_db
def test_dry_run_writes_nothing_and_reports_the_same(make_legacy, alice, keeper, django_user_model):
    db, url = make_legacy("postgresql-int")
    build_scenario(db)
    users = django_user_model.objects.count()

    code, out, _ = migrate("--source", url, "--owner", "keeper", "--dry-run")

    assert code == 1
    assert "dry run: nothing was written" in out
    assert "flows: 10 would be migrated, 0 already migrated, 1 skipped (of 11)" in out
    assert "users: 1 matched by email, 1 would be created" in out
    assert not Flow.objects.exists() and not Job.objects.exists()
    assert django_user_model.objects.count() == users
    _, real, _ = migrate("--source", url, "--owner", "keeper")
    assert _findings(real) == _findings(out)


def _findings(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("  ") and "time:" not in line
            and "would be" not in line and "migrated," not in line and "matched" not in line]


# Ownership and options -------------------------------------------------------


@pytest.mark.django_db
def test_flows_without_a_user_need_owner(make_legacy, alice, django_user_model):
    db, url = make_legacy("sqlite-int")
    ids = build_scenario(db)

    code, _, err = migrate("--source", url)

    assert code == 2
    assert "2 legacy flow(s) have no owner" in err and str(ids["nobody"]) in err and "--owner USERNAME" in err
    assert not Flow.objects.exists()
    assert not django_user_model.objects.filter(email="bob@example.com").exists()

    code, _, err = migrate("--source", url, "--owner", "nobody")
    assert code == 2 and "User 'nobody' does not exist." in err


@pytest.mark.django_db
def test_owner_is_not_needed_once_ownerless_flows_are_migrated(make_legacy, alice, keeper):
    db, url = make_legacy("sqlite-cuid")
    build_scenario(db)
    migrate("--source", url, "--owner", "keeper")

    code, out, _ = migrate("--source", url)

    assert code == 1 and "10 already migrated" in out  # the remaining error is the bad row


@pytest.mark.django_db
def test_bad_sources_are_explained(tmp_path):
    code, _, err = migrate("--source", f"sqlite:///{tmp_path}/missing.db")
    assert code == 2 and "missing.db' not found" in err

    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.commit()
    code, _, err = migrate("--source", f"sqlite:///{tmp_path}/other.db")
    assert code == 2 and 'has no "Flow" table' in err

    code, _, err = migrate("--source", "mysql://u:secret@h/db")
    assert code == 2 and "Unsupported --source" in err and "secret" not in err

    code, _, err = migrate("--source", f"sqlite:///{tmp_path}/other.db", "--dry-run", "--drop-legacy")
    assert code == 2 and "cannot be combined" in err


@pytest.mark.django_db
def test_progress_is_shown_per_batch_on_long_runs(make_legacy):
    db, url = make_legacy("sqlite-int")
    build_clean(db, flows=5)

    # Prisma's own form of a SQLite URL works too.
    code, out, err = migrate("--source", "file:" + url.removeprefix("sqlite:///"), "--batch-size", "2")

    assert code == 0, out
    assert [line.split(" flows read")[0].strip() for line in err.splitlines()] == ["2/5", "4/5", "5/5"]
    assert "flows: 5 migrated" in out and "jobs:  15 migrated, 0 skipped" in out
    assert "users: 0 matched by email, 1 created" in out


# --drop-legacy ----------------------------------------------------------------


def _sqlite_tables(url: str) -> set[str]:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


@pytest.mark.django_db
def test_drop_legacy_refuses_after_errors(make_legacy, alice, keeper):
    db, url = make_legacy("sqlite-cuid")
    build_scenario(db)

    code, out, _ = migrate("--source", url, "--owner", "keeper", "--drop-legacy")

    assert code == 1
    assert "Not dropping the legacy tables: 2 legacy row(s) were skipped" in out
    assert {"User", "Flow", "FlowJob"} <= _sqlite_tables(url)
    assert Flow.objects.count() == 10


@pytest.mark.django_db
def test_drop_legacy_after_a_clean_run(make_legacy):
    db, url = make_legacy("sqlite-cuid")
    build_clean(db)
    db.conn.close()

    code, out, _ = migrate("--source", url, "--drop-legacy")

    assert code == 0, out
    assert 'Dropped the legacy tables: "FlowJob", "Flow"' in out
    assert "Flow" not in _sqlite_tables(url) and "FlowJob" not in _sqlite_tables(url)
    assert "User" in _sqlite_tables(url)
    assert Flow.objects.count() == 3 and Job.objects.count() == 9


# Flowsite's own database, and the real process -----------------------------------


@pytest.fixture
def legacy_tables_in_test_database(transactional_db):
    """Prisma's tables (cuid ids) in Flowsite's own test database, committed; dropped after."""
    from django.db import connection

    def drop():
        with connection.cursor() as cursor:
            for table in ("FlowJob", "Flow", "User"):
                cursor.execute(f'DROP TABLE IF EXISTS "{table}"')

    drop()
    with connection.cursor() as cursor:
        cursor.execute(postgres_ddl(integer_ids=False))
    conn = connection.connection  # psycopg, autocommit outside atomic blocks
    yield LegacyDB(conn, vendor="postgresql", integer_ids=False)
    drop()


def test_default_source_is_flowsites_own_database(legacy_tables_in_test_database):
    db = legacy_tables_in_test_database
    ids = build_clean(db, flows=2)

    code, out, _ = migrate("--drop-legacy")

    assert code == 0, out
    assert {flow.legacy_id for flow in Flow.objects.all()} == {str(i) for i in ids}
    assert 'Dropped the legacy tables: "FlowJob", "Flow"' in out


def test_exit_statuses_of_the_real_command(legacy_tables_in_test_database, django_user_model):
    from django.db import connection

    db = legacy_tables_in_test_database
    build_clean(db, flows=1)
    db.flow(name="nobody", created=at(5))
    env = service_env(connection.settings_dict["NAME"])

    needs_owner = manage("migrate_legacy_flows", env=env)
    assert needs_owner.returncode == 2 and "--owner USERNAME" in needs_owner.stderr

    django_user_model.objects.create_user(username="keeper")
    done = manage("migrate_legacy_flows", "--owner", "keeper", env=env)
    assert done.returncode == 0, done.stderr
    assert "flows: 2 migrated" in done.stdout


# Parsing and the tree, without a database -------------------------------------------


@pytest.mark.parametrize("style", [MILLIS, ISO])
def test_every_prisma_datetime_format_reads_as_the_same_utc_instant(style):
    moment = at(1.5)
    assert parse_timestamp(encode_time(moment, style), column="createdAt") == moment
    assert parse_timestamp(str(encode_time(moment, MILLIS)), column="createdAt") == moment
    assert parse_timestamp(encode_time(moment, SQL_TEXT), column="c") == moment.replace(microsecond=0)
    assert parse_timestamp(moment.replace(tzinfo=None), column="c") == moment  # timestamp(3)
    paris = moment.astimezone(dt.timezone(dt.timedelta(hours=1)))
    assert parse_timestamp(paris.isoformat(), column="c") == moment
    assert parse_timestamp(int(moment.timestamp()), column="c") == moment.replace(microsecond=0)  # seconds
    assert parse_timestamp(None, column="c") is None
    with pytest.raises(BadValue, match="createdAt is not a date"):
        parse_timestamp("yesterday", column="createdAt")


def test_json_and_statuses():
    assert parse_json('{"a": [1]}', column="data") == {"a": [1]}
    with pytest.raises(BadValue, match="data is not valid JSON"):
        parse_json("{oops", column="data")
    assert map_status("waiting-children") == (JobStatus.WAITING_CHILDREN, True)
    assert map_status("WaitingChildren") == (JobStatus.WAITING_CHILDREN, True)
    assert map_status("prioritized") == (JobStatus.WAITING, True)
    assert map_status("canceled") == (JobStatus.CANCELLED, True)
    assert map_status("exploded") == (FALLBACK_JOB_STATUS, False)
    assert map_status(None) == (FALLBACK_JOB_STATUS, False)
    # Rows match definitions as JSON compares: key order and the injected keys aside.
    assert signature("q", {"a": 1, "b": [2, {"c": 3}], "flowId": "x"}) == signature("q", {"b": [2, {"c": 3}], "a": 1})
    assert signature("q", {"a": True}) != signature("q", {"a": 1})
    assert signature("q", {"a": 1}) != signature("r", {"a": 1})


class Row:
    def __init__(self, queue_name, data, children=()):
        self.queue_name, self.data, self.children = queue_name, data, list(children)


def test_the_root_is_found_even_when_a_child_looks_like_it():
    # The root was created first and has the same queue and data as its only child.
    rows = [Row("q", {}, [{"name": "child", "queueName": "q", "data": {}}]), Row("q", {})]

    tree_ = rebuild_tree(root_name="root", rows=rows)

    assert tree_.root == 0 and tree_.unplaced == [] and tree_.placements[1].name == "child"


def test_embedded_mode_migrates_from_its_own_sqlite_database(tmp_path):
    """Embedded mode: the legacy tables sit in Flowsite's own SQLite file (the default source)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE")}
    env["FLOWSITE_DATA_DIR"] = str(tmp_path)
    assert manage("migrate", "-v", "0", env=env).returncode == 0
    conn = sqlite3.connect(tmp_path / "flowsite.sqlite3")
    conn.executescript(sqlite_ddl(integer_ids=True))
    ids = build_clean(LegacyDB(conn, vendor="sqlite", integer_ids=True, time_style=ISO), flows=2)
    conn.close()

    result = manage("migrate_legacy_flows", "--drop-legacy", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    conn = sqlite3.connect(tmp_path / "flowsite.sqlite3")
    flows = dict(conn.execute("SELECT legacy_id, created_at FROM flows_flow"))
    assert flows == {str(ids[0]): "2024-03-01 10:00:00.123000", str(ids[1]): "2024-03-01 10:00:01.123000"}
    assert conn.execute("SELECT COUNT(*) FROM jobs_job WHERE created_at < '2025-01-01'").fetchone()[0] == 6
    assert not conn.execute("SELECT name FROM sqlite_master WHERE name IN ('Flow', 'FlowJob')").fetchall()
    conn.close()


# Writing --------------------------------------------------------------------------


def _plan(legacy_id: str, owner_id: int):
    from flows.legacy.plan import plan_legacy_flow
    from flows.legacy.source import LegacyFlow, LegacyJob

    legacy = LegacyFlow(id=legacy_id, name="root", created_at=encode_time(at(0), MILLIS), updated_at=None, user_id=None)
    job = LegacyJob(id=f"{legacy_id}-j", job_id=None, flow_id=legacy_id, queue_name="default", data=None, opts=None,
                    status="completed", result="1", error=None, children=None, created_at=None, updated_at=None)
    return plan_legacy_flow(legacy=legacy, rows=[job], owner_id=owner_id)


@pytest.mark.django_db
def test_a_flow_the_database_refuses_does_not_keep_the_others_out(alice):
    from django.db import IntegrityError

    from flows.legacy.writer import write_flows

    plans = [_plan(f"f{n}", alice.pk) for n in range(3)]
    Flow.objects.create(flowname="raced", name="raced", owner=alice, legacy_id="f1")  # a concurrent run won

    failed = write_flows(plans=plans)

    assert [(plan.legacy_id, type(exc)) for plan, exc in failed] == [("f1", IntegrityError)]
    assert Flow.objects.get(legacy_id="f0").jobs.get().created_at == at(0)  # NULL createdAt: the flow's
    assert Flow.objects.get(legacy_id="f1").flowname == "raced" and not Job.objects.filter(flow__legacy_id="f1")
    assert Flow.objects.get(legacy_id="f2").status == FlowStatus.COMPLETED


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["sqlite-int", "postgresql-cuid"])
def test_queries_do_not_grow_with_the_number_of_flows(kind, make_legacy, django_user_model):
    """A batch costs the same few queries for 5 flows as for 40 (plus two COPYs, not captured here)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts = []
    for flows in (5, 40):
        django_user_model.objects.filter(email="bob@example.com").delete()  # with its flows
        db, url = make_legacy(kind)
        build_clean(db, flows=flows)
        with CaptureQueriesContext(connection) as queries:
            assert migrate("--source", url, "--batch-size", "100")[0] == 0
        counts.append(len(queries))
    assert counts[0] == counts[1] and counts[0] <= 12, counts


# Cells kept raw, queues no worker consumes ----------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["sqlite-cuid", "sqlite-int", "postgresql-cuid"])
def test_a_cell_that_cannot_be_read_keeps_its_raw_text_and_its_flow_migrates(kind, make_legacy, alice):
    """Regression: one unreadable cell used to skip its whole flow, good jobs included."""
    db, url = make_legacy(kind)
    owner = db.user(email="alice@example.com")
    flow = db.flow(name="thumbnails", user=owner, created=at(0), updated=at(5))
    db.job(flow=flow, queue="default", status="waiting-children", created=at(0), children=[
        {"name": "good", "queueName": "image", "data": {"size": 1}},
        {"name": "mangled", "queueName": "image", "data": {"size": 2}},
    ])
    db.job(flow=flow, queue="image", data={"size": 1}, result={"ok": True}, created=at(1), updated=at(2))
    if db.vendor == "sqlite":
        raw = {"data": '{"size": ', "opts": "{attempts: 3}", "result": "done!"}
        bad = db.job(flow=flow, queue="image", raw_json=True, created=at(1), updated=at(3), **raw)
        reasons = ["data is not valid JSON", "opts is not valid JSON", "result is not valid JSON"]
    else:  # jsonb holds valid JSON only: the wrong kind of value for data and opts
        raw = {"data": "[1, 2]", "opts": '"fast"'}
        bad = db.job(flow=flow, queue="image", data=[1, 2], opts="fast", created=at(1), updated=at(3))
        reasons = ["data is not a JSON object", "opts is not a JSON object"]
    db.commit()

    code, out, err = migrate("--source", url)

    assert code == 1, out  # migrated, but it needs attention
    assert "flows: 1 migrated, 0 already migrated, 0 skipped (of 1)" in out
    assert "jobs:  3 migrated, 0 skipped" in out
    assert "need attention" in err and "Needs attention: " in out
    warnings = out.split("Warnings (", 1)[1]
    for reason in reasons:
        assert f"FlowJob {bad}: {reason}" in warnings
    migrated_flow = migrated(flow)
    assert migrated_flow.status == FlowStatus.RUNNING
    # Placed under its parent by its definition's queue, named by it, its raw text kept.
    assert tree(migrated_flow) == ("thumbnails", "default", JobStatus.WAITING_CHILDREN, [
        ("good", "image", JobStatus.COMPLETED, []),
        ("mangled", "image", JobStatus.COMPLETED, []),
    ])
    job = Job.objects.get(flow=migrated_flow, name="mangled")
    assert job.data["_legacyRaw"] == raw["data"] and job.data["flowId"] == migrated_flow.pk
    assert job.opts == {"_legacyRaw": raw["opts"]} and job.max_attempts == 1
    if "result" in raw:
        assert job.result == {"_legacyRaw": raw["result"]}
    assert Job.objects.get(flow=migrated_flow, name="good").result == {"ok": True}
    # A second run has nothing left to do, and the report still names nothing new.
    assert "flows: 0 migrated, 1 already migrated" in migrate("--source", url)[1]


@pytest.mark.django_db
def test_unfinished_jobs_on_a_queue_no_worker_consumes_are_reported(make_legacy, alice, settings):
    db, url = make_legacy("sqlite-cuid")
    owner = db.user(email="alice@example.com")
    flow = db.flow(name="legacy", user=owner, created=at(0))
    db.job(flow=flow, queue="flowQueue", status="waiting-children", created=at(0), children=[
        {"name": "done", "queueName": "jobQueue", "data": {"n": 1}},
        {"name": "todo", "queueName": "schedQueue", "data": {"n": 2}},
    ])
    db.job(flow=flow, queue="jobQueue", data={"n": 1}, created=at(1))
    todo = db.job(flow=flow, queue="schedQueue", data={"n": 2}, status="waiting", created=at(1))
    db.commit()
    settings.FLOWSITE_QUEUES = ["default", "flowQueue"]

    code, out, _ = migrate("--source", url, "--dry-run")

    assert code == 1, out
    assert f"FlowJob {todo}: is waiting on queue 'schedQueue', which no worker consumes" in out
    assert "'jobQueue'" not in out  # finished: history, nothing to run
    assert "'flowQueue'" not in out  # consumed

    settings.FLOWSITE_QUEUES = ["default", "flowQueue"]
    settings.FLOWSITE_EXTERNAL_QUEUES = ["schedQueue"]  # reported by an external worker
    code, out, _ = migrate("--source", url)
    assert code == 0, out
    assert migrated(flow).jobs.get(name="todo").status == JobStatus.WAITING
