"""Reading the legacy Prisma tables ``"User"``, ``"Flow"`` and ``"FlowJob"``.

The source is a SQLite file or a PostgreSQL database, given as a URL, or by
default Flowsite's own database. It is always read through a connection of its
own (plain DB-API, not Django's): Flowsite's connection commits once per
migrated flow, which must not end the source's long read. Values come back raw
(``flows.legacy.values`` parses them), so one reader serves every format.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.db import connection as django_connection

from flows.legacy.errors import LegacySourceError

# Columns read from each table; the first ones of each are required, the other
# ones read as NULL when a deployment's schema lacks them.
FLOW_COLUMNS = ("id", "name", "createdAt", "updatedAt", "userId")
FLOW_REQUIRED = frozenset({"id", "name", "createdAt"})
JOB_COLUMNS = (
    "id", "jobId", "flowId", "queueName", "data", "opts", "status",
    "result", "error", "children", "createdAt", "updatedAt",
)
JOB_REQUIRED = frozenset({"id", "flowId", "queueName"})
USER_REQUIRED = frozenset({"id", "email"})
# Prisma's own connection-string parameters, which libpq would refuse.
PRISMA_URL_PARAMS = frozenset(
    {"schema", "connection_limit", "pool_timeout", "pgbouncer", "statement_cache_size", "socket_timeout"}
)
ID_CHUNK = 500


# Named tuples, not dataclasses: hundreds of thousands are made, straight from result rows.
class LegacyUser(NamedTuple):
    id: Any
    email: str | None
    name: str | None


class LegacyFlow(NamedTuple):
    id: Any
    name: Any
    created_at: Any
    updated_at: Any
    user_id: Any


class LegacyJob(NamedTuple):
    id: Any
    job_id: Any
    flow_id: Any
    queue_name: Any
    data: Any
    opts: Any
    status: Any
    result: Any
    error: Any
    children: Any
    created_at: Any
    updated_at: Any


class LegacySource:
    """An open legacy database. Use ``open_source()``; close it (or use ``with``)."""

    def __init__(self, *, conn: Any, vendor: str, label: str) -> None:
        self.conn = conn
        self.vendor = vendor
        self.label = label
        self.param = "?" if vendor == "sqlite" else "%s"
        self.columns: dict[str, frozenset[str]] = {}
        self._streaming = False

    def __enter__(self) -> LegacySource:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.conn.close()

    # Schema ----------------------------------------------------------------

    def check_schema(self) -> None:
        """Read the tables' columns; raise ``LegacySourceError`` naming what is missing."""
        for table, required in (("Flow", FLOW_REQUIRED), ("FlowJob", JOB_REQUIRED), ("User", USER_REQUIRED)):
            columns = self._table_columns(table)
            if columns is None and table != "User":
                raise LegacySourceError(f'{self.label} has no "{table}" table.')
            if columns is not None and not required <= columns:
                missing = ", ".join(sorted(required - columns))
                raise LegacySourceError(f'The legacy "{table}" table has no column(s): {missing}.')
            if columns is not None:
                self.columns[table] = columns

    def _table_columns(self, table: str) -> frozenset[str] | None:
        cursor = self.conn.cursor()
        try:
            cursor.execute(f'SELECT * FROM "{table}" WHERE 1 = 0')
        except Exception:  # "no such table" is a different class in each driver
            self._rollback()
            return None
        columns = frozenset(column[0] for column in cursor.description)
        self._rollback()
        return columns

    def _select_list(self, table: str, columns: Sequence[str], alias: str) -> str:
        present = self.columns[table]
        return ", ".join(f'{alias}."{c}"' if c in present else "NULL" for c in columns)

    # Reads -----------------------------------------------------------------

    def count_flows(self) -> int:
        return self._fetchall('SELECT COUNT(*) FROM "Flow"')[0][0]

    def iter_flow_batches(self, batch_size: int) -> Iterator[list[tuple[LegacyFlow, list[LegacyJob]]]]:
        """Yield the flows with their job rows, ``batch_size`` flows at a time, in one pass.

        One ordered LEFT JOIN: Prisma creates no index on ``"FlowJob"."flowId"``,
        so a query per batch would scan the whole job table every time, while
        the database joins it once (SQLite with an automatic index).
        """
        sql = (
            f'SELECT {self._select_list("Flow", FLOW_COLUMNS, "f")}, '
            f'{self._select_list("FlowJob", JOB_COLUMNS, "j")} '
            'FROM "Flow" f LEFT JOIN "FlowJob" j ON j."flowId" = f."id" ORDER BY f."id"'
        )
        cursor = self._stream(sql)
        self._streaming = True
        width = len(FLOW_COLUMNS)
        grouped = itertools.groupby(_fetch_rows(cursor, batch_size * 8), key=lambda row: row[0])
        batch: list[tuple[LegacyFlow, list[LegacyJob]]] = []
        for _, rows in grouped:
            rows = list(rows)
            flow = LegacyFlow._make(rows[0][:width])
            jobs = [LegacyJob._make(row[width:]) for row in rows if row[width] is not None]
            batch.append((flow, jobs))
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
        self._streaming = False
        self._rollback()  # ends the read transaction (and closes a server-side cursor)

    def users(self, ids: Sequence[Any]) -> list[LegacyUser]:
        """Return the legacy users with these ids (missing ones are simply absent)."""
        if "User" not in self.columns:
            return []
        name = '"name"' if "name" in self.columns["User"] else "NULL"
        found = []
        for start in range(0, len(ids), ID_CHUNK):
            chunk = list(ids[start : start + ID_CHUNK])
            marks = ", ".join([self.param] * len(chunk))
            sql = f'SELECT "id", "email", {name} FROM "User" WHERE "id" IN ({marks})'
            found += [LegacyUser(*row) for row in self._fetchall(sql, chunk)]
        return found

    def ownerless_flow_ids(self) -> list[Any]:
        """Ids of flows with no usable owner: no userId, a deleted user, or one without email."""
        if "userId" not in self.columns["Flow"] or "User" not in self.columns:
            return [row[0] for row in self._fetchall('SELECT "id" FROM "Flow" ORDER BY "id"')]
        return [
            row[0]
            for row in self._fetchall(
                'SELECT f."id" FROM "Flow" f LEFT JOIN "User" u ON u."id" = f."userId" '
                "WHERE u.\"id\" IS NULL OR u.\"email\" IS NULL OR TRIM(u.\"email\") = '' ORDER BY f.\"id\""
            )
        ]

    def orphan_jobs(self) -> list[tuple[Any, Any, Any]]:
        """``(id, jobId, flowId)`` of job rows whose flow does not exist."""
        job_id = 'j."jobId"' if "jobId" in self.columns["FlowJob"] else "NULL"
        return self._fetchall(
            f'SELECT j."id", {job_id}, j."flowId" FROM "FlowJob" j '
            'LEFT JOIN "Flow" f ON f."id" = j."flowId" WHERE f."id" IS NULL ORDER BY j."id"'
        )

    # Writes ----------------------------------------------------------------

    def drop_tables(self) -> list[str]:
        """Drop ``"FlowJob"`` and ``"Flow"`` in one transaction; return their names.

        ``"User"`` stays: only the users who own flows were migrated, and other
        legacy tables may still refer to it.
        """
        cursor = self.conn.cursor()
        tables = ["FlowJob", "Flow"]
        try:
            for table in tables:
                cursor.execute(f'DROP TABLE "{table}"')
            self.conn.commit()
        except Exception as exc:  # any driver's error, reported the same way
            self._rollback()
            raise LegacySourceError(f"Could not drop the legacy tables: {exc}") from exc
        return tables

    # Plumbing --------------------------------------------------------------

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cursor = self.conn.cursor()
        cursor.execute(sql, list(params))
        rows = cursor.fetchall()
        self._rollback()  # no read transaction left open between queries
        return rows

    def _stream(self, sql: str) -> Any:
        # A named (server-side) cursor streams PostgreSQL rows instead of loading them all.
        cursor = self.conn.cursor(name="legacy_flows") if self.vendor == "postgresql" else self.conn.cursor()
        cursor.execute(sql)
        return cursor

    def _rollback(self) -> None:
        # Never while streaming: ending the transaction would close the server-side cursor.
        if self._streaming:
            return
        if self.vendor == "postgresql" or self.conn.in_transaction:
            self.conn.rollback()


def _fetch_rows(cursor: Any, size: int) -> Iterator[tuple]:
    while rows := cursor.fetchmany(size):
        yield from rows


def open_source(url: str | None, *, writable: bool = False) -> LegacySource:
    """Open the legacy database at ``url`` (default: Flowsite's own database).

    Accepts ``sqlite:///relative.db``, ``sqlite:////absolute.db``, Prisma's
    ``file:./dev.db``, and ``postgres://`` / ``postgresql://`` URLs, Prisma's
    ``?schema=NAME`` included. Opened read-only unless ``writable``.
    """
    if url is None:
        return _open_flowsite_database(writable=writable)
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        return open_sqlite(urlsplit(url).path[1:], writable=writable)
    if scheme == "file":
        return open_sqlite(url[len("file:") :].split("?", 1)[0], writable=writable)
    if scheme in ("postgres", "postgresql"):
        return open_postgresql(url, writable=writable)
    raise LegacySourceError(
        f"Unsupported --source {redact(url)!r}: use sqlite:///path, file:path or postgres://user@host/db."
    )


def open_sqlite(path: str, *, writable: bool) -> LegacySource:
    file = Path(path).expanduser()
    if not path or not file.is_file():
        raise LegacySourceError(
            f"Legacy SQLite database {str(file.resolve())!r} not found "
            "(sqlite:///relative/path, sqlite:////absolute/path)."
        )
    mode = "rw" if writable else "ro"
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode={mode}", uri=True)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
    except sqlite3.Error as exc:
        raise LegacySourceError(f"Cannot open {str(file)!r} as a SQLite database: {exc}") from exc
    return LegacySource(conn=conn, vendor="sqlite", label=f"sqlite:///{file}")


def open_postgresql(url: str, *, writable: bool, **params: Any) -> LegacySource:
    import psycopg
    from psycopg.types.string import TextLoader

    parts = urlsplit(url) if url else None
    if parts is not None:
        query = dict(parse_qsl(parts.query))
        if query.get("schema"):
            params["options"] = f"-c search_path={query['schema']}"
        kept = {key: value for key, value in query.items() if key not in PRISMA_URL_PARAMS}
        url = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(kept)))
    try:
        conn = psycopg.connect(url or "", **params)
    except psycopg.Error as exc:
        raise LegacySourceError(f"Cannot connect to {redact(url) if url else 'the database'}: {exc}") from exc
    # JSON arrives as text, as from SQLite: one parser for both (and no guessing
    # whether a str is a decoded JSON string or undecoded JSON text).
    for type_name in ("json", "jsonb"):
        conn.adapters.register_loader(type_name, TextLoader)
    conn.read_only = not writable
    label = redact(url) if url else f"postgresql database {params.get('dbname')!r}"
    return LegacySource(conn=conn, vendor="postgresql", label=label)


def _open_flowsite_database(*, writable: bool) -> LegacySource:
    settings = django_connection.settings_dict
    if django_connection.vendor == "sqlite":
        return open_sqlite(str(settings["NAME"]), writable=writable)
    if django_connection.vendor != "postgresql":
        raise LegacySourceError(f"Unsupported database for legacy tables: {django_connection.vendor}.")
    params = {
        key: value
        for key, value in {
            "dbname": settings.get("NAME"),
            "user": settings.get("USER"),
            "password": settings.get("PASSWORD"),
            "host": settings.get("HOST"),
            "port": settings.get("PORT"),
        }.items()
        if value
    }
    return open_postgresql("", writable=writable, **params)


def redact(url: str) -> str:
    """Return ``url`` without its password, for messages and reports."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
