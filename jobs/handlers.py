"""The job handler registry and the context a handler receives.

A job's ``name`` selects a handler registered with ``@job_handler("name")``.
Handlers are found in every installed app's ``handlers`` module and in the
modules listed in ``settings.FLOWSITE_HANDLER_MODULES``. Only registered names
can ever run: the API and the command line cannot name an arbitrary Celery task.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils.module_loading import autodiscover_modules

Handler = Callable[["JobContext"], Any]

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


@dataclass
class JobContext:
    """Everything a handler may know and do.

    ``children_values`` holds each completed child's return value keyed by the
    child's job id and by its name (when two children share a name, the name
    maps to the list of their values in submission order). Children that failed
    under ``ignoreDependencyOnFailure`` appear in ``children_failures`` instead,
    keyed the same way; children removed by ``removeDependencyOnFailure`` appear
    in neither.
    """

    job_id: str
    name: str
    queue_name: str
    data: dict[str, Any]
    opts: dict[str, Any]
    flow_id: str | None
    attempt: int
    children_values: dict[str, Any] = field(default_factory=dict)
    children_failures: dict[str, Any] = field(default_factory=dict)

    def update_progress(self, progress: int | float | dict) -> None:
        """Record the job's progress (a number, usually 0-100, or a JSON object)."""
        from jobs.services import job_update_progress

        job_update_progress(job_id=self.job_id, progress=progress)

    def log(self, message: str) -> None:
        """Append a line to the job's log."""
        from jobs.services import job_log

        job_log(job_id=self.job_id, message=str(message))

    def submit(
        self,
        name: str,
        *,
        queue_name: str,
        data: dict[str, Any] | None = None,
        opts: dict[str, Any] | None = None,
    ) -> str:
        """Submit another job, on any allowed queue, attached to this job's flow.

        Returns the new job's id. The job runs independently (it is not a child of
        this one) but counts in the flow's progress, and the flow finishes only
        after it does.
        """
        from jobs.services import job_submit

        job = job_submit(
            name=name, queue_name=queue_name, data=data or {}, opts=opts or {}, flow_id=self.flow_id
        )
        return job.id
