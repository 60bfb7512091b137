"""A device's ``online`` follows what it said (state, last will) and how long it has been silent, relative to
the API's clock: a strap taken off and left silent goes offline without a message saying so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from tests.api.support import PinnedClock, app_at, serve

pytestmark = pytest.mark.asyncio

NOW = datetime(2026, 11, 25, 18, 0, tzinfo=UTC)
S = timedelta(seconds=1)
# device: (online said by its last state, device time of that state, device time of its newest sample)
DEVICES = {
    "strap-worn": (True, NOW - 600 * S, NOW - 5 * S),  # sending now
    "strap-left": (True, NOW - 3 * 3600 * S, NOW - 2 * 3600 * S),  # worn this afternoon, silent since
    "strap-off": (False, NOW - 10 * S, NOW - 20 * S),  # said it is offline (or its last will did)
    "bike-telemetry": (None, None, NOW - 30 * S),  # no state topic: its samples say it is there
    "bike-quiet": (None, None, NOW - 3600 * S),
    "bike-state-only": (True, NOW - 60 * S, None),  # a state, no sample yet
    "never-heard": (None, None, None),  # registered, nothing received
}


def seed(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO sites (site_id) VALUES ('gym-a')")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO devices (device_id, site_id, online, state_at, last_seen) "
                "VALUES (%s, 'gym-a', %s, %s, %s)",
                [(d, *v) for d, v in DEVICES.items()],
            )


async def online(http: httpx.AsyncClient, device: str | None = None) -> dict[str, bool]:
    if device is not None:
        r = await http.get(f"/v1/devices/{device}")
        return {device: r.json()["online"]}
    return {d["device_id"]: d["online"] for d in (await http.get("/v1/devices")).json()}


async def test_devices_go_offline_when_silent_or_said_so(database_url: str) -> None:
    seed(database_url)
    clock = PinnedClock(NOW)
    async with serve(app_at(database_url, clock, device_offline_after_s=300)) as http:
        assert await online(http) == {
            "bike-quiet": False,
            "bike-state-only": True,
            "bike-telemetry": True,
            "never-heard": False,
            "strap-left": False,
            "strap-off": False,
            "strap-worn": True,
        }
        assert await online(http, "strap-left") == {"strap-left": False}
        strap = (await http.get("/v1/devices/strap-worn")).json()
        assert strap["last_heard"] == "2026-11-25T17:59:55Z"  # its newest sample or state

        # ten minutes later with nothing received: everything has gone silent
        clock.advance(timedelta(minutes=10))
        assert not any((await online(http)).values())

    # the threshold is a setting: with three hours, this afternoon's strap still counts
    async with serve(app_at(database_url, NOW, device_offline_after_s=3 * 3600)) as http:
        states = await online(http)
        assert states["strap-left"] is True
        assert states["bike-quiet"] is True
        assert states["strap-off"] is False  # what a device says about itself wins over recency
        assert states["never-heard"] is False
