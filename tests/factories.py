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


def grant(user, *perms: str):
    """Give ``user`` Django model permissions (``"flows.view_flow"``, ...), as an admin would; return it."""
    from django.contrib.auth.models import Permission

    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    for cache in ("_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        user.__dict__.pop(cache, None)  # the next has_perm reads them again
    return user
