"""The OpenAPI schema: builds without warnings, is served offline, and the API honours it.

schemathesis generates requests from the schema against the real Django app
(in-process WSGI, real PostgreSQL) and checks every response: never a 5xx, and
every status code, content type and body as the schema documents them. The
requests are the same on every run (a fixed seed, nothing drawn from elsewhere).
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, seed, settings
from rest_framework.test import APIClient
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.test import Client

from accounts.services import api_token_create
from flowsite.wsgi import application
from jobs.vocabulary import FlowStatus, JobStatus

pytestmark = pytest.mark.django_db


def test_the_schema_builds_without_warnings_and_validates(tmp_path):
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(tmp_path / "schema.yml"))

    text = (tmp_path / "schema.yml").read_text()
    for status in (*JobStatus.values, *FlowStatus.values):
        assert f"- {status}" in text


@pytest.mark.parametrize("url", ["/api/docs/", "/api/redoc/"])
def test_docs_are_served_without_a_cdn(url):
    page = APIClient().get(url).content.decode()

    assert "cdn.jsdelivr.net" not in page and "unpkg.com" not in page
    assert "/static/drf_spectacular_sidecar/" in page


schema = schemathesis.openapi.from_wsgi("/api/schema/", application)


@pytest.fixture
def keep_test_connection():
    """Calling the WSGI app directly fires request_finished, which would close the
    test transaction's connection; Django's own test client disconnects it the same way."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def auth_header(django_user_model, keep_test_connection):
    user = django_user_model.objects.create_user(username="fuzzer", password="pw-fuzzer-123")
    from flows.services import flow_create

    flow_create(owner=user, spec={
        "flowname": "seed", "name": "test-sum", "queueName": "default",
        "children": [{"name": "test-value", "queueName": "default"}],
    })
    _, token = api_token_create(user=user)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def no_local_constants(monkeypatch):
    """Hypothesis also draws string and number literals from the project's own modules
    loaded so far (its "local constants"): the examples would change with the code and
    with which tests ran before. Only the seed decides them here."""
    from hypothesis.internal.conjecture import providers

    monkeypatch.setattr(providers, "_get_local_constants", lambda: providers.Constants())


@schema.parametrize()
@seed(15)  # the same requests on every run; no example database between runs either
@settings(max_examples=15, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_the_api_honours_its_schema(case, auth_header, no_local_constants):
    case.call_and_validate(
        # The Host is pinned: the schema does not describe it (see the bad-Host tests below).
        headers={**auth_header, "Host": "localhost"},
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )


# Regression cases saved from that test's failures: schemathesis once sent an empty Host
# header, and the answer was Django's HTML 400 page instead of the API's JSON error.
@pytest.mark.parametrize("host", ["", "evil.example.com", "bad host"])
@pytest.mark.parametrize("method, path", [("get", "/api/flows"), ("post", "/api/flows/"), ("get", "/api/schema/")])
def test_a_request_with_a_bad_host_gets_the_apis_json_400(auth_header, host, method, path):
    client = Client(application)

    response = client.open(path, method=method.upper(), headers={**auth_header, "Host": host}, json={})

    assert response.status_code == 400
    assert response.content_type == "application/json"
    assert response.get_json() == {"error": "Invalid Host header.", "message": "Invalid Host header.", "details": {}}


# Hostile values that once answered an HTML 500 or 404 through the real WSGI app
# (tests/test_api_input.py has them case by case): each is a JSON 4xx in the error shape.
HOSTILE_REQUESTS = [
    ("POST", "/api/jobs/default", '{"name": "test-value", "data": {"x": 1e400}}', 400),
    ("POST", "/api/jobs/default", '{"name": "test-value", "data": {"flowId": "\\ud800"}}', 400),
    ("POST", "/api/flows", '{"flowname": "\\ud800", "name": "test-value", "queueName": "default"}', 400),
    ("POST", "/api/jobs/default", '{"name": "test-value", "data": ' + "[" * 600 + "]" * 600 + "}", 400),
    ("POST", "/api/jobs/default", '{"name": "test-value", "opts": {"attempts": 3, "backoff": 100000000000000000000}}', 400),
    ("GET", "/api/flows/a%00b", None, 404),
    ("DELETE", "/api/jobs/default/a%00b", None, 404),
    ("GET", "/api/no-such-route", None, 404),
    ("GET", "/api/flows?pageSize=0", None, 400),
]


@pytest.mark.parametrize("method, path, body, status", HOSTILE_REQUESTS)
def test_hostile_values_get_the_apis_json_errors(auth_header, method, path, body, status):
    response = Client(application).open(
        path, method=method, data=body, content_type="application/json",
        headers={**auth_header, "Host": "localhost"},
    )

    assert response.status_code == status
    assert response.content_type == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "message", "details"} and body["message"] == body["error"]


def test_a_raw_non_ascii_token_gets_the_apis_json_401(keep_test_connection):
    response = Client(application).get(
        "/api/flows", environ_overrides={"HTTP_AUTHORIZATION": "Bearer \xff\xfe"}, headers={"Host": "localhost"}
    )

    assert response.status_code == 401
    assert response.content_type == "application/json"


def test_a_bad_host_outside_the_api_keeps_djangos_page(keep_test_connection):
    response = Client(application).get("/admin/login/", headers={"Host": ""})

    assert response.status_code == 400
    assert response.content_type.startswith("text/html")


def test_documented_shapes_match_the_payloads_the_api_builds(django_user_model):
    from flows.selectors import flow_payload_of
    from flows.serializers import FlowDetailOutputSerializer, FlowOutputSerializer
    from jobs.selectors import JOB_PAYLOAD_FIELDS, JOB_STATE_FIELDS, job_payload, job_state_payload
    from jobs.serializers import JobOutputSerializer, JobStateOutputSerializer
    from flows.services import flow_create
    from jobs.models import Job

    user = django_user_model.objects.create_user(username="shape")
    flow = flow_create(owner=user, spec={"flowname": "f", "name": "test-value", "queueName": "default"})
    row = Job.objects.values(*JOB_PAYLOAD_FIELDS).get(pk=flow.root_job_id)

    assert set(FlowOutputSerializer().fields) == set(flow_payload_of(flow))
    assert set(FlowDetailOutputSerializer().fields) == set(flow_payload_of(flow)) | {"jobs", "jobStructure"}
    assert set(JobOutputSerializer().fields) == set(job_payload(row))
    assert set(JobStateOutputSerializer().fields) == set(job_state_payload({k: row[k] for k in JOB_STATE_FIELDS}))


def test_the_schema_documents_the_legacy_shapes(tmp_path):
    import yaml

    call_command("spectacular", "--file", str(tmp_path / "schema.yml"))
    document = yaml.safe_load((tmp_path / "schema.yml").read_text())
    schemas = document["components"]["schemas"]

    flows_list = document["paths"]["/api/flows/"]["get"]["parameters"]
    assert {"page", "pageSize", "limit"} <= {parameter["name"] for parameter in flows_list}
    assert "completed" in schemas["ProgressSummary"]["properties"]["percentage"]["description"]
    assert {"summary"} <= set(schemas["Progress"]["properties"])
    assert {"summary", "jobs"} <= set(schemas["FlowDetailProgress"]["properties"])
    assert set(schemas["JobStructure"]["properties"]) == {"root"}
    assert set(schemas["ErrorObject"]["required"]) == {"message"}
    assert {"message", "error", "details"} <= set(schemas["ErrorOutput"]["required"])
    report = schemas["JobReportInputRequest"]["properties"]
    assert {"jobId", "error"} <= set(report) and len(report["error"]["oneOf"]) == 2
