"""API wiring shared by every app: the error shape, the JSON parser and pagination.

Every error answers ``{"error": "<message>", "details": {<field path>: [messages]}}``
with a 4xx status; domain errors from ``jobs.exceptions`` are mapped here, once.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from jobs.exceptions import FlowClosed, FlowsiteError, InvalidTransition, SpecValidationError


class SafeJSONParser(JSONParser):
    """JSON parser that refuses absurdly nested bodies with a 400 instead of a RecursionError."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - the document is nested too deeply.") from None
        except RequestDataTooBig as exc:
            raise PayloadTooLarge(str(exc)) from None


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body is too large."
    default_code = "payload_too_large"


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "pageSize"
    max_page_size = 500


def error_body(message: str, details: Any = None, **extra: Any) -> dict[str, Any]:
    return {"error": message, "details": details or {}, **extra}


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn DRF's nested error detail into ``{"a.b[0].c": [messages]}``."""
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            path = key if not prefix else f"{prefix}.{key}"
            if key in ("non_field_errors", "detail"):
                path = prefix or key
            for sub, messages in _flatten(value, path).items():
                out.setdefault(sub, []).extend(messages)
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            return {prefix or "non_field_errors": [str(item) for item in detail]}
        out = {}
        for index, item in enumerate(detail):
            for sub, messages in _flatten(item, f"{prefix}[{index}]").items():
                out.setdefault(sub, []).extend(messages)
        return out
    return {prefix or "non_field_errors": [str(detail)]}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """Map every error to the contract's shape; domain errors to 400/404/409."""
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(str(exc))
    if isinstance(exc, SpecValidationError):
        return Response(error_body(exc.message, exc.details), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, InvalidTransition):
        return Response(
            error_body(exc.message, currentStatus=exc.current_status), status=status.HTTP_409_CONFLICT
        )
    if isinstance(exc, (FlowClosed, FlowsiteError)):
        return Response(error_body(exc.message, exc.details), status=status.HTTP_409_CONFLICT)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body("Invalid input.", _flatten(exc.detail))
    elif isinstance(exc, Http404) or isinstance(exc, exceptions.NotFound):
        response.data = error_body(str(getattr(exc, "detail", "")) or "Not found.")
    else:
        detail = response.data.get("detail", "") if isinstance(response.data, dict) else response.data
        response.data = error_body(str(detail))
    return response


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's own 400 (``handler400``): JSON in the error shape for the API, HTML elsewhere.

    Django answers it before any view runs, e.g. for a ``Host`` header that is empty or
    not in ``ALLOWED_HOSTS`` (``DisallowedHost``), so the DRF exception handler never sees it.
    """
    if not request.path.startswith("/api/"):
        return defaults.bad_request(request, exception)
    message = "Invalid Host header." if isinstance(exception, DisallowedHost) else "Bad request."
    return JsonResponse(error_body(message), status=400)
