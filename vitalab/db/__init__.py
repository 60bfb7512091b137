"""The database schema (versioned SQL migrations) and the code that applies it."""

from __future__ import annotations

from vitalab.db.migrator import Migration, MigrationReport, TimescaleMode, discover, migrate
from vitalab.db.timescale import Policies, apply_policies
from vitalab.settings import Settings


def prepare(conninfo: str, settings: Settings) -> MigrationReport:
    """Migrate to the newest schema, then (on TimescaleDB) apply the configured policies."""
    report = migrate(conninfo, timescale=settings.timescale)
    if report.timescale:
        apply_policies(
            conninfo,
            Policies(
                compress_after_days=settings.compress_after_days,
                retention_days=settings.retention_days,
                dead_letter_retention_days=settings.dead_letter_retention_days,
            ),
        )
    return report


__all__ = [
    "Migration",
    "MigrationReport",
    "Policies",
    "TimescaleMode",
    "apply_policies",
    "discover",
    "migrate",
    "prepare",
]
