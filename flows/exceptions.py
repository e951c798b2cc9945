"""Domain errors of flows (the shared base classes are in ``jobs.exceptions``)."""

from jobs.exceptions import FlowsiteError


class IdempotencyConflict(FlowsiteError):
    """An ``Idempotency-Key`` reused with a different request body."""
