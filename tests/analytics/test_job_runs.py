"""One bad row never stops the analytics job for everyone: it is set aside with its reason, the rest is
computed, every run's outcome is recorded, and job_health() shows a failing or degraded job. Real
PostgreSQL; the bad rows are written with SQL, as a past API (or an operator) could have."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from analytics.job_runs import JobRun, Reject, assess, isolated, job_health, job_health_async
from analytics.jobs import JOB, run_once, run_periodically
from tests.analytics import dbdata as d

H = timedelta(hours=1)
M = timedelta(minutes=1)
YEAR_1 = datetime(1, 1, 1, tzinfo=UTC)


def _rejects(url: str) -> list[tuple[Any, ...]]:
    return d.rows(url, "SELECT source, row_key, reason, detail, times FROM analytics_rejects ORDER BY 1, 2")


def _runs(url: str) -> list[tuple[Any, ...]]:
    return d.rows(
        url,
        "SELECT started_at, finished_at, outcome, error, rows_set_aside FROM analytics_job_runs ORDER BY id",
    )


def _health(url: str, now: datetime) -> Any:
    with psycopg.connect(url) as conn:
        return job_health(conn, now)


def test_a_check_in_dated_year_1_is_set_aside_and_everything_else_is_computed(database_url: str) -> None:
    """The reported failure: a check-in dated year 1 made every run fail with `year 0 is out of range`."""
    d.setup_site(database_url, [("bike-1", "bike"), ("bike-2", "bike")])
    pid = d.participant(database_url)
    d.write(database_url, d.bike("bike-1", d.T0, 1200) + d.bike("bike-2", d.T0, 1200))
    d.check_in(database_url, "bike-2", pid, YEAR_1, YEAR_1 + H)  # a closed check-in in year 1
    d.check_in(database_url, "bike-1", pid, YEAR_1 + H, None)  # an open one: it overlaps every window
    assert _health(database_url, d.T0).status == "never_run"

    now = d.T0 + 2 * H
    report = run_once(database_url, now=now)
    # both rides became sessions; the open year-1 check-in named nobody
    got = d.sessions(database_url)
    assert [(s[0], s[1], s[3]) for s in got] == [(["bike-1"], d.T0, None), (["bike-2"], d.T0, None)]
    rejects = _rejects(database_url)
    by_source = {(r[0], r[3].get("device_id")) for r in rejects}
    # the dirty ranges the two check-ins queued, and the open check-in itself (loaded with bike-1's window)
    assert by_source == {
        ("analytics_dirty", "bike-1"),
        ("analytics_dirty", "bike-2"),
        ("device_assignments", "bike-1"),
    }
    assert all("2000-01-01" in r[2] for r in rejects)
    assert report.set_aside == 3
    [(started, finished, outcome, error, set_aside)] = _runs(database_url)
    assert (started, outcome, error, set_aside) == (now, "ok", None, 3)
    assert finished >= started
    health = _health(database_url, now)
    assert (health.status, health.rows_set_aside, health.rejects, health.last_ok_at) == (
        "degraded",
        3,
        3,
        finished,
    )

    # the next run: the dirty ranges are gone; the open check-in is still there, set aside again (counted)
    d.write(database_url, d.bike("bike-1", d.T0 + 3 * H, 600))
    again = run_once(database_url, now=now + 2 * H)
    assert (again.sessions_written, again.set_aside) == (1, 1)
    times = {(r[0], r[3].get("device_id")): r[4] for r in _rejects(database_url)}
    assert times[("device_assignments", "bike-1")] == 2
    # fixed: deleting the check-ins queues their ranges once more (the same rejects, seen again); then the
    # job is healthy again
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM device_assignments WHERE started_at < '2000-01-01'")
    assert run_once(database_url, now=now + 5 * H).set_aside == 2
    assert {r[4] for r in _rejects(database_url) if r[0] == "analytics_dirty"} == {2}
    run_once(database_url, now=now + 6 * H)
    assert _health(database_url, now + 6 * H).status == "ok"


def test_infinite_times_are_read_and_judged_not_fatal(database_url: str) -> None:
    """PostgreSQL's ``infinity`` cannot become a Python datetime: the job reads times as numbers. A range from
    ``-infinity`` is set aside; a check-in open until ``infinity`` is an open check-in (clipped to now)."""
    d.setup_site(database_url, [("bike-1", "bike")])
    pid = d.participant(database_url)
    d.write(database_url, d.bike("bike-1", d.T0, 900))
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO analytics_dirty (device_id, t_from, t_to, reason) "
            "VALUES ('bike-1', '-infinity', 'infinity', 'manual')"
        )
        conn.execute(
            "INSERT INTO device_assignments (device_id, participant_id, started_at, ended_at) "
            "VALUES ('bike-1', %s, %s, 'infinity')",
            (pid, d.T0 - M),
        )
    report = run_once(database_url, now=d.T0 + 2 * H)
    assert [(s[0], s[3]) for s in d.sessions(database_url)] == [(["bike-1"], pid)]
    [(source, _, reason, detail, _)] = _rejects(database_url)
    assert (source, reason, detail["t_from"]) == (
        "analytics_dirty",
        "range does not start at a finite time",
        "-inf s since 1970",
    )
    assert report.set_aside == 1


def test_a_site_without_a_usable_time_zone_is_set_aside_and_other_sites_go_on(database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike")])
    d.setup_site(database_url, [("bike-9", "bike")], site="gym-b")
    a = d.participant(database_url)
    b = d.participant(database_url, site="gym-b")
    d.check_in(database_url, "bike-1", a, d.T0 - M, d.T0 + H)
    d.check_in(database_url, "bike-9", b, d.T0 - M, d.T0 + H)
    d.write(database_url, d.bike("bike-1", d.T0, 900))
    d.write(database_url, d.bike("bike-9", d.T0, 900), site="gym-b")
    run_once(database_url, now=d.T0 + 2 * H)
    assert len(d.sessions(database_url)) == 2
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE sites SET timezone = 'Mars/Olympus_Mons' WHERE site_id = 'gym-b'")
    # new rides on both sites and a new UTC day: gym-b's window and its member's daily series cannot be
    # computed (no such time zone); gym-a's are
    d.write(database_url, d.bike("bike-1", d.T0 + 25 * H, 900))
    d.write(database_url, d.bike("bike-9", d.T0 + 25 * H, 900), site="gym-b")
    report = run_once(database_url, now=d.T0 + 27 * H)
    assert report.sessions_written == 1
    sessions = d.sessions(database_url)
    assert [(s[0], s[1]) for s in sessions] == [
        (["bike-1"], d.T0),
        (["bike-9"], d.T0),
        (["bike-1"], d.T0 + 25 * H),
    ]
    rejects = {(r[0], r[1]) for r in _rejects(database_url)}
    assert ("sites", "gym-b") in rejects
    assert ("participant_daily", b) in rejects
    assert ("analytics_dirty", "bike-9") not in {
        (r[0], r[3].get("device_id")) for r in _rejects(database_url)
    }
    days = d.rows(database_url, "SELECT participant_id::text, day FROM participant_daily ORDER BY 1, 2")
    assert (a, (d.T0 + 25 * H).date()) in days  # gym-a's member's series went on to the new day
    assert (b, (d.T0 + 25 * H).date()) not in days
    assert _health(database_url, d.T0 + 27 * H).status == "degraded"


def test_a_failed_run_is_recorded_and_health_says_failing(database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike")])
    d.write(database_url, d.bike("bike-1", d.T0, 900))
    run_once(database_url, now=d.T0 + H)
    with psycopg.connect(database_url) as conn:  # a schema the job cannot work with: not a data problem
        conn.execute("ALTER TABLE device_hourly RENAME TO device_hourly_gone")
    d.write(database_url, d.bike("bike-1", d.T0 + 2 * H, 900))
    for i in (1, 2):
        with pytest.raises(psycopg.errors.UndefinedTable):
            run_once(database_url, now=d.T0 + (3 + i) * H)
        health = _health(database_url, d.T0 + (3 + i) * H)
        assert (health.status, health.consecutive_failures) == ("failing", i)
        assert health.last_error is not None
        assert "UndefinedTable" in health.last_error
        assert health.last_ok_at is not None
        assert health.last_ok_at < d.T0 + 2 * H
    # nothing of the failed runs stayed: the new ride is still to do, and is done once the table is back
    assert len(d.sessions(database_url)) == 1
    with psycopg.connect(database_url) as conn:
        conn.execute("ALTER TABLE device_hourly_gone RENAME TO device_hourly")
    assert run_once(database_url, now=d.T0 + 6 * H).sessions_written == 1
    outcomes = [r[2] for r in _runs(database_url)]
    assert outcomes == ["ok", "failed", "failed", "ok"]
    assert _health(database_url, d.T0 + 6 * H).status == "ok"


def test_isolated_sets_aside_exactly_the_items_that_fail(database_url: str) -> None:
    """Work on 20 items in one savepoint fails because of items 7 and 13: every other item's write stays,
    the two are set aside with their reason."""
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TEMP TABLE done (item int)")
        calls: list[int] = []

        def work(items: Any) -> None:
            calls.append(len(items))
            conn.execute("INSERT INTO done SELECT unnest(%s::int[])", (list(items),))
            if 7 in items or 13 in items:
                raise ValueError(f"cannot process {sorted(set(items) & {7, 13})}")

        rejects = isolated(conn, list(range(20)), work, lambda i, exc: Reject("test", str(i), str(exc)))
        assert [(r.key, r.reason) for r in rejects] == [
            ("7", "cannot process [7]"),
            ("13", "cannot process [13]"),
        ]
        done = sorted(r[0] for r in conn.execute("SELECT item FROM done").fetchall())
        assert done == [i for i in range(20) if i not in (7, 13)]
        assert len(calls) < 20  # narrowed down by halving, not item by item

        def broken(items: Any) -> None:  # not a data error: the caller's problem
            raise TypeError("a bug")

        with pytest.raises(TypeError):
            isolated(conn, [1, 2], broken, lambda i, exc: Reject("test", str(i), str(exc)))


def _run(outcome: str, at: datetime, set_aside: int = 0) -> JobRun:
    return JobRun(
        at, at + timedelta(seconds=2), outcome, None if outcome == "ok" else "ValueError: x", set_aside
    )


def test_assess_states() -> None:
    now = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # the night the clocks change in Europe
    assert assess("j", [], 0, now).status == "never_run"
    ok = [_run("ok", now - M)]
    assert assess("j", ok, 0, now).status == "ok"
    assert assess("j", [_run("ok", now - M, set_aside=2)], 5, now).status == "degraded"
    failing = [
        _run("failed", now - M),
        _run("failed", now - 2 * M),
        _run("ok", now - 3 * M),
        _run("failed", now - H),
    ]
    h = assess("j", failing, 0, now)
    assert (h.status, h.consecutive_failures, h.last_ok_at) == (
        "failing",
        2,
        now - 3 * M + timedelta(seconds=2),
    )
    assert assess("j", ok, 0, now, stale_after=timedelta(seconds=30)).status == "stale"
    assert assess("j", ok, 0, now, stale_after=timedelta(minutes=5)).status == "ok"


@pytest.mark.asyncio
async def test_the_periodic_trigger_runs_as_of_its_clock_and_health_reads_it_async(database_url: str) -> None:
    await asyncio.to_thread(d.setup_site, database_url, [("bike-1", "bike")])
    await asyncio.to_thread(d.write, database_url, d.bike("bike-1", d.T0, 900))
    pinned = d.T0 + 3 * H
    task = asyncio.create_task(run_periodically(database_url, 0.01, clock=lambda: pinned))
    try:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            for _ in range(500):  # until the first run is recorded (at most ~10 s)
                health = await job_health_async(conn, pinned)
                if health.status != "never_run":
                    break
                await asyncio.sleep(0.02)
            assert health.status == "ok"
            assert health.last_run_at == pinned  # the run's clock is the trigger's, not the wall clock
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [s[1] for s in d.sessions(database_url)] == [d.T0]
    assert JOB == "default"
