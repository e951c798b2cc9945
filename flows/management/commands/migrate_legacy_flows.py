"""Migrate the legacy service's Prisma "Flow"/"FlowJob" tables into Flowsite."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from flows.legacy import DEFAULT_BATCH_SIZE, LegacyMigrationError, MigrationReport, migrate_legacy_flows

# Exit statuses (docs/legacy-migration.md): 0 all migrated, 1 rows skipped or needing attention
# (or tables not dropped), 2 could not start.
EXIT_SKIPPED = 1
EXIT_CANNOT_START = 2


class Command(BaseCommand):
    help = (
        'Migrate the legacy Prisma tables "Flow" and "FlowJob" (and their "User" owners) into '
        "Flowsite flows and jobs. Safe to run again: migrated flows are remembered."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--source", metavar="URL",
            help="Legacy database: sqlite:///relative.db, sqlite:////absolute.db, file:./dev.db or "
            "postgres://user:pass@host:5432/db[?schema=NAME]. Default: Flowsite's own database.",
        )
        parser.add_argument("--dry-run", action="store_true", help="Plan and report everything, write nothing.")
        parser.add_argument(
            "--owner", metavar="USERNAME",
            help="Flowsite user who gets the flows whose legacy user is gone (required when there are some).",
        )
        parser.add_argument(
            "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
            help=f"Legacy flows read per batch; progress is shown after each (default {DEFAULT_BATCH_SIZE}).",
        )
        parser.add_argument(
            "--drop-legacy", action="store_true",
            help='Drop "FlowJob" and "Flow" afterwards, only if no row was skipped.',
        )

    def handle(self, *args, **options) -> None:
        self.batch_size = options["batch_size"]
        try:
            report = migrate_legacy_flows(
                source_url=options["source"],
                dry_run=options["dry_run"],
                owner_username=options["owner"],
                batch_size=options["batch_size"],
                drop_legacy=options["drop_legacy"],
                progress=self._progress if options["verbosity"] > 0 else None,
            )
        except LegacyMigrationError as exc:
            raise CommandError(str(exc), returncode=EXIT_CANNOT_START) from exc
        for line in report.lines():
            self.stdout.write(line)
        if report.errors:
            raise CommandError(
                f"{len(report.errors)} legacy row(s) were skipped: see the report above.", returncode=EXIT_SKIPPED
            )
        if report.attention:
            raise CommandError(
                f"{len(report.attention)} migrated legacy row(s) need attention: see the warnings above.",
                returncode=EXIT_SKIPPED,
            )
        if report.drop_refused:
            raise CommandError(f"The legacy tables were not dropped: {report.drop_refused}", returncode=EXIT_SKIPPED)

    def _progress(self, report: MigrationReport) -> None:
        if report.total_flows <= self.batch_size:
            return  # one batch: the final report follows at once
        self.stderr.write(
            f"  {report.flows_seen}/{report.total_flows} flows read, {report.flows_migrated} migrated "
            f"({report.rate:.0f} flows/s)"
        )
