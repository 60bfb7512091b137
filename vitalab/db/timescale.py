"""TimescaleDB policies whose ages are settings: columnstore compression and retention.

Applied after every migration run (idempotent: each policy is replaced, not added twice). On plain
PostgreSQL this does nothing; the same tables and queries work there without the extras.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

logger = logging.getLogger(__name__)

COMPRESSED = ("samples", "rr_intervals")
RETAINED = ("samples", "rr_intervals", "device_events")
RETENTION_START_AFTER_MIN = 30
"""Retention's first run, this long after compression's (they deadlocked when started together)."""


@dataclass(frozen=True, slots=True)
class Policies:
    compress_after_days: int | None = 7
    """Chunks older than this are converted to the columnstore; None: never."""
    retention_days: int | None = None
    """Raw samples, RR intervals and device events older than this are dropped; None: kept forever.
    The per-minute and per-hour aggregates are kept regardless."""
    dead_letter_retention_days: int | None = 90


def timescale_enabled(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is not None


def apply_policies(conninfo: str, policies: Policies) -> bool:
    """Replace the compression and retention policies; False when the database has no TimescaleDB."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if not timescale_enabled(conn):
            return False
        for table in COMPRESSED:
            conn.execute("SELECT remove_compression_policy(%s, if_exists => true)", (table,))
            if policies.compress_after_days is not None:
                conn.execute(
                    "SELECT add_compression_policy(%s, make_interval(days => %s))",
                    (table, policies.compress_after_days),
                )
        ages = {t: policies.retention_days for t in RETAINED} | {
            "dead_letters": policies.dead_letter_retention_days
        }
        for table, days in ages.items():
            conn.execute("SELECT remove_retention_policy(%s, if_exists => true)", (table,))
            if days is not None:
                # first run half an hour after the compression policies' (which start now and every 12 h
                # on 1-day chunks): started together on the same hypertable, the two were seen to deadlock
                conn.execute(
                    "SELECT add_retention_policy(%s, make_interval(days => %s), "
                    "initial_start => now() + make_interval(mins => %s))",
                    (table, days, RETENTION_START_AFTER_MIN),
                )
    logger.info("TimescaleDB policies applied: %s", policies)
    return True
