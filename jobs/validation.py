"""Validation of one job's fields, shared by flow specs and standalone job submission."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings

from jobs.registry import handler_names
from jobs.options import JobOptions, parse_job_options


NUL_MESSAGE = "Text may not contain NUL (\\u0000) characters."


def contains_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character anywhere (PostgreSQL cannot store one)."""
    return "\\u0000" in json.dumps(value)


def field_path(path: str, key: str) -> str:
    """Join a spec path and a field name: ``children[0]`` + ``name``."""
    return f"{path}.{key}" if path else key


def validate_job_fields(
    node: dict[str, Any], path: str, errors: dict[str, list[str]]
) -> tuple[str, str, dict, dict, JobOptions]:
    """Check one job's ``name``, ``queueName``, ``data`` and ``opts``; collect errors by path."""
    name = node.get("name")
    if not isinstance(name, str) or not name:
        errors.setdefault(field_path(path, "name"), []).append("This field is required and must be a non-empty string.")
        name = ""
    elif name not in handler_names():
        known = ", ".join(handler_names()) or "(none)"
        errors.setdefault(field_path(path, "name"), []).append(f"Unknown job handler {name!r}. Known handlers: {known}.")
    queue = node.get("queueName")
    allowed = settings.FLOWSITE_QUEUES
    if not isinstance(queue, str) or not queue:
        errors.setdefault(field_path(path, "queueName"), []).append("This field is required and must be a non-empty string.")
        queue = ""
    elif queue not in allowed:
        errors.setdefault(field_path(path, "queueName"), []).append(
            f"Unknown queue {queue!r}. Allowed queues: {', '.join(allowed)}."
        )
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
