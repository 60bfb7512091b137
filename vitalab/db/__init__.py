"""The database schema (versioned SQL migrations) and the code that applies it."""

from vitalab.db.migrator import Migration, MigrationReport, TimescaleMode, discover, migrate

__all__ = ["Migration", "MigrationReport", "TimescaleMode", "discover", "migrate"]
