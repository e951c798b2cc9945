"""Domain errors of the job engine. One DRF handler maps them to the API's error shape."""

from __future__ import annotations


class FlowsiteError(Exception):
    """Base class: ``message`` for people, ``details`` per field path."""

    def __init__(self, message: str, details: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class SpecValidationError(FlowsiteError):
    """A flow or job specification is invalid; ``details`` maps spec paths to messages."""


class InvalidTransition(FlowsiteError):
    """A status change that the state machine does not allow from the current status."""

    def __init__(self, message: str, *, current_status: str) -> None:
        super().__init__(message)
        self.current_status = current_status


class FlowClosed(FlowsiteError):
    """A job was submitted to a flow that has already finished."""


class JobTimeoutError(Exception):
    """A handler ran longer than its job's ``timeout`` option."""


class JobLostError(Exception):
    """A job's run was lost before it finished: its worker process died, or lost the database."""


class JobCancelled(BaseException):
    """Raised inside a running handler whose job was cancelled (prefork workers, ``jobs.interrupts``).

    A ``BaseException``, like ``asyncio.CancelledError``: a handler's ``except Exception``
    does not swallow it by accident.
    """
