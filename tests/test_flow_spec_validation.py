"""Every way a flow specification can be wrong gets a clear error naming its path."""

from __future__ import annotations

import pytest
from django.test import override_settings

from flows.models import Flow
from flows.services import flow_create
from jobs.exceptions import SpecValidationError
from jobs.registry import handler_names
from jobs.models import Job

pytestmark = pytest.mark.django_db


def node(name="test-value", queue="default", **fields):
    return {"name": name, "queueName": queue, **fields}


def errors_of(user, spec) -> dict[str, list[str]]:
    with pytest.raises(SpecValidationError) as caught:
        flow_create(owner=user, spec=spec)
    assert not Flow.objects.exists() and not Job.objects.exists()  # nothing written
    return caught.value.details


def test_a_valid_spec_creates_the_flow_and_every_job(user):
    flow = flow_create(owner=user, spec={"flowname": "ok", **node(children=[node(), node(children=[node()])])})

    assert flow.total_jobs == 4
    assert Job.objects.filter(flow=flow).count() == 4
    assert Job.objects.get(pk=flow.root_job_id).pending_children == 2


@pytest.mark.parametrize("spec", [None, [], "flow", 3])
def test_a_spec_that_is_not_an_object_is_refused(user, spec):
    assert errors_of(user, spec) == {"non_field_errors": ["Expected a JSON object."]}


def test_missing_fields_are_named(user):
    errors = errors_of(user, {})

    assert set(errors) == {"flowname", "name", "queueName"}
    assert "required" in errors["flowname"][0]


def test_an_unknown_handler_lists_the_known_ones_at_its_path(user):
    spec = {"flowname": "f", **node(children=[node(), node(children=[node("no-such-job")])])}

    errors = errors_of(user, spec)

    message = errors["children[1].children[0].name"][0]
    assert "Unknown job handler 'no-such-job'" in message
    for known in ("download-video", "watermark-video", "test-value"):
        assert known in message
    assert list(errors) == ["children[1].children[0].name"]
    assert "test-value" in handler_names()


def test_an_unknown_queue_lists_the_allowed_ones(user):
    errors = errors_of(user, {"flowname": "f", **node(children=[node(), node(queue="celery")])})

    assert errors == {
        "children[1].queueName": ["Unknown queue 'celery'. Allowed queues: default, video, image, alt, isolated."]
    }


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("flowname", "", "non-empty string"),
        ("flowname", 5, "non-empty string"),
        ("flowname", "x" * 201, "at most 200"),
        ("name", 7, "non-empty string"),
        ("queueName", ["default"], "non-empty string"),
        ("data", "payload", "Must be an object."),
        ("opts", [], "Must be an object."),
        ("children", {"name": "x"}, "Must be a list of jobs."),
    ],
)
def test_wrong_types_are_refused(user, field, value, message):
    spec = {"flowname": "f", **node(), field: value}

    errors = errors_of(user, spec)

    assert message in errors[field][0]


def test_a_child_that_is_not_an_object_is_refused(user):
    assert errors_of(user, {"flowname": "f", **node(children=[node(), "x"])}) == {
        "children[1]": ["Must be an object."]
    }


def test_unknown_fields_are_refused(user):
    errors = errors_of(user, {"flowname": "f", **node(children=[node(prefix="bull", flowname="nested")])})

    assert errors["children[0]"] == [
        "Unknown fields: flowname, prefix. Allowed: name, queueName, data, opts, children."
    ]


@pytest.mark.parametrize(
    "opts, path, message",
    [
        ({"attempts": "3"}, "opts.attempts", "Must be an integer."),
        ({"attempts": 0}, "opts.attempts", "Must be between 1 and 100."),
        ({"attempts": True}, "opts.attempts", "Must be an integer."),
        ({"delay": -1}, "opts.delay", "Must be between 0"),
        ({"timeout": 0}, "opts.timeout", "Must be between 1"),
        ({"priority": 1.5}, "opts.priority", "Must be an integer."),
        ({"backoff": "fast"}, "opts.backoff", "Must be a number of milliseconds or an object"),
        ({"backoff": -5}, "opts.backoff", "non-negative"),
        ({"backoff": {"type": "linear", "delay": 10}}, "opts.backoff.type", "fixed, exponential"),
        ({"backoff": {"type": "fixed", "delay": "1s"}}, "opts.backoff.delay", "non-negative integer"),
        ({"backoff": {"type": "fixed", "jitter": 1}}, "opts.backoff", "Unknown keys: jitter"),
        ({"failParentOnFailure": "yes"}, "opts.failParentOnFailure", "true or false"),
        ({"ignoreDependencyOnFailure": 1}, "opts.ignoreDependencyOnFailure", "true or false"),
        ({"removeDependencyOnFailure": None}, "opts.removeDependencyOnFailure", "true or false"),
        ({"removeOnComplete": True}, "opts", "Unknown options: removeOnComplete"),
        (
            {"ignoreDependencyOnFailure": True, "removeDependencyOnFailure": True},
            "opts",
            "cannot both be true",
        ),
    ],
)
def test_bad_options_are_refused_with_their_path(user, opts, path, message):
    errors = errors_of(user, {"flowname": "f", **node(children=[node(opts=opts)])})

    assert message in " ".join(errors[f"children[0].{path}"])


def test_every_error_is_reported_at_once(user):
    spec = {"flowname": "", **node("nope", children=[node(queue="x"), node(opts={"attempts": -1})])}

    errors = errors_of(user, spec)

    assert set(errors) == {"flowname", "name", "children[0].queueName", "children[1].opts.attempts"}


@override_settings(FLOWSITE_MAX_FLOW_DEPTH=5)
def test_a_flow_deeper_than_the_limit_is_refused(user):
    spec = node()
    for _ in range(5):
        spec = node(children=[spec])

    with pytest.raises(SpecValidationError) as caught:
        flow_create(owner=user, spec={"flowname": "deep", **spec})

    assert "deeper than 5 levels" in caught.value.message
    assert list(caught.value.details) == ["children[0].children[0].children[0].children[0].children[0]"]


def test_a_hostile_nesting_depth_is_refused_without_recursion_error(user):
    spec = node()
    for _ in range(20_000):
        spec = node(children=[spec])

    with pytest.raises(SpecValidationError) as caught:
        flow_create(owner=user, spec={"flowname": "deep", **spec})

    assert "deeper than 100 levels" in caught.value.message


@override_settings(FLOWSITE_MAX_FLOW_JOBS=10)
def test_a_flow_with_too_many_jobs_is_refused(user):
    spec = {"flowname": "wide", **node(children=[node() for _ in range(10)])}

    with pytest.raises(SpecValidationError) as caught:
        flow_create(owner=user, spec=spec)

    assert caught.value.message == "The flow has more than 10 jobs (FLOWSITE_MAX_FLOW_JOBS)."
    assert not Flow.objects.exists()
