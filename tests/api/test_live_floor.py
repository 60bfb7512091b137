"""The live floor's pure parts: the heart-rate zone (checked against analytics.hr's band thresholds), HRmax,
silence only while the site is open (its opening hours), the fold of messages into tiles, and the hub's event
ids, ring buffer and client queues, and how it learns the site's hours."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from analytics.hr import ZONE5_EDGES_PCT_HRMAX, band_index, thresholds_bpm
from analytics.opening_hours import WEEKDAYS, SiteHours, check
from api.live.floor import (
    DEFAULT_HR_MAX_BPM,
    Floor,
    FloorConfig,
    KnownDevice,
    Tile,
    hr_max_of,
    zone,
)
from api.live.hub import HubConfig, SiteHub
from vitalab.wire import (
    DeviceMeta,
    DeviceState,
    GatewayStatus,
    Sample,
    TelemetryMessage,
    TopicKind,
    device_topic,
    encode,
    gateway_status_topic,
)

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
SITE = "gym-a"


def test_zones_are_the_analytics_bands_of_hrmax() -> None:
    """The 5-zone model by %HRmax, lower-inclusive, as analytics.hr computes it for sessions."""
    hr = np.arange(60.0, 221.0, 0.5)
    for hr_max in (160.0, 185.4, 190.0, 200.0):
        thr = thresholds_bpm(ZONE5_EDGES_PCT_HRMAX, np.array([hr_max]))
        bands = band_index(hr, thr, np.array([hr.size], dtype=np.int64))
        assert [zone(float(h), hr_max) for h in hr] == [int(b) + 1 for b in bands]
    assert zone(114.0, 190.0) == 2  # exactly 60 %: the upper zone
    assert zone(113.9, 190.0) == 1
    assert zone(94.0, 190.0) == 0  # below 50 %
    assert zone(171.0, 190.0) == 5  # 90 %
    assert zone(None, 190.0) is None


def test_hr_max_is_measured_else_hunt_from_age_else_the_default() -> None:
    assert hr_max_of(200.0, 1980, 2026) == 200.0
    assert hr_max_of(None, 1996, 2026) == pytest.approx(211 - 0.64 * 30)
    assert hr_max_of(None, None, 2026) == DEFAULT_HR_MAX_BPM == pytest.approx(211 - 0.64 * 40)


def _state(
    device: str, t: datetime, *, online: bool = True, training: str | None = None
) -> tuple[str, bytes]:
    msg = DeviceState(v=1, device=device, t=t, online=online, training=training)  # type: ignore[arg-type]
    return device_topic(SITE, device, TopicKind.STATE), encode(msg)


def _telemetry(device: str, *samples: Sample) -> tuple[str, bytes]:
    msg = TelemetryMessage(v=1, device=device, seq=1, samples=list(samples))
    return device_topic(SITE, device, TopicKind.TELEMETRY), encode(msg)


def _known(device: str, kind: str, **kw: object) -> KnownDevice:
    base: dict[str, object] = {
        "online": None,
        "training": None,
        "errors": [],
        "state_at": None,
        "last_seen": None,
    }
    return KnownDevice(device_id=device, kind=kind, **(base | kw))  # type: ignore[arg-type]


def test_the_fold_of_messages_into_tiles() -> None:
    floor = Floor(SITE, FloorConfig(silent_after_s=30))
    tiles = floor.load([_known("bike-1", "bike"), _known("strap-1", "hr_strap")])
    assert {t.device_id: t.status for t in tiles} == {"bike-1": "offline", "strap-1": "offline"}
    # a workout starts: in use since the state's own time
    (t,) = floor.on_message(*_state("bike-1", T0 - timedelta(seconds=5), training="warm_up"), T0)
    assert (t.in_use, t.status, t.since) == (True, "online", T0 - timedelta(seconds=5))
    # a state without a training status changes none
    assert floor.on_message(*_state("bike-1", T0), T0) == []
    (t,) = floor.on_message(*_telemetry("bike-1", Sample(t=T0, power_w=200, hr_bpm=150)), T0)
    assert (t.power_w, t.hr_zone, t.since) == (
        200.0,
        zone(150, DEFAULT_HR_MAX_BPM),
        T0 - timedelta(seconds=5),
    )
    # the participant checked in has HRmax 160: 150 bpm is 93.75 %
    (t,) = floor.set_profiles({"bike-1": 160.0})
    assert t.hr_zone == 5
    # silence: nothing for more than 30 s while in use
    assert floor.tick(T0 + timedelta(seconds=30)) == []
    (t,) = floor.tick(T0 + timedelta(seconds=31))
    assert (t.status, t.since, t.in_use) == ("silent", T0, True)
    assert floor.tick(T0 + timedelta(seconds=40)) == []  # said once
    (t,) = floor.on_message(*_telemetry("bike-1", Sample(t=T0 + timedelta(seconds=41), power_w=210)), T0)
    assert t.status == "online"
    # the workout ends: free, no values; the next use does not show the last one's
    (t,) = floor.on_message(*_state("bike-1", T0 + timedelta(minutes=1), training="post_workout"), T0)
    assert (t.in_use, t.power_w, t.hr_zone) == (False, None, None)
    # a strap is in use while its heart rates come, free once they stop, offline when it says so
    (t,) = floor.on_message(*_state("strap-1", T0, online=True), T0)
    assert (t.status, t.in_use) == ("online", False)
    (t,) = floor.on_message(*_telemetry("strap-1", Sample(t=T0, hr_bpm=120)), T0)
    assert t.in_use
    (t,) = floor.tick(T0 + timedelta(seconds=31))
    assert (t.in_use, t.status) == (False, "online")
    (t,) = floor.on_message(*_state("strap-1", T0 + timedelta(seconds=32), online=False), T0)
    assert t.status == "offline"


def test_gateways_stale_retained_states_and_bad_messages() -> None:
    floor = Floor(SITE, FloorConfig(idle_silent_after_s=600))
    floor.load([_known("rower-1", "rower", online=True, training="idle", state_at=T0, last_seen=T0)])
    # a retained state older than the stored one is stale; the same state live is news
    old = _state("rower-1", T0 - timedelta(hours=1), training="low_interval")
    assert floor.on_message(*old, T0, retained=True) == []
    (t,) = floor.on_message(*old, T0)
    assert t.in_use
    floor.on_message(*_state("rower-1", T0, training="idle"), T0)
    birth = GatewayStatus(v=1, gateway="gw-1", online=True, devices=["rower-1"])
    assert floor.on_message(gateway_status_topic(SITE, "gw-1"), encode(birth), T0) == []
    will = GatewayStatus(v=1, gateway="gw-1", online=False)
    (t,) = floor.on_message(gateway_status_topic(SITE, "gw-1"), encode(will), T0)
    assert (t.status, t.since) == ("offline", T0)
    (t,) = floor.on_message(gateway_status_topic(SITE, "gw-1"), encode(birth), T0 + timedelta(seconds=9))
    assert t.status == "online"
    # a free device is silent only after idle_silent_after_s (set here)
    assert floor.tick(T0 + timedelta(seconds=599)) == []
    (t,) = floor.tick(T0 + timedelta(seconds=609.5))
    assert t.status == "silent"
    # nothing outside the contract or of another site changes anything
    topic = device_topic(SITE, "rower-1", TopicKind.TELEMETRY)
    assert floor.on_message(topic, b"{not json", T0) == []
    assert floor.on_message(device_topic("gym-b", "x-1", TopicKind.STATE), _state("x-1", T0)[1], T0) == []
    assert floor.on_message("elsewhere/topic", b"{}", T0) == []
    # a device the database does not know: its meta names its kind
    meta = DeviceMeta(v=1, device="new-1", kind="treadmill")
    (t,) = floor.on_message(device_topic(SITE, "new-1", TopicKind.META), encode(meta), T0)
    assert (t.kind, t.status) == ("treadmill", "offline")


OSLO = ZoneInfo("Europe/Oslo")
S = timedelta(seconds=1)


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc,arg-type]


def _in_a_workout(hours: SiteHours, last: datetime) -> Floor:
    floor = Floor(SITE, FloorConfig(silent_after_s=30), hours)
    floor.load([_known("bike-1", "bike")])
    floor.on_message(*_state("bike-1", last, training="manual"), last)
    floor.on_message(*_telemetry("bike-1", Sample(t=last, power_w=150)), last)
    return floor


def _status(tiles: list[Tile]) -> list[tuple[str, datetime | None]]:
    return [(t.status, t.since) for t in tiles]


def test_silence_counts_only_while_the_site_is_open() -> None:
    week = SiteHours(OSLO, check({day: [("06:00", "22:00")] for day in WEEKDAYS}))
    evening = _utc(2026, 11, 25, 20, 50)  # 21:50 in Oslo
    floor = _in_a_workout(week, evening)
    assert floor.tick(evening + 30 * S) == []
    assert _status(floor.tick(evening + 31 * S)) == [("silent", evening)]
    # 22:00 in Oslo: closed, nobody expects it to send, its silence is over
    assert _status(floor.tick(_utc(2026, 11, 25, 21, 0))) == [("online", _utc(2026, 11, 25, 21, 0))]
    assert floor.tick(_utc(2026, 11, 25, 23, 30)) == []  # the night: nothing
    assert floor.tick(_utc(2026, 11, 26, 4, 59)) == []
    # 06:00 in Oslo: the quiet counts from the opening
    assert floor.tick(_utc(2026, 11, 26, 5, 0) + 30 * S) == []
    assert _status(floor.tick(_utc(2026, 11, 26, 5, 0) + 31 * S)) == [("silent", _utc(2026, 11, 26, 5, 0))]
    # any message ends it
    (t,) = floor.on_message(*_telemetry("bike-1", Sample(t=_utc(2026, 11, 26, 5, 2), power_w=90)), evening)
    assert t.status == "online"


def test_silence_keeps_wall_clock_hours_across_a_clock_change_and_midnight_utc() -> None:
    week = SiteHours(OSLO, check({day: [("06:00", "22:00")] for day in WEEKDAYS}))
    # summer time starts in Oslo on 2026-03-29 (02:00 CET -> 03:00 CEST): 06:00 is 04:00 UTC that day
    floor = _in_a_workout(week, _utc(2026, 3, 28, 20, 30))  # 21:30 CET
    assert floor.tick(_utc(2026, 3, 28, 20, 45)) != []  # silent
    assert floor.tick(_utc(2026, 3, 28, 21, 0)) != []  # 22:00 CET: closed, back to online
    assert floor.tick(_utc(2026, 3, 29, 3, 59)) == []  # 05:59 CEST
    assert _status(floor.tick(_utc(2026, 3, 29, 4, 0) + 31 * S)) == [("silent", _utc(2026, 3, 29, 4, 0))]
    # a night across midnight UTC: Monday 22:00 to Tuesday 02:00 (UTC) is one opening
    night = SiteHours(hours=check({"mon": [("22:00", "24:00")], "tue": [("00:00", "02:00")]}))
    floor = _in_a_workout(night, _utc(2026, 11, 23, 21, 0))
    assert floor.tick(_utc(2026, 11, 23, 21, 59)) == []  # closed
    assert _status(floor.tick(_utc(2026, 11, 23, 22, 0) + 31 * S)) == [("silent", _utc(2026, 11, 23, 22, 0))]
    assert floor.tick(_utc(2026, 11, 24, 0, 0)) == []  # midnight: still open, still silent
    assert floor.tick(_utc(2026, 11, 24, 1, 59)) == []
    assert _status(floor.tick(_utc(2026, 11, 24, 2, 0))) == [("online", _utc(2026, 11, 24, 2, 0))]


def test_new_hours_apply_at_once() -> None:
    closed = SiteHours(OSLO, {})  # no day named: closed all week
    last = _utc(2026, 11, 25, 10, 0)
    floor = _in_a_workout(closed, last)
    assert floor.tick(last + 5 * S * 60) == []
    # the hours are removed (not set: always open): silent since it was last heard
    assert _status(floor.set_hours(SiteHours(OSLO, None), last + 5 * S * 60)) == [("silent", last)]
    assert _status(floor.set_hours(closed, last + 6 * S * 60)) == [("online", last + 6 * S * 60)]


class _Hours:
    """A database whose site's opening hours change."""

    def __init__(self, hours: SiteHours) -> None:
        self.now = hours

    async def site(self, site_id: str) -> tuple[list[KnownDevice], SiteHours]:
        return [_known("bike-1", "bike", online=True, training="manual", state_at=T0, last_seen=T0)], self.now

    async def hours(self, site_id: str) -> SiteHours:
        return self.now

    async def profiles(self, site_id: str, now: datetime) -> Mapping[str, float]:
        return {}


@pytest.mark.asyncio
async def test_a_hub_learns_the_sites_hours_at_start_and_when_they_change() -> None:
    source = _Hours(SiteHours(ZoneInfo("Asia/Tokyo"), {}))
    now = T0 + timedelta(minutes=5)
    hub = SiteHub(SITE, config=HubConfig(tick_s=3600), clock=lambda: now, source=source, target=None)
    await hub.start()
    try:
        client, first = hub.join(None)
        assert json.loads(first[0].data)["timezone"] == "Asia/Tokyo"
        hub.tick()
        assert hub.floor.tile("bike-1").status == "online"  # type: ignore[union-attr]  # closed
        source.now = SiteHours(OSLO, None)
        await hub.refresh_hours()
        event = await asyncio.wait_for(client.next(), 5)
        assert event is not None
        assert event.kind == "device"
        assert (json.loads(event.data)["status"], hub.timezone) == ("silent", "Europe/Oslo")
    finally:
        await hub.close()


class _NoDatabase:
    async def site(self, site_id: str) -> tuple[list[KnownDevice], SiteHours]:
        return [], SiteHours()

    async def hours(self, site_id: str) -> SiteHours:
        return SiteHours()

    async def profiles(self, site_id: str, now: datetime) -> Mapping[str, float]:
        return {}


@pytest.mark.asyncio
async def test_event_ids_ring_buffer_and_bounded_client_queues() -> None:
    hub = SiteHub(
        SITE,
        config=HubConfig(client_queue=3, replay_events=4),
        clock=lambda: T0,
        source=_NoDatabase(),
        target=None,
    )
    client, first = hub.join(None)
    assert [e.kind for e in first] == ["snapshot"]
    assert first[0].id == f"{hub.token}.0"
    for i in range(3):
        hub.on_message(*_telemetry(f"bike-{i}", Sample(t=T0, power_w=100 + i)))
    got = [await asyncio.wait_for(client.next(), 1) for _ in range(3)]
    assert [e.id for e in got if e is not None] == [f"{hub.token}.{n}" for n in (1, 2, 3)]
    # resume: what came after, while the ring buffer (4 events) holds it all
    _, after = hub.join(f"{hub.token}.1")
    assert [e.seq for e in after] == [2, 3]
    _, after = hub.join(f"{hub.token}.3")
    assert after == []
    for i in range(3, 6):
        hub.on_message(*_telemetry(f"bike-{i}", Sample(t=T0, power_w=100 + i)))
    # the buffer holds 3..6 now: from 2 on is still whole, from 1 on is not
    _, after = hub.join(f"{hub.token}.2")
    assert [e.seq for e in after] == [3, 4, 5, 6]
    for stale in (f"{hub.token}.1", f"{hub.token}.7", f"other.{hub.seq}", "", "x"):
        _, after = hub.join(stale)
        assert [e.kind for e in after] == ["snapshot"], stale
    # the first client read 3 and has 3 waiting: a full queue, not yet an overflow
    assert not client.dropped
    assert client in hub.clients
    slow, _ = hub.join(None)
    for i in range(4):
        hub.on_message(*_telemetry("bike-0", Sample(t=T0 + timedelta(seconds=1 + i), power_w=200 + i)))
    assert slow.dropped  # 4 events, a queue of 3: dropped rather than buffered
    assert slow not in hub.clients
    assert client.dropped  # the first client stopped reading too
    assert hub.clients == set() or all(not c.dropped for c in hub.clients)
    assert await asyncio.wait_for(slow.next(), 1) is None
