"""The TimescaleDB path, against a real TimescaleDB (VITALAB_TEST_TIMESCALE_URL); skipped without one.

Checked here: hypertables, continuous aggregates that answer exactly like the plain-PostgreSQL views on
the same data, compression and retention policies from settings, and idempotent writes into chunks that
are already compressed. Behaviour that plain PostgreSQL shares (the rollups' answers, duplicates ignored
with the first write kept) is also tested here without the ``timescale`` mark, on the ``database_url``
schema (plain PostgreSQL unless VITALAB_TEST_SCHEMA_TIMESCALE=require), against an independent count.
The scheduler's own runs of the policies: test_timescale_scheduler.py.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ingest.batch import SAMPLE_COLUMNS, Batch
from ingest.writer import prepare as prepare_writer
from ingest.writer import write_batch
from tests.conftest import new_database
from vitalab.db import discover, prepare
from vitalab.settings import load_settings

T0 = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
"""Two hours of samples from here: across midnight UTC (and the night Europe moves its clocks)."""


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


@pytest.mark.timescale
def test_migrate_builds_hypertables_aggregates_and_policies(ts_database: str) -> None:
    report = prepare(ts_database, load_settings(timescale="require"))
    assert report.timescale
    # every file, base and TimescaleDB flavour, in version order; each base file before its extras
    assert report.applied == [m.label for m in discover()]
    assert report.applied.index("0001_schema_v1") < report.applied.index("0001_schema_v1.timescale")
    assert report.applied.index("0002_aggregates") < report.applied.index("0002_aggregates.timescale")
    with psycopg.connect(ts_database) as conn:
        chunk_interval: dict[str, timedelta] = dict(
            conn.execute(
                "SELECT hypertable_name, time_interval FROM timescaledb_information.dimensions "
                "WHERE hypertable_schema = 'public'"
            ).fetchall()
        )
        caggs: dict[str, bool] = dict(
            conn.execute(
                "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates"
            ).fetchall()
        )
        columnstore = {
            (t, a): (seg, order)
            for t, a, seg, order in conn.execute(
                "SELECT hypertable_name, attname, segmentby_column_index, orderby_column_index "
                "FROM timescaledb_information.compression_settings"
            )
        }
    assert chunk_interval == {
        "samples": timedelta(days=1),
        "rr_intervals": timedelta(days=1),
        "device_events": timedelta(days=7),
        "dead_letters": timedelta(days=7),
    }
    assert caggs == {"samples_1m": False, "site_samples_1h": False}  # real-time aggregation on
    assert columnstore == {
        ("samples", "device_id"): (1, None),
        ("samples", "t"): (None, 1),
        ("rr_intervals", "device_id"): (1, None),
        ("rr_intervals", "t"): (None, 1),
        ("rr_intervals", "idx"): (None, 2),
    }
    j = jobs(ts_database)
    assert j[("policy_compression", "samples")]["compress_after"] == "7 days"
    assert j[("policy_compression", "rr_intervals")]["compress_after"] == "7 days"
    assert j[("policy_retention", "dead_letters")]["drop_after"] == "90 days"
    assert ("policy_retention", "samples") not in j  # raw data is kept unless retention is configured
    refresh = j[("policy_refresh_continuous_aggregate", "samples_1m")]
    assert (refresh["start_offset"], refresh["end_offset"]) == ("2 days", "00:01:00")
    refresh = j[("policy_refresh_continuous_aggregate", "site_samples_1h")]
    assert (refresh["start_offset"], refresh["end_offset"]) == ("7 days", "01:00:00")
    assert sum(1 for p, _ in j if p == "policy_refresh_continuous_aggregate") == 2

    again = prepare(
        ts_database, load_settings(timescale="require", retention_days=400, compress_after_days=2)
    )
    assert again.applied == []
    j = jobs(ts_database)
    assert j[("policy_compression", "samples")]["compress_after"] == "2 days"
    assert j[("policy_retention", "samples")]["drop_after"] == "400 days"
    assert sum(1 for p, h in j if (p, h) == ("policy_compression", "samples")) == 1


@pytest.mark.timescale
def test_policies_compress_and_drop_what_the_settings_say(ts_database: str) -> None:
    prepare(ts_database, load_settings(timescale="require", retention_days=10, compress_after_days=2))
    with psycopg.connect(ts_database, autocommit=True) as conn:
        # ages relative to the server's clock: the one the policies read
        row = conn.execute("SELECT date_trunc('second', now())").fetchone()
        assert row is not None
        now: datetime = row[0]
        # retention starts half an hour after compression (started together on one table they deadlocked)
        starts: dict[str, datetime | None] = dict(
            conn.execute(
                "SELECT proc_name, min(next_start) FROM timescaledb_information.jobs "
                "WHERE hypertable_name = 'samples' GROUP BY proc_name"
            ).fetchall()
        )
        retention, compression = starts["policy_retention"], starts["policy_compression"]
        assert retention is not None
        assert retention - now >= timedelta(minutes=25)
        # (compression: at once, then every 12 h on 1-day chunks; the scheduler shows no start until it ran)
        assert compression is None or compression - now < timedelta(minutes=5)
        # the background scheduler would run the same jobs at its own time: pause it, run them here
        conn.execute("SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs")
        conn.execute("INSERT INTO sites (site_id) VALUES ('gym-a')")
        for age in (timedelta(days=20), timedelta(days=5), timedelta(hours=1)):
            conn.execute(
                "INSERT INTO samples (device_id, t, site_id, hr_bpm) "
                "SELECT 'dev-1', %s + make_interval(secs => g), 'gym-a', 100 FROM generate_series(0, 59) g",
                (now - age,),
            )
        run = conn.execute(
            "SELECT job_id, proc_name FROM timescaledb_information.jobs "
            "WHERE hypertable_name IN ('samples', 'samples_1m', 'site_samples_1h') ORDER BY job_id"
        ).fetchall()
        assert sorted(p for _, p in run) == [
            "policy_compression",
            "policy_refresh_continuous_aggregate",
            "policy_refresh_continuous_aggregate",
            "policy_retention",
        ]
        for job_id, _ in run:
            conn.execute("CALL run_job(%s)", (job_id,))
        chunks = conn.execute(
            "SELECT range_end, is_compressed FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'samples' ORDER BY range_start"
        ).fetchall()
        ages = conn.execute(
            "SELECT min(t), count(*) FROM samples WHERE t < %s", (now - timedelta(days=2),)
        ).fetchone()
        mat = conn.execute(
            "SELECT materialization_hypertable_schema, materialization_hypertable_name "
            "FROM timescaledb_information.continuous_aggregates WHERE view_name = 'samples_1m'"
        ).fetchone()
        assert mat is not None
        # what the refresh policy materialized (the view itself would add the rest in real time)
        materialized = conn.execute(
            sql.SQL("SELECT min(bucket), count(*) FROM {}").format(sql.Identifier(*mat))
        ).fetchone()
    # 20 days old: dropped (retention 10 days); 5 days: columnstore (after 2 days); 1 hour: rowstore
    assert [compressed for _, compressed in chunks] == [True, False]
    assert chunks[0][0] <= now - timedelta(days=2)
    assert ages is not None
    assert ages[1] == 60
    assert ages[0] >= now - timedelta(days=10)
    # the minute refresh covers the last 2 days only: the recent minute(s), not the 5-day-old ones
    assert materialized is not None
    assert materialized[1] in (1, 2)
    assert materialized[0] >= now - timedelta(hours=1, minutes=1)


Row = tuple[str, datetime, str, float | None, float]
"""(device, t, site, hr_bpm, power_w)"""


def _samples() -> list[Row]:
    rows: list[Row] = []
    for d in range(4):
        for s in range(0, 2 * 3600, 7):  # two hours, every 7 s, across minute and hour edges
            hr: float | None = None if (s // 7) % 11 == 0 else 90.0 + (s % 60) + d
            if d == 3 and s >= 3600:
                hr = None  # gym-b's only device wears no strap in the second hour: no HR at all there
            rows.append((f"dev-{d}", T0 + timedelta(seconds=s), "gym-a" if d < 3 else "gym-b", hr, 100.0 + d))
    return rows


def _load(url: str) -> list[Row]:
    rows = _samples()
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO sites (site_id) VALUES ('gym-a'), ('gym-b')")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO samples (device_id, t, site_id, hr_bpm, power_w) VALUES (%s, %s, %s, %s, %s)",
                rows,
            )
    return rows


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


def _counted(rows: list[Row]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rollups counted in Python from the samples themselves (the hour straight from the samples,
    not from the minutes)."""
    minutes: dict[tuple[str, str, datetime], list[Row]] = defaultdict(list)
    hours: dict[tuple[str, datetime], list[Row]] = defaultdict(list)
    for r in rows:
        device, t, site = r[0], r[1], r[2]
        minutes[device, site, t.replace(second=0, microsecond=0)].append(r)
        hours[site, t.replace(minute=0, second=0, microsecond=0)].append(r)
    minute = []
    for (device, site, bucket), rs in sorted(minutes.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        hr = [r[3] for r in rs if r[3] is not None]
        power = [r[4] for r in rs]
        minute.append(
            (
                device,
                site,
                bucket,
                len(rs),
                len(hr),
                sum(hr) if hr else None,
                min(hr) if hr else None,
                max(hr) if hr else None,
                sum(power) / len(power),
            )
        )
    hour = []
    for (site, bucket), rs in sorted(hours.items()):
        hr = [r[3] for r in rs if r[3] is not None]
        device_minutes = len({(r[0], r[1].replace(second=0, microsecond=0)) for r in rs})
        hour.append(
            (
                site,
                bucket,
                device_minutes,
                len(rs),
                sum(hr) / len(hr) if hr else None,
                max(hr) if hr else None,
            )
        )
    return minute, hour


def _same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert len(ra) == len(rb)
        for x, y in zip(ra, rb, strict=True):
            if isinstance(x, float) and isinstance(y, float):
                assert math.isclose(x, y, rel_tol=1e-6), (ra, rb)
            else:
                assert x == y, (ra, rb)


def test_rollups_count_what_the_samples_hold(database_url: str) -> None:
    """samples_1m and site_samples_1h on the schema under test (plain views by default) against a count in
    Python; the TimescaleDB continuous aggregates are held to the same count below."""
    rows = _load(database_url)
    minute, hour = _counted(rows)
    assert len(minute) == 4 * 120  # 2 h of minutes per device
    assert [(h[0], h[1].hour) for h in hour] == [("gym-a", 23), ("gym-a", 0), ("gym-b", 23), ("gym-b", 0)]
    gym_b = [h for h in hour if h[0] == "gym-b"]
    assert gym_b[0][4] is not None
    assert gym_b[1][4:] == (None, None)  # no HR in gym-b's second hour
    got_minute, got_hour = _rollups(database_url)
    _same(got_minute, minute)
    _same(got_hour, hour)


@pytest.mark.timescale
def test_continuous_aggregates_answer_like_the_plain_views(ts_database: str, database_url: str) -> None:
    prepare(ts_database, load_settings(timescale="require"))
    rows = _load(ts_database)
    _load(database_url)
    counted = _counted(rows)
    plain = _rollups(database_url)
    _same(plain[0], counted[0])
    _same(plain[1], counted[1])
    # real-time aggregation, before any refresh
    realtime = _rollups(ts_database)
    _same(realtime[0], counted[0])
    _same(realtime[1], counted[1])
    with psycopg.connect(ts_database, autocommit=True) as conn:
        conn.execute("CALL refresh_continuous_aggregate('samples_1m', NULL, NULL)")
        conn.execute("CALL refresh_continuous_aggregate('site_samples_1h', NULL, NULL)")
        # from here on only what the refresh materialized is read, no real-time part
        conn.execute("ALTER MATERIALIZED VIEW samples_1m SET (timescaledb.materialized_only = true)")
        conn.execute("ALTER MATERIALIZED VIEW site_samples_1h SET (timescaledb.materialized_only = true)")
    minute, hour = _rollups(ts_database)
    _same(minute, counted[0])
    _same(hour, counted[1])


OLD = datetime(2026, 1, 10, 6, 0, tzinfo=UTC)
"""Samples written long ago (on TimescaleDB, in a compressed chunk) and written again."""


def _store_old_samples(url: str, *, compress: bool) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO sites (site_id) VALUES ('gym-a')")
        conn.execute(
            "INSERT INTO samples (device_id, t, site_id, hr_bpm) "
            "SELECT 'dev-1', %s + make_interval(secs => g), 'gym-a', 100 FROM generate_series(0, 99) g",
            (OLD,),
        )
        if compress:
            compressed = conn.execute(
                "SELECT count(compress_chunk(c)) FROM show_chunks('samples') c"
            ).fetchone()
            assert compressed == (1,)
            chunks = conn.execute(
                "SELECT is_compressed FROM timescaledb_information.chunks WHERE hypertable_name = 'samples'"
            ).fetchall()
            assert chunks == [(True,)]


def _write_again(url: str) -> tuple[int, int]:
    """Seconds 95..104 again with another heart rate: 5 duplicates, 5 new; (inserted, duplicates)."""

    def row(s: int) -> tuple[Any, ...]:
        values = {
            "device_id": "dev-1",
            "t": OLD + timedelta(seconds=s),
            "site_id": "gym-a",
            "seq": 1,
            "received_at": OLD + timedelta(days=1),
            "hr_bpm": 150.0,
        }
        return tuple(values.get(c) for c in SAMPLE_COLUMNS)

    async def write() -> tuple[int, int]:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await prepare_writer(conn)
            batch = Batch()
            batch.samples.extend(row(s) for s in range(95, 105))
            batch.messages = 1
            result = await write_batch(conn, batch)
            return result.samples_inserted, result.samples_duplicate

    return asyncio.run(write())


def _stored(url: str) -> tuple[Any, ...] | None:
    """(rows, the heart rate of the first 100 seconds, that of the 5 new ones)"""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT count(*), max(hr_bpm) FILTER (WHERE t < %(end)s), "
            "min(hr_bpm) FILTER (WHERE t >= %(end)s) FROM samples",
            {"end": OLD + timedelta(seconds=100)},
        ).fetchone()


def test_duplicates_of_stored_samples_are_ignored(database_url: str) -> None:
    """The writer's idempotence on the schema under test: the first write wins, duplicates are counted."""
    _store_old_samples(database_url, compress=False)
    assert _write_again(database_url) == (5, 5)
    assert _stored(database_url) == (105, 100.0, 150.0)


@pytest.mark.timescale
def test_duplicates_into_compressed_chunks_are_still_ignored(ts_database: str) -> None:
    prepare(ts_database, load_settings(timescale="require"))
    _store_old_samples(ts_database, compress=True)
    assert _write_again(ts_database) == (5, 5)
    assert _stored(ts_database) == (105, 100.0, 150.0)
