"""The shared column lists (vitalab.db.columns) are the migrated tables' columns, as sets (writers and
readers name their columns), but for the row's ``computed_at``, which the database sets."""

from __future__ import annotations

import psycopg
import pytest

from vitalab.db.columns import DAILY_COLUMNS, QUALITY_COLUMNS


@pytest.mark.parametrize(
    ("table", "listed"),
    [("participant_daily", DAILY_COLUMNS), ("device_quality_daily", QUALITY_COLUMNS)],
)
def test_column_lists_match_the_schema(database_url: str, table: str, listed: tuple[str, ...]) -> None:
    with psycopg.connect(database_url) as conn:
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                (table,),
            )
        ]
    assert columns, f"no table {table}"
    assert len(set(listed)) == len(listed)
    assert set(columns) - {"computed_at"} == set(listed)  # computed_at: set by the database
