"""HTTP middleware of the whole site."""

from __future__ import annotations

from django.utils.cache import patch_cache_control
from django.utils.deprecation import MiddlewareMixin

API_PREFIX = "/api/"


class NoStoreAPIMiddleware(MiddlewareMixin):
    """Every response under ``/api/`` carries ``Cache-Control: no-store``.

    API answers hold job data and tokens: no browser or proxy cache may keep them.
    Errors, throttled and unauthenticated answers included (this runs outside DRF).
    """

    def process_response(self, request, response):
        if request.path_info.startswith(API_PREFIX):
            patch_cache_control(response, no_store=True)
        return response
