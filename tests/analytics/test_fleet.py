"""Fleet health: odometers and running hours from the samples, service due, alerts opening and closing, and
webhook deliveries, against a real PostgreSQL with the data written through the ingester's writer."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from psycopg.types.json import Jsonb

from analytics import fleet
from analytics.fleet import FleetConfig, UsageRows, usage_contributions
from analytics.jobs import JobConfig, run_once, run_periodically
from analytics.opening_hours import WEEKDAYS
from tests.analytics import dbdata as d
from vitalab.wire import DeviceState, Sample, TelemetryMessage

S = timedelta(seconds=1)
M = timedelta(minutes=1)
H = timedelta(hours=1)
MONDAY = d.T0  # 2026-11-23 08:00 UTC, a Monday


# ---------------------------------------------------------------------------------------------- pure


def _rows(
    t: list[float], dist: list[float], effort: list[bool], context: list[bool] | None = None
) -> UsageRows:
    n = len(t)
    return UsageRows(
        np.zeros(n, dtype=np.int64),
        np.array(t, dtype=np.float64),
        np.array(dist, dtype=np.float64),
        np.array(effort, dtype=bool),
        np.array(context or [False] * n, dtype=bool),
    )


def test_distance_adds_increases_and_a_new_workout_adds_its_own_distance() -> None:
    nan = float("nan")
    rows = _rows(
        [0, 1, 2, 3, 4, 5, 6, 7, 8],
        [5, 9, 9, 7, 30, 3, nan, 4, 6],  # 9 -> 7: jitter (2 m); 30 -> 3: a new workout
        [True] * 9,
    )
    dist, run = usage_contributions(rows)
    assert dist.tolist() == [5, 4, 0, 0, 23, 3, 0, 1, 2]
    assert run.tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1]


def test_running_time_counts_steps_with_effort_up_to_the_gap_limit() -> None:
    rows = _rows([0, 1, 3, 13, 24, 25, 26], [float("nan")] * 7, [True, True, True, True, True, False, True])
    _, run = usage_contributions(rows, FleetConfig(max_step_s=10))
    # 1 s, 2 s, 10 s (the limit), an 11-s gap (nothing), a step without effort, 1 s
    assert run.tolist() == [0, 1, 2, 10, 0, 0, 1]


def test_context_rows_are_previous_readings_only_and_an_old_reading_starts_a_workout() -> None:
    cfg = FleetConfig(lookback_s=3600)
    rows = _rows([0, 5, 6, 4000], [100, 104, 110, 50], [True] * 4, [True, False, False, False])
    dist, run = usage_contributions(rows, cfg)
    assert dist.tolist() == [0, 4, 6, 50]  # 4000 s after the last reading: a new workout
    assert run.tolist() == [0, 5, 1, 0]
    # devices never see each other's readings
    two = UsageRows(
        np.array([0, 1], dtype=np.int64),
        np.array([0.0, 1.0]),
        np.array([100.0, 103.0]),
        np.array([True, True]),
        np.array([False, False]),
    )
    assert usage_contributions(two)[0].tolist() == [100, 103]
    assert usage_contributions(two)[1].tolist() == [0, 0]


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Workout:
    """A workout at 1/``period_s`` Hz, its distance from 0; ``effort`` False for the samples ``paused``."""

    device: str
    kind: str
    start: datetime
    n: int
    speed_mps: float
    period_s: float = 1.0
    paused: range = range(0)
    skip: range = range(0)
    """indices not sent (a gap)"""
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        dist = 0.0
        for i in range(self.n):
            moving = i not in self.paused
            if i > 0 and moving:
                dist += self.speed_mps * self.period_s
            if i in self.skip:
                continue
            t = self.start + timedelta(seconds=i * self.period_s)
            speed = self.speed_mps * 3.6 if moving else 0.0
            if self.kind == "treadmill":
                s = Sample(t=t, speed_kmh=speed, distance_m=dist, elapsed_s=i * self.period_s)
            elif self.kind == "rower":
                s = Sample(t=t, stroke_rate_spm=28.0 if moving else 0.0, distance_m=dist)
            else:  # a bike without a distance field
                s = Sample(t=t, power_w=150.0 if moving else 0.0, cadence_rpm=85.0 if moving else 0.0)
            self.samples.append(s)

    @property
    def distance_m(self) -> float:
        """The workout's last distance (0 for a bike, which reports none)."""
        last = self.samples[-1].distance_m
        return 0.0 if last is None else last

    def running_steps(self) -> list[tuple[datetime, float]]:
        """(time of the later sample, seconds) of every step between sent samples at most 10 s apart whose
        later sample shows effort: the definition, written out per workout."""
        sent = [i for i in range(self.n) if i not in self.skip]
        out = []
        for a, b in itertools.pairwise(sent):
            dt = (b - a) * self.period_s
            if dt <= 10 and b not in self.paused:
                out.append((self.start + timedelta(seconds=b * self.period_s), dt))
        return out

    @property
    def running_s(self) -> float:
        return sum(s for _, s in self.running_steps())

    def messages(self) -> list[TelemetryMessage]:
        return [d.telemetry(self.device, c) for c in d.chunks(self.samples)]


def write(url: str, *workouts: Workout) -> None:
    d.write(url, [m for w in workouts for m in w.messages()])


def counters(url: str) -> dict[str, tuple[float, float, float, float]]:
    return {
        r[0]: (r[1], r[2], r[3], r[4])
        for r in d.rows(
            url,
            "SELECT device_id, distance_m, running_s, service_distance_m, service_running_s "
            "FROM device_counters",
        )
    }


def alerts(url: str) -> list[tuple[Any, ...]]:
    """(subject_id, kind, started_at, ended_at, detail) in id order."""
    return d.rows(url, "SELECT subject_id, kind, started_at, ended_at, detail FROM alerts ORDER BY alert_id")


DEVICES = [
    ("tm-1", "treadmill"),
    ("row-1", "rower"),
    ("bike-1", "bike"),
    ("strap-1", "hr_strap"),
    ("tm-2", "treadmill"),
]


# ---------------------------------------------------------------------------------------------- odometer


def test_odometer_and_running_hours_equal_the_sums_of_the_samples(database_url: str) -> None:
    d.setup_site(database_url, DEVICES)
    # a 2.5-hour workout whose last half hour arrives after the rest was counted (after 6 minutes without
    # samples, which end the first session): the last run's window starts inside the workout (an hour before
    # the new data), so its first samples follow readings it did not load
    # (a bike reports no distance: its first samples there follow a step it did not load)
    long = Workout("tm-2", "treadmill", MONDAY + 6 * H, 9000, 2.0, skip=range(7200, 7560))
    ride = Workout("bike-1", "bike", MONDAY + 6 * H, 9000, 8.0, skip=range(7200, 7560))
    d.write(
        database_url,
        [d.telemetry(w.device, c) for w in (long, ride) for c in d.chunks(w.samples[:7200], 600)],
    )
    assert long.samples[7200].t == MONDAY + 8 * H + 6 * M
    first = [
        Workout("tm-1", "treadmill", MONDAY, 1200, 2.5),
        # across an hour boundary, with a pause (speed 0, distance standing still) in the middle
        Workout("tm-1", "treadmill", MONDAY + 50 * M, 900, 10 / 3, paused=range(300, 360)),
        Workout("row-1", "rower", MONDAY + 10 * M, 1800, 4.0, skip=range(500, 530)),  # a 31-s gap
        Workout("bike-1", "bike", MONDAY + 5 * M, 600, 8.0),
    ]
    write(database_url, *first)
    d.write(database_url, d.strap("strap-1", MONDAY, 600))
    run_once(database_url, now=MONDAY + 8 * H + 10 * M)

    later = [
        Workout("tm-1", "treadmill", MONDAY + 3 * H, 400, 3.0, period_s=2.0),  # 0.5 Hz
        Workout("row-1", "rower", MONDAY + 2 * H + 30 * M, 600, 4.5),
        # late data: a workout from the first hour, arriving after that hour was counted
        Workout("bike-1", "bike", MONDAY + 40 * M, 300, 8.0, paused=range(100, 110)),
        Workout("tm-1", "treadmill", MONDAY + 30 * M, 600, 2.0),
    ]
    write(database_url, *later)
    report = run_once(database_url, now=MONDAY + 8 * H + 11 * M)
    assert report.usage_rows > 0
    d.write(
        database_url,
        [d.telemetry(w.device, c) for w in (long, ride) for c in d.chunks(w.samples[7200:], 600)],
    )
    report = run_once(database_url, now=MONDAY + 9 * H)
    assert report.windows == 1

    every = [*first, *later, long, ride]
    got = counters(database_url)
    assert set(got) == {"tm-1", "row-1", "bike-1", "tm-2"}  # machines only
    for device in got:
        mine = [w for w in every if w.device == device]
        distance = sum(w.distance_m for w in mine)
        running = sum(w.running_s for w in mine)
        assert got[device][0] == pytest.approx(distance, abs=1e-6), device
        assert got[device][1] == pytest.approx(running, abs=1e-6), device
        assert got[device][2:] == got[device][:2]  # never serviced: since service = everything
    assert got["bike-1"][0] == 0
    assert got["row-1"][1] == (1770 - 1 - 1) + 599  # 1770 samples sent, the gap's step counts nothing

    # per hour: running time attributed to the hour of the later sample of each step
    hourly: dict[tuple[str, datetime], float] = {}
    for w in every:
        for t, s in w.running_steps():
            key = (w.device, t.replace(minute=0, second=0, microsecond=0))
            hourly[key] = hourly.get(key, 0.0) + s
    stored = {
        (r[0], r[1]): r[2]
        for r in d.rows(database_url, "SELECT device_id, hour, running_s FROM device_usage_hourly")
    }
    assert stored.keys() == hourly.keys()
    for key, s in hourly.items():
        assert stored[key] == pytest.approx(s), key

    # a full recomputation finds the same figures
    run_once(database_url, now=MONDAY + 9 * H, full=True)
    again = counters(database_url)
    for device in got:
        assert again[device] == pytest.approx(got[device]), device


# ---------------------------------------------------------------------------------------------- service due


def test_service_due_fires_at_the_threshold_and_a_service_resets_the_counters(database_url: str) -> None:
    d.setup_site(database_url, DEVICES[:1])
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE service_thresholds SET km = 2.5, hours = NULL WHERE kind = 'treadmill'")
    w1 = Workout("tm-1", "treadmill", MONDAY, 1001, 2.5)  # 1000 steps of 2.5 m: 2500 m
    d.write(database_url, [d.telemetry("tm-1", c) for c in d.chunks(w1.samples[:1000])])
    run_once(database_url, now=MONDAY + H)
    assert counters(database_url)["tm-1"][2] == 2497.5
    assert alerts(database_url) == []  # 2.5 m short of the threshold

    d.write(database_url, [d.telemetry("tm-1", w1.samples[1000:])])
    now = MONDAY + H + M
    run_once(database_url, now=now)
    assert counters(database_url)["tm-1"][2] == 2500.0
    [(subject, kind, started, ended, detail)] = alerts(database_url)
    assert (subject, kind, started, ended) == ("tm-1", "service_due", now, None)
    assert detail["km_since_service"] == 2.5
    assert detail["km_threshold"] == 2.5

    # a second workout; the machine is serviced 100 s into it (recorded later)
    w2 = Workout("tm-1", "treadmill", MONDAY + 2 * H + 30 * M, 600, 2.0)
    write(database_url, w2)
    serviced = w2.start + 100 * S + timedelta(milliseconds=500)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO device_services (device_id, serviced_at, recorded_at) VALUES ('tm-1', %s, %s)",
            (serviced, MONDAY + 4 * H),
        )
    later = MONDAY + 4 * H
    run_once(database_url, now=later)
    total, running, since, since_running = counters(database_url)["tm-1"]
    assert total == 2500.0 + w2.distance_m
    # what came after the service: from sample 101 on (each sample adds its 2 m and its 1 s)
    assert since == pytest.approx(w2.distance_m - w2.samples[100].distance_m)  # type: ignore[operator]
    assert since_running == 599 - 100
    assert running == 1000 + 599
    [(_, _, _, ended, _)] = alerts(database_url)
    assert ended == later  # the service cleared it


# ---------------------------------------------------------------------------------------------- alerts


def open_every_day(conn: psycopg.Connection[Any], site: str, opens: str, closes: str) -> None:
    """The site's opening hours, where every reader finds them (``sites.opening_hours``)."""
    hours = {day: [[opens, closes]] for day in WEEKDAYS}
    conn.execute("UPDATE sites SET opening_hours = %s WHERE site_id = %s", (Jsonb(hours), site))


def _state(device: str, t: datetime, *, online: bool = True, training: str | None = None) -> DeviceState:
    return DeviceState(v=1, device=device, t=t, online=online, training=training)  # type: ignore[arg-type]


def test_alerts_open_while_their_condition_holds_and_close_when_it_clears(database_url: str) -> None:
    d.setup_site(database_url, DEVICES)
    with psycopg.connect(database_url) as conn:
        open_every_day(conn, "gym-a", "06:00", "22:00")  # in UTC
        conn.execute(
            "INSERT INTO gateways (gateway_id, site_id, online, last_seen) "
            "VALUES ('gw-1', 'gym-a', false, %s)",
            (MONDAY,),
        )
        conn.execute(
            "INSERT INTO device_quality_daily (device_id, day, site_id, samples, late_samples, clock_skew_s, "
            "on_s, expected_samples, dropouts, gaps, gap_s) VALUES ('row-1', %s, 'gym-a', 10, 0, -42.5, "
            "10, 10, 0, 0, 0)",
            (MONDAY.date() - timedelta(days=1),),
        )
        conn.execute(
            "INSERT INTO dead_letters (received_at, topic, reason, detail, device_id, payload, payload_size) "
            "SELECT %s + g * interval '1 minute', 'vitalab/v1/gym-a/dev/bike-1/telemetry', 'schema', 'bad', "
            "'bike-1', '\\x7b7d'::bytea, 2 FROM generate_series(1, 30) g",
            (MONDAY - 46 * M,),
        )
        # 29 refused messages of an unregistered device: under the limit
        conn.execute(
            "INSERT INTO dead_letters (received_at, topic, reason, detail, device_id, payload, payload_size) "
            "SELECT %s + g * interval '1 minute', 'vitalab/v1/gym-a/dev/ghost/telemetry', 'unknown_device', "
            "'x', 'ghost', '\\x7b7d'::bytea, 2 FROM generate_series(1, 29) g",
            (MONDAY - 46 * M,),
        )
    # tm-1 in a workout, then quiet; the strap worn, then quiet; the bike's workout finished
    d.write(
        database_url,
        [
            _state("tm-1", MONDAY, training="manual"),
            _state("strap-1", MONDAY),
            _state("bike-1", MONDAY, training="post_workout"),
            _state("row-1", MONDAY, training="idle"),
        ],
    )
    write(database_url, Workout("tm-1", "treadmill", MONDAY, 600, 2.5))
    d.write(database_url, d.strap("strap-1", MONDAY, 300))
    last_tm = MONDAY + 599 * S
    last_strap = MONDAY + 299 * S + timedelta(milliseconds=400)

    run_once(database_url, now=last_tm + 4 * M)  # 4 minutes: within the grace
    first = {(a[0], a[1]): a for a in alerts(database_url)}
    assert set(first) == {
        ("strap-1", "silent"),  # silent 5 minutes after its last sample
        ("gw-1", "gateway_offline"),
        ("row-1", "clock_skew"),
        ("bike-1", "dead_letters"),
    }
    assert first[("strap-1", "silent")][2] == last_strap + 5 * M
    assert first[("gw-1", "gateway_offline")][2] == MONDAY + 5 * M
    assert first[("row-1", "clock_skew")][2] == datetime(2026, 11, 22, tzinfo=UTC)
    assert first[("row-1", "clock_skew")][4]["clock_skew_s"] == -42.5
    assert first[("bike-1", "dead_letters")][2] == MONDAY - 45 * M
    assert first[("bike-1", "dead_letters")][4]["last_hour"] == 30

    now = last_tm + 6 * M
    run_once(database_url, now=now)
    by_key = {(a[0], a[1]): a for a in alerts(database_url)}
    assert by_key[("tm-1", "silent")][2:4] == (last_tm + 5 * M, None)
    assert by_key[("tm-1", "silent")][4]["reason"] == "no_data"
    # the first dead letter left the last hour: 29 are fewer than the limit
    assert by_key[("bike-1", "dead_letters")][3] == now
    assert len(alerts(database_url)) == 5  # nothing opened twice

    # everything clears: tm-1 reports again, the strap is taken off, the gateway is back, a good clock day
    later = now + 10 * M
    write(database_url, Workout("tm-1", "treadmill", later - M, 30, 2.5))
    d.write(database_url, [_state("strap-1", later - 2 * M, online=False)])
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE gateways SET online = true, last_seen = %s", (later - M,))
        conn.execute(
            "INSERT INTO device_quality_daily (device_id, day, site_id, samples, late_samples, clock_skew_s, "
            "on_s, expected_samples, dropouts, gaps, gap_s) VALUES ('row-1', %s, 'gym-a', 10, 0, 0.4, "
            "10, 10, 0, 0, 0)",
            (MONDAY.date(),),
        )
    run_once(database_url, now=later)
    assert [(a[0], a[1], a[3]) for a in alerts(database_url) if a[3] is None] == []
    closed = {(a[0], a[1]): a[3] for a in alerts(database_url)}
    assert closed[("tm-1", "silent")] == later
    assert closed[("gw-1", "gateway_offline")] == later


def test_silence_counts_only_while_the_site_is_open(database_url: str) -> None:
    d.setup_site(database_url, DEVICES[:1])
    with psycopg.connect(database_url) as conn:
        open_every_day(conn, "gym-a", "06:00", "22:00")
    evening = datetime(2026, 11, 23, 21, 0, tzinfo=UTC)
    d.write(database_url, [_state("tm-1", evening, training="manual")])
    write(database_url, Workout("tm-1", "treadmill", evening, 60, 2.5))
    run_once(database_url, now=evening + 30 * M)
    [(_, kind, started, _, _)] = alerts(database_url)
    assert (kind, started) == ("silent", evening + 59 * S + 5 * M)
    run_once(database_url, now=evening + 90 * M)  # 22:30: closed
    [(_, _, _, ended, _)] = alerts(database_url)
    assert ended == evening + 90 * M
    # the next morning the silence counts from the opening: 06:05 at the earliest
    morning = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
    run_once(database_url, now=morning + 4 * M)
    assert len(alerts(database_url)) == 1
    run_once(database_url, now=morning + 6 * M)
    assert [(a[1], a[2], a[3]) for a in alerts(database_url)][1] == ("silent", morning + 5 * M, None)


def test_silence_follows_the_sites_wall_clock_hours_across_a_clock_change_and_midnight_utc(
    database_url: str,
) -> None:
    """gym-a in Oslo, open 06:00-22:00 every day, over the night summer time starts (2026-03-29: 02:00 CET ->
    03:00 CEST); gym-t in Tokyo, open Mondays 08:00-10:00 (Sunday 23:00 to Monday 01:00 UTC). Each has a
    treadmill whose workout state came, then nothing."""
    d.setup_site(database_url, [("tm-1", "treadmill")], timezone="Europe/Oslo")
    d.setup_site(database_url, [("tm-t", "treadmill")], site="gym-t", timezone="Asia/Tokyo")
    last_oslo = datetime(2026, 3, 28, 10, 0, tzinfo=UTC)
    last_tokyo = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    with psycopg.connect(database_url) as conn:
        open_every_day(conn, "gym-a", "06:00", "22:00")
        conn.execute(
            "UPDATE sites SET opening_hours = %s WHERE site_id = 'gym-t'",
            (Jsonb({"mon": [["08:00", "10:00"]]}),),
        )
    d.write(database_url, [_state("tm-1", last_oslo, training="manual")])
    d.write(database_url, [_state("tm-t", last_tokyo, training="manual")], site="gym-t")

    def silent(now: datetime) -> dict[str, datetime]:
        with psycopg.connect(database_url) as conn:
            found = fleet.conditions(conn, now, FleetConfig())
        return {c.subject_id: c.started_at for c in found if c.kind == "silent"}

    def utc(*args: int) -> datetime:
        return datetime(*args, tzinfo=UTC)  # type: ignore[misc,arg-type]

    assert silent(utc(2026, 3, 28, 10, 4)) == {}  # within the 5 minutes
    assert silent(utc(2026, 3, 28, 12, 0))["tm-1"] == last_oslo + 5 * M  # 13:00 CET: open
    assert "tm-1" not in silent(utc(2026, 3, 28, 21, 0))  # 22:00 CET: closed
    assert "tm-1" not in silent(utc(2026, 3, 29, 3, 59))  # 05:59 CEST
    assert "tm-1" not in silent(utc(2026, 3, 29, 4, 4))  # 06:04 CEST: open, within 5 minutes of the opening
    # 06:05 CEST (04:05 UTC; a fixed UTC+1 would still call it closed): silent, counted from the opening
    assert silent(utc(2026, 3, 29, 4, 5))["tm-1"] == utc(2026, 3, 29, 4, 5)
    assert silent(utc(2026, 3, 29, 19, 59))["tm-1"] == utc(2026, 3, 29, 4, 5)
    assert "tm-1" not in silent(utc(2026, 3, 29, 20, 0))  # 22:00 CEST

    assert "tm-t" not in silent(utc(2026, 11, 22, 22, 59))  # Monday 07:59 in Tokyo
    assert silent(utc(2026, 11, 22, 23, 30))["tm-t"] == utc(2026, 11, 22, 23, 5)
    assert silent(utc(2026, 11, 23, 0, 0))["tm-t"] == utc(2026, 11, 22, 23, 5)  # midnight UTC: still open
    assert silent(utc(2026, 11, 23, 0, 59))["tm-t"] == utc(2026, 11, 22, 23, 5)
    assert "tm-t" not in silent(utc(2026, 11, 23, 1, 0))  # 10:00 in Tokyo: closed
    assert "tm-t" not in silent(utc(2026, 11, 23, 23, 30))  # Tuesday in Tokyo

    # the alerts the job keeps: opened while open, closed at the closing, opened again the next opening
    for now in (utc(2026, 3, 28, 12, 0), utc(2026, 3, 28, 21, 0), utc(2026, 3, 29, 4, 30)):
        run_once(database_url, now=now)
    assert [(a[0], a[2], a[3]) for a in alerts(database_url) if a[1] == "silent"] == [
        ("tm-1", last_oslo + 5 * M, utc(2026, 3, 28, 21, 0)),
        ("tm-1", utc(2026, 3, 29, 4, 5), None),
    ]


# ---------------------------------------------------------------------------------------------- webhooks


class Receiver:
    """A real HTTP server on a loopback port answering with the scripted statuses (then 204), recording each
    request; ``hold`` (when set) keeps every request waiting until it is released."""

    def __init__(self, statuses: list[int], hold: threading.Event | None = None) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.hold = hold
        self.entered = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.entered.set()
                if receiver.hold is not None:
                    receiver.hold.wait(30)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), json.loads(body)))
                status = receiver.statuses.pop(0) if receiver.statuses else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver([500]) as r:
        yield r


def _silent_strap(url: str, webhook: str) -> datetime:
    """gym-a with a webhook and a strap worn but silent; returns when its alert starts."""
    d.setup_site(url, DEVICES[3:])
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO site_webhooks (site_id, url, updated_at) VALUES ('gym-a', %s, %s)", (webhook, MONDAY)
        )
    d.write(url, [_state("strap-1", MONDAY)])
    return MONDAY + 5 * M


def outbox(url: str) -> list[tuple[Any, ...]]:
    return d.rows(
        url,
        "SELECT id, attempts, next_attempt_at, delivered_at, failed_at, last_error "
        "FROM alert_outbox ORDER BY id",
    )


def test_webhook_deliveries_retry_until_the_receiver_takes_them(
    database_url: str, receiver: Receiver
) -> None:
    started = _silent_strap(database_url, receiver.url)
    now = started + M
    report = run_once(database_url, now=now)
    assert report.webhooks_queued == 1
    [(row_id, attempts, due, delivered, failed, _)] = outbox(database_url)
    assert (attempts, due, delivered, failed) == (0, now, None, None)

    cfg = FleetConfig(webhook_backoff_s=30)

    async def deliver(at: datetime) -> fleet.DeliveryReport:
        async with httpx.AsyncClient() as client:
            return await fleet.deliver_due(database_url, client, now=at, cfg=cfg)

    assert asyncio.run(deliver(now)) == fleet.DeliveryReport(retried=1)  # the receiver answered 500
    [(_, attempts, due, delivered, _, error)] = outbox(database_url)
    assert (attempts, due, delivered, error) == (1, now + 30 * S, None, "HTTP 500")
    assert asyncio.run(deliver(now + 29 * S)) == fleet.DeliveryReport()  # not due yet
    assert asyncio.run(deliver(now + 30 * S)) == fleet.DeliveryReport(delivered=1)
    [(_, attempts, _, delivered, _, error)] = outbox(database_url)
    assert (attempts, delivered, error) == (2, now + 30 * S, None)
    assert asyncio.run(deliver(now + H)) == fleet.DeliveryReport()  # delivered once only

    assert len(receiver.requests) == 2
    headers, body = receiver.requests[-1]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Vitalab-Delivery"] == str(row_id)
    assert headers["X-Vitalab-Event"] == "alert.opened"
    assert body["event"] == "alert.opened"
    alert = body["alert"]
    assert (alert["site_id"], alert["subject"], alert["subject_id"], alert["kind"]) == (
        "gym-a",
        "device",
        "strap-1",
        "silent",
    )
    assert datetime.fromisoformat(alert["started_at"]) == started
    assert alert["ended_at"] is None

    # the alert clears: its closing is delivered too
    d.write(database_url, [_state("strap-1", now + M, online=False)])
    run_once(database_url, now=now + 2 * M)
    assert asyncio.run(deliver(now + 2 * M)) == fleet.DeliveryReport(delivered=1)
    assert receiver.requests[-1][1]["event"] == "alert.closed"
    assert datetime.fromisoformat(receiver.requests[-1][1]["alert"]["ended_at"]) == now + 2 * M


def test_a_webhook_that_never_answers_is_given_up_after_its_attempts(database_url: str) -> None:
    with Receiver([]) as closed:
        url = closed.url  # nothing listens there once the receiver is gone
    started = _silent_strap(database_url, url)
    now = started + M
    run_once(database_url, now=now)
    cfg = FleetConfig(webhook_attempts=2, webhook_backoff_s=10, webhook_timeout_s=2)

    async def deliver(at: datetime) -> fleet.DeliveryReport:
        async with httpx.AsyncClient() as client:
            return await fleet.deliver_due(database_url, client, now=at, cfg=cfg)

    assert asyncio.run(deliver(now)) == fleet.DeliveryReport(retried=1)
    assert asyncio.run(deliver(now + 10 * S)) == fleet.DeliveryReport(failed=1)
    [(_, attempts, _, delivered, failed, error)] = outbox(database_url)
    assert (attempts, delivered, failed) == (2, None, now + 10 * S)
    assert error.startswith("ConnectError")
    assert asyncio.run(deliver(now + H)) == fleet.DeliveryReport()


def test_a_slow_webhook_never_holds_up_the_job(database_url: str) -> None:
    """The periodic trigger keeps running the job while a delivery waits on a receiver that does not
    answer; once the receiver answers, the delivery completes."""
    hold = threading.Event()
    with Receiver([], hold=hold) as slow:
        started = _silent_strap(database_url, slow.url)
        now = started + M
        patient = JobConfig(fleet=FleetConfig(webhook_timeout_s=60))

        async def scenario() -> None:
            task = asyncio.create_task(
                run_periodically(database_url, 0.05, clock=lambda: now, config=patient)
            )
            try:
                assert await asyncio.to_thread(slow.entered.wait, 30)  # a delivery is in flight
                runs_then = d.rows(database_url, "SELECT count(*) FROM analytics_job_runs")[0][0]
                await _until(
                    lambda: (
                        d.rows(database_url, "SELECT count(*) FROM analytics_job_runs")[0][0] >= runs_then + 3
                    )
                )
                assert outbox(database_url)[0][3] is None  # still held by the receiver
                hold.set()
                await _until(lambda: outbox(database_url)[0][3] is not None)
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

        asyncio.run(scenario())
    assert len(slow.requests) == 1


async def _until(condition: Any, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await asyncio.to_thread(condition):
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
