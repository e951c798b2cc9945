"""Small builders for API tests: flow specs and flows."""

from __future__ import annotations

from flows.services import flow_create


def spec(children: int = 2, *, queue: str = "default", flowname: str = "api-flow", name: str = "test-sum") -> dict:
    """A flow spec of one parent and ``children`` leaves."""
    return {
        "flowname": flowname,
        "name": name,
        "queueName": queue,
        "children": [{"name": "test-value", "queueName": queue, "data": {"value": 1}} for _ in range(children)],
    }


def make_flow(owner, children: int = 2, **kwargs):
    return flow_create(owner=owner, spec=spec(children, **kwargs))
