"""Why a legacy migration cannot start. Both are raised before anything is written."""

from __future__ import annotations


class LegacyMigrationError(Exception):
    """The migration cannot start (bad options, owner needed or unknown); the message says why."""


class LegacySourceError(LegacyMigrationError):
    """The legacy database cannot be opened or does not hold the legacy tables."""
