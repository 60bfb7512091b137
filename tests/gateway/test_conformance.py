"""Protocol conformance: frames written byte by byte from the specification's tables, decoded, and compared
with values worked out by hand in this file.

Nothing here is built by our encoders or from our layout tables (``gateway.ftms.*_LAYOUT``): each frame is a
list of (hex, what the table says these bytes are) pairs, and each expected value is the arithmetic in its
comment. The tables used are those of /work/shared/reference/ftms.md (gathered from the Bluetooth SIG FTMS
1.0, Heart Rate, Cycling Power and CSC characteristic definitions): fields in flag-bit order, little endian,
FTMS flag bit 0 inverted ("More Data"), Cross Trainer flags u24. One real capture is included with its
provenance (its stated values are checked against the project's own statement in test_captures.py).

Round trips through our own encoder are symmetry tests, kept apart in test_properties.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway import cycling, ftms, hrm
from gateway.decode import Record, decode_frame
from gateway.errors import InvalidFrame
from gateway.normalize import to_sample_with_notes
from vitalab.wire import TelemetryMessage, decode_telemetry, encode

T = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    parts: tuple[tuple[str, str], ...]
    """(hex, what the specification's table says these bytes are), in order."""
    expected: dict[str, Any]
    """Every measurement field the frame carries, worked out by hand; the others must be absent."""
    sample: dict[str, Any] | None = None
    """The wire Sample fields the frame must normalise to (None: not checked)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Bookkeeping fields to check (reserved_flags, trailing, more_data, ...)."""

    @property
    def frame(self) -> bytes:
        return bytes.fromhex("".join(h for h, _ in self.parts))


CASES: list[Case] = [
    Case(
        "indoor bike, every field",
        "ble:2ad2",
        (
            ("fe1f", "flags 0x1ffe: bit 0 clear (speed present), bits 1-12 set"),
            ("5e0b", "instantaneous speed u16 0.01 km/h: 0x0b5e = 2910 -> 29.10"),
            ("280a", "average speed u16 0.01 km/h: 0x0a28 = 2600 -> 26.00"),
            ("b400", "instantaneous cadence u16 0.5 rpm: 0x00b4 = 180 -> 90.0"),
            ("aa00", "average cadence u16 0.5 rpm: 0x00aa = 170 -> 85.0"),
            ("d20400", "total distance u24 m: 0x0004d2 = 1234"),
            ("0c00", "resistance level s16: 12"),
            ("fa00", "instantaneous power s16 W: 0x00fa = 250"),
            ("f000", "average power s16 W: 0x00f0 = 240"),
            ("3000", "total energy u16 kcal: 48"),
            ("5802", "energy per hour u16 kcal: 0x0258 = 600"),
            ("0a", "energy per minute u8 kcal: 10"),
            ("8c", "heart rate u8 bpm: 0x8c = 140"),
            ("4b", "metabolic equivalent u8 0.1: 0x4b = 75 -> 7.5"),
            ("100e", "elapsed time u16 s: 0x0e10 = 3600"),
            ("0807", "remaining time u16 s: 0x0708 = 1800"),
        ),
        {
            "speed_kmh": 29.1,
            "avg_speed_kmh": 26.0,
            "cadence_rpm": 90.0,
            "avg_cadence_rpm": 85.0,
            "distance_m": 1234,
            "resistance_level": 12,
            "power_w": 250,
            "avg_power_w": 240,
            "energy_total_kcal": 48,
            "energy_per_hour_kcal": 600,
            "energy_per_minute_kcal": 10,
            "hr_bpm": 140,
            "met": 7.5,
            "elapsed_s": 3600,
            "remaining_s": 1800,
        },
        sample={
            "speed_kmh": 29.1,
            "cadence_rpm": 90.0,
            "distance_m": 1234,
            "resistance_level": 12,
            "power_w": 250,
            "energy_kcal": 48,
            "hr_bpm": 140,
            "met": 7.5,
            "elapsed_s": 3600,
        },
    ),
    Case(
        "indoor bike, a capture: Elite Suito (dvmarinoff/Flux test/ble/indoor-bike-data.test.js, entry "
        "flux-elite-suito-comment in tests/data/captures/flux.json)",
        "ble:2ad2",
        (
            ("4402", "flags 0x0244: speed (bit 0 clear), cadence (2), power (6), heart rate (9)"),
            ("5e0b", "speed: 0x0b5e = 2910 -> 29.10 km/h"),
            ("f000", "cadence: 0x00f0 = 240 half-rpm -> 120.0 rpm"),
            ("7a00", "power: 0x007a = 122 W"),
            ("54", "heart rate: 0x54 = 84 bpm"),
        ),
        {"speed_kmh": 29.1, "cadence_rpm": 120.0, "power_w": 122, "hr_bpm": 84},
        sample={"speed_kmh": 29.1, "cadence_rpm": 120.0, "power_w": 122, "hr_bpm": 84},
    ),
    Case(
        "indoor bike, More Data set: the first part of a split record has no speed",
        "ble:2ad2",
        (("4100", "flags 0x0041: bit 0 set (More Data, no speed), power (6)"), ("9600", "power: 150 W")),
        {"power_w": 150},
        extra={"more_data": True},
    ),
    Case(
        "treadmill, every field",
        "ble:2acd",
        (
            ("fe1f", "flags 0x1ffe: speed (bit 0 clear), bits 1-12"),
            ("e803", "instantaneous speed u16 0.01 km/h: 0x03e8 = 1000 -> 10.00"),
            ("8403", "average speed: 0x0384 = 900 -> 9.00"),
            ("b80b00", "total distance u24 m: 0x000bb8 = 3000"),
            ("1900", "inclination s16 0.1 %: 25 -> 2.5"),
            ("0e00", "ramp angle s16 0.1 deg: 14 -> 1.4"),
            ("6400", "positive elevation gain u16 0.1 m: 100 -> 10.0"),
            ("3200", "negative elevation gain u16 0.1 m: 50 -> 5.0"),
            ("0a", "instantaneous pace u8 0.1 km/min: 10 -> 1.0"),
            ("09", "average pace u8 0.1 km/min: 9 -> 0.9"),
            ("6400", "total energy: 100 kcal"),
            ("bc02", "energy per hour: 0x02bc = 700 kcal"),
            ("0c", "energy per minute: 12 kcal"),
            ("96", "heart rate: 0x96 = 150 bpm"),
            ("64", "metabolic equivalent: 100 -> 10.0"),
            ("b004", "elapsed time: 0x04b0 = 1200 s"),
            ("5802", "remaining time: 0x0258 = 600 s"),
            ("2800", "force on belt s16 N: 40"),
            ("c800", "power output s16 W: 0x00c8 = 200"),
        ),
        {
            "speed_kmh": 10.0,
            "avg_speed_kmh": 9.0,
            "distance_m": 3000,
            "incline_pct": 2.5,
            "ramp_angle_deg": 1.4,
            "elevation_gain_pos_m": 10.0,
            "elevation_gain_neg_m": 5.0,
            "pace_km_per_min": 1.0,
            "avg_pace_km_per_min": 0.9,
            "energy_total_kcal": 100,
            "energy_per_hour_kcal": 700,
            "energy_per_minute_kcal": 12,
            "hr_bpm": 150,
            "met": 10.0,
            "elapsed_s": 1200,
            "remaining_s": 600,
            "force_on_belt_n": 40,
            "power_w": 200,
        },
        sample={
            "speed_kmh": 10.0,
            "distance_m": 3000,
            "incline_pct": 2.5,
            "energy_kcal": 100,
            "hr_bpm": 150,
            "met": 10.0,
            "elapsed_s": 1200,
            "power_w": 200,
        },
    ),
    Case(
        "cross trainer, every field (u24 flags, movement backward)",
        "ble:2ace",
        (
            ("feff00", "flags 0x00fffe: speed (bit 0 clear), bits 1-14, bit 15 movement direction backward"),
            ("5802", "instantaneous speed: 0x0258 = 600 -> 6.00 km/h"),
            ("f401", "average speed: 0x01f4 = 500 -> 5.00 km/h"),
            ("f40100", "total distance u24: 0x0001f4 = 500 m"),
            ("7800", "step per minute u16: 0x0078 = 120"),
            ("6e00", "average step rate u16: 0x006e = 110"),
            ("f401", "stride count u16 0.1: 0x01f4 = 500 -> 50.0"),
            ("0500", "positive elevation gain u16 m: 5"),
            ("0300", "negative elevation gain u16 m: 3"),
            ("ecff", "inclination s16 0.1 %: 0xffec = -20 -> -2.0"),
            ("f6ff", "ramp angle s16 0.1 deg: 0xfff6 = -10 -> -1.0"),
            ("5000", "resistance level s16 0.1: 0x0050 = 80 -> 8.0"),
            ("9600", "instantaneous power s16: 150 W"),
            ("8c00", "average power s16: 140 W"),
            ("1900", "total energy: 25 kcal"),
            ("c201", "energy per hour: 0x01c2 = 450 kcal"),
            ("07", "energy per minute: 7 kcal"),
            ("82", "heart rate: 0x82 = 130 bpm"),
            ("37", "metabolic equivalent: 0x37 = 55 -> 5.5"),
            ("5802", "elapsed time: 600 s"),
            ("2c01", "remaining time: 0x012c = 300 s"),
        ),
        {
            "speed_kmh": 6.0,
            "avg_speed_kmh": 5.0,
            "distance_m": 500,
            "steps_per_min": 120,
            "avg_steps_per_min": 110,
            "stride_count": 50.0,
            "elevation_gain_pos_m": 5,
            "elevation_gain_neg_m": 3,
            "incline_pct": -2.0,
            "ramp_angle_deg": -1.0,
            "resistance_level": 8.0,
            "power_w": 150,
            "avg_power_w": 140,
            "energy_total_kcal": 25,
            "energy_per_hour_kcal": 450,
            "energy_per_minute_kcal": 7,
            "hr_bpm": 130,
            "met": 5.5,
            "elapsed_s": 600,
            "remaining_s": 300,
        },
        sample={
            "speed_kmh": 6.0,
            "distance_m": 500,
            "incline_pct": -2.0,
            "resistance_level": 8.0,
            "power_w": 150,
            "energy_kcal": 25,
            "hr_bpm": 130,
            "met": 5.5,
            "elapsed_s": 600,
        },
        extra={"backward": True},
    ),
    Case(
        "rower, every field",
        "ble:2ad1",
        (
            ("fe1f", "flags 0x1ffe: stroke rate and count (bit 0 clear), bits 1-12"),
            ("38", "stroke rate u8 0.5 spm: 0x38 = 56 -> 28.0"),
            ("c800", "stroke count u16: 0x00c8 = 200"),
            ("34", "average stroke rate u8 0.5: 0x34 = 52 -> 26.0"),
            ("d00700", "total distance u24: 0x0007d0 = 2000 m"),
            ("7800", "instantaneous pace u16 s/500 m: 120"),
            ("7d00", "average pace u16 s/500 m: 125"),
            ("dc00", "instantaneous power s16: 0x00dc = 220 W"),
            ("d200", "average power s16: 0x00d2 = 210 W"),
            ("0500", "resistance level s16: 5"),
            ("5000", "total energy: 80 kcal"),
            ("8403", "energy per hour: 0x0384 = 900 kcal"),
            ("0f", "energy per minute: 15 kcal"),
            ("9b", "heart rate: 0x9b = 155 bpm"),
            ("5a", "metabolic equivalent: 90 -> 9.0"),
            ("e001", "elapsed time: 0x01e0 = 480 s"),
            ("7800", "remaining time: 120 s"),
        ),
        {
            "stroke_rate_spm": 28.0,
            "stroke_count": 200,
            "avg_stroke_rate_spm": 26.0,
            "distance_m": 2000,
            "pace_s_per_500m": 120,
            "avg_pace_s_per_500m": 125,
            "power_w": 220,
            "avg_power_w": 210,
            "resistance_level": 5,
            "energy_total_kcal": 80,
            "energy_per_hour_kcal": 900,
            "energy_per_minute_kcal": 15,
            "hr_bpm": 155,
            "met": 9.0,
            "elapsed_s": 480,
            "remaining_s": 120,
        },
        sample={
            "stroke_rate_spm": 28.0,
            "distance_m": 2000,
            "pace_s_per_500m": 120,
            "power_w": 220,
            "resistance_level": 5,
            "energy_kcal": 80,
            "hr_bpm": 155,
            "met": 9.0,
            "elapsed_s": 480,
        },
    ),
    # --- reserved flag bits: ignored, the defined fields decoded, what the bits appended kept --------------
    Case(
        "indoor bike, reserved bit 13 and three bytes it appended",
        "ble:2ad2",
        (
            ("4420", "flags 0x2044: speed, cadence (2), power (6), bit 13 (reserved for future use)"),
            ("e803", "speed: 1000 -> 10.00 km/h"),
            ("a000", "cadence: 160 -> 80.0 rpm"),
            ("c800", "power: 200 W"),
            ("010203", "three bytes no defined field accounts for"),
        ),
        {"speed_kmh": 10.0, "cadence_rpm": 80.0, "power_w": 200},
        sample={"speed_kmh": 10.0, "cadence_rpm": 80.0, "power_w": 200},
        extra={"reserved_flags": 0x2000, "trailing": b"\x01\x02\x03", "truncated": False},
    ),
    Case(
        "treadmill, reserved bits 14 and 15, nothing appended",
        "ble:2acd",
        (
            ("00c0", "flags 0xc000: speed (bit 0 clear), bits 14 and 15 reserved"),
            ("d007", "speed: 2000 -> 20.00"),
        ),
        {"speed_kmh": 20.0},
        extra={"reserved_flags": 0xC000, "trailing": b""},
    ),
    Case(
        "cross trainer, reserved bit 16 (the third flags byte) and two bytes",
        "ble:2ace",
        (
            ("000801", "flags 0x010800: speed (bit 0 clear), heart rate (bit 11), bit 16 reserved"),
            ("2c01", "speed: 300 -> 3.00 km/h"),
            ("78", "heart rate: 120 bpm"),
            ("aabb", "two bytes for bit 16"),
        ),
        {"speed_kmh": 3.0, "hr_bpm": 120},
        extra={"reserved_flags": 0x010000, "trailing": b"\xaa\xbb", "backward": False},
    ),
    Case(
        "rower, reserved bit 13 as the Technogym Skillrow sends it (tests/data/captures "
        "tmiw-technogym-skillrow-L100, TrackMyIndoorWorkout#320)",
        "ble:2ad1",
        (
            (
                "0221",
                "flags 0x2102: stroke rate and count (bit 0 clear), average stroke rate (1), energy (8), "
                "bit 13 reserved",
            ),
            ("34", "stroke rate: 0x34 = 52 -> 26.0 spm"),
            ("1300", "stroke count: 19"),
            ("31", "average stroke rate: 0x31 = 49 -> 24.5 spm"),
            ("0400", "total energy: 4 kcal"),
            ("ffff", "energy per hour: 0xffff, not available (FTMS)"),
            ("ff", "energy per minute: 0xff, not available (FTMS)"),
            ("b8010000", "four bytes for bit 13"),
        ),
        {"stroke_rate_spm": 26.0, "stroke_count": 19, "avg_stroke_rate_spm": 24.5, "energy_total_kcal": 4},
        sample={"stroke_rate_spm": 26.0, "energy_kcal": 4},
        extra={"reserved_flags": 0x2000, "trailing": bytes.fromhex("b8010000")},
    ),
    # --- "not available": the specification's own markers, and the vendors' largest values ----------------
    Case(
        "rower, every NA marker: energy per the FTMS text, the largest value of the rest",
        "ble:2ad1",
        (
            ("fe1f", "flags 0x1ffe"),
            ("ff", "stroke rate u8: 0xff"),
            ("0a00", "stroke count u16: 10 (a counter: kept)"),
            ("ff", "average stroke rate: 0xff"),
            ("ffffff", "distance u24: 0xffffff (16 777 km)"),
            ("ffff", "pace: 0xffff"),
            ("ffff", "average pace: 0xffff"),
            ("ff7f", "power s16: 0x7fff"),
            ("ff7f", "average power s16: 0x7fff"),
            ("ff7f", "resistance s16: 0x7fff"),
            ("ffff", "total energy: 0xffff"),
            ("ffff", "energy per hour: 0xffff"),
            ("ff", "energy per minute: 0xff"),
            ("ff", "heart rate: 0xff"),
            ("ff", "MET: 0xff (25.5 would be inside the wire's 0-30)"),
            ("ffff", "elapsed time: 0xffff (18.2 h, inside the wire's 7 days)"),
            ("ffff", "remaining time: 0xffff"),
        ),
        {"stroke_count": 10},
        sample={},
    ),
    Case(
        "treadmill, NA markers of the signed and paired fields",
        "ble:2acd",
        (
            ("1910", "flags 0x1019: bit 0 set (no speed), inclination (3), elevation (4), power (12)"),
            ("ff7f", "inclination: 0x7fff"),
            ("ff7f", "ramp angle: 0x7fff"),
            ("ffff", "positive elevation gain: 0xffff"),
            ("ffff", "negative elevation gain: 0xffff"),
            ("ff7f", "force on belt: 0x7fff"),
            ("ff7f", "power: 0x7fff"),
        ),
        {},
        sample={},
        extra={"more_data": True},
    ),
    Case(
        "indoor bike, numbers a vendor may mean as 'not available': 0 heart rate, 0x8000 power",
        "ble:2ad2",
        (
            ("4102", "flags 0x0241: bit 0 set (no speed), power (6), heart rate (9)"),
            ("0080", "power s16: 0x8000 = -32768 W"),
            ("00", "heart rate: 0"),
        ),
        {"power_w": -32768, "hr_bpm": 0},
        sample={},  # both outside the wire contract's bounds: dropped (and counted by the gateway)
    ),
    # --- heart rate, cycling power, CSC ------------------------------------------------------------------
    Case(
        "heart rate, u8 with contact and two RR intervals",
        "ble:2a37",
        (
            (
                "16",
                "flags 0x16: u8 heart rate, contact supported and detected (bits 1-2 = 3), RR present (4)",
            ),
            ("59", "heart rate: 0x59 = 89 bpm"),
            ("a202", "RR u16 1/1024 s: 0x02a2 = 674 -> 674 * 1000 / 1024 = 658.203125 ms"),
            ("0004", "RR: 0x0400 = 1024 -> 1000.0 ms"),
        ),
        {"hr_bpm": 89, "rr_ms": (658.203125, 1000.0), "sensor_contact": "contact"},
        sample={"hr_bpm": 89, "rr_ms": [658.203125, 1000.0]},
    ),
    Case(
        "heart rate, u16 value and energy expended, no contact detection",
        "ble:2a37",
        (
            ("09", "flags 0x09: u16 heart rate (bit 0), energy expended present (3)"),
            ("7800", "heart rate u16: 120 bpm"),
            ("e803", "energy expended u16 kJ: 0x03e8 = 1000"),
        ),
        {"hr_bpm": 120, "energy_expended_kj": 1000, "sensor_contact": "not_supported"},
        sample={"hr_bpm": 120},
    ),
    Case(
        "heart rate, reserved bit 5 and the byte it appended",
        "ble:2a37",
        (
            ("20", "flags 0x20: u8 heart rate, bit 5 reserved"),
            ("48", "heart rate: 72 bpm"),
            ("ee", "for bit 5"),
        ),
        {"hr_bpm": 72},
        extra={"reserved_flags": 0x20, "trailing": b"\xee"},
    ),
    Case(
        "cycling power: torque, wheel and crank revolutions",
        "ble:2a63",
        (
            ("3400", "flags 0x0034: accumulated torque (2), wheel revolutions (4), crank revolutions (5)"),
            ("c800", "instantaneous power s16: 200 W"),
            ("8002", "accumulated torque u16 1/32 Nm: 0x0280 = 640 -> 20.0"),
            ("34120000", "cumulative wheel revolutions u32: 0x1234 = 4660"),
            ("0008", "last wheel event u16 1/2048 s: 0x0800 = 2048 -> 1.0 s"),
            ("6400", "cumulative crank revolutions u16: 100"),
            ("0004", "last crank event u16 1/1024 s: 0x0400 = 1024 -> 1.0 s"),
        ),
        {
            "power_w": 200,
            "accumulated_torque_nm": 20.0,
            "wheel_revs": 4660,
            "wheel_event_s": 1.0,
            "crank_revs": 100,
            "crank_event_s": 1.0,
        },
        sample={"power_w": 200},
    ),
    Case(
        "cycling power, reserved bit 14 and two bytes",
        "ble:2a63",
        (("0040", "flags 0x4000: bit 14 reserved"), ("6400", "power: 100 W"), ("0102", "for bit 14")),
        {"power_w": 100},
        extra={"reserved_flags": 0x4000, "trailing": b"\x01\x02"},
    ),
    Case(
        "CSC: wheel and crank revolutions",
        "ble:2a5b",
        (
            ("03", "flags 0x03: wheel (0) and crank (1) revolution data"),
            ("00010000", "cumulative wheel revolutions u32: 0x100 = 256"),
            ("0002", "last wheel event u16 1/1024 s: 0x0200 = 512 -> 0.5 s"),
            ("0a00", "cumulative crank revolutions u16: 10"),
            ("000c", "last crank event u16 1/1024 s: 0x0c00 = 3072 -> 3.0 s"),
        ),
        {"wheel_revs": 256, "wheel_event_s": 0.5, "crank_revs": 10, "crank_event_s": 3.0},
    ),
    Case(
        "CSC, reserved bit 3 (crank data) and one byte",
        "ble:2a5b",
        (
            ("0a", "flags 0x0a: crank revolution data (1), bit 3 reserved"),
            ("0100", "crank revolutions: 1"),
            ("0004", "crank event: 1024 -> 1.0 s"),
            ("7f", "for bit 3"),
        ),
        {"crank_revs": 1, "crank_event_s": 1.0},
        extra={"reserved_flags": 0x08, "trailing": b"\x7f"},
    ),
]

MEASUREMENTS: dict[type[Any], tuple[str, ...]] = {
    **{cls: ftms.value_fields(cls) for cls in ftms.DATA_TYPES},
    hrm.HeartRateMeasurement: ("hr_bpm", "energy_expended_kj", "rr_ms", "sensor_contact"),
    cycling.CyclingPower: ("power_w", *cycling.CPM_LAYOUT.field_names),
    cycling.CscMeasurement: cycling.CSC_LAYOUT.field_names,
}
ABSENT: dict[str, Any] = {"rr_ms": (), "sensor_contact": "not_supported"}


def measurements(record: Record) -> dict[str, Any]:
    return {name: getattr(record, name) for name in MEASUREMENTS[type(record)]}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_frame_written_from_the_tables_decodes_to_the_values_worked_out_by_hand(case: Case) -> None:
    record = decode_frame(case.source, case.frame)
    absent = {name: ABSENT.get(name) for name in MEASUREMENTS[type(record)]}
    assert measurements(record) == absent | case.expected
    for name, value in case.extra.items():
        assert getattr(record, name) == value, name
    if "trailing" not in case.extra:
        assert getattr(record, "trailing", b"") == b""
    if "reserved_flags" not in case.extra:
        assert getattr(record, "reserved_flags", 0) == 0


@pytest.mark.parametrize("case", [c for c in CASES if c.sample is not None], ids=lambda c: c.name)
def test_the_frame_normalises_to_the_wire_sample_worked_out_by_hand(case: Case) -> None:
    normalized = to_sample_with_notes(decode_frame(case.source, case.frame), T)
    assert case.sample is not None
    if not case.sample:
        assert normalized.sample is None
        return
    assert normalized.sample is not None
    got = {f: getattr(normalized.sample, f) for f in normalized.sample.__struct_fields__ if f != "t"}
    assert {k: v for k, v in got.items() if v is not None} == case.sample
    message = encode(TelemetryMessage(v=1, device="dev-1", seq=0, samples=[normalized.sample]))
    assert decode_telemetry(message, topic_device="dev-1", now=T).samples == [normalized.sample]


def test_bytes_after_the_fields_without_a_reserved_bit_break_the_specification() -> None:
    # flags 0x0040: speed (bit 0 clear) and power (6); speed 0x00c8 = 2.00 km/h, power 0x0096 = 150 W; then a
    # byte no flag accounts for, at offset 2 + 2 + 2 = 6
    frame = bytes.fromhex("4000c800960001")
    with pytest.raises(InvalidFrame) as info:
        decode_frame("2ad2", frame)
    assert info.value.offset == 6
    # the same with reserved bit 15 set: the byte is what bit 15 appended
    record = decode_frame("2ad2", bytes.fromhex("4080c800960001"))
    assert isinstance(record, ftms.IndoorBikeData)
    assert (record.speed_kmh, record.power_w, record.trailing) == (2.0, 150, b"\x01")


def test_na_markers_and_out_of_range_values_never_reach_the_wire_and_are_named() -> None:
    rower_na = next(c for c in CASES if c.name.startswith("rower, every NA marker"))
    normalized = to_sample_with_notes(decode_frame(rower_na.source, rower_na.frame), T)
    assert (normalized.sample, normalized.dropped) == (None, ())  # NA markers are None, not dropped values
    numbers = next(c for c in CASES if c.name.startswith("indoor bike, numbers a vendor"))
    normalized = to_sample_with_notes(decode_frame(numbers.source, numbers.frame), T)
    assert normalized.sample is None
    assert sorted(normalized.dropped) == ["hr_bpm", "power_w"]
