"""Cadence and wheel speed from cumulative revolution counters (CSC 0x2A5B, Cycling Power 0x2A63): both the
revolution count and the event time wrap, and a repeated event must not read as a new revolution."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import cycling
from gateway.errors import FrameTooShort, InvalidFrame
from tests.gateway.strategies import FAST

steps = st.lists(st.tuples(st.integers(1, 30), st.integers(1, 0xFFFF)), min_size=1, max_size=30)


@FAST
@given(revs0=st.integers(0, 0xFFFF), ticks0=st.integers(0, 0xFFFF), steps=steps)
def test_cadence_across_16_bit_wraps_of_revolutions_and_event_time(
    revs0: int, ticks0: int, steps: list[tuple[int, int]]
) -> None:
    tracker = cycling.CadenceTracker()
    assert tracker.update(revs0, ticks0 / 1024) is None
    revs, ticks = revs0, ticks0
    for d_revs, d_ticks in steps:
        revs, ticks = (revs + d_revs) % 0x10000, (ticks + d_ticks) % 0x10000
        rpm = tracker.update(revs, ticks / 1024)
        assert rpm == pytest.approx(d_revs * 60 * 1024 / d_ticks, rel=1e-12)


@FAST
@given(steps=steps, repeats=st.integers(1, 5))
def test_a_repeated_crank_event_is_not_a_revolution(steps: list[tuple[int, int]], repeats: int) -> None:
    """Sensors repeat the last event between revolutions; the next revolution is timed from the last real
    one, not from the repeats."""
    tracker = cycling.CadenceTracker()
    tracker.update(100, 1.0)
    revs, ticks = 100, 1024
    for d_revs, d_ticks in steps:
        for _ in range(repeats):
            assert tracker.update(revs, ticks / 1024) is None
        revs, ticks = (revs + d_revs) % 0x10000, (ticks + d_ticks) % 0x10000
        assert tracker.update(revs, ticks / 1024) == pytest.approx(d_revs * 60 * 1024 / d_ticks)


@FAST
@given(
    revs0=st.integers(0, 0xFFFFFFFF),
    ticks0=st.integers(0, 0xFFFF),
    steps=st.lists(st.tuples(st.integers(1, 50), st.integers(1, 0xFFFF)), min_size=1, max_size=20),
    circumference_m=st.floats(1.0, 2.5),
)
def test_power_meter_wheel_speed_wraps_u32_revolutions_and_2048_tick_time(
    revs0: int, ticks0: int, steps: list[tuple[int, int]], circumference_m: float
) -> None:
    tracker = cycling.WheelSpeedTracker(circumference_m, ticks_per_s=2048)
    assert tracker.update(revs0, ticks0 / 2048) is None
    revs, ticks = revs0, ticks0
    for d_revs, d_ticks in steps:
        revs, ticks = (revs + d_revs) % (1 << 32), (ticks + d_ticks) % 0x10000
        kmh = tracker.update(revs, ticks / 2048)
        assert kmh == pytest.approx(d_revs * circumference_m / (d_ticks / 2048) * 3.6, rel=1e-12)


def test_cadence_from_csc_frames_through_the_time_wrap() -> None:
    """Frames written per the CSC table: crank revolutions 65535 -> 0 and event time 65000 -> 440 ticks."""
    frames = [
        bytes([0x02]) + (65534).to_bytes(2, "little") + (64000).to_bytes(2, "little"),
        bytes([0x02]) + (65535).to_bytes(2, "little") + (65000).to_bytes(2, "little"),
        bytes([0x02]) + (0).to_bytes(2, "little") + (440).to_bytes(2, "little"),
    ]
    tracker = cycling.CadenceTracker()
    rpms = []
    for frame in frames:
        record = cycling.decode_csc(frame)
        assert record.crank_revs is not None
        assert record.crank_event_s is not None
        rpms.append(tracker.update(int(record.crank_revs), record.crank_event_s))
    assert rpms[0] is None
    assert rpms[1] == pytest.approx(60 * 1024 / 1000)
    assert rpms[2] == pytest.approx(60 * 1024 / 976)  # 440 + 65536 - 65000


def test_cycling_power_needs_flags_and_power() -> None:
    with pytest.raises(FrameTooShort) as info:
        cycling.decode_cycling_power(b"\x00\x00\x10")
    assert info.value.source == "ble:2a63"


def test_cycling_power_ignores_reserved_flag_bits_and_keeps_what_they_append() -> None:
    # flags 0x2000 (bit 13 reserved), power 0x00fa = 250 W, then two bytes bit 13 appended
    frame = (1 << 13).to_bytes(2, "little") + b"\xfa\x00" + b"\x01\x02"
    record = cycling.decode_cycling_power(frame)
    assert (record.power_w, record.reserved_flags, record.trailing) == (250, 0x2000, b"\x01\x02")
    assert cycling.encode_cycling_power(record) == frame
    with pytest.raises(InvalidFrame):  # the same bytes without a reserved bit
        cycling.decode_cycling_power(b"\x00\x00\xfa\x00\x01\x02")


def test_cycling_power_extreme_angles_unpack_12_bit_halves() -> None:
    packed = 90 | 270 << 12
    frame = (1 << 8).to_bytes(2, "little") + (100).to_bytes(2, "little") + packed.to_bytes(3, "little")
    record = cycling.decode_cycling_power(frame)
    assert (record.extreme_angle_max_deg, record.extreme_angle_min_deg) == (90, 270)


def test_csc_ignores_reserved_flags_and_rejects_unexplained_extra_bytes() -> None:
    # flags 0x06: bit 1 crank data, bit 2 reserved; crank revs 1, event 0x0002 ticks, a byte bit 2 appended
    record = cycling.decode_csc(b"\x06\x01\x00\x02\x00\x99")
    assert (record.crank_revs, record.crank_event_s) == (1, 2 / 1024)
    assert (record.reserved_flags, record.trailing) == (0x04, b"\x99")
    with pytest.raises(InvalidFrame) as info:
        cycling.decode_csc(b"\x02\x01\x00\x02\x00\x99")
    assert info.value.offset == 5
