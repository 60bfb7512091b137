"""ANT+ FE-C and HRM pages: page checks, the legacy HRM model, and the accumulator that turns the wrapping
FE counters (elapsed time, distance, accumulated power, event count, strokes, strides) into totals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import ant
from gateway.errors import FrameTooShort, InvalidFrame, UnknownSource
from tests.gateway.strategies import FAST


@FAST
@given(modulus=st.sampled_from([256, 0x10000]), start=st.integers(0, 0xFFFF), data=st.data())
def test_wrap_counter_total_is_the_sum_of_increments(modulus: int, start: int, data: st.DataObject) -> None:
    increments = data.draw(st.lists(st.integers(0, modulus - 1), max_size=50))
    counter = ant.WrapCounter(modulus)
    first = start % modulus
    assert counter.update(first) == first
    raw = first
    for step in increments:
        raw = (raw + step) % modulus
        counter.update(raw)
    assert counter.total == first + sum(increments)


def trainer_page(events: int, power_sum: int, power_w: int) -> bytes:
    return (
        bytes([25, events % 256, 90])
        + (power_sum % 0x10000).to_bytes(2, "little")
        + bytes([power_w & 0xFF, power_w >> 8 & 0x0F, 0x30])
    )


@FAST
@given(
    start_events=st.integers(0, 255),
    start_power=st.integers(0, 0xFFFF),
    steps=st.lists(st.tuples(st.integers(1, 10), st.integers(0, 2000)), min_size=1, max_size=40),
)
def test_trainer_average_power_survives_event_and_power_wraps(
    start_events: int, start_power: int, steps: list[tuple[int, int]]
) -> None:
    """Page 25: the event count wraps at 256 and the accumulated power at 65536 W; the average power over
    the events since the previous page is (delta power) / (delta events)."""
    acc = ant.FeAccumulator()
    acc.update(ant.decode_fe(25, trainer_page(start_events, start_power, 0)))
    events, power = start_events, start_power
    for d_events, watts in steps:
        events += d_events
        power += d_events * watts
        totals = acc.update(ant.decode_fe(25, trainer_page(events, power, watts)))
        assert totals.average_power_w == pytest.approx(watts)
        assert totals.power_events == events
        assert totals.accumulated_power_w == power


@FAST
@given(steps=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), max_size=40))
def test_general_page_elapsed_and_distance_totals_across_wraps(steps: list[tuple[int, int]]) -> None:
    """Page 16: elapsed time in 0.25 s wraps at 64 s, distance wraps at 256 m."""
    acc = ant.FeAccumulator()
    quarter_s = metres = 0
    for d_quarters, d_metres in [(0, 0), *steps]:
        quarter_s += d_quarters
        metres += d_metres
        page = bytes([16, 19, quarter_s % 256, metres % 256, 0x10, 0x27, 0xFF, 0x30])
        totals = acc.update(ant.decode_fe(16, page))
    assert totals.elapsed_s == quarter_s / 4
    assert totals.distance_m == metres


def test_rower_and_elliptical_counts_wrap_at_256() -> None:
    acc = ant.FeAccumulator()
    for strokes in (250, 255, 3, 9):
        totals = acc.update(ant.decode_fe(22, bytes([22, 0xFF, 0xFF, strokes, 24, 0x20, 0x01, 0x30])))
    assert totals.strokes == 250 + 5 + 4 + 6
    for strides in (200, 10):
        totals = acc.update(ant.decode_fe(20, bytes([20, 0xFF, 0, strides, 60, 0x20, 0x01, 0x30])))
    assert totals.strides == 200 + 66


def test_page_checks() -> None:
    with pytest.raises(UnknownSource):
        ant.decode_fe(18, bytes(8))
    with pytest.raises(InvalidFrame) as info:
        ant.decode_fe(16, bytes([25] + [0] * 7))
    assert info.value.offset == 0
    with pytest.raises(FrameTooShort):
        ant.decode_fe(16, bytes([16, 0, 0]))
    with pytest.raises(InvalidFrame):
        ant.decode_hrm(0, bytes(9))
    with pytest.raises(UnknownSource):
        ant.decode_hrm(8, bytes([8] + [0] * 7))


def test_legacy_hrm_model_accepts_any_page_byte() -> None:
    """Old straps send no page number (GoldenCheetah ANTMessage.cpp); only the legacy model accepts that."""
    payload = bytes([0x37, 0xFF, 0xFF, 0xFF, 0x00, 0x10, 0x05, 71])
    with pytest.raises(InvalidFrame):
        ant.decode_hrm(0, payload)
    record = ant.decode_hrm(0, payload, model="ANT-HRM-Legacy")
    assert (record.hr_bpm, record.beat_count, record.beat_time_s) == (71, 5, 4.0)
    assert record.quirks == ("legacy_page_byte",)


def test_trainer_power_is_12_bits_and_status_the_high_nibble() -> None:
    record = ant.decode_fe(25, bytes([25, 7, 85, 0x10, 0x27, 0xFF, 0x3F, 0x31]))
    assert isinstance(record, ant.FeTrainer)
    assert (record.power_w, record.trainer_status, record.capabilities, record.fe_state) == (0xFFF, 3, 1, 3)
