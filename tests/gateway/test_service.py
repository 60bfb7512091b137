"""The gateway pipeline and service: split records, merging, states, bad frames dead-lettered while the good
ones flow; and the service against a real Mosquitto."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from gateway import ant, cycling, encode_frame, ftms, hrm
from gateway.buffer import Buffer
from gateway.decode import Record, source_of
from gateway.publisher import GatewayPublisher
from gateway.service import GatewayService, Pipeline, floor_time
from gateway.transport import DeviceInfo, Event, Frame, Link, Rejected
from simulators.rawdev import split
from tests.conftest import Mosquitto
from tests.gateway.test_publisher import Received, Subscriber
from vitalab.wire import Sample, TelemetryMessage, TopicKind, decode_state, subscription

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
BIKE = DeviceInfo("bike-1", "bike", "ble", model="SimBike 1")


def frame(device: str, record: Record, t: datetime) -> Frame:
    return Frame(device, source_of(record), encode_frame(record), t)


def bike(power: int, hr: int | None = 120) -> ftms.IndoorBikeData:
    bits = (1 << 2) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 11) | ((1 << 9) if hr else 0)
    return ftms.IndoorBikeData(
        flags=bits,
        speed_kmh=30.5,
        cadence_rpm=88.5,
        distance_m=1200,
        resistance_level=12,
        power_w=power,
        energy_total_kcal=40,
        hr_bpm=hr,
        elapsed_s=300,
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_split_records_come_back_as_one_sample() -> None:
    parts = split(bike(200))
    assert len(parts) == 2
    p = Pipeline()
    p.handle([BIKE], "t", 0.0)
    out = p.handle([frame("bike-1", parts[0], at(0.1)), frame("bike-1", parts[1], at(0.2))], "t", 0.0)
    out2 = p.handle([frame("bike-1", parts[0], at(1.1))], "t", 0.0, live=False)
    assert out.samples == []  # the period is still open
    [(device, s)] = out2.samples
    assert device == "bike-1"
    assert s.t == at(0)  # the start of the period
    assert (s.power_w, s.speed_kmh, s.cadence_rpm, s.hr_bpm, s.elapsed_s) == (200, 30.5, 88.5, 120, 300)
    assert p.stats.notes == {}


def test_a_split_that_never_finishes_keeps_what_arrived() -> None:
    first, _ = split(bike(210))
    p = Pipeline()
    p.handle([frame("bike-1", first, at(0))], "t", 0.0)
    out = p.handle([frame("bike-1", split(bike(220))[0], at(1))], "t", 0.0, live=False)
    [(_, s)] = out.samples
    assert s.power_w == 210
    assert s.speed_kmh is None  # it was in the part that never came
    assert p.stats.notes["incomplete_split"] == 1


def test_bad_frames_are_dead_lettered_while_the_good_ones_flow() -> None:
    p = Pipeline(devices=[BIKE])
    events: list[Event] = []
    for i in range(10):
        events.append(frame("bike-1", bike(100 + i), at(i)))
        events.append(Frame("bike-1", "ble:2ad2", b"\x00", at(i)))  # too short
        events.append(Frame("bike-1", "ble:2ad2", encode_frame(bike(1)) + b"\x01", at(i)))  # trailing byte
        events.append(Frame("bike-1", "ble:ffff", b"\x01\x02", at(i)))  # no such characteristic
    events.append(Rejected("bike-1", "mqtt:raw", b"{", at(10), "malformed"))
    out = p.handle(events, "t", 0.0, live=False)
    drained = p.drain()
    powers = [s.power_w for _, s in out.samples + drained.samples]
    assert powers == [100 + i for i in range(10)]
    assert p.stats.dead_frames == {"bike-1": 31}
    assert len(out.dead) == 31
    assert {d.source for d in out.dead} == {"ble:2ad2", "ble:ffff", "mqtt:raw"}
    assert all(d.reason for d in out.dead)


def test_merge_prefers_dedicated_sensors_and_keeps_every_rr() -> None:
    p = Pipeline(devices=[BIKE])
    strap = hrm.HeartRateMeasurement(flags=0b10110, hr_bpm=131, rr_ms=(500.0, 1000.0))
    cps = cycling.CyclingPower(flags=0, power_w=250)
    events = [
        frame("bike-1", bike(200, hr=120), at(0.1)),
        frame("bike-1", strap, at(0.5)),
        frame("bike-1", cps, at(0.6)),
        frame("bike-1", bike(205, hr=121), at(0.9)),  # the machine again in the same period: newest wins
    ]
    p.handle(events, "t", 0.0)
    [(_, s)] = p.drain().samples
    assert s.hr_bpm == 131  # the strap's, not the machine's
    assert s.power_w == 250  # the power meter's
    assert s.cadence_rpm == 88.5  # only the machine has it
    assert s.rr_ms == [500.0, 1000.0]
    assert s.t == at(0)


def test_ant_hrm_repeats_do_not_repeat_rr() -> None:
    p = Pipeline()
    page = ant.HrmPage(page=4, page_specific=0xFF | (1024 << 8), beat_time_s=2.0, beat_count=7, hr_bpm=60)
    again = ant.HrmPage(page=4, page_specific=0xFF | (1024 << 8), beat_time_s=2.0, beat_count=7, hr_bpm=61)
    nxt = ant.HrmPage(page=4, page_specific=0xFF | (2048 << 8), beat_time_s=3.0, beat_count=8, hr_bpm=60)
    p.handle([frame("hr-1", page, at(0.0)), frame("hr-1", again, at(0.25))], "t", 0.0)
    p.handle([frame("hr-1", nxt, at(1.0))], "t", 0.0)
    samples = [s for _, s in p.drain().samples]
    assert [s.rr_ms for s in samples] == [[1000.0]]
    assert p.stats.samples == 2  # the first period was emitted when the second began


def test_states_from_status_frames_and_links() -> None:
    p = Pipeline(devices=[BIKE])
    start = ftms.MachineStatus(op_code=0x04, event="")
    key = ftms.MachineStatus(op_code=0x03, event="")
    high = ftms.TrainingStatus(flags=0, status_code=0x04, status="", training="high_interval")
    out = p.handle([frame("bike-1", start, at(0)), frame("bike-1", high, at(0))], "t", 0.0)
    assert out.states["bike-1"].training == "high_interval"
    assert out.states["bike-1"].online
    out = p.handle([frame("bike-1", key, at(1))], "t", 0.0)
    assert out.states["bike-1"].errors == ["safety_key"]
    out = p.handle([Link("bike-1", False, at(2))], "t", 0.0)
    assert not out.states["bike-1"].online
    assert out.states["bike-1"].errors == ["safety_key"]  # a snapshot: everything known
    out = p.handle([Link("bike-1", True, at(3)), frame("bike-1", start, at(3))], "t", 0.0)
    assert out.states["bike-1"].online
    assert out.states["bike-1"].errors == []


def test_unknown_devices_are_discovered_from_their_frames() -> None:
    p = Pipeline()
    fe = ant.FeGeneral(equipment_type=22, elapsed_s=4.0, distance_m=10, speed_mps=3.0, hr_bpm=140, fe_state=3)
    out = p.handle(
        [frame("row-9", fe, at(0)), frame("hr-9", hrm.HeartRateMeasurement(flags=0, hr_bpm=70), at(0))],
        "t",
        0.0,
    )
    kinds = {m.device_id: (m.kind, m.transport) for m in out.metas}
    assert kinds == {"row-9": ("rower", "ant"), "hr-9": ("hr_strap", "ble")}
    assert out.states["row-9"].training == "manual"  # FE state "in use"


def test_late_frames_are_published_on_their_own_and_quiet_devices_expire() -> None:
    p = Pipeline(devices=[BIKE], hold_s=1.0)
    p.handle([frame("bike-1", bike(100), at(5))], "t", 10.0)
    late = p.handle([frame("bike-1", bike(99), at(3))], "t", 10.1)
    assert [(s.t, s.power_w) for _, s in late.samples] == [(at(3), 99)]
    assert p.stats.late_frames == 1
    assert p.expire(10.5).samples == []
    [(_, s)] = p.expire(11.2).samples
    assert s.power_w == 100


def test_floor_time() -> None:
    assert floor_time(at(3.7), 1.0) == at(3)
    assert floor_time(at(3.7), 0.5) == at(3.5)
    assert floor_time(at(3.7), 2.0) == at(2)


class ListTransport:
    name = "list"
    live = False

    def __init__(self, batches: Sequence[Sequence[Event]]) -> None:
        self.batches = batches

    async def events(self) -> AsyncIterator[Sequence[Event]]:
        for b in self.batches:
            yield b
            await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_service_publishes_telemetry_and_state_and_keeps_dead_frames(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    sub = Subscriber(
        mosquitto.target,
        "svc-sub",
        [subscription(TopicKind.TELEMETRY, site="gym"), subscription(TopicKind.STATE, site="gym")],
        persistent=False,
    ).start()
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    batches: list[list[Event]] = [[BIKE]]
    for i in range(20):
        parts = split(bike(150 + i))
        batches.append([*(frame("bike-1", p, t0 + timedelta(seconds=i)) for p in parts)])
        if i % 5 == 0:
            batches[-1].append(Frame("bike-1", "ble:2ad2", b"\xff", t0 + timedelta(seconds=i)))
    try:
        async with GatewayPublisher(
            mosquitto.target, "gym", "gw-svc", tmp_path / "gw.sqlite", batch_samples=5
        ) as pub:
            service = GatewayService(pub, [ListTransport(batches)])
            await service.run()
            await pub.wait_delivered(20)
        await asyncio.to_thread(sub.wait_for, lambda m: len(_samples(m)) >= 20, "20 samples", 10)
    finally:
        sub.stop()
    samples = _samples(sub.messages)
    assert [s.power_w for s in samples] == [150 + i for i in range(20)]
    states = [decode_state(m.payload) for m in sub.messages if m.topic.endswith("/state")]
    assert states
    assert states[0].online
    assert service.stats.dead_frames == {"bike-1": 4}
    with Buffer(tmp_path / "gw.sqlite") as buf:
        dead = buf.dead_frames()
    assert len(dead) == 4
    assert {d.data for d in dead} == {b"\xff"}
    assert all(d.device == "bike-1" and d.source == "ble:2ad2" and "flags" in d.reason for d in dead)


def _samples(messages: Sequence[Received]) -> list[Sample]:
    out: list[Sample] = []
    for m in messages:
        if m.topic.endswith("/telemetry"):
            out.extend(msgspec.json.decode(m.payload, type=TelemetryMessage).samples)
    return sorted(out, key=lambda s: s.t)


# --- identity, quirks, reserved bits, dropped values -----------------------------------------------------

# Rower Data written per the FTMS table: flags 0x0020 (bit 0 clear: stroke rate u8 0.5 spm + stroke count
# u16; bit 5: power s16), 0x34 = 52 -> 26 spm, 0x0013 = 19 strokes, 0x0096 = 150 W, then one byte the flags
# do not account for, as the Concept2 PM consoles of TMIW#525 send.
ROWER_WITH_TRAILING_BYTE = bytes.fromhex("2000341300960000")
ROWER = DeviceInfo("row-1", "rower", "ble", address="C4:00:00:00:00:01")


def dis_frames(device: str, t: datetime, *strings: tuple[str, bytes]) -> list[Frame]:
    return [Frame(device, f"ble:{char}", data, t) for char, data in strings]


CONCEPT2_DIS = (("2a29", b"Concept2\x00"), ("2a24", b"PM5"), ("2a26", b"32.100"))


def test_quirks_follow_the_device_information_read_on_connect_and_the_meta_says_it() -> None:
    p = Pipeline(devices=[ROWER])
    p.handle([Frame("row-1", "ble:2ad1", ROWER_WITH_TRAILING_BYTE, at(0))], "t", 0.0, live=False)
    assert p.stats.dead_frames == {"row-1": 1}  # per the specification, one byte too many
    out = p.handle(
        [
            *dis_frames("row-1", at(1), *CONCEPT2_DIS),
            Frame("row-1", "ble:2ad1", ROWER_WITH_TRAILING_BYTE, at(1)),
        ],
        "t",
        0.0,
        live=False,
    )
    assert p.stats.dead_frames == {"row-1": 1}  # no new one: the Concept2 rule allows the byte
    assert out.metas == [replace(ROWER, vendor="Concept2", model="PM5", firmware="32.100")]  # once
    [(_, sample)] = p.drain().samples
    assert (sample.stroke_rate_spm, sample.power_w) == (26.0, 150.0)


def test_an_operator_profile_overrides_what_the_identity_selects() -> None:
    p = Pipeline(devices=[replace(ROWER, quirks="specification")])
    p.handle(
        [
            *dis_frames("row-1", at(0), *CONCEPT2_DIS),
            Frame("row-1", "ble:2ad1", ROWER_WITH_TRAILING_BYTE, at(0)),
        ],
        "t",
        0.0,
    )
    assert p.stats.dead_frames == {"row-1": 1}
    named = Pipeline(devices=[replace(ROWER, quirks="ftms-trailing-byte")])  # no identity needed
    named.handle([Frame("row-1", "ble:2ad1", ROWER_WITH_TRAILING_BYTE, at(0))], "t", 0.0)
    assert named.stats.dead_frames == {}
    assert [s.power_w for _, s in named.drain().samples] == [150.0]


def test_a_configured_identity_selects_quirks_until_the_device_says_otherwise() -> None:
    configured = replace(ROWER, vendor="Concept2", model="PM5")
    p = Pipeline(devices=[configured])
    p.handle([Frame("row-1", "ble:2ad1", ROWER_WITH_TRAILING_BYTE, at(0))], "t", 0.0)
    assert p.stats.dead_frames == {}
    out = p.handle(dis_frames("row-1", at(1), ("2a29", b"Acme"), ("2a24", b"Row 1")), "t", 0.0)
    assert [(m.vendor, m.model) for m in out.metas] == [("Acme", "Row 1")]
    p.handle([Frame("row-1", "ble:2ad1", ROWER_WITH_TRAILING_BYTE, at(2))], "t", 0.0)
    assert p.stats.dead_frames == {"row-1": 1}


def test_unknown_devices_get_their_identity_into_the_discovered_meta() -> None:
    p = Pipeline()
    out = p.handle(
        [
            *dis_frames("row-9", at(0), *CONCEPT2_DIS),
            Frame("row-9", "ble:2ad1", ROWER_WITH_TRAILING_BYTE, at(0)),
        ],
        "t",
        0.0,
    )
    assert [(m.device_id, m.kind, m.vendor, m.model, m.firmware) for m in out.metas] == [
        ("row-9", "rower", "Concept2", "PM5", "32.100")
    ]
    assert p.stats.dead_frames == {}


def test_frames_with_reserved_flag_bits_are_decoded_and_counted() -> None:
    # Indoor Bike Data per the table: flags 0x8041 (bit 0 set: no speed; bit 6: power s16; bit 15 reserved),
    # 0x00c8 = 200 W, then two bytes bit 15 appended.
    frame = bytes.fromhex("4180c800beef")
    p = Pipeline(devices=[BIKE])
    p.handle([Frame("bike-1", "ble:2ad2", frame, at(0))], "t", 0.0)
    p.handle([Frame("bike-1", "ble:2ad2", bytes.fromhex("0000c409"), at(0.5))], "t", 0.0)  # speed 25 km/h
    [(_, sample)] = p.drain().samples
    assert (sample.power_w, sample.speed_kmh) == (200.0, 25.0)
    assert p.stats.reserved_flags == {"bike-1": 1}
    assert p.stats.dead_frames == {}


def test_values_outside_the_wire_bounds_are_dropped_and_counted_per_field() -> None:
    strap = hrm.HeartRateMeasurement(flags=0, hr_bpm=0)  # heart rate 0: no contact
    power = cycling.CyclingPower(flags=0, power_w=0x7FFF)  # 32767 W: the sint16 "not available" habit
    p = Pipeline()
    p.handle(
        [frame("hr-1", strap, at(0)), frame("pm-1", power, at(0)), frame("pm-1", power, at(0.5))], "t", 0.0
    )
    assert p.drain().samples == []  # nothing valid was left to publish
    assert p.stats.notes == {"out_of_bounds:hr_bpm": 1, "out_of_bounds:power_w": 2}
