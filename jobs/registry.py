"""The job handler registry: which Python function runs a job of each name.

A job's ``name`` selects a handler registered with ``@job_handler("name")``.
Handlers are found in every installed app's ``handlers`` module and in the
modules listed in ``settings.FLOWSITE_HANDLER_MODULES``. Only registered names
can ever run: the API and the command line cannot name an arbitrary Celery task.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.utils.module_loading import autodiscover_modules

# A handler takes a ``jobs.handlers.JobContext`` and returns the job's JSON result.
Handler = Callable[[Any], Any]

_registry: dict[str, Handler] = {}


def job_handler(name: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of jobs called ``name``."""

    def register(func: Handler) -> Handler:
        existing = _registry.get(name)
        if existing is not None and existing is not func and existing.__qualname__ != func.__qualname__:
            raise ValueError(f"Job handler {name!r} is already registered by {existing.__module__}")
        _registry[name] = func
        return func

    return register


def get_handler(name: str) -> Handler | None:
    return _registry.get(name)


def handler_names() -> list[str]:
    """Return the registered handler names, sorted."""
    return sorted(_registry)


def autodiscover_handlers() -> None:
    """Import every app's ``handlers`` module and the configured extra modules."""
    autodiscover_modules("handlers")
    for module in settings.FLOWSITE_HANDLER_MODULES:
        importlib.import_module(module)
