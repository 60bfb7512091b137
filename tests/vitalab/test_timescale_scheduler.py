"""TimescaleDB's background scheduler runs every policy vitalab sets up, and every run succeeds.

Against a real TimescaleDB (VITALAB_TEST_TIMESCALE_URL; skipped without one). Nothing here calls
``run_job``: the policies are made due (``alter_job(..., next_start => now())``), one kind at a time, and
the test waits, with a deadline, for the scheduler's own runs, then reads
``timescaledb_information.job_stats`` and what the runs did to the data. On PostgreSQL 15.20 every
scheduled run failed with ``cannot drop portal "" while it is being set up`` while ``CALL run_job``
worked (issue 10): the failure this test exists to catch.

The ages below are relative to the database server's ``now()``, the clock the policies themselves read
(compression and retention cannot be told another one); no result depends on the date or time of day.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import class_row

from tests.conftest import new_database
from vitalab.db import prepare
from vitalab.settings import load_settings

pytestmark = pytest.mark.timescale

DEADLINE_S = 180.0
"""Upper bound per wait. The scheduler re-reads its job list at least every 5 s and starts due jobs then;
on a quiet server the runs below finish within ~10 s."""

HISTORY_RETENTION = "policy_job_stat_history_retention"
"""TimescaleDB's own job (it trims the job history); it failed on PostgreSQL 15.20 as well."""


@dataclass(frozen=True, slots=True)
class Job:
    job_id: int
    proc_name: str
    hypertable_name: str | None


@dataclass(frozen=True, slots=True)
class JobStat:
    job_id: int
    last_run_started_at: datetime | None
    last_run_duration: timedelta | None
    last_run_status: str | None
    job_status: str
    total_runs: int
    total_successes: int
    total_failures: int

    def ran_since(self, t: datetime) -> bool:
        """A run that the scheduler started at or after ``t`` has finished."""
        return (
            self.last_run_started_at is not None
            and self.last_run_started_at >= t
            and self.last_run_duration is not None  # last finish after last start: not in flight
            and self.job_status != "Running"
        )

    def in_flight(self) -> bool:
        return self.job_status == "Running" or (
            self.last_run_started_at is not None and self.last_run_duration is None
        )


@pytest.fixture
def ts_database(timescale_server: str) -> Iterator[str]:
    with new_database(timescale_server) as url:
        yield url


def _jobs(conn: psycopg.Connection) -> list[Job]:
    with conn.cursor(row_factory=class_row(Job)) as cur:
        return cur.execute(
            "SELECT job_id, proc_name, hypertable_name FROM timescaledb_information.jobs "
            "WHERE job_id >= 1000 OR proc_name = %s ORDER BY job_id",
            (HISTORY_RETENTION,),
        ).fetchall()


def _stats(conn: psycopg.Connection, ids: list[int]) -> dict[int, JobStat]:
    with conn.cursor(row_factory=class_row(JobStat)) as cur:
        rows = cur.execute(
            "SELECT job_id, CASE WHEN isfinite(last_run_started_at) THEN last_run_started_at END "
            "AS last_run_started_at, last_run_duration, last_run_status, job_status, "
            "coalesce(total_runs, 0) AS total_runs, coalesce(total_successes, 0) AS total_successes, "
            "coalesce(total_failures, 0) AS total_failures "
            "FROM timescaledb_information.job_stats WHERE job_id = ANY(%s)",
            (ids,),
        ).fetchall()
    return {r.job_id: r for r in rows}


def _errors(conn: psycopg.Connection, ids: list[int]) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT job_id, proc_name, start_time, sqlerrcode, err_message "
        "FROM timescaledb_information.job_errors WHERE job_id = ANY(%s) ORDER BY start_time",
        (ids,),
    ).fetchall()


def _wait(
    conn: psycopg.Connection, ids: list[int], done: str, check: Callable[[JobStat], bool]
) -> dict[int, JobStat]:
    """Poll job_stats until ``check`` holds for every job in ``ids``; at the deadline, fail with the stats."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        stats = _stats(conn, ids)
        if len(stats) == len(ids) and all(check(s) for s in stats.values()):
            return stats
        if time.monotonic() > deadline:
            pending = [s for i, s in stats.items() if not check(s)]
            pytest.fail(
                f"after {DEADLINE_S:.0f} s, not every job {done}: {pending} "
                f"(job errors: {_errors(conn, ids)})"
            )
        time.sleep(0.25)


def _pause(conn: psycopg.Connection, ids: list[int]) -> None:
    for job_id in ids:
        conn.execute("SELECT alter_job(%s, scheduled => false)", (job_id,))
    _wait(conn, ids, "is idle after pausing", lambda s: not s.in_flight())


def _make_due(conn: psycopg.Connection, ids: list[int]) -> datetime:
    """Schedule ``ids`` to start now; returns that instant (server clock): their next run starts after it."""
    with conn.transaction():
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        due: datetime = row[0]
        for job_id in ids:
            conn.execute("SELECT alter_job(%s, scheduled => true, next_start => now())", (job_id,))
    return due


def _scheduled_runs(conn: psycopg.Connection, ids: list[int]) -> dict[int, JobStat]:
    """Make ``ids`` due, wait for the scheduler's run of each, pause them again; their stats after the run."""
    due = _make_due(conn, ids)
    stats = _wait(conn, ids, "has a finished scheduled run", lambda s: s.ran_since(due))
    _pause(conn, ids)
    return stats


def _count(conn: psycopg.Connection, query: str) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _materialized_samples(conn: psycopg.Connection, view: str) -> int:
    """Samples counted in what a refresh wrote (the view's materialization, without its real-time part)."""
    mat = conn.execute(
        "SELECT materialization_hypertable_schema, materialization_hypertable_name "
        "FROM timescaledb_information.continuous_aggregates WHERE view_name = %s",
        (view,),
    ).fetchone()
    assert mat is not None
    row = conn.execute(
        sql.SQL("SELECT coalesce(sum(n_samples), 0) FROM {}").format(sql.Identifier(*mat))
    ).fetchone()
    assert row is not None
    return int(row[0])


def _columnstore(conn: psycopg.Connection) -> tuple[int, int, int, int]:
    """Chunks of samples older than the 2-day compression age: (how many, compressed); newer: the same."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE old), count(*) FILTER (WHERE old AND is_compressed), "
        "count(*) FILTER (WHERE NOT old), count(*) FILTER (WHERE NOT old AND is_compressed) "
        "FROM (SELECT range_end < now() - INTERVAL '2 days' AS old, is_compressed "
        "      FROM timescaledb_information.chunks WHERE hypertable_name = 'samples') c"
    ).fetchone()
    assert row is not None
    old, old_compressed, new, new_compressed = (int(x) for x in row)
    return old, old_compressed, new, new_compressed


def test_the_scheduler_runs_every_policy_and_each_run_succeeds(ts_database: str) -> None:
    prepare(ts_database, load_settings(timescale="require", retention_days=10, compress_after_days=2))
    with psycopg.connect(ts_database, autocommit=True) as conn:
        jobs = _jobs(conn)
        assert sorted((j.proc_name, j.hypertable_name) for j in jobs) == [
            ("policy_compression", "rr_intervals"),
            ("policy_compression", "samples"),
            (HISTORY_RETENTION, None),
            ("policy_refresh_continuous_aggregate", "samples_1m"),
            ("policy_refresh_continuous_aggregate", "site_samples_1h"),
            ("policy_retention", "dead_letters"),
            ("policy_retention", "device_events"),
            ("policy_retention", "rr_intervals"),
            ("policy_retention", "samples"),
        ]
        ids = [j.job_id for j in jobs]
        # One kind of policy at a time. Started together, the compression and retention runs on samples
        # deadlocked in about one test in four (TimescaleDB 2.28.3, PostgreSQL 18.6; the loser is retried
        # by the scheduler later), and the hourly aggregate rolls up what the minute one has materialized.
        phases = [
            [j.job_id for j in jobs if j.proc_name in ("policy_retention", HISTORY_RETENTION)],
            [j.job_id for j in jobs if j.proc_name == "policy_compression"],
            [j.job_id for j in jobs if j.hypertable_name == "samples_1m"],
            [j.job_id for j in jobs if j.hypertable_name == "site_samples_1h"],
        ]
        assert sorted(i for phase in phases for i in phase) == sorted(ids)

        # The scheduler starts new policies on its own; pause them so that the data below is in place
        # before any run that the assertions are about.
        _pause(conn, ids)
        conn.execute("INSERT INTO sites (site_id) VALUES ('gym-a')")
        for age in ("20 days", "5 days", "3 hours"):
            conn.execute(
                "INSERT INTO samples (device_id, t, site_id, hr_bpm) SELECT 'dev-1', "
                "now() - %s::interval + make_interval(secs => g), 'gym-a', 100 FROM generate_series(0, 59) g",
                (age,),
            )
        for age in ("100 days", "1 day"):
            conn.execute(
                "INSERT INTO dead_letters (received_at, topic, reason, detail, payload, payload_size) "
                "VALUES (now() - %s::interval, 't', 'test', 'd', '\\x00', 1)",
                (age,),
            )
        assert _count(conn, "SELECT count(*) FROM samples WHERE t < now() - INTERVAL '10 days'") == 60
        assert (
            _count(conn, "SELECT count(*) FROM dead_letters WHERE received_at < now() - INTERVAL '90 days'")
            == 1
        )
        old, old_compressed, new, new_compressed = _columnstore(conn)
        assert old >= 2  # 20 and 5 days old (a minute of samples spans at most two 1-day chunks)
        assert new >= 1
        assert old_compressed == new_compressed == 0
        assert _materialized_samples(conn, "samples_1m") == 0

        stats: dict[int, JobStat] = {}
        for phase in phases:
            stats |= _scheduled_runs(conn, phase)

        for job in jobs:
            s = stats[job.job_id]
            assert (s.last_run_status, s.total_failures) == ("Success", 0), (job, s, _errors(conn, ids))
            assert s.total_successes > 0
            assert s.total_successes == s.total_runs, (job, s)
        assert _errors(conn, ids) == []

        # what the runs did: retention dropped the 20-day-old chunk and the 100-day-old dead letter,
        # compression moved the 5-day-old chunk to the columnstore and left the recent one alone
        assert _count(conn, "SELECT count(*) FROM samples WHERE t < now() - INTERVAL '10 days'") == 0
        assert _count(conn, "SELECT count(*) FROM samples") == 120
        assert _count(conn, "SELECT count(*) FROM dead_letters") == 1
        old, old_compressed, new, new_compressed = _columnstore(conn)
        assert old >= 1  # the 20-day-old chunks are gone, the 5-day-old ones remain
        assert old_compressed == old
        assert new >= 1
        assert new_compressed == 0
        # the minute refresh covers the last 2 days (the 3-hour-old samples, not the 5-day-old ones);
        # the hourly one rolled those minutes up
        assert _materialized_samples(conn, "samples_1m") == 60
        assert _materialized_samples(conn, "site_samples_1h") == 60
