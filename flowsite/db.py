"""Prepared statements for the few hot queries (the per-job transitions, the flow list)."""

from __future__ import annotations

import json
from typing import Any

from django.db import connection
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper


def prepared_cursor() -> CursorWrapper:
    """A cursor whose statements are prepared once per connection on PostgreSQL.

    Django's own cursors bind parameters on the client, so PostgreSQL parses and
    plans every statement again; for the engine's per-job statements planning was
    about half of the database's time. These run with server-side binding and are
    prepared on first use (``prepare_threshold`` 0, see ``FLOWSITE_DB_PREPARE`` in
    settings). Elsewhere (SQLite, or preparing turned off) it is a plain cursor.
    Still a Django cursor wrapper: errors are translated and queries are logged.
    """
    if connection.vendor != "postgresql" or connection.settings_dict["OPTIONS"].get("prepare_threshold") is None:
        return connection.cursor()
    from django.db.backends.postgresql.base import ServerBindingCursor

    connection.ensure_connection()
    connection.validate_thread_sharing()
    raw = ServerBindingCursor(connection.connection)
    return _PreparedDebugCursor(raw, connection) if connection.queries_logged else connection.make_cursor(raw)


class _PreparedDebugCursor(CursorDebugWrapper):
    """Logs the statement with its parameters: a prepared one leaves no query text behind."""

    def debug_sql(self, sql=None, params=None, use_last_executed_query=False, many=False):
        return super().debug_sql(self.db.ops.compose_sql(sql, params), params, False, many)


def load_json(value: Any) -> Any:
    """A JSON column's value from a raw cursor, which hands it back as text."""
    return json.loads(value) if isinstance(value, (str, bytes)) else value
