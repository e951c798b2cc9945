"""Migration of the legacy Node service's Prisma tables into Flowsite (docs/legacy-migration.md).

``source`` reads the legacy tables, ``values`` parses their columns, ``tree``
rebuilds each flow's job tree, ``plan`` turns a legacy flow into unsaved rows,
``owners`` decides who owns it, ``writer`` stores it, and ``service`` runs the
whole migration and fills in a ``report``. The management command
``migrate_legacy_flows`` only parses options and prints.
"""

from flows.legacy.errors import LegacyMigrationError, LegacySourceError
from flows.legacy.report import Issue, MigrationReport
from flows.legacy.service import DEFAULT_BATCH_SIZE, migrate_legacy_flows
from flows.legacy.values import FALLBACK_JOB_STATUS

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FALLBACK_JOB_STATUS",
    "Issue",
    "LegacyMigrationError",
    "LegacySourceError",
    "MigrationReport",
    "migrate_legacy_flows",
]
