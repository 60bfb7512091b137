"""The live floor's pure parts: the heart-rate zone (checked against analytics.hr's band thresholds), HRmax,
opening hours, the fold of messages into tiles, and the hub's event ids, ring buffer and client queues."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from analytics.hr import ZONE5_EDGES_PCT_HRMAX, band_index, thresholds_bpm
from api.live.floor import (
    DEFAULT_HR_MAX_BPM,
    Floor,
    FloorConfig,
    KnownDevice,
    hr_max_of,
    is_open,
    parse_hours,
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


def test_opening_hours_in_the_sites_timezone() -> None:
    assert parse_hours("6-22") == (6, 22)
    for bad in ("6", "22-22", "a-b", "6-25"):
        with pytest.raises(ValueError, match="opening hours"):
            parse_hours(bad)
    oslo = "Europe/Oslo"  # UTC+1 in November
    assert is_open(datetime(2026, 11, 25, 5, 0, tzinfo=UTC), (6, 22), oslo)
    assert not is_open(datetime(2026, 11, 25, 4, 59, tzinfo=UTC), (6, 22), oslo)
    assert not is_open(datetime(2026, 11, 25, 21, 0, tzinfo=UTC), (6, 22), oslo)
    assert is_open(datetime(2026, 11, 25, 23, 0, tzinfo=UTC), (22, 6), oslo)  # midnight in Oslo
    assert not is_open(datetime(2026, 11, 25, 12, 0, tzinfo=UTC), (22, 6), oslo)
    assert is_open(datetime(2026, 11, 25, 3, 0, tzinfo=UTC), None, oslo)


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


class _NoDatabase:
    async def site(self, site_id: str) -> tuple[list[KnownDevice], str]:
        return [], "UTC"

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
