"""Two days of a simulated gym (`vitalab simulate --gym --days 2`, half of it as BLE/ANT+ frames through the
in-process gateway) -> Mosquitto -> ingester -> PostgreSQL, members registered and checked in by the kiosk
through the HTTP API, then `analytics run`: the sessions are the simulator's visits, with their participant,
members' straps joined with the machines they used, and daily series for the members.

The simulated clock is pinned (the wall clock is never read): the two days ending at the moment of issue
10's failing CI run (a strap joined to the wrong session), both DST changes of a gym in Brussels (23- and
25-hour local days), and a gym in Tokyo whose opening hours (08-10 local) straddle midnight UTC."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from analytics.jobs import run_once
from api.security import Scope
from simulators.gym import Visit
from simulators.gymfleet import GymConfig, GymPlan
from simulators.run import SimulationPlan, simulate_gym
from tests.conftest import Mosquitto
from tests.support.helpers import make_key, make_settings, running_api, running_ingester, scalar, wait_until

pytestmark = pytest.mark.asyncio

SITE = "gym-e2e"
MIN_ACTIVE_S = 120  # analytics.sessions.MIN_ACTIVE_S
CENTURY_S = 100 * 365 * 86400
"""Accepted sample age: the pinned days stay acceptable to the ingester whenever the test runs."""


def rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params or None).fetchall()


def clipped(v: Visit, lo: Any, hi: Any) -> tuple[Any, Any]:
    """First and last sample of a visit inside the simulated window (1 Hz from its start)."""
    first = max(v.start, lo)
    last = min(v.end, hi) - timedelta(seconds=1)
    return first, last


@pytest.mark.parametrize(
    ("live", "timezone"),
    [
        pytest.param(datetime(2026, 12, 4, 14, 0, tzinfo=UTC), "UTC", id="issue-10-run"),
        pytest.param(datetime(2026, 3, 30, 12, 0, tzinfo=UTC), "Europe/Brussels", id="dst-spring"),
        pytest.param(datetime(2026, 10, 26, 12, 0, tzinfo=UTC), "Europe/Brussels", id="dst-autumn"),
        pytest.param(datetime(2026, 7, 15, 0, 30, tzinfo=UTC), "Asia/Tokyo", id="midnight-utc"),
    ],
)
async def test_two_gym_days_become_sessions_with_participants_and_straps(
    mosquitto: Mosquitto, database_url: str, tmp_path: Path, live: datetime, timezone: str
) -> None:
    tz = ZoneInfo(timezone)
    with psycopg.connect(database_url) as conn:  # the site's local days and midnights
        conn.execute(
            "INSERT INTO sites (site_id, timezone) VALUES (%s, %s) "
            "ON CONFLICT (site_id) DO UPDATE SET timezone = EXCLUDED.timezone",
            (SITE, timezone),
        )
    config = GymConfig(
        open_h=8,
        close_h=10,
        visit_minutes=(5, 12),
        rest_min=40,
        members=14,
        strap_share=0.6,
        check_in_share=0.7,
        classes=((9 * 60, "hiit30"),),
        class_size=2,
        timezone=timezone,
    )
    plan = SimulationPlan(
        devices=6,  # bike-005 and treadmill-006 send BLE FTMS frames, so do half of the straps (or ANT+)
        seed=5,
        duration_s=0,
        backfill_s=2 * 86400,
        samples_per_message=10,
        raw_share=0.5,
        ant_share=0.5,
        mix=("bike", "treadmill", "rower", "cross_trainer"),
        gym=config,
        start=live,
    )
    history = live - timedelta(seconds=plan.backfill_s)
    settings = make_settings(
        site=SITE, ingest_client_id="ingest-gym-e2e", ingest_batch_rows=2000, max_past_s=CENTURY_S
    )
    async with (
        running_ingester(settings, mosquitto.target, database_url),
        running_api(settings, database_url) as api,
    ):
        kiosk = await make_key(database_url, "kiosk", Scope(frozenset({SITE}), frozenset()), name="kiosk")
        plan = dataclasses.replace(plan, api_url=api.url, api_key=kiosk)
        gym = await simulate_gym(mosquitto.target, SITE, plan, data_dir=tmp_path)
        truth = GymPlan(SITE, 6, seed=5, config=config, kinds=plan.mix)  # the same plan, rebuilt
        visits = truth.visits(history, live)
        assert visits == gym.visits(history, live)
        expected = _expected_rows(truth, visits, history, live)
        await wait_until(
            lambda: _active_rows(database_url, len(expected)), timeout_s=60, what="every visit's samples"
        )
    # the samples in use are exactly the visits' seconds: machines and straps send only during visits
    stored = set(rows(database_url, f"SELECT device_id, t FROM samples WHERE {ACTIVE}"))
    assert stored == expected
    idle = rows(database_url, f"SELECT device_id, t FROM samples WHERE NOT ({ACTIVE})")
    ends = {(v.device_id, min(v.end, live)) for v in visits}
    assert set(idle) <= ends  # only ANT+ FE machines' "finished" page at the end of a visit (speed 0)
    assert {d for d, _ in stored} == {d for v in visits for d in truth.devices_of(v)}

    # the kiosk: every member registered under their reference, straps paired, checked-in visits recorded
    pids = dict(rows(database_url, "SELECT external_ref, participant_id::text FROM participants"))
    assert set(pids) == {m.member_id for m in truth.members}
    assignments = rows(
        database_url, "SELECT device_id, participant_id::text, started_at, ended_at FROM device_assignments"
    )
    straps = {(d, p) for d, p, _, e in assignments if d.startswith("strap-") and e is None}
    assert straps == {(s, pids[m]) for m, s in truth.strap_of.items()}
    checked = [v for v in visits if truth.checked_in(v)]
    assert 0.5 * len(visits) < len(checked) < 0.9 * len(visits)
    machine_checkins = sorted((d, p, s) for d, p, s, _ in assignments if not d.startswith("strap-"))
    assert machine_checkins == sorted(
        (v.device_id, pids[v.member_id], v.start - timedelta(seconds=30)) for v in checked
    )

    report = run_once(database_url, now=live + timedelta(minutes=10))
    assert report.sessions_open == 0
    sessions = rows(
        database_url,
        "SELECT device_ids, started_at, ended_at, participant_id::text, source, hr_source FROM sessions "
        "ORDER BY started_at, device_ids",
    )
    want = []
    for v in visits:
        first, last = clipped(v, history, live)
        if (last - first).total_seconds() < MIN_ACTIVE_S:
            continue  # cut by the window to less than a session
        owner = pids[v.member_id] if truth.checked_in(v) or v.member_id in truth.strap_of else None
        want.append((sorted(truth.devices_of(v)), first, last, owner))
    got = [(list(d), s, e, p) for d, s, e, p, _, _ in sessions]
    assert sorted(got, key=str) == sorted(want, key=str)
    assert len(want) > 40
    by_devices = Counter(len(d) for d, *_ in want)
    assert by_devices[2] > 10  # strap + machine joined
    assert by_devices[1] > 5  # members without a strap
    # anonymous visits are found from activity alone; a strap names its owner also without a check-in
    anonymous_with_strap = [v for v in visits if not truth.checked_in(v) and v.member_id in truth.strap_of]
    assert anonymous_with_strap
    for devices, _, _, participant, source, hr_source in sessions:
        assert hr_source == ("strap" if len(devices) == 2 else "machine")
        # anonymous: delimited by the machines' status (post-workout ... warm-up) or, when a neighbouring
        # session's check-in falls in the same pause, recorded as a pause in activity
        assert source == "check_in" if participant else source in ("machine_status", "activity_gap")

    # daily series for every member with a session, counting their sessions per day
    query = "SELECT participant_id::text, day, sessions FROM participant_daily WHERE sessions > 0"
    daily = Counter({(p, d): n for p, d, n in rows(database_url, query)})
    per_day = Counter(
        (owner, first.astimezone(tz).date()) for _, first, _, owner in want if owner is not None
    )
    assert daily == per_day
    assert {p for p, _ in per_day} >= {pids[v.member_id] for v in checked if (v.end - v.start).seconds > 200}
    assert await scalar(database_url, "SELECT count(*) FROM dead_letters") == 0


ACTIVE = (
    "coalesce(speed_kmh, 0) > 0 OR coalesce(power_w, 0) > 0 OR coalesce(cadence_rpm, 0) > 0 "
    "OR coalesce(stroke_rate_spm, 0) > 0 OR (device_id LIKE 'strap-%%' AND hr_bpm IS NOT NULL)"
)


def _expected_rows(gym: GymPlan, visits: list[Visit], lo: Any, hi: Any) -> set[tuple[str, Any]]:
    out: set[tuple[str, Any]] = set()
    for v in visits:
        first, last = clipped(v, lo, hi)
        n = math.floor((last - first).total_seconds()) + 1
        for device in gym.devices_of(v):
            out.update((device, first + timedelta(seconds=i)) for i in range(n))
    return out


async def _active_rows(url: str, n: int) -> bool:
    got = await scalar(url, f"SELECT count(*) FROM samples WHERE {ACTIVE}")
    assert isinstance(got, int)
    return got >= n
