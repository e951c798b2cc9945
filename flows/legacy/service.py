"""The legacy migration service: read, plan and write every legacy flow, and report."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flows.legacy.errors import LegacyMigrationError, LegacySourceError
from flows.legacy.owners import OwnerResolver, find_owner, ownerless_message
from flows.legacy.plan import BadRow, FlowPlan, plan_legacy_flow
from flows.legacy.report import Issue, MigrationReport
from flows.legacy.source import LegacyFlow, LegacyJob, LegacySource, open_source
from flows.legacy.values import legacy_id_text
from flows.legacy.writer import write_flows
from flows.models import Flow

DEFAULT_BATCH_SIZE = 500
ID_CHUNK = 1000


def migrate_legacy_flows(
    *,
    source_url: str | None = None,
    dry_run: bool = False,
    owner_username: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    drop_legacy: bool = False,
    progress: Callable[[MigrationReport], None] | None = None,
) -> MigrationReport:
    """Migrate the legacy ``"Flow"``/``"FlowJob"`` rows into ``Flow`` and ``Job`` rows.

    Idempotent: flows whose legacy id is already in ``Flow.legacy_id`` are
    skipped. A flow is written whole or not at all (``writer.write_flows``:
    one transaction per batch, each flow in its own if the batch fails); a
    flow with a bad row is skipped and reported, the others still migrate.
    ``dry_run`` plans everything and writes nothing. ``drop_legacy`` drops the legacy tables only
    if nothing was skipped. ``progress`` is called after every batch. Raises
    ``LegacyMigrationError`` before writing anything if the run cannot start.
    """
    if dry_run and drop_legacy:
        raise LegacyMigrationError("--drop-legacy cannot be combined with --dry-run.")
    if batch_size < 1:
        raise LegacyMigrationError("--batch-size must be at least 1.")
    started = time.monotonic()
    fallback = find_owner(owner_username)
    with open_source(source_url, writable=drop_legacy) as source:
        source.check_schema()
        report = MigrationReport(source=source.label, dry_run=dry_run, total_flows=source.count_flows())
        _check_ownerless(source=source, fallback=fallback)
        owners = OwnerResolver(source=source, report=report, dry_run=dry_run, fallback=fallback)
        for batch in source.iter_flow_batches(batch_size):
            _migrate_batch(batch, owners=owners, report=report, dry_run=dry_run)
            report.elapsed = time.monotonic() - started
            if progress is not None:
                progress(report)
        _report_orphan_jobs(source=source, report=report)
        report.elapsed = time.monotonic() - started
        if drop_legacy:
            _drop_legacy(source=source, report=report)
    return report


def _check_ownerless(*, source: LegacySource, fallback: Any) -> None:
    """Refuse to start when flows still to migrate have no owner and no ``--owner`` was given."""
    if fallback is not None:
        return
    flow_ids = [legacy_id_text(flow_id) for flow_id in source.ownerless_flow_ids()]
    done = already_migrated(flow_ids)
    pending = [flow_id for flow_id in flow_ids if flow_id not in done]
    if pending:
        raise LegacyMigrationError(ownerless_message(pending))


def already_migrated(legacy_ids: Iterable[str]) -> set[str]:
    """Return which of these legacy flow ids were migrated by an earlier run."""
    ids = list(legacy_ids)
    found: set[str] = set()
    for start in range(0, len(ids), ID_CHUNK):
        chunk = ids[start : start + ID_CHUNK]
        found.update(Flow.objects.filter(legacy_id__in=chunk).values_list("legacy_id", flat=True))
    return found


def _migrate_batch(
    batch: list[tuple[LegacyFlow, list[LegacyJob]]], *, owners: OwnerResolver, report: MigrationReport, dry_run: bool
) -> None:
    """Plan the batch's flows not migrated yet, write them (unless a dry run), and count."""
    report.flows_seen += len(batch)
    done = already_migrated(legacy_id_text(flow.id) for flow, _ in batch)
    pending = [(flow, rows) for flow, rows in batch if legacy_id_text(flow.id) not in done]
    report.flows_already_migrated += len(batch) - len(pending)
    owners.resolve(flows=(flow for flow, _ in pending))
    plans = _plan(pending, owners=owners, report=report)
    failed = set() if dry_run else _write(plans, report=report)
    for plan in plans:
        if plan.legacy_id not in failed:
            _record(plan, report=report)


def _plan(
    pending: list[tuple[LegacyFlow, list[LegacyJob]]], *, owners: OwnerResolver, report: MigrationReport
) -> list[FlowPlan]:
    plans = []
    for flow, rows in pending:
        try:
            plans.append(plan_legacy_flow(legacy=flow, rows=rows, owner_id=owners.owner_id(flow)))
        except BadRow as bad:
            report.skip_flow(bad.issue, jobs=len(rows))
    return plans


def _write(plans: list[FlowPlan], *, report: MigrationReport) -> set[str]:
    """Write the plans; report and return the legacy ids of those the database refused."""
    failed = write_flows(plans=plans)
    for plan, exc in failed:  # e.g. migrated meanwhile by a concurrent run
        report.skip_flow(Issue("Flow", plan.legacy_id, f"could not be written: {exc}".strip()), jobs=len(plan.jobs))
    return {plan.legacy_id for plan, _ in failed}


def _record(plan: FlowPlan, *, report: MigrationReport) -> None:
    report.flows_migrated += 1
    report.jobs_migrated += len(plan.jobs)
    report.warnings += plan.warnings
    report.attention += plan.attention
    report.statuses_mapped.update(plan.statuses_mapped)
    for shown, row_id in plan.statuses_unknown:
        report.statuses_unknown.setdefault(shown, []).append(row_id)


def _report_orphan_jobs(*, source: LegacySource, report: MigrationReport) -> None:
    for row_id, job_id, flow_id in source.orphan_jobs():
        report.errors.append(
            Issue(
                "FlowJob",
                legacy_id_text(row_id),
                f"its flow {flow_id} does not exist (jobId {job_id}): not migrated",
            )
        )
        report.jobs_skipped += 1


def _drop_legacy(*, source: LegacySource, report: MigrationReport) -> None:
    if report.errors:
        report.drop_refused = f"{len(report.errors)} legacy row(s) were skipped; fix them and run again."
        return
    try:
        report.dropped_tables = source.drop_tables()
    except LegacySourceError as exc:  # the migration itself is done: report, do not undo
        report.drop_refused = str(exc)
