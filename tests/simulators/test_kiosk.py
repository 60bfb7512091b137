"""The simulated kiosk against the real API and database: it waits for an API that is not up yet, registers
members once, pairs straps, checks visits in and out, and repeating everything changes nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta

import psycopg
import pytest
import uvicorn

from api.main import create_app
from api.security import Scope
from simulators.gymfleet import CHECK_IN_LEAD, GymConfig, GymPlan
from simulators.kiosk import GymClock, Kiosk, stays
from tests.conftest import free_port
from tests.support.helpers import make_key, make_settings

pytestmark = pytest.mark.asyncio

DAY = date(2026, 11, 24)


def seed(url: str, gym: GymPlan) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO sites (site_id) VALUES (%s)", (gym.site,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO devices (device_id, site_id, kind) VALUES (%s, %s, %s)",
                [(d.device_id, gym.site, d.kind) for d in gym.devices],
            )


def assignments(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT device_id, participant_id::text, started_at, ended_at FROM device_assignments "
            "ORDER BY 1, 3"
        ).fetchall()


async def test_the_gym_clock_runs_from_its_anchor_not_the_wall_clock() -> None:
    anchor = datetime(1999, 12, 31, 23, 59, 30, tzinfo=UTC)
    clock = GymClock.starting_at(anchor, speed=600.0)  # ten gym minutes per second
    assert timedelta(0) <= clock.now() - anchor < timedelta(minutes=1)
    await clock.wait_until(anchor + timedelta(seconds=60))  # 0.1 s of loop time
    assert clock.now() >= anchor + timedelta(seconds=60)
    assert clock.now().year in (1999, 2000)


async def test_kiosk_waits_for_the_api_and_repeats_harmlessly(database_url: str) -> None:
    gym = GymPlan("kiosk-gym", 3, seed=2, config=GymConfig(members=10, visit_minutes=(10, 30)))
    seed(database_url, gym)
    key = await make_key(database_url, "kiosk", Scope(frozenset({gym.site}), frozenset()), name="kiosk")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(make_settings(), database_url), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    start = datetime.combine(DAY, time(6), UTC)
    end = start + timedelta(hours=6)
    registered = start - timedelta(days=1)
    async with Kiosk(f"http://127.0.0.1:{port}", gym, retry_s=30, api_key=key) as kiosk:
        early = asyncio.create_task(kiosk.register(registered))  # nothing listens yet: it retries
        while kiosk.counts["retries"] < 2:  # refused twice, and still at it
            assert not early.done(), early
            await asyncio.sleep(0.01)
        serving = asyncio.create_task(server.serve())
        try:
            pids = await asyncio.wait_for(early, 30)
            assert kiosk.counts["retries"] > 0
            assert set(pids) == {m.member_id for m in gym.members}
            visits = list(stays(gym, start, end))
            assert visits
            # the gym's clock is past them all: each is sent at once, with its end
            await kiosk.run(iter(visits), GymClock.starting_at(end + timedelta(hours=1)))
            first = assignments(database_url)
            # everything again (a restarted simulator): the same participants, no new or changed rows
            again = Kiosk(f"http://127.0.0.1:{port}", gym, api_key=key)
            async with again:
                assert await again.register(registered) == pids
                await again.run(iter(visits), GymClock.starting_at(end + timedelta(hours=1)))
            assert again.counts["conflicts"] == 0
            assert again.counts["check_ins"] == len(visits)  # answered 200: already recorded
            assert assignments(database_url) == first
        finally:
            server.should_exit = True
            await serving
    paired = {(d, p) for d, p, _, e in first if str(d).startswith("strap-") and e is None}
    assert paired == {(s, pids[m]) for m, s in gym.strap_of.items()}
    machine_rows = [(d, p, s, e) for d, p, s, e in first if not str(d).startswith("strap-")]
    want = [(v.device_id, pids[v.member_id], v.checked_in, v.checked_out) for v in visits]
    assert machine_rows == sorted(want, key=lambda r: (r[0], r[2]))
    assert min(v.checked_in for v in visits) >= start - CHECK_IN_LEAD
    with psycopg.connect(database_url) as conn:
        (n,) = conn.execute("SELECT count(*) FROM participants WHERE site_id = 'kiosk-gym'").fetchone() or (
            0,
        )
    assert n == 10
