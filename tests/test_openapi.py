"""The OpenAPI schema: builds without warnings, is served offline, and the API honours it.

schemathesis generates requests from the schema against the real Django app
(in-process WSGI, real PostgreSQL) and checks every response: never a 5xx, and
every status code, content type and body as the schema documents them.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

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


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_honours_its_schema(case, auth_header):
    case.call_and_validate(
        headers=auth_header,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )


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
