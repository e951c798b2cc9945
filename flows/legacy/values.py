"""Turning legacy (Prisma) column values into Flowsite values: timestamps, JSON, statuses.

Prisma wrote the same column in several ways over the legacy service's life:
SQLite DateTime as integer milliseconds (native engine), ISO-8601 text (driver
adapters) or ``YYYY-MM-DD HH:MM:SS`` (SQL defaults); PostgreSQL ``timestamp(3)``
(naive, UTC). JSON is TEXT on SQLite and ``jsonb`` on PostgreSQL (read as text).
Everything here is pure, so it is tested without a database.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from jobs.vocabulary import JobStatus

# A job whose legacy status means nothing to Flowsite becomes ``stuck``: not
# finished, not failed, so the flow is not claimed to be complete or broken,
# and an operator can still retry or cancel it (stuck -> waiting|failed|cancelled).
FALLBACK_JOB_STATUS = JobStatus.STUCK

# Spellings the legacy service (or BullMQ) used for states Flowsite names otherwise.
# Keys are normalised: lower case, "_" and " " turned into "-".
LEGACY_STATUS_ALIASES: dict[str, JobStatus] = {
    "prioritized": JobStatus.WAITING,  # BullMQ >= 4: waiting, with a priority
    "waitingchildren": JobStatus.WAITING_CHILDREN,
    "pending": JobStatus.WAITING,
    "queued": JobStatus.WAITING,
    "running": JobStatus.ACTIVE,
    "processing": JobStatus.ACTIVE,
    "in-progress": JobStatus.ACTIVE,
    "complete": JobStatus.COMPLETED,
    "success": JobStatus.COMPLETED,
    "succeeded": JobStatus.COMPLETED,
    "done": JobStatus.COMPLETED,
    "error": JobStatus.FAILED,
    "errored": JobStatus.FAILED,
    "canceled": JobStatus.CANCELLED,
}

_STATUSES: dict[str, JobStatus] = {status.value: status for status in JobStatus}

# Legacy services injected these into every job's data; they are not the user's data.
INJECTED_DATA_KEYS = frozenset({"flowId", "_flowMetadata"})

# Below this, an epoch number cannot be milliseconds of a date after 1973: it is seconds.
_SECONDS_THRESHOLD = 100_000_000_000
_DIGITS = re.compile(r"-?\d+")


# The key under which a JSON cell that cannot be read keeps its raw text: ``{"_legacyRaw": "..."}``.
RAW_KEY = "_legacyRaw"


class BadValue(ValueError):
    """A legacy value that cannot be migrated; the message says which and why."""


def parse_timestamp(value: Any, *, column: str) -> dt.datetime | None:
    """Return an aware UTC datetime for any Prisma DateTime representation, None for NULL.

    Prisma always stores UTC, so naive values (SQLite text, PostgreSQL
    ``timestamp(3)``) are UTC. Raises ``BadValue`` for anything unreadable.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        if isinstance(value, dt.datetime):
            parsed = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            parsed = _from_epoch(value)
        elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
            parsed = _from_epoch(int(value.strip()))
        elif isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value.strip())
        else:
            raise BadValue(f"{column} is not a date: {value!r}")
    except (ValueError, OverflowError, OSError) as exc:
        if isinstance(exc, BadValue):
            raise
        raise BadValue(f"{column} is not a date: {value!r}") from exc
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def _from_epoch(number: float) -> dt.datetime:
    seconds = number if abs(number) < _SECONDS_THRESHOLD else number / 1000
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def parse_json(value: Any, *, column: str) -> Any:
    """Decode a JSON column (TEXT on SQLite, jsonb read as text); None stays None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return value  # SQLite hands back a bare number stored in a JSON column as a number
    try:
        return json.loads(value)
    except ValueError as exc:
        raise BadValue(f"{column} is not valid JSON ({exc}): {_preview(value)}") from exc


def parse_json_object(value: Any, *, column: str) -> dict[str, Any]:
    """Decode a column that must hold a JSON object (``data``, ``opts``); NULL is ``{}``."""
    decoded = parse_json(value, column=column)
    if decoded is None:
        return {}
    if not isinstance(decoded, dict):
        raise BadValue(f"{column} is not a JSON object: {_preview(value)}")
    return decoded


def parse_json_list(value: Any, *, column: str) -> list[Any]:
    """Decode a column that must hold a JSON array (``children``); NULL is ``[]``."""
    decoded = parse_json(value, column=column)
    if decoded is None:
        return []
    if not isinstance(decoded, list):
        raise BadValue(f"{column} is not a JSON array: {_preview(value)}")
    return decoded


def raw_text(value: Any) -> str:
    """A cell's value as the legacy database held it, as text (what ``RAW_KEY`` keeps)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else json.dumps(value)


def map_status(value: Any) -> tuple[JobStatus, bool]:
    """Return the Flowsite status for a legacy status, and whether it was recognised.

    Vocabulary words (any case, ``_`` for ``-``) and the aliases above are
    recognised; anything else, NULL included, is ``FALLBACK_JOB_STATUS``.
    """
    if not isinstance(value, str):
        return FALLBACK_JOB_STATUS, False
    status = _STATUSES.get(value)  # the usual case, checked first: it is one dict lookup
    if status is not None:
        return status, True
    key = value.strip().lower().replace("_", "-").replace(" ", "-")
    if key in _STATUSES:
        return _STATUSES[key], True
    alias = LEGACY_STATUS_ALIASES.get(key) or LEGACY_STATUS_ALIASES.get(key.replace("-", ""))
    if alias is not None:
        return alias, True
    return FALLBACK_JOB_STATUS, False


def legacy_id_text(value: Any) -> str:
    """Return a legacy id (cuid string or integer) as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def user_data(data: dict[str, Any]) -> dict[str, Any]:
    """Return a job's data without the keys the legacy service injected."""
    return {key: value for key, value in data.items() if key not in INJECTED_DATA_KEYS}


def signature(queue_name: Any, data: Any) -> tuple[str, Any]:
    """Return the key that matches a job row to its definition: queue and data.

    Data compares as JSON does (key order aside), without the injected keys.
    """
    clean = user_data(data) if isinstance(data, dict) else data
    return str(queue_name), _frozen({} if clean is None else clean)


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a JSON value: equal exactly when the JSON values are equal.

    Three times faster than canonical JSON text, and this runs for every job
    row and every child definition.
    """
    if isinstance(value, dict):
        return frozenset((key, _frozen(item)) for key, item in value.items())
    if isinstance(value, list):
        return tuple(_frozen(item) for item in value)
    if isinstance(value, bool):
        return (bool, value)  # true is not 1 in JSON, though True == 1 in Python
    return value


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
