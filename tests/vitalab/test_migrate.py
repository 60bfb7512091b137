from __future__ import annotations

import dataclasses

import psycopg
import pytest

from vitalab.db import discover, migrate, migrator
from vitalab.errors import MigrationError

TABLES = {
    "sites",
    "gateways",
    "devices",
    "participants",
    "device_assignments",
    "studies",
    "study_enrolments",
    "sessions",
    "samples",
    "rr_intervals",
    "device_events",
    "dead_letters",
    "schema_migrations",
}


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_migrate_creates_schema_v1_and_is_idempotent(empty_database: str) -> None:
    first = migrate(empty_database, timescale="off")
    assert first.applied[:2] == ["0001_schema_v1", "0002_aggregates"]
    assert first.applied == [m.label for m in discover() if m.flavor == "base"]
    assert first.timescale is False
    assert tables(empty_database) >= TABLES
    again = migrate(empty_database, timescale="off")
    assert again.applied == []
    with psycopg.connect(empty_database) as conn:
        rows = conn.execute("SELECT version, flavor, name, checksum FROM schema_migrations").fetchall()
    base = [(m.version, "base", m.name, m.checksum) for m in discover() if m.flavor == "base"]
    assert sorted(rows) == base


def test_samples_identity_is_device_and_time(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO samples (device_id, t, site_id, hr_bpm) VALUES ('d', '2026-01-01Z', 's', 60)"
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO samples (device_id, t, site_id, hr_bpm) VALUES ('d', '2026-01-01Z', 's', 61)"
            )


def test_an_edited_applied_migration_is_an_error(
    empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(empty_database, timescale="off")
    edited = [dataclasses.replace(m, sql=m.sql + "\n-- edited") for m in discover()]
    monkeypatch.setattr(migrator, "discover", lambda: edited)
    with pytest.raises(MigrationError, match="changed"):
        migrate(empty_database, timescale="off")


def test_require_timescale_fails_clearly_without_it(empty_database: str) -> None:
    with psycopg.connect(empty_database) as conn:
        preload = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    if preload and "timescaledb" in preload[0]:
        pytest.skip("this server preloads TimescaleDB")
    with pytest.raises(MigrationError, match="timescaledb"):
        migrate(empty_database, timescale="require")
