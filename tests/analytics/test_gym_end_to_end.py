"""End to end: a simulated gym morning (simulators.gym.GymDay, whose visits are the known truth) written
through the ingester's router and writer, then `analytics run`: the sessions are the visits.

Pinned days (no clock is read): an ordinary Tuesday morning (06-11), the Sunday mornings (08-13, the weekend
peak) of both DST changes of a gym in Brussels, and a Tuesday morning of a gym in Tokyo (06-11 local,
21:00-02:00 UTC: across midnight UTC)."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from analytics.jobs import run_once
from simulators.fleet import Fleet
from simulators.gym import GymDay
from simulators.people import Member
from tests.analytics import dbdata as d
from vitalab.wire import Sample

SITE = "gym-sim"


@pytest.mark.parametrize(
    ("day", "timezone", "hours"),
    [
        pytest.param(date(2026, 11, 24), "UTC", (6, 11), id="tuesday"),
        pytest.param(date(2026, 3, 29), "Europe/Brussels", (8, 13), id="dst-spring"),
        pytest.param(date(2026, 10, 25), "Europe/Brussels", (8, 13), id="dst-autumn"),
        pytest.param(date(2026, 7, 14), "Asia/Tokyo", (6, 11), id="midnight-utc"),
    ],
)
def test_a_simulated_morning_becomes_its_visits(
    database_url: str, day: date, timezone: str, hours: tuple[int, int]
) -> None:
    fleet = Fleet.build(SITE, 6, seed=11, mix=("bike", "treadmill", "rower", "cross_trainer"))
    rng = np.random.default_rng(11)
    members = [Member.random(f"m{i:03d}", rng) for i in range(30)]
    gym = GymDay(
        day,
        fleet.devices,
        members,
        seed=11,
        open_h=hours[0],
        close_h=hours[1],
        peak_arrivals_per_h=20,
        classes=(),
        timezone=timezone,
    )
    # a busy morning: members follow each other on a machine after a 2-minute wipe-down (less than the
    # 5-minute session gap), and some members come back for a second workout
    back_to_back = sum(
        1
        for v in gym.visits
        for w in gym.visits
        if v.device_id == w.device_id and timedelta(0) <= w.start - v.end < timedelta(minutes=5)
    )
    assert len(gym.visits) >= 30
    assert back_to_back >= 5
    assert max(Counter(v.member_id for v in gym.visits).values()) >= 2

    d.setup_site(
        database_url, [(dev.device_id, dev.kind) for dev in fleet.devices], site=SITE, timezone=timezone
    )
    per_device: dict[str, list[Sample]] = {}
    for _, samples in gym.ticks():
        for dev, sample in samples:
            per_device.setdefault(dev.device_id, []).append(sample)
    messages = [d.telemetry(dev, chunk) for dev, s in sorted(per_device.items()) for chunk in d.chunks(s)]
    for i in range(0, len(messages), 500):  # batches of ~5,000 samples, as the ingester writes them
        d.write(database_url, messages[i : i + 500], site=SITE)

    evening = datetime.combine(day, time(20), ZoneInfo(timezone))  # the analytics run's "now"
    report = run_once(database_url, now=evening)
    assert report.sessions_open == 0
    stored = d.sessions(database_url)
    truth = sorted((v.device_id, v.start, v.end - timedelta(seconds=1)) for v in gym.visits)
    # without any check-in, gaps and the machines' counter resets (2-minute wipe-downs) delimit the visits
    assert sorted((s[0][0], s[1], s[2]) for s in stored) == truth
    assert all(s[3] is None for s in stored)

    # the front desk's check-ins arrive afterwards: the next run names every member, changing nothing else
    pids = {
        m.member_id: d.participant(
            database_url,
            site=SITE,
            sex=m.sex,
            birth_year=day.year - m.age_y,
            hr_rest=m.hr_rest_bpm,
            hr_max=m.hr_max_bpm,
            weight=m.weight_kg,
        )
        for m in members
    }
    for v in gym.visits:
        d.check_in(database_url, v.device_id, pids[v.member_id], v.start - timedelta(seconds=30), v.end)
    again = run_once(database_url, now=evening + timedelta(minutes=5))
    assert again.sessions_written == len(gym.visits)
    stored = d.sessions(database_url)
    by_start = {(v.device_id, v.start): pids[v.member_id] for v in gym.visits}
    assert sorted((s[0][0], s[1], s[2]) for s in stored) == truth
    assert all(s[3] == by_start[(s[0][0], s[1])] and s[4] == "check_in" for s in stored)

    # every session has a heart-rate load, and the daily series count each member's visits
    trimps = d.rows(database_url, "SELECT trimp, hr_source FROM sessions")
    assert all(t is not None and t > 0 and src == "machine" for t, src in trimps)
    daily = dict(
        d.rows(
            database_url, "SELECT participant_id::text, sessions FROM participant_daily WHERE day = %s", day
        )
    )
    visits_per_member = Counter(pids[v.member_id] for v in gym.visits)
    assert daily == dict(visits_per_member)
    # utilisation: the seconds in sessions per machine add up to the visits' durations
    used = dict(
        d.rows(database_url, "SELECT device_id, sum(in_session_s)::float8 FROM device_hourly GROUP BY 1")
    )
    want: dict[str, float] = {}
    for v in gym.visits:
        want[v.device_id] = want.get(v.device_id, 0.0) + (v.end - v.start).total_seconds() - 1
    assert {k: round(x) for k, x in used.items() if x > 0} == {k: round(x) for k, x in want.items()}
