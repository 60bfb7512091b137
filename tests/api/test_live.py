"""The live floor over a real Mosquitto and PostgreSQL: ``GET /v1/sites/{site}/live`` served by uvicorn,
devices driven with known values (and the simulator's fleet), the API's clock pinned and moved by tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import aiomqtt
import httpx
import psycopg
import pytest
from fastapi import FastAPI
from psycopg.types.json import Jsonb

from analytics.opening_hours import WEEKDAYS
from api.live.floor import DEFAULT_HR_MAX_BPM, zone
from api.live.hub import LiveHubs, SiteHub
from api.main import create_app
from api.security import Scope
from simulators.fleet import Fleet
from simulators.publisher import FleetPublisher
from tests.api.sse import Devices, Event, device_of, publisher, watch
from tests.api.support import PinnedClock, assert_problem, bearer
from tests.conftest import Mosquitto, free_port
from tests.support.helpers import make_key, make_settings, wait_until
from vitalab.broker import MosquittoAuth, NoReload, Role
from vitalab.settings import MqttTarget
from vitalab.wire import DeviceState, GatewayStatus, Sample, encode, gateway_status_topic

pytestmark = pytest.mark.asyncio

SITE = "gym-a"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
ATHLETE = UUID("3f6c1c52-5d4e-4b7a-9a51-0c8f4c1e2a10")
"""HRmax 200 measured, checked in on bike-1."""
YOUNG = UUID("9a0b7c1d-2e3f-4a5b-8c6d-7e8f9a0b1c2d")
"""Born 1996, no HRmax: HUNT at 30 years, 191.8 bpm; wears strap-1."""


def set_hours(url: str, hours: dict[str, Any] | None) -> None:
    """gym-a's opening hours, where every reader finds them (``sites.opening_hours``)."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE sites SET opening_hours = %s WHERE site_id = %s",
            (None if hours is None else Jsonb(hours), SITE),
        )


def seed(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO sites (site_id, timezone) VALUES ('gym-a', 'Europe/Oslo'), ('gym-b', 'UTC')"
        )
        conn.execute(
            "INSERT INTO devices (device_id, site_id, kind) VALUES ('bike-1', 'gym-a', 'bike'), "
            "('rower-1', 'gym-a', 'rower'), ('strap-1', 'gym-a', 'hr_strap'), "
            "('treadmill-9', 'gym-a', 'treadmill'), ('bike-b', 'gym-b', 'bike')"
        )
        conn.execute(
            "INSERT INTO participants (participant_id, site_id, hr_max_bpm, birth_year) VALUES "
            "(%s, 'gym-a', 200, 1980), (%s, 'gym-a', NULL, 1996)",
            (ATHLETE, YOUNG),
        )
        conn.execute(
            "INSERT INTO device_assignments (device_id, participant_id, started_at) VALUES "
            "('bike-1', %s, %s), ('strap-1', %s, %s)",
            (ATHLETE, NOW - timedelta(minutes=5), YOUNG, NOW - timedelta(days=1)),
        )


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """``app`` on uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def stack(
    database_url: str, target: MqttTarget, clock: PinnedClock, **settings: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The API following the broker at ``target``, with an operator of gym-a's key."""
    base: dict[str, Any] = {"live_tick_s": 0.05, "live_silent_after_s": 30.0}
    app = create_app(make_settings(**(base | settings)), database_url, clock=clock, live_mqtt=target)
    key = await make_key(database_url, "operator", Scope(frozenset({SITE}), frozenset()), name="floor")
    async with serving(app) as url, httpx.AsyncClient(base_url=url, headers=bearer(key), timeout=30) as http:
        yield app, http


def hubs(app: FastAPI) -> LiveHubs:
    found: LiveHubs = app.state.live
    return found


def hub(app: FastAPI, site: str = SITE) -> SiteHub:
    found = hubs(app).hub(site)
    assert found is not None
    return found


def is_(floor: dict[str, dict[str, Any]], device: str, **want: Any) -> bool:
    tile = floor.get(device)
    return tile is not None and all(tile.get(k) == v for k, v in want.items())


def tile_is(device: str, **want: Any) -> Any:
    def check(event: Event) -> bool:
        tile = device_of(event, device)
        return tile is not None and all(tile.get(k) == v for k, v in want.items())

    return check


async def test_the_snapshot_and_each_change_are_what_the_devices_sent(
    mosquitto: Mosquitto, database_url: str
) -> None:
    seed(database_url)
    clock = PinnedClock(NOW)
    async with (
        publisher(mosquitto.target, SITE) as dev,
        stack(database_url, mosquitto.target, clock) as (_, http),
    ):
        # retained before anyone watches: the hub gets them when it subscribes
        await dev.meta("bike-1", "bike")
        await dev.state("bike-1", NOW - timedelta(minutes=4), training="warm_up")
        await dev.meta("rower-1", "rower")
        await dev.state("rower-1", NOW - timedelta(hours=1), training="post_workout")
        await dev.state("strap-1", NOW - timedelta(minutes=2), online=True)
        async with watch(http, SITE) as live:
            first = await live.next()
            assert first.event == "snapshot"
            assert first.data["site_id"] == SITE
            assert first.data["timezone"] == "Europe/Oslo"
            assert first.data["broker"] == "connected"
            assert first.data["at"] == "2026-11-25T10:00:00Z"
            assert first.data["today_start"] == "2026-11-24T23:00:00Z"  # Oslo's midnight
            # every device of the site, and only those; one the broker never heard of is offline
            assert sorted(d["device_id"] for d in first.data["devices"]) == [
                "bike-1",
                "rower-1",
                "strap-1",
                "treadmill-9",
            ]
            never = device_of(first, "treadmill-9")
            assert never is not None
            assert (never["status"], never["in_use"], never["power_w"]) == ("offline", False, None)
            # the retained states: in the snapshot or right after it
            if not tile_is("bike-1", in_use=True)(first):
                await live.until(tile_is("bike-1", in_use=True, status="online"))

            # a workout with known values on bike-1: HRmax 200 measured, 150 bpm is 75 %: zone 3
            t = NOW - timedelta(seconds=1)
            await dev.telemetry(
                "bike-1", Sample(t=t, power_w=180, cadence_rpm=88.5, speed_kmh=31.2, hr_bpm=150)
            )
            event = await live.until(tile_is("bike-1", power_w=180.0))
            assert event.event == "device"
            assert event.data == {
                "device_id": "bike-1",
                "kind": "bike",
                "in_use": True,
                "status": "online",
                "since": "2026-11-25T09:56:00Z",  # its warm-up state's own time
                "training": "warm_up",
                "errors": [],
                "power_w": 180.0,
                "speed_kmh": 31.2,
                "cadence_rpm": 88.5,
                "stroke_rate_spm": None,
                "hr_zone": 3,
            }
            assert "hr_bpm" not in event.data  # a zone, never the heart rate
            # 180 bpm is 90 %: zone 5 (lower-inclusive edges)
            await dev.telemetry("bike-1", Sample(t=t + timedelta(seconds=1), power_w=300, hr_bpm=180))
            event = await live.until(tile_is("bike-1", power_w=300.0))
            assert event.data["hr_zone"] == 5
            # an older sample arriving late does not overwrite the newer values
            await dev.telemetry("bike-1", Sample(t=t - timedelta(seconds=5), power_w=50, hr_bpm=100))
            await dev.telemetry("bike-1", Sample(t=t + timedelta(seconds=2), power_w=301, hr_bpm=180))
            event = await live.until(lambda e: device_of(e, "bike-1") is not None)
            assert event.data["power_w"] == 301.0

            # the strap of a member born 1996 without a measured HRmax: HUNT 191.8 bpm; 115 bpm is 59.96 %
            await dev.telemetry("strap-1", Sample(t=t, hr_bpm=115))
            event = await live.until(tile_is("strap-1", hr_zone=1))
            assert event.data["in_use"] is True
            assert event.data["power_w"] is None
            # the rower starts: nobody checked in, so the default HRmax (HUNT at 40)
            await dev.state("rower-1", NOW, training="low_interval")
            await dev.telemetry("rower-1", Sample(t=t, power_w=210, stroke_rate_spm=28, hr_bpm=170))
            event = await live.until(tile_is("rower-1", power_w=210.0))
            assert event.data["stroke_rate_spm"] == 28.0
            assert event.data["hr_zone"] == zone(170, DEFAULT_HR_MAX_BPM) == 5
            assert event.data["since"] == "2026-11-25T10:00:00Z"

            # the workout ends: free, its values gone
            clock.advance(timedelta(seconds=40))
            await dev.state("bike-1", clock.now, training="post_workout")
            event = await live.until(tile_is("bike-1", in_use=False))
            assert event.data["status"] == "online"
            assert event.data["since"] == "2026-11-25T10:00:40Z"
            assert [event.data[k] for k in ("power_w", "speed_kmh", "cadence_rpm", "hr_zone")] == [None] * 4
            # a strap taken off says offline
            await dev.state("strap-1", clock.now, online=False)
            event = await live.until(tile_is("strap-1", status="offline"))
            assert event.data["in_use"] is False


async def test_the_simulated_fleet_is_shown_as_it_moves(mosquitto: Mosquitto, database_url: str) -> None:
    """The simulator's fleet publishing through its own connection: each device's tile carries the values of
    the last sample the simulator made for it."""
    seed(database_url)
    clock = PinnedClock(NOW)
    fleet = Fleet.build(SITE, 4, seed=3, mix=("bike", "rower", "treadmill", "hr_strap"))
    async with (
        stack(database_url, mosquitto.target, clock) as (_, http),
        publisher(mosquitto.target, SITE, "sim-gw") as dev,
        watch(http, SITE) as live,
    ):
        await live.next()
        sim = FleetPublisher(dev.client, fleet, "sim-gw", clock=lambda: NOW)
        await sim.announce()  # the gateway's birth, meta and states (training "manual": in use)
        last: dict[str, Sample] = {}
        for i in range(3):
            for device, sample in fleet.tick(NOW - timedelta(seconds=3 - i)):
                await sim.publish(device, [sample])
                last[device.device_id] = sample
        await sim.drain()

        def shown(device_id: str, sample: Sample) -> dict[str, Any]:
            values = {
                "power_w": sample.power_w,
                "speed_kmh": sample.speed_kmh,
                "stroke_rate_spm": sample.stroke_rate_spm,
                "cadence_rpm": sample.cadence_rpm,
            }
            return {k: None if v is None else float(v) for k, v in values.items()} | {
                "hr_zone": zone(sample.hr_bpm, DEFAULT_HR_MAX_BPM),
                "in_use": True,
                "status": "online",
                "kind": fleet_kinds[device_id],
            }

        fleet_kinds = {d.device_id: d.kind for d in fleet.devices}
        want = {device_id: shown(device_id, sample) for device_id, sample in last.items()}
        assert len(want) == 4
        floor = await live.until_floor(
            lambda floor: all({k: floor.get(d, {}).get(k) for k in w} == w for d, w in want.items())
        )
        assert {d: {k: floor[d][k] for k in w} for d, w in want.items()} == want


async def test_silence_and_last_wills_make_devices_offline(mosquitto: Mosquitto, database_url: str) -> None:
    seed(database_url)
    set_hours(database_url, {day: [["06:00", "22:00"]] for day in WEEKDAYS})  # the site's own, in Oslo
    clock = PinnedClock(NOW)
    async with (
        publisher(mosquitto.target, SITE) as dev,
        stack(database_url, mosquitto.target, clock, live_silent_after_s=30.0) as (app, http),
        watch(http, SITE) as live,
    ):
        await live.next()
        await dev.state("bike-1", NOW, training="manual")
        await dev.telemetry("bike-1", Sample(t=NOW, power_w=150))
        await live.until(tile_is("bike-1", power_w=150.0, status="online"))
        # 30 s of nothing is not yet silence; 31 s is (the API's clock, judged by the hub's timer)
        clock.advance(timedelta(seconds=30))
        seq = hub(app).seq
        hub(app).tick()
        assert hub(app).seq == seq  # tick() is synchronous: no event was made
        clock.advance(timedelta(seconds=1))
        event = await live.until(tile_is("bike-1", status="silent"))
        assert event.data["since"] == "2026-11-25T10:00:00Z"  # silent since it was last heard
        assert event.data["in_use"] is True
        # it speaks again
        await dev.telemetry("bike-1", Sample(t=clock.now, power_w=160))
        await live.until(tile_is("bike-1", status="online", power_w=160.0))

        # outside the opening hours (Oslo 6-22) silence does not count
        clock.now = datetime(2026, 11, 25, 22, 30, tzinfo=UTC)  # 23:30 in Oslo
        await dev.telemetry("bike-1", Sample(t=clock.now, power_w=170))
        await live.until(tile_is("bike-1", power_w=170.0))
        clock.advance(timedelta(minutes=10))
        seq = hub(app).seq
        hub(app).tick()
        assert hub(app).seq == seq
        assert hub(app).floor.tile("bike-1") is not None
        assert hub(app).floor.tile("bike-1").status == "online"  # type: ignore[union-attr]
        # the hours change (not set: always open); the hub reads them again (its timer: every
        # live_profile_refresh_s) and the quiet since 23:30 is silence now
        set_hours(database_url, None)
        await hub(app).refresh_hours()
        event = await live.until(tile_is("bike-1", status="silent"))
        assert event.data["since"] == "2026-11-25T22:30:00Z"
        await dev.telemetry("bike-1", Sample(t=clock.now, power_w=170))
        await live.until(tile_is("bike-1", status="online"))
        clock.now = NOW + timedelta(minutes=5)

        # a gateway with its last will: killed, the broker says it is offline, and so are its devices
        will = encode(GatewayStatus(v=1, gateway="gw-7", online=False))
        proc = await asyncio.create_subprocess_exec(
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(mosquitto.port),
            "-i",
            "gw-7",
            "-t",
            "nothing/here",
            "--will-topic",
            gateway_status_topic(SITE, "gw-7"),
            "--will-payload",
            will.decode(),
            "--will-qos",
            "1",
            "--will-retain",
        )
        try:
            await wait_until(
                lambda: _async(any(" as gw-7 " in x for x in _log_lines(mosquitto, "New client connected"))),
                timeout_s=10,
                what="the gateway's connection",
            )
            await dev.gateway("gw-7", ["rower-1", "strap-1"])
            await dev.state("rower-1", clock.now, training="idle")
            await dev.state("strap-1", clock.now, online=True)  # reachable: not yet worn
            await live.until_floor(lambda f: is_(f, "strap-1", status="online", in_use=False))
            await dev.telemetry("strap-1", Sample(t=clock.now, hr_bpm=120))  # worn: heart rates come
            await live.until_floor(
                lambda f: (
                    is_(f, "strap-1", status="online", in_use=True)
                    and is_(f, "rower-1", status="online", in_use=False)
                )
            )
        finally:
            proc.kill()
            await proc.wait()
        await live.until_floor(
            lambda f: (
                is_(f, "strap-1", status="offline", in_use=False) and is_(f, "rower-1", status="offline")
            )
        )
        assert hub(app).floor.tile("bike-1").status == "online"  # type: ignore[union-attr]
        # the gateway is back: its devices are online again
        await dev.gateway("gw-7", ["rower-1", "strap-1"])
        await live.until(tile_is("strap-1", status="online", in_use=True))


async def test_a_slow_client_is_dropped_and_the_others_keep_up(
    mosquitto: Mosquitto, database_url: str
) -> None:
    seed(database_url)
    clock = PinnedClock(NOW)
    async with (
        publisher(mosquitto.target, SITE) as dev,
        stack(database_url, mosquitto.target, clock, live_client_queue=8) as (app, http),
        watch(http, SITE) as fast,
    ):
        await fast.next()
        site = hub(app)
        # a client that never reads: its queue fills and it is dropped, without holding up anyone
        slow, _ = site.join(None)
        assert len(site.clients) == 2
        await dev.state("bike-1", NOW, training="manual")
        for i in range(40):
            await dev.telemetry("bike-1", Sample(t=NOW + timedelta(seconds=i), power_w=100 + i))
        await fast.until(tile_is("bike-1", power_w=139.0))
        assert slow.dropped
        assert slow not in site.clients
        assert await slow.next() is None  # its stream ends at once: nothing queued is kept for it
        assert len(site.clients) == 1

        # over HTTP: a client whose socket takes nothing is dropped too (queue, then send timeout)
        # (covered by the queue above; the stream closes when the queue overflows)


async def test_last_event_id_resumes_or_starts_afresh(mosquitto: Mosquitto, database_url: str) -> None:
    seed(database_url)
    clock = PinnedClock(NOW)
    async with (
        publisher(mosquitto.target, SITE) as dev,
        stack(database_url, mosquitto.target, clock, live_replay_events=6) as (app, http),
        watch(http, SITE) as keeper,
    ):
        # `keeper` keeps the site's hub alive while another client comes and goes
        await keeper.next()
        await dev.state("bike-1", NOW, training="manual")
        async with watch(http, SITE) as live:
            await live.next()
            await dev.telemetry("bike-1", Sample(t=NOW, power_w=101))
            seen = await live.until(tile_is("bike-1", power_w=101.0))
        assert seen.id is not None
        token, seq = seen.id.split(".")
        # while it was away: three changes
        for i in range(3):
            await dev.telemetry("bike-1", Sample(t=NOW + timedelta(seconds=1 + i), power_w=102 + i))
        await keeper.until(tile_is("bike-1", power_w=104.0))
        async with watch(http, SITE, {"Last-Event-ID": seen.id}) as back:
            missed = [await back.next() for _ in range(3)]
        assert [e.event for e in missed] == ["device"] * 3
        assert [e.id for e in missed] == [f"{token}.{int(seq) + i}" for i in (1, 2, 3)]
        assert [e.data["power_w"] for e in missed] == [102.0, 103.0, 104.0]

        # too far behind for the ring buffer (6 events), an unknown id, or another hub's: a fresh snapshot
        for i in range(8):
            await dev.telemetry("bike-1", Sample(t=NOW + timedelta(seconds=10 + i), power_w=110 + i))
        await keeper.until(tile_is("bike-1", power_w=117.0))
        for last_id in (seen.id, "nonsense", f"ffffffff.{seq}", f"{token}.999999"):
            async with watch(http, SITE, {"Last-Event-ID": last_id}) as again:
                first = await again.next()
            assert first.event == "snapshot", last_id
            assert tile_is("bike-1", power_w=117.0)(first)
            assert first.id == f"{token}.{hub(app).seq}"


async def test_out_of_scope_and_unknown_sites_are_404_and_roles_are_checked(
    mosquitto: Mosquitto, database_url: str
) -> None:
    seed(database_url)
    async with stack(database_url, mosquitto.target, PinnedClock(NOW)) as (app, http):
        out = await http.get("/v1/sites/gym-b/live")
        unknown = await http.get("/v1/sites/gym-z/live")
        assert_problem(out, 404, "path.site_id")
        assert_problem(unknown, 404, "path.site_id")
        assert out.json()["detail"].replace("gym-b", "gym-z") == unknown.json()["detail"]
        assert hubs(app).hub("gym-b") is None  # nothing was started for it
        for role in ("integrator", "kiosk", "researcher"):
            key = await make_key(database_url, role, Scope(frozenset({SITE}), frozenset()), name=role)
            assert_problem(await http.get(f"/v1/sites/{SITE}/live", headers=bearer(key)), 403)
        assert_problem(await http.get(f"/v1/sites/{SITE}/live", headers={"Authorization": ""}), 401)


async def test_one_broker_subscription_per_site_whatever_the_number_of_clients(
    mosquitto: Mosquitto, database_url: str
) -> None:
    seed(database_url)
    clock = PinnedClock(NOW)
    admin = await make_key(database_url, "admin", name="admin")
    async with (
        stack(database_url, mosquitto.target, clock) as (app, http),
        contextlib.AsyncExitStack() as streams,
    ):
        a = [await streams.enter_async_context(watch(http, SITE)) for _ in range(4)]
        b = [await streams.enter_async_context(watch(http, "gym-b", bearer(admin))) for _ in range(3)]
        for reader in (*a, *b):
            assert (await reader.next()).event == "snapshot"
        assert hub(app, SITE).connections == 1
        assert hub(app, "gym-b").connections == 1
        assert len(hub(app, SITE).clients) == 4
        assert len(hub(app, "gym-b").clients) == 3
        token_a, token_b = hub(app, SITE).token, hub(app, "gym-b").token
        # the broker saw one clean-session connection per site
        connected = _log_lines(mosquitto, "New client connected")
        assert len([x for x in connected if f"vitalab-live-{SITE}-{token_a}" in x]) == 1
        assert len([x for x in connected if f"vitalab-live-gym-b-{token_b}" in x]) == 1
        assert all(", c1," in x for x in connected if "vitalab-live-" in x)  # clean session
    # every client gone: the hubs closed and left the broker
    assert hubs(app).hub(SITE) is None
    assert hubs(app).hub("gym-b") is None
    for token in (token_a, token_b):

        async def left(token: str = token) -> bool:
            return any(token in x for x in _log_lines(mosquitto, "disconnected"))

        await wait_until(left, timeout_s=10, what=f"the broker to log the hub {token} leaving")


async def _async(value: bool) -> bool:
    return value


def _log_lines(mosquitto: Mosquitto, marker: str) -> list[str]:
    text = (mosquitto.workdir / "mosquitto.log").read_text(errors="replace")
    return [line for line in text.splitlines() if marker in line]


async def test_a_client_whose_socket_takes_nothing_is_disconnected(
    mosquitto: Mosquitto, database_url: str
) -> None:
    """Over HTTP: a client that reads nothing fills its socket, then its queue; the server drops it (queue
    overflow, then the send timeout for the write that is stuck) and closes its connection, while a client
    that reads gets every change."""
    import socket

    seed(database_url)
    key = await make_key(database_url, "operator", Scope(frozenset({SITE}), frozenset()), name="stuck")
    async with (
        publisher(mosquitto.target, SITE) as dev,
        stack(
            database_url, mosquitto.target, PinnedClock(NOW), live_client_queue=16, live_send_timeout_s=1.0
        ) as (
            app,
            http,
        ),
        watch(http, SITE) as fast,
    ):
        await fast.next()
        # a bare socket that nobody reads (no transport reading ahead into a buffer of its own)
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.setblocking(False)
        loop = asyncio.get_running_loop()
        port = int(str(http.base_url).rsplit(":", 1)[1].rstrip("/"))
        await loop.sock_connect(raw, ("127.0.0.1", port))
        request = (
            f"GET /v1/sites/{SITE}/live HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n"
        )
        await loop.sock_sendall(raw, request.encode())
        await wait_until(lambda: _async(len(hub(app).clients) == 2), timeout_s=10, what="the second client")
        # a machine reporting 32 long error codes: each tile event is ~2.5 kB (the socket buffers fill sooner)
        errors = [f"E{i:02d}-" + "x" * 59 for i in range(32)]
        state = DeviceState(v=1, device="bike-1", t=NOW, online=True, training="manual", errors=errors)
        await dev.client.publish("vitalab/v1/gym-a/dev/bike-1/state", encode(state), qos=1, retain=True)
        n = 4000
        # the other client reads all along
        last = asyncio.create_task(fast.until(tile_is("bike-1", power_w=float(n - 1)), timeout_s=60))
        for i in range(n):
            await dev.client.publish(
                "vitalab/v1/gym-a/dev/bike-1/telemetry",
                f'{{"v":1,"device":"bike-1","seq":{i},"samples":[{{"t":"2026-11-25T10:00:00Z",'
                f'"power_w":{i % 4000}}}]}}'.encode(),
                qos=0,
            )
        await wait_until(
            lambda: _async(len(hub(app).clients) == 1), timeout_s=30, what="the stuck client dropped"
        )
        await last
        # the server closed the stuck connection: reading it now reaches its end
        received = 0
        try:
            while chunk := await asyncio.wait_for(loop.sock_recv(raw, 65536), 10):
                received += len(chunk)
        finally:
            raw.close()
        assert 0 < received < n * 2000, received  # the start of the stream, not all of it


async def test_a_check_in_after_the_start_changes_the_zone(mosquitto: Mosquitto, database_url: str) -> None:
    """The zone follows who is checked in: a check-in made at the desk after the member stepped on is read
    within ``live_profile_refresh_s``."""
    seed(database_url)
    clock = PinnedClock(NOW)
    async with (
        publisher(mosquitto.target, SITE) as dev,
        stack(database_url, mosquitto.target, clock, live_profile_refresh_s=0.2) as (_, http),
        watch(http, SITE) as live,
    ):
        await live.next()
        await dev.state("rower-1", NOW, training="manual")
        await dev.telemetry("rower-1", Sample(t=NOW, power_w=150, hr_bpm=150))
        # nobody checked in: HUNT at 40 (185.4 bpm): 150 bpm is 80.9 %, zone 4
        await live.until(tile_is("rower-1", power_w=150.0, hr_zone=4))
        with psycopg.connect(database_url) as conn:  # HRmax 200 measured: 75 %, zone 3
            conn.execute(
                "INSERT INTO device_assignments (device_id, participant_id, started_at) "
                "VALUES ('rower-1', %s, %s)",
                (ATHLETE, NOW),
            )
        event = await live.until(tile_is("rower-1", hr_zone=3))
        assert event.data["power_w"] == 150.0


async def test_a_broker_restart_is_followed_and_announced(mosquitto: Mosquitto, database_url: str) -> None:
    seed(database_url)
    clock = PinnedClock(NOW)
    async with stack(database_url, mosquitto.target, clock) as (app, http), watch(http, SITE) as live:
        assert (await live.next()).data["broker"] == "connected"
        async with publisher(mosquitto.target, SITE) as dev:
            await dev.state("bike-1", NOW, training="manual")
        await live.until(tile_is("bike-1", in_use=True))
        mosquitto.stop()
        event = await live.until(lambda e: e.event == "broker", timeout_s=30)
        assert event.data == {"broker": "disconnected"}
        mosquitto.start()  # with its persistence: the retained states are still there
        event = await live.until(lambda e: e.event == "broker", timeout_s=30)
        assert event.data == {"broker": "connected"}
        assert hub(app).connections == 2  # one subscription again, on the new connection
        async with publisher(mosquitto.target, SITE) as dev:
            await dev.telemetry("bike-1", Sample(t=NOW, power_w=222))
        await live.until(tile_is("bike-1", power_w=222.0, in_use=True))


async def test_each_change_arrives_within_a_second(mosquitto: Mosquitto, database_url: str) -> None:
    """From the device's publish to the event in the client's hands: under a second each (milliseconds
    here; the bound is the issue's)."""
    seed(database_url)
    loop = asyncio.get_running_loop()
    async with (
        publisher(mosquitto.target, SITE) as dev,
        stack(database_url, mosquitto.target, PinnedClock(NOW)) as (_, http),
        watch(http, SITE) as live,
    ):
        await live.next()
        await dev.state("bike-1", NOW, training="manual")
        await live.until(tile_is("bike-1", in_use=True))
        delays = []
        for i in range(20):
            sent = loop.time()
            await dev.telemetry("bike-1", Sample(t=NOW + timedelta(seconds=i), power_w=100 + i))
            await live.until(tile_is("bike-1", power_w=float(100 + i)))
            delays.append(loop.time() - sent)
        assert max(delays) < 1.0, delays


async def test_the_hub_reads_with_the_read_only_live_view_account(database_url: str, tmp_path: Path) -> None:
    """Against a Mosquitto that enforces vitalab's account store: the API logs in with the live-view account
    (read-only, its sites) and follows what the site's simulator account publishes."""
    from tests.broker.conftest import _start_mosquitto, _stop

    seed(database_url)
    auth = MosquittoAuth(tmp_path / "auth", NoReload())
    viewer = auth.add_service(Role.LIVE_VIEW, "api", sites=[SITE])
    sim = auth.add_service(Role.SIMULATOR, "sim", site=SITE)
    auth.apply()
    proc, port, _ = _start_mosquitto(tmp_path, auth)
    try:
        as_viewer = MqttTarget("127.0.0.1", port, username="api", password=viewer.password)
        as_sim = MqttTarget("127.0.0.1", port, username="sim", password=sim.password)
        async with (
            stack(database_url, as_viewer, PinnedClock(NOW)) as (_, http),
            watch(http, SITE) as live,
            aiomqtt.Client(
                "127.0.0.1", port, username="sim", password=as_sim.password, identifier="sim"
            ) as c,
        ):
            assert (await live.next()).data["broker"] == "connected"
            dev = Devices(c, SITE)
            await dev.state("bike-1", NOW, training="manual")
            await dev.telemetry("bike-1", Sample(t=NOW, power_w=123))
            await live.until(tile_is("bike-1", power_w=123.0, in_use=True))
    finally:
        _stop(proc)
