"""Heart Rate Measurement edge cases: reserved flags, RR flag without RR values, an odd RR byte, body sensor
location."""

from __future__ import annotations

import pytest

from gateway import hrm
from gateway.errors import FrameTooShort, InvalidFrame


def test_reserved_flag_bits_are_ignored_and_bytes_after_the_fields_need_one() -> None:
    # flags 0x20: bit 5 (reserved), u8 heart rate 0x48 = 72 bpm, then a byte bit 5 appended
    record = hrm.decode_heart_rate(b"\x20\x48\x01")
    assert (record.hr_bpm, record.reserved_flags, record.trailing) == (72, 0x20, b"\x01")
    assert record.quirks == ("reserved_flags:0x20",)
    assert hrm.encode_heart_rate(record) == b"\x20\x48\x01"
    with pytest.raises(InvalidFrame) as info:
        hrm.decode_heart_rate(b"\x00\x48\x01")  # no reserved bit accounts for the last byte
    assert info.value.offset == 2


def test_heart_rate_is_mandatory() -> None:
    with pytest.raises(FrameTooShort):
        hrm.decode_heart_rate(b"\x01\x48")  # u16 heart rate cut
    with pytest.raises(FrameTooShort):
        hrm.decode_heart_rate(b"")


def test_rr_flag_without_values_and_an_odd_rr_byte_are_marked() -> None:
    empty = hrm.decode_heart_rate(b"\x10\x48")
    assert (empty.rr_ms, empty.truncated, empty.missing) == ((), True, ("rr_ms",))
    odd = hrm.decode_heart_rate(b"\x10\x48\x00\x04\x9a")
    assert odd.rr_ms == (1000.0,)
    assert odd.quirks == ("odd_rr_byte",)
    assert odd.trailing == b"\x9a"
    assert hrm.encode_heart_rate(odd) == b"\x10\x48\x00\x04\x9a"


def test_cut_energy_field_keeps_heart_rate_and_the_cut_byte() -> None:
    record = hrm.decode_heart_rate(b"\x18\x48\x10")
    assert (record.hr_bpm, record.energy_expended_kj) == (72, None)
    assert record.missing == ("energy_expended_kj", "rr_ms")
    assert hrm.encode_heart_rate(record) == b"\x18\x48\x10"


def test_body_sensor_location() -> None:
    assert hrm.decode_body_sensor_location(b"\x01").location == "chest"
    assert hrm.decode_body_sensor_location(b"\x09").location == "reserved_9"
    with pytest.raises(InvalidFrame):
        hrm.decode_body_sensor_location(b"\x01\x01")
    with pytest.raises(FrameTooShort):
        hrm.decode_body_sensor_location(b"")
