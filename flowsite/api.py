"""API wiring shared by every app: the error shape, the JSON parser and pagination.

Every error answers ``{"error": "<message>", "message": "<message>", "details": {<field
path>: [messages]}}`` with a 4xx status (``message`` repeats ``error`` for the legacy
service's clients, which print ``body.message``); domain errors from ``jobs.exceptions``
are mapped here, once.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from jobs.exceptions import FlowClosed, FlowsiteError, InvalidTransition, SpecValidationError
from jobs.validation import JSONTooDeep, json_value_errors


class SafeJSONParser(JSONParser):
    """JSON parser that refuses, with a 400 naming the path, what Flowsite could not store.

    Python's parser accepts more than PostgreSQL's ``jsonb`` and UTF-8 do: ``1e400``
    (it becomes ``inf``), lone surrogates (``"\\ud800"``) and documents nested so deep that
    encoding them again raises ``RecursionError``. Each once answered a 500 half-way
    through a write; checking the parsed body once here means no view, service or
    engine step ever sees such a value. (``NaN`` and ``Infinity`` literals are refused
    by DRF's strict parsing already.)
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            value = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - the document is nested too deeply.") from None
        except RequestDataTooBig as exc:
            raise PayloadTooLarge(str(exc)) from None
        check_json_value(value, max_depth=settings.FLOWSITE_MAX_JSON_DEPTH)
        return value


class InvalidJSONValue(exceptions.ParseError):
    """A body that is JSON but holds values Flowsite cannot store; ``details`` names their paths."""

    def __init__(self, message: str, details: dict[str, list[str]]):
        super().__init__(message)
        self.details = details


def check_json_value(value: Any, *, max_depth: int) -> None:
    """Raise ``InvalidJSONValue`` for what ``jobs.validation.json_value_errors`` finds."""
    try:
        errors = json_value_errors(value, max_depth=max_depth)
    except JSONTooDeep as exc:
        raise InvalidJSONValue(
            f"JSON parse error - the document is nested deeper than {max_depth} levels (FLOWSITE_MAX_JSON_DEPTH).",
            {exc.path or "non_field_errors": [f"At most {max_depth} levels of objects and arrays."]},
        ) from None
    if errors:
        raise InvalidJSONValue("Invalid JSON value.", errors)


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body is too large."
    default_code = "payload_too_large"


class Pagination(PageNumberPagination):
    """``page`` and ``pageSize`` (or the legacy ``limit``); a size that is not a positive integer is a 400.

    DRF would silently fall back to the default size for ``0``, ``-1`` or ``abc``; a
    size above ``max_page_size`` is still cut down to it (the contract's ``pageSize <= 500``).
    ``limit`` is an alias of ``pageSize`` with the same bounds; both at once must agree.
    """

    page_size = 50
    page_size_query_param = "pageSize"
    legacy_page_size_query_param = "limit"
    max_page_size = 500

    def get_page_size(self, request):
        given = {
            name: request.query_params[name]
            for name in (self.page_size_query_param, self.legacy_page_size_query_param)
            if name in request.query_params
        }
        sizes = {name: self._page_size(name, raw) for name, raw in given.items()}
        if len(set(sizes.values())) > 1:
            raise exceptions.ValidationError(
                {self.legacy_page_size_query_param: [f"An alias of {self.page_size_query_param}: give one, or the same value."]}
            )
        return next(iter(sizes.values()), self.page_size)

    def _page_size(self, name: str, raw: str) -> int:
        if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
            raise exceptions.ValidationError(
                {name: [f"Must be a positive integer (at most {self.max_page_size} are returned)."]}
            )
        return min(int(raw), self.max_page_size)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        parameters.append({
            "name": self.legacy_page_size_query_param,
            "required": False,
            "in": "query",
            "description": f"Alias of `{self.page_size_query_param}` (the legacy service's name).",
            "schema": {"type": "integer"},
        })
        return parameters


def error_body(message: str, details: Any = None, **extra: Any) -> dict[str, Any]:
    """The one error shape: ``error`` and ``message`` (the same text), ``details`` per field path."""
    return {"error": message, "message": message, "details": details or {}, **extra}


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
    if isinstance(exc, InvalidJSONValue):
        return Response(error_body(str(exc.detail), exc.details), status=status.HTTP_400_BAD_REQUEST)
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


@csrf_exempt  # a JSON 404 for every method, never the CSRF check's HTML 403
def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Any path under ``/api/`` that no route matches: the API's JSON 404, never Django's page.

    It is the API's last route (so it answers with ``DEBUG`` on too) and Django's
    ``handler404`` for ``/api`` itself; pages outside the API keep Django's 404.
    """
    if exception is not None and not _is_api_path(request.path):
        return defaults.page_not_found(request, exception)
    return JsonResponse(error_body("Not found."), status=404)


def _is_api_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's own 400 (``handler400``): JSON in the error shape for the API, HTML elsewhere.

    Django answers it before any view runs, e.g. for a ``Host`` header that is empty or
    not in ``ALLOWED_HOSTS`` (``DisallowedHost``), so the DRF exception handler never sees it.
    """
    if not request.path.startswith("/api/"):
        return defaults.bad_request(request, exception)
    message = "Invalid Host header." if isinstance(exception, DisallowedHost) else "Bad request."
    return JsonResponse(error_body(message), status=400)
