"""Hostile input at the API's edge: every answer is a JSON 4xx naming the field, never a 500.

Each case here once answered Django's HTML 404 or 500, or was accepted and broke
the engine later. Input is checked once, where it enters (the JSON parser, the URL
routes, the token authentication, the option validation), so the engine never sees it.
"""

from __future__ import annotations

import json

import pytest
from django.test import Client

from flows.models import Flow
from jobs.models import Job
from jobs.vocabulary import FlowStatus, JobStatus
from tests.factories import make_flow, spec

pytestmark = pytest.mark.django_db


def _post_raw(api, url: str, text: str):
    return api.post(url, text, content_type="application/json")


def _assert_json_error(response, status: int):
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {"error", "message", "details"} and body["message"] == body["error"]
    return body


# (c) NUMBERS JSON CANNOT STORE

@pytest.mark.parametrize("literal", ["1e400", "-1e400", "NaN", "Infinity", "-Infinity"])
def test_a_non_finite_number_in_data_is_400_naming_its_path(api, literal):
    body = json.dumps(spec(1)).replace('"value": 1', f'"value": {literal}')

    response = _post_raw(api, "/api/flows", body)

    details = _assert_json_error(response, 400)["details"]
    assert "children[0].data.value" in details or literal in ("NaN", "Infinity", "-Infinity")
    assert not Flow.objects.exists()


def test_a_non_finite_number_in_a_job_submission_is_400(api):
    response = _post_raw(api, "/api/jobs/default", '{"name": "test-value", "data": {"x": [1, 1e400]}}')

    assert _assert_json_error(response, 400)["details"] == {"data.x[1]": ["Must be a finite number."]}
    assert not Job.objects.exists()


# (c) STRINGS UTF-8 CANNOT ENCODE

@pytest.mark.parametrize(
    "where, path",
    [("flowname", "flowname"), ("value", "children[0].data.value"), ("key", "data.\\ud800")],
)
def test_a_lone_surrogate_in_a_flow_is_400_naming_its_path(api, where, path):
    body = json.dumps(spec(1))
    if where == "flowname":
        body = body.replace('"api-flow"', '"bad \\ud800 name"')
    elif where == "value":
        body = body.replace('"value": 1', '"value": "x\\udfffy"')
    else:
        body = body[:-1] + ', "data": {"\\ud800": 1}}'

    response = _post_raw(api, "/api/flows", body)

    assert path in _assert_json_error(response, 400)["details"]
    assert not Flow.objects.exists()


def test_a_lone_surrogate_in_data_flow_id_is_400(api):
    response = _post_raw(api, "/api/jobs/default", '{"name": "test-value", "data": {"flowId": "\\ud800"}}')

    assert "data.flowId" in _assert_json_error(response, 400)["details"]


def test_a_surrogate_pair_is_a_valid_character(api):
    response = _post_raw(api, "/api/jobs/default", '{"name": "test-value", "data": {"emoji": "\\ud83d\\ude00"}}')

    assert response.status_code == 201
    assert Job.objects.get().data["emoji"] == "\U0001f600"


# (c) NESTING

MAX_DEPTH = 512  # FLOWSITE_MAX_JSON_DEPTH's default

@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 950, 961])
def test_data_nested_deeper_than_the_limit_is_400(api, depth):
    data = "[" * (depth - 2) + "]" * (depth - 2)
    body = f'{{"name": "test-value", "data": {{"deep": {data}}}}}'

    response = _post_raw(api, "/api/jobs/default", body)

    body = _assert_json_error(response, 400)
    # Deeper documents may already exhaust the parser's recursion (a 400 as well).
    assert "FLOWSITE_MAX_JSON_DEPTH" in body["error"] or (depth > 900 and "nested too deeply" in body["error"])
    assert not Job.objects.exists()


def test_data_nested_up_to_the_limit_is_accepted(api):
    data = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)

    response = _post_raw(api, "/api/jobs/default", f'{{"name": "test-value", "data": {{"deep": {data}}}}}')

    assert response.status_code == 201


# (c) NUL IN URL IDS -> JSON 404

NUL_URLS = [
    ("get", "/api/flows/a%00b"),
    ("put", "/api/flows/a%00b/jobs/x"),
    ("put", "/api/flows/{flow}/jobs/a%00b"),
    ("delete", "/api/flows/a%00b"),
    ("post", "/api/flows/a%00b/cancel"),
    ("post", "/api/flows/a%00b/retry"),
    ("get", "/api/flows/a%00b/jobs"),
    ("get", "/api/jobs/default/a%00b"),
    ("delete", "/api/jobs/default/a%00b"),
    ("post", "/api/jobs/default/a%00b/retry"),
]


@pytest.mark.parametrize("method, url", NUL_URLS)
def test_a_nul_in_an_id_of_the_url_is_a_json_404(api, user, method, url):
    flow = make_flow(user)
    kwargs = {"data": {"status": "running"}, "format": "json"} if method == "put" else {}

    response = getattr(api, method)(url.format(flow=flow.pk), **kwargs)

    _assert_json_error(response, 404)


# (b) UNKNOWN API PATHS AND PAGE SIZES

@pytest.mark.parametrize("url", ["/api/nothing", "/api/flows/x/y/z", "/api/", "/api/jobs", "/api/a%0Ab"])
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_an_unknown_api_path_is_a_json_404(api, url, method):
    response = getattr(api, method)(url)

    assert _assert_json_error(response, 404)["error"] == "Not found."


def test_an_unknown_api_path_is_a_json_404_even_with_csrf_checks():
    """The catch-all is a plain Django view: without csrf_exempt a POST got the CSRF check's HTML 403."""
    response = Client(enforce_csrf_checks=True).post("/api/nothing", {"a": 1})

    assert _assert_json_error(response, 404)["error"] == "Not found."


def test_a_page_size_above_the_maximum_is_cut_down(api, user):
    response = api.get("/api/flows", {"pageSize": 100_000})

    assert response.status_code == 200


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", ""])
@pytest.mark.parametrize("url", ["/api/flows", "/api/jobs/default"])
def test_a_bad_page_size_is_400(api, url, value):
    response = api.get(url, {"pageSize": value})

    assert _assert_json_error(response, 400)["details"] == {
        "pageSize": ["Must be a positive integer (at most 500 are returned)."]
    }


def test_a_page_size_within_bounds_is_honoured(api, user):
    make_flow(user), make_flow(user)

    response = api.get("/api/flows", {"pageSize": 1})

    assert response.status_code == 200 and len(response.json()["results"]) == 1


# (c) A TOKEN THAT IS NOT TEXT

@pytest.mark.parametrize("header", ["Bearer \xff\xfe", "Token \xe9t\xe9", "Bearer \x00"])
def test_a_token_of_raw_non_ascii_bytes_is_a_json_401(header):
    response = Client().get("/api/flows", HTTP_AUTHORIZATION=header)

    _assert_json_error(response, 401)


def test_a_non_ascii_token_fails_authentication_from_drf_header_bytes():
    from rest_framework.authentication import get_authorization_header
    from rest_framework.exceptions import AuthenticationFailed
    from rest_framework.test import APIRequestFactory

    from accounts.authentication import BearerTokenAuthentication

    request = APIRequestFactory().get("/api/flows", HTTP_AUTHORIZATION="Bearer \xff\xfe")
    assert get_authorization_header(request) == b"Bearer \xff\xfe"

    with pytest.raises(AuthenticationFailed):
        BearerTokenAuthentication().authenticate(request)


# (a) DURATIONS

MAX_MS = 30 * 24 * 3600 * 1000


@pytest.mark.parametrize(
    "opts, path",
    [
        ({"attempts": 3, "backoff": 10**20}, "opts.backoff"),
        ({"attempts": 3, "backoff": MAX_MS + 1}, "opts.backoff"),
        ({"attempts": 3, "backoff": {"type": "exponential", "delay": 10**20}}, "opts.backoff.delay"),
        ({"delay": MAX_MS + 1}, "opts.delay"),
    ],
)
def test_a_duration_over_the_maximum_is_400_naming_the_option(api, opts, path):
    response = api.post("/api/jobs/default", {"name": "test-value", "opts": opts}, format="json")

    details = _assert_json_error(response, 400)["details"]
    assert details[path] == [f"Must be at most {MAX_MS} milliseconds (FLOWSITE_MAX_DURATION_MS)."]
    assert not Job.objects.exists()


def test_a_duration_at_the_maximum_is_accepted(api):
    opts = {"attempts": 2, "backoff": {"type": "exponential", "delay": MAX_MS}, "delay": MAX_MS}

    response = api.post("/api/jobs/default", {"name": "test-value", "opts": opts}, format="json")

    assert response.status_code == 201


@pytest.mark.parametrize(
    "opts",
    [
        {"attempts": 100, "backoff": 10**20},
        {"attempts": 100, "backoff": {"type": "exponential", "delay": 10**20}},
        {"attempts": 100, "backoff": {"type": "exponential", "delay": 1000}},
    ],
)
def test_a_stored_backoff_never_overflows_the_retry(user, opts):
    """Options stored before the limit existed still retry, after at most the maximum."""
    from jobs.options import JobOptions
    from jobs.transitions import job_fail, job_start

    flow = make_flow(user, children=1)
    leaf = Job.objects.get(flow=flow, parent__isnull=False)
    Job.objects.filter(pk=leaf.pk).update(opts=opts, max_attempts=100, attempts_made=98)

    delay = JobOptions.from_stored(opts).retry_delay_ms(99)
    started = job_start(job_id=leaf.pk)
    retried = job_fail(job=started, exc=RuntimeError("boom"), retry_delay_ms=delay)

    assert retried and 0 < delay <= MAX_MS
    assert Job.objects.get(pk=leaf.pk).status == JobStatus.DELAYED


# (d) A REPORT IS APPLIED WHOLE OR NOT AT ALL

def test_a_report_whose_completion_fails_leaves_the_job_as_it_was(api, user, monkeypatch):
    import jobs.services

    flow = make_flow(user, children=1)
    leaf = Job.objects.get(flow=flow, parent__isnull=False)
    before = (leaf.status, leaf.attempts_made, flow.status)

    def broken(**kwargs):
        raise RuntimeError("the completion failed half-way")

    monkeypatch.setattr(jobs.services, "job_complete", broken)
    with pytest.raises(RuntimeError):
        api.put(f"/api/flows/{flow.pk}/jobs/{leaf.pk}", {"status": "completed", "result": 1, "progress": 50}, format="json")

    leaf.refresh_from_db()
    flow.refresh_from_db()
    assert (leaf.status, leaf.attempts_made, flow.status) == before == (JobStatus.WAITING, 0, FlowStatus.PENDING)
    assert leaf.progress == 0


def test_a_report_with_a_lone_surrogate_is_400_and_changes_nothing(api, user):
    flow = make_flow(user, children=1)
    leaf = Job.objects.get(flow=flow, parent__isnull=False)

    response = api.put(
        f"/api/flows/{flow.pk}/jobs/{leaf.pk}", '{"status": "completed", "result": "\\ud800"}',
        content_type="application/json",
    )

    assert "result" in _assert_json_error(response, 400)["details"]
    leaf.refresh_from_db()
    flow.refresh_from_db()
    assert (leaf.status, leaf.attempts_made, flow.status) == (JobStatus.WAITING, 0, FlowStatus.PENDING)


def test_job_report_validates_before_any_write(user):
    from jobs.exceptions import SpecValidationError
    from jobs.services import job_report

    flow = make_flow(user, children=1)
    leaf = Job.objects.get(flow=flow, parent__isnull=False)

    with pytest.raises(SpecValidationError):
        job_report(job=leaf, status="completed", result="\ud800")

    leaf.refresh_from_db()
    flow.refresh_from_db()
    assert (leaf.status, leaf.attempts_made, flow.status) == (JobStatus.WAITING, 0, FlowStatus.PENDING)
