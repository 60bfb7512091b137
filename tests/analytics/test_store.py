"""The analytics store against a real PostgreSQL: binary COPY into NumPy, the ingester's per-device stats,
compare-and-clear of dirty ranges, session replacement."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import psycopg
import pytest
from psycopg import sql

from analytics import store
from analytics.errors import AnalyticsJobError
from tests.analytics import dbdata as d
from vitalab.wire import DeviceState


def test_copy_records_reads_fixed_width_rows_exactly(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rec = store.copy_records(
            conn,
            sql.SQL(
                "SELECT g::int8, TIMESTAMPTZ '2026-11-23 08:00:00.123456+00' + g * INTERVAL '1 second', "
                "coalesce(CASE WHEN g = 2 THEN NULL ELSE g * 1.5 END::float8, 'NaN') "
                "FROM generate_series(1, %(n)s) g"
            ),
            {"n": 3},
            ["i8", "ts", "f8"],
        )
        assert store.col_i8(rec, 0).tolist() == [1, 2, 3]
        t = store.col_i8(rec, 1)
        assert store.us_to_datetime(int(t[0])) == d.T0 + timedelta(seconds=1, microseconds=123456)
        assert store.us_to_s(t)[0] == pytest.approx(
            (d.T0 + timedelta(seconds=1.123456)).timestamp(), abs=1e-6
        )
        v = store.col_f8(rec, 2)
        assert v[0] == 1.5
        assert math.isnan(v[1])
        empty = store.copy_records(conn, sql.SQL("SELECT 1::int8 WHERE false"), {}, ["i8"])
        assert empty.size == 0
        with pytest.raises(AnalyticsJobError):  # a NULL breaks the fixed width: refused, not misread
            store.copy_records(conn, sql.SQL("SELECT NULL::float8, 1::int8"), {}, ["f8", "i8"])


def test_ingester_logs_receipts_per_batch_and_the_job_folds_them(database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike")])
    first = d.bike("bike-1", d.T0, 100)
    r1 = d.write(database_url, first)
    assert (r1.samples_inserted, r1.samples_duplicate) == (100, 0)
    # the same messages again (a redelivery) plus 20 new samples, one of them the next UTC day
    late = d.bike("bike-1", d.T0 + timedelta(hours=15, minutes=59, seconds=41), 20)
    r2 = d.write(database_url, first[:3] + late)
    assert (r2.samples_inserted, r2.samples_duplicate) == (20, 30)
    logged = d.rows(
        database_url,
        "SELECT messages, device_id, day, received, t_from, t_to FROM ingest_batches ORDER BY id",
    )
    assert [(m, dev, [x.isoformat() for x in days], n) for m, dev, days, n, _, _ in logged] == [
        (10, ["bike-1"], ["2026-11-23"], [100]),  # 10 messages of 10 samples
        (5, ["bike-1", "bike-1"], ["2026-11-23", "2026-11-24"], [49, 1]),  # 30 resent + 19 new, 1 next day
    ]
    assert logged[-1][4] == [d.T0, d.T0 + timedelta(hours=16)]
    assert logged[-1][5] == [d.T0 + timedelta(hours=15, minutes=59, seconds=59), d.T0 + timedelta(hours=16)]
    with psycopg.connect(database_url) as conn:
        got = store.fold_ingest_batches(conn)
        conn.commit()
        assert [(r.device_id, str(r.day), r.samples) for r in got] == [
            ("bike-1", "2026-11-23", 149),
            ("bike-1", "2026-11-24", 1),
        ]
        assert got[0].t_from_s == d.T0.timestamp()
        assert conn.execute("SELECT count(*) FROM ingest_batches").fetchone() == (0,)
        stats = conn.execute("SELECT day, samples_received FROM ingest_device_stats ORDER BY day").fetchall()
    assert [(day.isoformat(), n) for day, n in stats] == [("2026-11-23", 149), ("2026-11-24", 1)]


def test_batches_committed_during_a_run_stay_for_the_next(database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike"), ("bike-2", "bike")])
    d.write(database_url, d.bike("bike-1", d.T0, 60))
    with psycopg.connect(database_url) as conn:
        seen = store.fold_ingest_batches(conn)  # the run's transaction is still open
        assert [r.device_id for r in seen] == ["bike-1"]
        d.write(database_url, d.bike("bike-2", d.T0, 30))  # commits meanwhile
        conn.commit()
        left = store.fold_ingest_batches(conn)
        conn.rollback()  # a failed run consumes nothing
        again = store.fold_ingest_batches(conn)
    assert [(r.device_id, r.samples) for r in left] == [("bike-2", 30)]
    assert [(r.device_id, r.samples) for r in again] == [("bike-2", 30)]


def test_triggers_queue_events_and_check_ins(database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike")])
    pid = d.participant(database_url)
    state = DeviceState(
        v=1, device="bike-1", t=d.T0 + timedelta(minutes=5), online=True, training="post_workout"
    )
    d.write(database_url, [state])
    d.check_in(database_url, "bike-1", pid, d.T0, d.T0 + timedelta(minutes=30))
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE device_assignments SET ended_at = %s", (d.T0 + timedelta(minutes=20),))
        conn.commit()
        notes = store.dirty_notes(conn)
    m = timedelta(minutes=1)
    assert [(n.device_id, n.t_from_s, n.t_to_s) for n in notes] == [
        ("bike-1", (d.T0 + 5 * m).timestamp(), (d.T0 + 5 * m).timestamp()),  # the state event
        ("bike-1", d.T0.timestamp(), (d.T0 + 30 * m).timestamp()),  # check-in added
        ("bike-1", d.T0.timestamp(), (d.T0 + 30 * m).timestamp()),  # ... changed: its old range
        ("bike-1", d.T0.timestamp(), (d.T0 + 20 * m).timestamp()),  # ... and its new one
    ]


def test_loads_samples_rr_events_and_check_ins_per_device_window(database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike"), ("strap-1", "hr_strap")])
    pid = d.participant(database_url)
    d.write(database_url, d.bike("bike-1", d.T0, 120, hr=None) + d.strap("strap-1", d.T0, 120, hr=120.0))
    d.write(
        database_url,
        [
            DeviceState(v=1, device="bike-1", t=d.T0 - timedelta(hours=1), online=True, training="idle"),
            DeviceState(v=1, device="bike-1", t=d.T0 + timedelta(seconds=30), online=True, training="manual"),
        ],
    )
    d.check_in(database_url, "strap-1", pid, d.T0 - timedelta(minutes=1), None)
    lo_s = (d.T0 + timedelta(seconds=10)).timestamp()
    with psycopg.connect(database_url) as conn:
        devices = store.site_devices(conn, d.SITE)
        assert devices.ids == ["bike-1", "strap-1"]
        assert devices.is_strap.tolist() == [False, True]
        lo = np.array([lo_s, lo_s])
        hi = np.array([lo_s + 20, lo_s + 5])
        loaded = store.load_samples(conn, devices, lo, hi)
        s = loaded.samples
        assert s.device.tolist() == [0] * 20 + [1] * 5
        assert s.t_s[0] == lo_s
        assert np.isnan(s.hr_bpm[:20]).all()  # NULL heart rate of the bike -> NaN
        assert s.power_w[0] == 150.0
        assert s.hr_bpm[20] == 120.0
        rr = store.load_rr(conn, devices, lo, hi)
        assert rr.device.tolist() == [1] * 5
        assert np.all(np.diff(rr.t_s) > 0)
        events = store.load_events(conn, devices, lo, hi)
        # the last event before the window comes along, so a status change is judged against it
        assert events.training == ["idle", "manual"]
        assert events.device.tolist() == [0, 0]
        ci = store.load_check_ins(conn, devices, lo, hi)
        assert ci.participants == [pid]
        assert ci.check_ins.device.tolist() == [1]
        assert ci.check_ins.end_s.tolist() == [math.inf]


def test_replace_sessions_is_idempotent_and_removes_stale_ones(database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike")])
    version = "test-1"
    lo, hi = d.T0 - timedelta(hours=1), d.T0 + timedelta(hours=3)

    def row(start_min: int, end_min: int, hr: float) -> tuple[object, ...]:
        return (
            d.SITE,
            None,
            ["bike-1"],
            d.T0 + timedelta(minutes=start_min),
            d.T0 + timedelta(minutes=end_min),
            "activity_gap",
            {"hr_avg_bpm": hr},
            version,
            "machine",
            *([None, hr] + [None] * (len(store.SESSION_TYPED) - 2)),  # duration_s, hr_avg_bpm, ...
        )

    with psycopg.connect(database_url) as conn:
        a = store.replace_sessions(
            conn, [row(0, 30, 120.0), row(60, 90, 130.0)], devices=["bike-1"], lo=lo, hi=hi, version=version
        )
        assert (a.written, a.deleted) == (2, 0)
        again = store.replace_sessions(
            conn, [row(0, 30, 120.0), row(60, 90, 130.0)], devices=["bike-1"], lo=lo, hi=hi, version=version
        )
        assert (again.written, again.deleted) == (0, 0)  # nothing changed, nothing rewritten
        b = store.replace_sessions(
            conn, [row(0, 35, 121.0)], devices=["bike-1"], lo=lo, hi=hi, version=version
        )
        assert (b.written, b.deleted) == (1, 1)
        # outside the window nothing is touched
        c = store.replace_sessions(
            conn, [], devices=["bike-1"], lo=hi, hi=hi + timedelta(hours=1), version=version
        )
        assert (c.written, c.deleted) == (0, 0)
        conn.commit()
        got = conn.execute("SELECT ended_at, hr_avg_bpm FROM sessions").fetchall()
    assert got == [(d.T0 + timedelta(minutes=35), 121.0)]
