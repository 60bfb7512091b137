"""The incremental analytics job against a real PostgreSQL, data written through the ingester's writer."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import psycopg
import pytest
from typer.testing import CliRunner

from analytics.errors import AnalyticsJobError
from analytics.jobs import LOCK_KEY, RunReport, run_once
from tests.analytics import dbdata as d
from vitalab.cli import app
from vitalab.wire import DeviceState

H = timedelta(hours=1)
M = timedelta(minutes=1)


def test_incremental_runs_do_only_new_work_and_rerunning_changes_nothing(database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike"), ("bike-2", "bike"), ("strap-1", "hr_strap")])
    pid = d.participant(database_url)
    d.check_in(database_url, "bike-1", pid, d.T0 - M, d.T0 + 40 * M)
    d.check_in(database_url, "strap-1", pid, d.T0 - 5 * M, d.T0 + 40 * M)
    d.write(database_url, d.bike("bike-1", d.T0, 1800, hr=100.0) + d.strap("strap-1", d.T0 - 2 * M, 2000))

    first = run_once(database_url, now=d.T0 + 2 * H)
    assert first.full  # the first run looks at everything
    assert (first.sessions_written, first.sessions_open) == (1, 0)
    [(devices, start, end, participant, source, hr_source, computed_a)] = d.sessions(database_url)
    assert devices == ["bike-1", "strap-1"]  # the strap joined the machine of its participant
    assert (start, end) == (d.T0, d.T0 + 29 * M + timedelta(seconds=59))
    assert (participant, source, hr_source) == (pid, "check_in", "strap")
    [(hr_avg, trimp, load)] = d.rows(
        database_url,
        "SELECT s.hr_avg_bpm, s.trimp, p.load FROM sessions s "
        "JOIN participant_daily p USING (participant_id)",
    )
    assert hr_avg == 150.0  # the strap's heart rate, not the bike's 100
    assert trimp == pytest.approx(load)
    assert trimp > 0

    again = run_once(database_url, now=d.T0 + 2 * H)
    assert (again.full, again.windows, again.sessions_written, again.sessions_deleted) == (False, 0, 0, 0)
    assert d.sessions(database_url)[0][6] == computed_a  # untouched

    # new data on another machine: one window, one new session, the first one left alone
    d.write(database_url, d.bike("bike-2", d.T0 + 3 * H, 1500))
    third = run_once(database_url, now=d.T0 + 5 * H)
    assert (third.windows, third.sessions_written, third.sessions_deleted) == (1, 1, 0)
    got = d.sessions(database_url)
    assert [s[0] for s in got] == [["bike-1", "strap-1"], ["bike-2"]]
    assert got[0][6] == computed_a
    assert got[1][3] is None  # nobody checked in on bike-2
    assert got[1][4] == "activity_gap"
    hourly = d.rows(database_url, "SELECT device_id, hour, in_session_s FROM device_hourly ORDER BY 1, 2")
    assert ("bike-2", d.T0 + 3 * H, 1499.0) in hourly
    assert ("bike-1", d.T0, 1799.0) in hourly


def test_open_sessions_wait_and_late_data_reopens_sessions_and_days(database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike")])
    pid = d.participant(database_url)
    d.check_in(database_url, "bike-1", pid, d.T0 - M, d.T0 + 2 * H)
    d.write(database_url, d.bike("bike-1", d.T0, 1200))  # 08:00-08:20

    # 1 min after the last sample the session may still continue: not stored, revisited next run
    r1 = run_once(database_url, now=d.T0 + 21 * M)
    assert (r1.sessions_open, r1.sessions_written) == (1, 0)
    assert d.sessions(database_url) == []
    # more rides in: 08:30-08:50 (elapsed keeps counting: the same workout after a 10-minute pause)
    d.write(database_url, d.bike("bike-1", d.T0 + 30 * M, 1200, elapsed0=1800))
    r2 = run_once(database_url, now=d.T0 + 2 * H)
    assert (r2.sessions_open, r2.sessions_written) == (0, 2)  # the 10-minute pause splits
    assert [(s[1], s[2]) for s in d.sessions(database_url)] == [
        (d.T0, d.T0 + 20 * M - timedelta(seconds=1)),
        (d.T0 + 30 * M, d.T0 + 50 * M - timedelta(seconds=1)),
    ]
    load_before = d.rows(database_url, "SELECT load FROM participant_daily")[0][0]

    # the missing 10 minutes arrive a day late (a gateway's store-and-forward buffer)
    late = d.bike("bike-1", d.T0 + 20 * M, 600, elapsed0=1200)
    d.write(database_url, late, received_at=d.T0 + 25 * H)
    d.write(database_url, late[:2], received_at=d.T0 + 25 * H)  # and the gateway resends two messages
    r3 = run_once(database_url, now=d.T0 + 26 * H)
    assert (r3.sessions_written, r3.sessions_deleted) == (1, 1)  # one grows, the other is absorbed
    [(_, start, end, *_rest)] = d.sessions(database_url)
    assert (start, end) == (d.T0, d.T0 + 50 * M - timedelta(seconds=1))
    load_after = d.rows(database_url, "SELECT load FROM participant_daily WHERE day = %s", d.T0.date())[0][0]
    assert load_after > load_before  # the day was recomputed
    # the completed day has its quality row: the 600 samples the gateway kept arrived a day behind, all at
    # once: backfill (a catch-up stream), not late data, and not clock skew
    [(samples, late_n, backfill, skew, received, dup)] = d.rows(
        database_url,
        "SELECT samples, late_samples, backfill_samples, clock_skew_s, samples_received, duplicates "
        "FROM device_quality_daily",
    )
    assert (samples, late_n, backfill, received, dup) == (3000, 0, 600, 3020, 20)
    assert 0.0 < skew < 10.0


def test_machine_status_and_counter_resets_split_and_check_in_changes_reassign(database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike")])
    a, b = d.participant(database_url), d.participant(database_url, sex="female")
    # two members back to back, 2 minutes apart: the machine's counters restart
    d.write(database_url, d.bike("bike-1", d.T0, 1200) + d.bike("bike-1", d.T0 + 22 * M, 1200))
    # a post_workout status 10 minutes into the second ride ends it there; manual restarts it
    d.write(
        database_url,
        [
            DeviceState(
                v=1,
                device="bike-1",
                t=d.T0 + 32 * M + timedelta(seconds=0.5),
                online=True,
                training="post_workout",
            ),
            DeviceState(
                v=1, device="bike-1", t=d.T0 + 32 * M + timedelta(seconds=0.7), online=True, training="manual"
            ),
        ],
    )
    run_once(database_url, now=d.T0 + 3 * H)
    got = d.sessions(database_url)
    assert [(s[1], s[4]) for s in got] == [
        (d.T0, "machine_status"),
        (d.T0 + 22 * M, "machine_status"),
        (d.T0 + 32 * M + timedelta(seconds=1), "machine_status"),
    ]
    # check-ins recorded afterwards name the members; the job re-assembles on its own
    d.check_in(database_url, "bike-1", a, d.T0 - M, d.T0 + 21 * M)
    d.check_in(database_url, "bike-1", b, d.T0 + 21 * M, d.T0 + 45 * M)
    r = run_once(database_url, now=d.T0 + 4 * H)
    assert r.windows == 1
    got = d.sessions(database_url)
    assert [(s[3], s[4]) for s in got] == [(a, "check_in"), (b, "check_in"), (b, "check_in")]
    days = d.rows(
        database_url, "SELECT participant_id::text, sessions FROM participant_daily ORDER BY sessions"
    )
    assert sorted(days) == sorted([(a, 1), (b, 2)])


def test_concurrent_runs_do_not_double_and_a_busy_trigger_skips(database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike"), ("bike-2", "bike")])
    d.write(database_url, d.bike("bike-1", d.T0, 900) + d.bike("bike-2", d.T0 + 5 * M, 900))
    reports: list[RunReport] = []

    def go() -> None:
        reports.append(run_once(database_url, now=d.T0 + 2 * H))

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.sessions_written for r in reports) == [0, 0, 2]
    assert len(d.sessions(database_url)) == 2
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))  # a run in progress elsewhere
        busy = run_once(database_url, now=d.T0 + 2 * H, wait=False)
        assert busy.skipped
        holder.rollback()
    with psycopg.connect(database_url, autocommit=True) as auto, pytest.raises(AnalyticsJobError):
        run_once(auto, now=d.T0)


def test_full_run_picks_up_rows_written_without_the_ingester(database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike")])
    run_once(database_url, now=d.T0)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO samples (device_id, t, site_id, power_w) "
            "SELECT 'bike-1', %s + g * INTERVAL '1 second', %s, 120 FROM generate_series(0, 599) g",
            (d.T0, d.SITE),
        )
    assert run_once(database_url, now=d.T0 + H).sessions_written == 0  # not counted by any ingester
    # the command line: `vitalab analytics run --full` prints its report as JSON
    result = CliRunner().invoke(
        app, ["analytics", "run", "--full"], env={"VITALAB_DATABASE_URL": database_url}
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["full"], report["sessions_written"]) == (True, 1)
    assert CliRunner().invoke(app, ["analytics", "run"], env={"VITALAB_DATABASE_URL": ""}).exit_code == 2


def test_sessions_outlive_raw_samples_dropped_by_retention(database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike")])
    d.write(database_url, d.bike("bike-1", d.T0 + 50 * M, 300) + d.bike("bike-1", d.T0 + 90 * M, 300))
    assert run_once(database_url, now=d.T0 + 3 * H).sessions_written == 2
    with psycopg.connect(database_url) as conn:  # retention drops the older raw samples
        conn.execute("DELETE FROM samples WHERE t < %s", (d.T0 + 60 * M,))
    again = run_once(database_url, now=d.T0 + 3 * H, full=True)  # its window reaches back over the first
    assert (again.sessions_written, again.sessions_deleted) == (0, 0)
    assert len(d.sessions(database_url)) == 2


def test_a_session_never_spans_the_sites_local_midnight(database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike")], timezone="Europe/Oslo")  # UTC+1 in November
    late_evening = d.T0.replace(hour=22, minute=50)  # 23:50 in Oslo
    d.write(database_url, d.bike("bike-1", late_evening, 1800))
    run_once(database_url, now=late_evening + 2 * H)
    assert [(s[1], s[2]) for s in d.sessions(database_url)] == [
        (late_evening, late_evening + 10 * M - timedelta(seconds=1)),
        (late_evening + 10 * M, late_evening + 30 * M - timedelta(seconds=1)),
    ]


def test_an_always_busy_device_is_reread_only_back_to_the_local_midnight(database_url: str) -> None:
    """A device active without a pause since yesterday evening: an incremental run re-assembles from
    today's local midnight (no session spans it), not back to the start of the activity or the
    extension limit."""
    d.setup_site(database_url, [("bike-1", "bike")])
    evening = d.T0.replace(hour=20) - timedelta(days=1)  # 20:00 UTC the day before
    midnight = evening + 4 * H
    d.write(database_url, d.bike("bike-1", evening, 7 * 3600))  # until 02:59:59, without a pause
    run_once(database_url, now=midnight + 3 * H)
    d.write(database_url, d.bike("bike-1", midnight + 3 * H, 1800, elapsed0=7 * 3600))  # on until 03:29:59
    report = run_once(database_url, now=midnight + 4 * H)
    assert not report.full
    assert report.samples_read == int(3.5 * 3600)  # since midnight, not since 20:00 (or two days back)
    assert [(s[1], s[2]) for s in d.sessions(database_url)] == [
        (evening, midnight - timedelta(seconds=1)),
        (midnight, midnight + 3.5 * H - timedelta(seconds=1)),
    ]


def test_first_start_history_is_backfill_in_the_quality_row(database_url: str) -> None:
    """The reported first start: the day's history up to 11:00 is published at 11:00 in one burst, then the
    device is live (each message received a second after its newest sample). The quality row of the day
    showed hours of clock skew and ~95 % late samples; the history is backfill."""
    d.setup_site(database_url, [("bike-1", "bike")])
    start = d.T0.replace(hour=8)
    published = start + 3 * H
    d.write(database_url, d.bike("bike-1", start, 3 * 3600), received_at=published)  # history, one burst
    d.write(database_url, d.bike("bike-1", published, 1800, elapsed0=3 * 3600))  # live
    run_once(database_url, now=d.T0 + 24 * H)
    [(samples, late_n, backfill, skew)] = d.rows(
        database_url, "SELECT samples, late_samples, backfill_samples, clock_skew_s FROM device_quality_daily"
    )
    assert samples == 3 * 3600 + 1800
    # every history row more than a minute behind beyond the 1-s skew: all but its last 61 s
    assert (late_n, backfill) == (0, 3 * 3600 - 61)
    assert skew == pytest.approx(1.0)
