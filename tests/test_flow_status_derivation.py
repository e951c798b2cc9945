"""The flow-status rule as a pure function (no database)."""

from __future__ import annotations

import pytest

from flows.status import derive_flow_status
from jobs.vocabulary import FlowStatus, JobStatus

S = JobStatus


@pytest.mark.parametrize(
    "counts, ignored, expected",
    [
        ({}, 0, FlowStatus.PENDING),
        ({S.WAITING: 2, S.WAITING_CHILDREN: 1}, 0, FlowStatus.PENDING),
        ({S.DELAYED: 1, S.WAITING_CHILDREN: 1}, 0, FlowStatus.PENDING),
        ({S.ACTIVE: 1, S.WAITING: 1, S.WAITING_CHILDREN: 1}, 0, FlowStatus.RUNNING),
        ({S.COMPLETED: 1, S.WAITING_CHILDREN: 1}, 0, FlowStatus.RUNNING),
        ({S.COMPLETED: 1, S.DELAYED: 1}, 0, FlowStatus.RUNNING),
        ({S.COMPLETED: 3}, 0, FlowStatus.COMPLETED),
        ({S.COMPLETED: 2, S.FAILED: 1}, 0, FlowStatus.FAILED),
        ({S.ACTIVE: 2, S.FAILED: 1}, 0, FlowStatus.FAILED),
        ({S.COMPLETED: 2, S.FAILED: 1}, 1, FlowStatus.COMPLETED),
        ({S.ACTIVE: 1, S.FAILED: 1}, 1, FlowStatus.RUNNING),
        ({S.COMPLETED: 1, S.FAILED: 2}, 1, FlowStatus.FAILED),
        # One-job flows.
        ({S.ACTIVE: 1}, 0, FlowStatus.RUNNING),
        ({S.COMPLETED: 1}, 0, FlowStatus.COMPLETED),
        ({S.FAILED: 1}, 0, FlowStatus.FAILED),
    ],
)
def test_flow_status_follows_job_counts(counts, ignored, expected):
    assert derive_flow_status(counts, ignored_failures=ignored) == expected


def test_a_failure_counts_unless_it_is_said_to_be_ignored():
    assert derive_flow_status({S.COMPLETED: 2, S.FAILED: 1}) == FlowStatus.FAILED


def test_a_cancelled_flow_stays_cancelled_whatever_its_jobs():
    assert derive_flow_status({S.COMPLETED: 3}, cancelled=True) == FlowStatus.CANCELLED
