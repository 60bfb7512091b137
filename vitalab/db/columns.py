"""Column lists of the tables that more than one package reads or writes: one place each.

The analytics job writes these tables; the API and the exports read them. Both take the column names from
here, so a column added by a migration is added here once (``tests/vitalab/test_db_columns.py`` checks the
lists against the migrated schema).
"""

from __future__ import annotations

from typing import Final

DAILY_VALUES: Final[tuple[str, ...]] = (
    "sessions",
    "load",
    "load_7d",
    "ctl",
    "atl",
    "tsb",
    "acwr_ewma",
    "acwr_rolling",
    "moderate_min",
    "vigorous_min",
    "who_min_7d",
    "who_status",
    "pai_as",
    "pai_7d",
    "rhr_bpm",
    "rhr_7d_bpm",
    "rhr_28d_bpm",
    "rmssd_ms",
    "ln_rmssd_7d",
    "vo2max_ml_kg_min",
)
"""A participant-day's values in ``participant_daily`` (after its key, before ``algorithm_version``)."""

DAILY_COLUMNS: Final[tuple[str, ...]] = ("participant_id", "day", *DAILY_VALUES, "algorithm_version")
"""Every column of ``participant_daily``."""

QUALITY_KEY: Final[tuple[str, ...]] = ("device_id", "day", "site_id")
QUALITY_VALUES: Final[tuple[str, ...]] = (
    "samples",
    "samples_received",
    "duplicates",
    "late_samples",
    "backfill_samples",
    "lag_p05_s",
    "lag_p50_s",
    "lag_p95_s",
    "clock_skew_s",
    "period_s",
    "on_s",
    "expected_samples",
    "received_ratio",
    "dropouts",
    "gaps",
    "gap_s",
    "hr_valid_share",
)
"""A device-day's data-quality figures in ``device_quality_daily``."""

QUALITY_COLUMNS: Final[tuple[str, ...]] = (*QUALITY_KEY, *QUALITY_VALUES)
"""Every column of ``device_quality_daily``."""
