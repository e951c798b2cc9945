"""Validation of one job's fields, shared by flow specs and standalone job submission."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from jobs.models import Job
from jobs.queues import is_external, job_queues, unknown_queue_message
from jobs.registry import handler_names
from jobs.options import JobOptions, parse_job_options


# A job's name on an external queue is not a handler's: only the column bounds it.
MAX_JOB_NAME_LENGTH = Job._meta.get_field("name").max_length
NUL_MESSAGE = "Text may not contain NUL (\\u0000) characters."


def contains_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character anywhere (PostgreSQL cannot store one)."""
    return "\\u0000" in json.dumps(value)


NOT_FINITE_MESSAGE = "Must be a finite number."
SURROGATE_MESSAGE = "Text may not contain a lone surrogate (\\ud800-\\udfff): it cannot be encoded as UTF-8."
_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONTooDeep(ValueError):
    """A JSON value nested deeper than allowed; ``path`` is where the walk stopped."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


def _printable(key: str) -> str:
    """A key as it can appear in an error path (the answer itself must encode as UTF-8)."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def json_value_errors(value: Any, *, max_depth: int, path: str = "") -> dict[str, list[str]]:
    """What PostgreSQL's ``jsonb`` and UTF-8 cannot store in a parsed JSON value, by path.

    Python's parser accepts more than they do: ``1e400`` becomes ``inf`` and
    ``"\\ud800"`` a lone surrogate; both made a write fail half-way with a 500.
    Raises ``JSONTooDeep`` for nesting deeper than ``max_depth`` (encoding it again
    would raise ``RecursionError``). The walk is iterative, so it is safe whatever the
    depth; paths are the specs' (``children[0].data.key``).
    """
    errors: dict[str, list[str]] = {}
    stack: list[tuple[Any, str, int]] = [(value, path, 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise JSONTooDeep(path)
            if isinstance(item, dict):
                children = []
                for key, sub in item.items():
                    key_path = field_path(path, _printable(key))
                    if _SURROGATE.search(key):
                        errors.setdefault(key_path, []).append(SURROGATE_MESSAGE)
                    children.append((sub, key_path, depth + 1))
            else:
                children = [(sub, f"{path}[{index}]", depth + 1) for index, sub in enumerate(item)]
            stack.extend(reversed(children))
        elif isinstance(item, str):
            if _SURROGATE.search(item):
                errors.setdefault(path or "non_field_errors", []).append(SURROGATE_MESSAGE)
        elif isinstance(item, float) and not math.isfinite(item):
            errors.setdefault(path or "non_field_errors", []).append(NOT_FINITE_MESSAGE)
    return errors


def field_path(path: str, key: str) -> str:
    """Join a spec path and a field name: ``children[0]`` + ``name``."""
    return f"{path}.{key}" if path else key


def validate_job_fields(
    node: dict[str, Any], path: str, errors: dict[str, list[str]]
) -> tuple[str, str, dict, dict, JobOptions]:
    """Check one job's ``name``, ``queueName``, ``data`` and ``opts``; collect errors by path."""
    queue = node.get("queueName")
    if not isinstance(queue, str) or not queue:
        errors.setdefault(field_path(path, "queueName"), []).append("This field is required and must be a non-empty string.")
        queue = ""
    elif queue not in job_queues():
        errors.setdefault(field_path(path, "queueName"), []).append(unknown_queue_message(queue))
    name = node.get("name")
    if not isinstance(name, str) or not name:
        errors.setdefault(field_path(path, "name"), []).append("This field is required and must be a non-empty string.")
        name = ""
    elif is_external(queue):
        # Run elsewhere: any name, as long as the column holds it.
        if len(name) > MAX_JOB_NAME_LENGTH:
            errors.setdefault(field_path(path, "name"), []).append(f"Must be at most {MAX_JOB_NAME_LENGTH} characters.")
    elif name not in handler_names():
        known = ", ".join(handler_names()) or "(none)"
        errors.setdefault(field_path(path, "name"), []).append(f"Unknown job handler {name!r}. Known handlers: {known}.")
    data = node.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.setdefault(field_path(path, "data"), []).append("Must be an object.")
        data = {}
    opts = node.get("opts", {})
    if opts is None:
        opts = {}
    options, opt_errors = parse_job_options(opts, path=field_path(path, "opts"))
    for key, messages in opt_errors.items():
        errors.setdefault(key, []).extend(messages)
    return name, queue, data, opts if isinstance(opts, dict) else {}, options
