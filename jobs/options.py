"""Job options with their BullMQ names: validation and the values the engine uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from jobs.vocabulary import FailurePolicy

BACKOFF_TYPES = ("fixed", "exponential")
MAX_PRIORITY = 2_097_152  # BullMQ's upper bound
# Celery's Redis transport has priorities 0 (first) to 9; BullMQ's 1..N collapse onto them.
CELERY_PRIORITY_LEVELS = 10
MAX_DURATION_MESSAGE = "Must be at most {limit} milliseconds (FLOWSITE_MAX_DURATION_MS)."
MAX_TIMEOUT_MESSAGE = "Must be at most {limit} milliseconds (FLOWSITE_MAX_JOB_TIMEOUT: {seconds} s)."

OPTION_KEYS = (
    "attempts",
    "backoff",
    "delay",
    "priority",
    "timeout",
    "failParentOnFailure",
    "ignoreDependencyOnFailure",
    "removeDependencyOnFailure",
)


@dataclass(frozen=True)
class JobOptions:
    attempts: int = 1
    backoff_type: str = "fixed"
    backoff_delay_ms: int = 0
    delay_ms: int = 0
    priority: int = 0
    timeout_ms: int | None = None  # ``opts.timeout`` as given (see ``effective_timeout_ms``)
    failure_policy: str = FailurePolicy.FAIL_PARENT

    @classmethod
    def from_stored(cls, opts: dict[str, Any]) -> JobOptions:
        """Build options from a job's stored (already validated) ``opts``."""
        options, _ = parse_job_options(opts or {}, path="opts")
        return options

    @property
    def effective_timeout_ms(self) -> int:
        """``opts.timeout``, else ``FLOWSITE_DEFAULT_JOB_TIMEOUT``: every job has a timeout."""
        return self.timeout_ms or settings.FLOWSITE_DEFAULT_JOB_TIMEOUT * 1000

    def backoff_ms(self, attempts_made: int) -> int:
        """Return the wait before the next try, after ``attempts_made`` tries failed.

        Never more than ``FLOWSITE_MAX_DURATION_MS``, whatever is stored: an exponential
        backoff doubles up to 99 times, and a wait too long for a ``datetime`` once raised
        ``OverflowError`` in the middle of a retry, stranding the job.
        """
        limit = settings.FLOWSITE_MAX_DURATION_MS
        delay = min(max(self.backoff_delay_ms, 0), limit)
        if self.backoff_type == "exponential" and delay:
            # Shift by at most the bits the limit has: the product stays small before min().
            delay <<= min(max(attempts_made - 1, 0), limit.bit_length())
        return min(delay, limit)

    def retry_delay_ms(self, attempts_made: int) -> int | None:
        """The wait before the next try after a failed one, or None when no attempt is left."""
        return self.backoff_ms(attempts_made) if attempts_made < self.attempts else None

    @property
    def celery_priority(self) -> int | None:
        if not self.priority:
            return None
        return min(self.priority, CELERY_PRIORITY_LEVELS - 1)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _given_int(opts: dict, key: str, path: str, errors: dict) -> int | None:
    """``opts[key]`` if it is given and an integer; an error if it is given as anything else."""
    if key not in opts:
        return None
    value = opts[key]
    if not _is_int(value):
        errors.setdefault(f"{path}.{key}", []).append("Must be an integer.")
        return None
    return value


def _int_option(opts: dict, key: str, path: str, errors: dict, *, minimum: int, maximum: int) -> int | None:
    value = _given_int(opts, key, path, errors)
    if value is None:
        return None
    if not minimum <= value <= maximum:
        errors.setdefault(f"{path}.{key}", []).append(f"Must be between {minimum} and {maximum}.")
        return None
    return value


def _duration_option(opts: dict, key: str, path: str, errors: dict, *, minimum: int) -> int | None:
    """A duration in milliseconds, at most ``FLOWSITE_MAX_DURATION_MS``.

    Out of range it is an error, and clamped: options stored before the limit
    existed (``JobOptions.from_stored`` ignores the errors) still give a usable value.
    """
    value = _given_int(opts, key, path, errors)
    if value is None:
        return None
    return _duration(value, f"{path}.{key}", errors, minimum=minimum)


def _duration(value: int, path: str, errors: dict, *, minimum: int, limit: int | None = None,
              message: str = MAX_DURATION_MESSAGE) -> int:
    limit = settings.FLOWSITE_MAX_DURATION_MS if limit is None else limit
    if value < minimum:
        errors.setdefault(path, []).append(f"Must be between {minimum} and {limit}.")
        return minimum
    if value > limit:
        errors.setdefault(path, []).append(message.format(limit=limit, seconds=limit // 1000))
        return limit
    return value


def _timeout_option(opts: dict, path: str, errors: dict) -> int | None:
    """``opts.timeout`` in milliseconds, at most ``FLOWSITE_MAX_JOB_TIMEOUT``.

    Over the ceiling it is an error, and clamped (for options stored before the
    ceiling). Absent, the job gets the default (``JobOptions.effective_timeout_ms``).
    """
    value = _given_int(opts, "timeout", path, errors)
    if value is None:
        return None
    limit = settings.FLOWSITE_MAX_JOB_TIMEOUT * 1000
    return _duration(value, f"{path}.timeout", errors, minimum=1, limit=limit, message=MAX_TIMEOUT_MESSAGE)


def _bool_option(opts: dict, key: str, path: str, errors: dict, default: bool) -> bool:
    value = opts.get(key, default)
    if not isinstance(value, bool):
        errors.setdefault(f"{path}.{key}", []).append("Must be true or false.")
        return default
    return value


def _parse_backoff(value: Any, path: str, errors: dict) -> tuple[str, int]:
    if _is_int(value):
        if value < 0:
            errors.setdefault(path, []).append("Must be a non-negative number of milliseconds.")
            return "fixed", 0
        return "fixed", _duration(value, path, errors, minimum=0)
    if not isinstance(value, dict):
        errors.setdefault(path, []).append(
            "Must be a number of milliseconds or an object {type: fixed|exponential, delay: ms}."
        )
        return "fixed", 0
    unknown = sorted(set(value) - {"type", "delay"})
    if unknown:
        errors.setdefault(path, []).append(f"Unknown keys: {', '.join(unknown)}. Allowed: type, delay.")
    kind = value.get("type", "fixed")
    if kind not in BACKOFF_TYPES:
        errors.setdefault(f"{path}.type", []).append(f"Must be one of: {', '.join(BACKOFF_TYPES)}.")
        kind = "fixed"
    delay = value.get("delay", 0)
    if not _is_int(delay) or delay < 0:
        errors.setdefault(f"{path}.delay", []).append("Must be a non-negative integer (milliseconds).")
        delay = 0
    return kind, _duration(delay, f"{path}.delay", errors, minimum=0)


def parse_job_options(opts: Any, *, path: str) -> tuple[JobOptions, dict[str, list[str]]]:
    """Validate a job's ``opts`` object; return the options and the errors by path."""
    errors: dict[str, list[str]] = {}
    if not isinstance(opts, dict):
        return JobOptions(), {path: ["Must be an object."]}
    unknown = sorted(set(opts) - set(OPTION_KEYS))
    if unknown:
        errors[path] = [f"Unknown options: {', '.join(unknown)}. Allowed: {', '.join(OPTION_KEYS)}."]
    attempts = _int_option(opts, "attempts", path, errors, minimum=1, maximum=settings.FLOWSITE_MAX_ATTEMPTS)
    # Every duration has one upper bound, FLOWSITE_MAX_DURATION_MS.
    delay = _duration_option(opts, "delay", path, errors, minimum=0)
    priority = _int_option(opts, "priority", path, errors, minimum=0, maximum=MAX_PRIORITY)
    timeout = _timeout_option(opts, path, errors)
    backoff_type, backoff_delay = ("fixed", 0)
    if "backoff" in opts:
        backoff_type, backoff_delay = _parse_backoff(opts["backoff"], f"{path}.backoff", errors)
    fail_parent = _bool_option(opts, "failParentOnFailure", path, errors, True)
    ignore = _bool_option(opts, "ignoreDependencyOnFailure", path, errors, False)
    remove = _bool_option(opts, "removeDependencyOnFailure", path, errors, False)
    if ignore and remove:
        errors.setdefault(path, []).append(
            "ignoreDependencyOnFailure and removeDependencyOnFailure cannot both be true."
        )
    if remove:
        policy = FailurePolicy.REMOVE
    elif ignore:
        policy = FailurePolicy.IGNORE
    elif fail_parent:
        policy = FailurePolicy.FAIL_PARENT
    else:
        policy = FailurePolicy.KEEP_PARENT_WAITING
    options = JobOptions(
        attempts=attempts or 1,
        backoff_type=backoff_type,
        backoff_delay_ms=backoff_delay,
        delay_ms=delay or 0,
        priority=priority or 0,
        timeout_ms=timeout,
        failure_policy=policy,
    )
    return options, errors
