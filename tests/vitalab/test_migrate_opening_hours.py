"""Migration 0012: the rows of ``site_opening_hours`` move into ``sites.opening_hours`` (where a site has
none), the table goes, and what could not move is named in the log. Applied to a database migrated up to
0011 with rows written the ways the old table allowed."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import psycopg
import pytest

from analytics.opening_hours import SiteHours
from vitalab.db import discover, migrate, migrator


def test_0012_moves_the_rows_into_the_sites_own_hours_and_drops_the_table(
    empty_database: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    everything = discover()
    monkeypatch.setattr(migrator, "discover", lambda: [m for m in everything if m.version < 12])
    migrate(empty_database, timescale="off")
    with psycopg.connect(empty_database) as conn:
        conn.execute(
            "INSERT INTO sites (site_id, timezone, opening_hours) VALUES "
            "('gym-a', 'Europe/Oslo', NULL), ('gym-b', 'UTC', '{\"sun\": [[\"10:00\", \"16:00\"]]}'), "
            "('gym-c', 'UTC', NULL), ('gym-d', 'UTC', '{}'), ('gym-e', 'UTC', NULL)"
        )
        conn.execute(
            "INSERT INTO site_opening_hours (site_id, iso_dow, opens, closes) VALUES "
            # overlapping and touching periods of a Monday, a night across midnight, times with seconds
            "('gym-a', 1, '06:00', '12:00'), ('gym-a', 1, '11:00', '14:00'), ('gym-a', 1, '14:00', '15:00'), "
            "('gym-a', 1, '18:00', '22:00'), ('gym-a', 6, '20:00', '24:00'), ('gym-a', 7, '00:00', '02:30'), "
            "('gym-a', 2, '06:00:30', '21:59:30'), "
            # sites that have hours of their own keep them
            "('gym-b', 1, '06:00', '22:00'), ('gym-d', 3, '08:00', '09:00'), "
            # a period of less than a minute
            "('gym-e', 5, '10:00:10', '10:00:50')"
        )
    monkeypatch.setattr(migrator, "discover", lambda: everything)
    with caplog.at_level(logging.WARNING, logger="vitalab.db.migrator"):
        report = migrate(empty_database, timescale="off")
    assert "0012_opening_hours" in report.applied

    with psycopg.connect(empty_database) as conn:
        hours: dict[str, object] = dict(conn.execute("SELECT site_id, opening_hours FROM sites").fetchall())
        left = conn.execute("SELECT to_regclass('site_opening_hours')").fetchone()
    assert hours == {
        "gym-a": {
            "mon": [["06:00", "15:00"], ["18:00", "22:00"]],
            "tue": [["06:00", "22:00"]],
            "sat": [["20:00", "24:00"]],
            "sun": [["00:00", "02:30"]],
        },
        "gym-b": {"sun": [["10:00", "16:00"]]},
        "gym-c": None,
        "gym-d": {},
        "gym-e": {"fri": [["10:00", "10:01"]]},
    }
    assert left == (None,)
    dropped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(dropped) == 2
    assert "gym-b" in dropped[0]
    assert "mon" in dropped[0]
    assert "gym-d" in dropped[1]

    # what moved is read as the rules say: Saturday night 23:00 in Oslo (22:00 UTC) is open since 20:00
    moved = SiteHours.stored("gym-a", "Europe/Oslo", hours["gym-a"])
    assert moved.hours is not None
    assert moved.open_since(datetime(2026, 11, 28, 23, 30, tzinfo=UTC)) == datetime(
        2026, 11, 28, 19, 0, tzinfo=UTC
    )
