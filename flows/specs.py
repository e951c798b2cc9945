"""Validation of a flow specification ``{flowname, name, queueName, data?, opts?, children?}``.

The tree is walked iteratively (never recursively), so a hostile, deeply nested
body is refused with a clear error instead of a ``RecursionError``. Every error
names the offending path, e.g. ``children[1].children[0].name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from jobs.exceptions import SpecValidationError
from jobs.options import JobOptions
from jobs.validation import field_path as _key
from jobs.validation import NUL_MESSAGE, contains_nul, validate_job_fields

NODE_KEYS = ("name", "queueName", "data", "opts", "children")
ROOT_KEYS = ("flowname", *NODE_KEYS)
MAX_NAME_LENGTH = 200


@dataclass
class JobSpec:
    """One validated node of a flow tree."""

    path: str
    name: str
    queue_name: str
    data: dict[str, Any]
    opts: dict[str, Any]
    options: JobOptions
    depth: int
    children: list[JobSpec] = field(default_factory=list)


def _path(parent: str, index: int) -> str:
    return f"{parent}.children[{index}]" if parent else f"children[{index}]"


def parse_flow_spec(spec: Any) -> tuple[str, JobSpec]:
    """Validate a flow specification; return its flowname and its root ``JobSpec``.

    Raises ``SpecValidationError`` listing every problem found, by path. Limits
    (``FLOWSITE_MAX_FLOW_DEPTH``, ``FLOWSITE_MAX_FLOW_JOBS``) stop the walk early.
    """
    if not isinstance(spec, dict):
        raise SpecValidationError("Invalid flow specification.", {"non_field_errors": ["Expected a JSON object."]})
    errors: dict[str, list[str]] = {}
    flowname = spec.get("flowname")
    if not isinstance(flowname, str) or not flowname.strip():
        errors["flowname"] = ["This field is required and must be a non-empty string."]
        flowname = ""
    elif len(flowname) > MAX_NAME_LENGTH:
        errors["flowname"] = [f"Must be at most {MAX_NAME_LENGTH} characters."]
    max_depth = settings.FLOWSITE_MAX_FLOW_DEPTH
    max_jobs = settings.FLOWSITE_MAX_FLOW_JOBS
    root: JobSpec | None = None
    count = 0
    # Stack of (node, path, depth, parent spec).
    stack: list[tuple[Any, str, int, JobSpec | None]] = [(spec, "", 1, None)]
    while stack:
        node, path, depth, parent = stack.pop()
        count += 1
        if count > max_jobs:
            raise SpecValidationError(
                f"The flow has more than {max_jobs} jobs (FLOWSITE_MAX_FLOW_JOBS).",
                {"children": [f"A flow may hold at most {max_jobs} jobs."]},
            )
        if depth > max_depth:
            raise SpecValidationError(
                f"The flow is nested deeper than {max_depth} levels (FLOWSITE_MAX_FLOW_DEPTH).",
                {path: [f"A flow may be at most {max_depth} levels deep."]},
            )
        if not isinstance(node, dict):
            errors.setdefault(path, []).append("Must be an object.")
            continue
        allowed = ROOT_KEYS if parent is None else NODE_KEYS
        unknown = sorted(set(node) - set(allowed))
        if unknown:
            errors.setdefault(path or "non_field_errors", []).append(
                f"Unknown fields: {', '.join(unknown)}. Allowed: {', '.join(allowed)}."
            )
        name, queue, data, opts, options = validate_job_fields(node, path, errors)
        job = JobSpec(path=path, name=name, queue_name=queue, data=data, opts=opts, options=options, depth=depth)
        if parent is None:
            root = job
        else:
            parent.children.append(job)
        children = node.get("children", [])
        if children is None:
            children = []
        if not isinstance(children, list):
            errors.setdefault(_key(path, "children"), []).append("Must be a list of jobs.")
            continue
        # Push in reverse so children are visited, and kept, in submission order.
        for index in range(len(children) - 1, -1, -1):
            stack.append((children[index], _path(path, index), depth + 1, job))
    # Only now, with the depth bounded by the walk, is the whole document safe to encode.
    if contains_nul(spec):
        errors.setdefault("non_field_errors", []).append(NUL_MESSAGE)
    if errors:
        raise SpecValidationError("Invalid flow specification.", errors)
    assert root is not None
    return flowname.strip(), root
