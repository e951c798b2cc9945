"""What a legacy migration did: counts, skipped rows with reasons, warnings, timing."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from flows.legacy.values import FALLBACK_JOB_STATUS

# Warnings are for reading, not fixing row by row: past this many, the rest are counted.
MAX_WARNINGS_SHOWN = 100
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Issue:
    """One legacy row (``table`` + ``legacy_id``) and what is wrong with it."""

    table: str
    legacy_id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.table} {self.legacy_id}: {self.reason}"


@dataclass
class MigrationReport:
    """Counters and findings of one run; ``lines()`` renders the final report."""

    source: str
    dry_run: bool
    total_flows: int = 0
    flows_seen: int = 0
    flows_migrated: int = 0
    flows_already_migrated: int = 0
    flows_skipped: int = 0
    jobs_migrated: int = 0
    jobs_skipped: int = 0
    users_matched: int = 0
    users_created: int = 0
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    # Warnings that need attention (also in ``warnings``): a cell kept raw, a job no worker
    # would run. Their rows were migrated, but the exit status says so (1).
    attention: list[Issue] = field(default_factory=list)
    # (legacy status as shown, Flowsite status) -> jobs, for legacy spellings we recognised.
    statuses_mapped: Counter[tuple[str, str]] = field(default_factory=Counter)
    # legacy status as shown (repr, or NULL) -> FlowJob ids that fell back to FALLBACK_JOB_STATUS.
    statuses_unknown: dict[str, list[str]] = field(default_factory=dict)
    elapsed: float = 0.0
    dropped_tables: list[str] = field(default_factory=list)
    drop_refused: str = ""

    @property
    def ok(self) -> bool:
        """True when nothing was skipped or needs attention (and ``--drop-legacy``, if asked for,
        dropped the tables)."""
        return not self.errors and not self.attention and not self.drop_refused

    def skip_flow(self, issue: Issue, *, jobs: int) -> None:
        self.errors.append(issue)
        self.flows_skipped += 1
        self.jobs_skipped += jobs

    def lines(self) -> list[str]:
        """The final report, as printed by the command."""
        verb = "would be migrated" if self.dry_run else "migrated"
        created = "would be created" if self.dry_run else "created"
        lines = [
            f"Legacy migration from {self.source}" + (" (dry run: nothing was written)" if self.dry_run else ""),
            f"  flows: {self.flows_migrated} {verb}, {self.flows_already_migrated} already migrated, "
            f"{self.flows_skipped} skipped (of {self.total_flows})",
            f"  jobs:  {self.jobs_migrated} {verb}, {self.jobs_skipped} skipped",
            f"  users: {self.users_matched} matched by email, {self.users_created} {created}",
            f"  time:  {self.elapsed:.1f}s ({self.rate:.0f} flows/s)",
        ]
        lines += self._status_lines()
        if self.errors:
            lines.append(f"Skipped ({len(self.errors)}): fix these rows in the legacy database, then run again:")
            lines += [f"  {issue}" for issue in self.errors]
        if self.warnings:
            lines.append(f"Warnings ({len(self.warnings)}): migrated, but worth a look:")
            lines += [f"  {issue}" for issue in self.warnings[:MAX_WARNINGS_SHOWN]]
            if len(self.warnings) > MAX_WARNINGS_SHOWN:
                lines.append(f"  ... and {len(self.warnings) - MAX_WARNINGS_SHOWN} more")
        if self.attention:
            lines.append(
                f"Needs attention: {len(self.attention)} of these warnings (a cell kept raw, a job no worker runs)."
            )
        if self.dropped_tables:
            lines.append("Dropped the legacy tables: " + ", ".join(f'"{t}"' for t in self.dropped_tables))
        if self.drop_refused:
            lines.append(f"Not dropping the legacy tables: {self.drop_refused}")
        return lines

    @property
    def rate(self) -> float:
        return self.flows_seen / self.elapsed if self.elapsed > 0 else 0.0

    def _status_lines(self) -> list[str]:
        lines = []
        for (legacy, status), count in sorted(self.statuses_mapped.items()):
            lines.append(f"  status {legacy} -> {status} ({count} jobs)")
        for legacy, job_ids in sorted(self.statuses_unknown.items()):
            examples = ", ".join(job_ids[:MAX_EXAMPLES]) + (", ..." if len(job_ids) > MAX_EXAMPLES else "")
            lines.append(
                f"  unknown status {legacy} -> {FALLBACK_JOB_STATUS} ({len(job_ids)} jobs: FlowJob {examples})"
            )
        return ["Statuses:", *lines] if lines else []
