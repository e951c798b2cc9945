"""factory_boy factories and small helpers for API tests."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from flows.services import flow_create


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", "pw-secret-123")


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
