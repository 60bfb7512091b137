"""The TimescaleDB path, against a real TimescaleDB (VITALAB_TEST_TIMESCALE_URL); skipped without one.

Checked here: hypertables, continuous aggregates that answer exactly like the plain-PostgreSQL views on
the same data, compression and retention policies from settings, and idempotent writes into chunks that
are already compressed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from ingest.batch import Batch
from ingest.writer import prepare as prepare_writer
from ingest.writer import write_batch
from tests.conftest import new_database
from vitalab.db import prepare
from vitalab.settings import load_settings

pytestmark = pytest.mark.timescale

T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)


@pytest.fixture
def ts_database(timescale_server: str) -> Iterator[str]:
    with new_database(timescale_server) as url:
        yield url


def jobs(url: str) -> dict[tuple[str, str], dict[str, Any]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT proc_name, hypertable_name, config FROM timescaledb_information.jobs WHERE job_id >= 1000"
        ).fetchall()
    return {(p, h): c for p, h, c in rows}


def test_migrate_builds_hypertables_aggregates_and_policies(ts_database: str) -> None:
    report = prepare(ts_database, load_settings(timescale="require"))
    assert report.timescale
    assert report.applied == [
        "0001_schema_v1",
        "0001_schema_v1.timescale",
        "0002_aggregates",
        "0002_aggregates.timescale",
    ]
    with psycopg.connect(ts_database) as conn:
        hyper = {
            r[0] for r in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")
        }
        caggs = {
            r[0] for r in conn.execute("SELECT view_name FROM timescaledb_information.continuous_aggregates")
        }
    assert {"samples", "rr_intervals", "device_events", "dead_letters"} <= hyper
    assert caggs == {"samples_1m", "site_samples_1h"}
    j = jobs(ts_database)
    assert j[("policy_compression", "samples")]["compress_after"] == "7 days"
    assert j[("policy_compression", "rr_intervals")]["compress_after"] == "7 days"
    assert j[("policy_retention", "dead_letters")]["drop_after"] == "90 days"
    assert ("policy_retention", "samples") not in j  # raw data is kept unless retention is configured
    assert sum(1 for p, _ in j if p == "policy_refresh_continuous_aggregate") == 2

    again = prepare(
        ts_database, load_settings(timescale="require", retention_days=400, compress_after_days=2)
    )
    assert again.applied == []
    j = jobs(ts_database)
    assert j[("policy_compression", "samples")]["compress_after"] == "2 days"
    assert j[("policy_retention", "samples")]["drop_after"] == "400 days"
    assert sum(1 for p, h in j if (p, h) == ("policy_compression", "samples")) == 1


def _load(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO sites (site_id) VALUES ('gym-a'), ('gym-b')")
        with conn.cursor() as cur:
            rows = []
            for d in range(4):
                for s in range(0, 2 * 3600, 7):  # two hours, every 7 s, across minute and hour edges
                    hr = None if (s // 7) % 11 == 0 else 90 + (s % 60) + d
                    rows.append(
                        (f"dev-{d}", T0 + timedelta(seconds=s), "gym-a" if d < 3 else "gym-b", hr, 100.0 + d)
                    )
            cur.executemany(
                "INSERT INTO samples (device_id, t, site_id, hr_bpm, power_w) VALUES (%s, %s, %s, %s, %s)",
                rows,
            )


def _rollups(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        minute = conn.execute(
            "SELECT device_id, site_id, bucket, n_samples, n_hr, hr_sum_bpm, hr_min_bpm, hr_max_bpm, "
            "power_avg_w FROM samples_1m ORDER BY device_id, bucket"
        ).fetchall()
        hour = conn.execute(
            "SELECT site_id, bucket, device_minutes, n_samples, hr_avg_bpm, hr_max_bpm "
            "FROM site_samples_1h ORDER BY site_id, bucket"
        ).fetchall()
    return minute, hour


def _same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        for x, y in zip(ra, rb, strict=True):
            if isinstance(x, float) and isinstance(y, float):
                assert math.isclose(x, y, rel_tol=1e-6)
            else:
                assert x == y


def test_continuous_aggregates_answer_like_the_plain_views(ts_database: str, database_url: str) -> None:
    prepare(ts_database, load_settings(timescale="require"))
    _load(ts_database)
    _load(database_url)
    plain = _rollups(database_url)
    assert len(plain[0]) == 4 * 120  # 2 h of minutes per device
    _same(_rollups(ts_database)[0], plain[0])  # real-time aggregation, before any refresh
    with psycopg.connect(ts_database, autocommit=True) as conn:
        conn.execute("CALL refresh_continuous_aggregate('samples_1m', NULL, NULL)")
        conn.execute("CALL refresh_continuous_aggregate('site_samples_1h', NULL, NULL)")
        # from here on only what the refresh materialized is read, no real-time part
        conn.execute("ALTER MATERIALIZED VIEW samples_1m SET (timescaledb.materialized_only = true)")
        conn.execute("ALTER MATERIALIZED VIEW site_samples_1h SET (timescaledb.materialized_only = true)")
    minute, hour = _rollups(ts_database)
    _same(minute, plain[0])
    _same(hour, plain[1])


def test_duplicates_into_compressed_chunks_are_still_ignored(ts_database: str) -> None:
    prepare(ts_database, load_settings(timescale="require"))
    old = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)
    received = datetime.now(UTC)
    with psycopg.connect(ts_database, autocommit=True) as conn:
        conn.execute("INSERT INTO sites (site_id) VALUES ('gym-a')")
        conn.execute(
            "INSERT INTO samples (device_id, t, site_id, hr_bpm) "
            "SELECT 'dev-1', %s + make_interval(secs => g), 'gym-a', 100 FROM generate_series(0, 99) g",
            (old,),
        )
        compressed = conn.execute(
            "SELECT count(compress_chunk(c)) FROM show_chunks('samples', older_than => INTERVAL '8 days') c"
        ).fetchone()
    assert compressed == (1,)

    def row(s: int, hr: float) -> tuple[Any, ...]:
        return (
            "dev-1",
            old + timedelta(seconds=s),
            "gym-a",
            1,
            received,
            *([None] * 8),
            hr,
            None,
            None,
            None,
        )

    import asyncio

    async def write() -> tuple[int, int]:
        async with await psycopg.AsyncConnection.connect(ts_database) as conn:
            await prepare_writer(conn)
            batch = Batch()
            batch.samples.extend([row(s, 150.0) for s in range(95, 105)])  # 5 duplicates, 5 new
            batch.messages = 1
            result = await write_batch(conn, batch)
            return result.samples_inserted, result.samples_duplicate

    assert asyncio.run(write()) == (5, 5)
    with psycopg.connect(ts_database) as conn:
        assert conn.execute(
            "SELECT count(*), max(hr_bpm) FILTER (WHERE t < %s) FROM samples", (old + timedelta(seconds=100),)
        ).fetchone() == (105, 100.0)
