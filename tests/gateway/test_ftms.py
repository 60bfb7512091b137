"""FTMS specifics the property tests do not pin: reserved bits and extra bytes without and with a quirk
model, the reassembler's per-device bookkeeping, and the status / feature / training status / control-point
readers' checks."""

from __future__ import annotations

import pytest

from gateway import ftms, quirks
from gateway.errors import FrameTooShort, InvalidFrame

BIKE = ftms.IndoorBikeData


def test_reserved_flag_bits_are_ignored_and_what_they_append_is_kept() -> None:
    # rower: reserved bit 13, stroke rate 26 spm (raw 52 at 0.5), 19 strokes, then two bytes bit 13 appended
    frame = (0x2000).to_bytes(2, "little") + bytes.fromhex("341300") + b"\xab\xcd"
    record = ftms.decode_data(ftms.RowerData, frame)
    assert (record.stroke_rate_spm, record.stroke_count) == (26.0, 19)
    assert (record.reserved_flags, record.trailing) == (0x2000, b"\xab\xcd")
    assert record.quirks == ("reserved_flags:0x2000",)
    assert not record.truncated
    assert ftms.encode_data(record) == frame


def test_extra_bytes_without_a_reserved_bit_are_rejected_unless_the_quirk_allows_them() -> None:
    frame = bytes.fromhex("4400ca0ca0002c017f")
    with pytest.raises(InvalidFrame) as info:
        ftms.decode_data(BIKE, frame)
    assert info.value.offset == 8
    trailing = quirks.profile("ftms-trailing-byte")
    assert trailing is not None
    record = ftms.decode_data(BIKE, frame, quirks=trailing)
    assert record.trailing == b"\x7f"
    assert record.power_w == 300
    assert ftms.encode_data(record, quirks=trailing) == frame


def test_profile_names_are_trimmed_and_case_insensitive() -> None:
    named = quirks.profile("  LIFE FITNESS BIKE ")
    assert named is not None
    assert quirks.quirks_for(named, "ble:2ad2") == (quirks.CADENCE_WITHOUT_FLAG,)
    assert quirks.quirks_for(named, "ble:2acd") == ()
    assert quirks.profile("no such bike") is None
    assert quirks.apply(BIKE.LAYOUT, quirks.SPEC).layout is BIKE.LAYOUT
    assert quirks.apply(BIKE.LAYOUT).names == ()


def test_every_quirk_says_where_it_was_seen_and_every_rule_cites_its_strings() -> None:
    for name, found in quirks.PROFILES.items():
        for quirk in found:
            assert quirk.seen, name
    for rule in quirks.RULES:
        assert rule.quirks
        assert rule.seen
        assert all(q.seen for q in rule.quirks)


def test_too_short_for_the_flags() -> None:
    with pytest.raises(FrameTooShort):
        ftms.decode_data(ftms.CrossTrainerData, b"\x00\x00")
    with pytest.raises(FrameTooShort):
        ftms.decode_data(BIKE, b"")


def test_reassembler_keeps_devices_and_characteristics_apart() -> None:
    r = ftms.Reassembler(timeout_s=2.0)
    part_bike = ftms.decode_data(BIKE, (0x0041).to_bytes(2, "little") + (150).to_bytes(2, "little"))
    part_rower = ftms.decode_data(
        ftms.RowerData, (0x0021).to_bytes(2, "little") + (180).to_bytes(2, "little")
    )
    assert r.push("a", part_bike, now=0.0) == []
    assert r.push("b", part_bike, now=0.1) == []
    assert r.push("a", part_rower, now=0.2) == []
    assert r.pending() == 3
    final = ftms.decode_data(BIKE, (0x0000).to_bytes(2, "little") + (2500).to_bytes(2, "little"))
    done = r.push("a", final, now=0.5)
    assert len(done) == 1
    merged = done[0]
    assert isinstance(merged, ftms.IndoorBikeData)
    assert (merged.power_w, merged.speed_kmh, merged.flags) == (150, 25.0, 0x0040)
    assert r.pending() == 2


def test_a_record_that_was_never_split_passes_straight_through() -> None:
    r = ftms.Reassembler()
    whole = ftms.decode_data(BIKE, bytes.fromhex("44025e0bf0007a0054"))
    assert r.push("x", whole, now=1.0) == [whole]
    assert r.pending() == 0


def test_a_later_part_wins_over_an_earlier_one() -> None:
    r = ftms.Reassembler()
    first = ftms.decode_data(BIKE, (0x0041).to_bytes(2, "little") + (150).to_bytes(2, "little"))
    second = ftms.decode_data(BIKE, (0x0041).to_bytes(2, "little") + (160).to_bytes(2, "little"))
    final = ftms.decode_data(BIKE, (0x0000).to_bytes(2, "little") + (0).to_bytes(2, "little"))
    assert r.push("x", first, now=0.0) == []
    assert r.push("x", second, now=0.1) == []
    (merged,) = r.push("x", final, now=0.2)
    assert isinstance(merged, ftms.IndoorBikeData)
    assert merged.power_w == 160


def test_machine_status_target_resistance_reads_u8_and_the_sint16_some_machines_send() -> None:
    assert dict(ftms.decode_machine_status(b"\x07\x64").params) == {"resistance_level": 10.0}
    sint16 = ftms.decode_machine_status(b"\x07\x9c\xff")
    assert dict(sint16.params) == {"resistance_level": -10.0}
    assert sint16.quirks == ("resistance_param_sint16",)
    assert ftms.encode_machine_status(sint16) == b"\x07\x9c\xff"


def test_machine_status_lengths_and_op_codes_are_checked() -> None:
    with pytest.raises(InvalidFrame):
        ftms.decode_machine_status(b"\x16")  # op 0x16 is reserved
    with pytest.raises(FrameTooShort):
        ftms.decode_machine_status(b"\x05\x69")
    with pytest.raises(InvalidFrame):
        ftms.decode_machine_status(b"\x04\x00")
    with pytest.raises(FrameTooShort):
        ftms.decode_machine_status(b"")


def test_feature_bits_are_named_and_reserved_bits_kept() -> None:
    record = ftms.decode_machine_feature(
        (1 << 14 | 1 << 31).to_bytes(4, "little") + (1 << 16).to_bytes(4, "little")
    )
    assert record.machine_features == ("power_measurement", "reserved_bit31")
    assert record.target_features == ("targeted_cadence",)
    with pytest.raises(InvalidFrame):
        ftms.decode_machine_feature(bytes(9))
    with pytest.raises(FrameTooShort):
        ftms.decode_machine_feature(bytes(7))


def test_training_status_string_and_its_checks() -> None:
    record = ftms.decode_training_status("\x01\x0dQuick Start ✓".encode())
    assert (record.status, record.training, record.text) == ("manual_mode", "manual", "Quick Start ✓")
    assert ftms.decode_training_status(b"\x00\x20").status == "reserved_0x20"
    with pytest.raises(InvalidFrame) as info:
        ftms.decode_training_status(b"\x01\x01\xff\xfe")
    assert info.value.offset == 2
    with pytest.raises(InvalidFrame):
        ftms.decode_training_status(b"\x00\x01x")  # text without the string flag
    future = ftms.decode_training_status(b"\x04\x01\x99")  # reserved bit 2 and what it appended
    assert (future.training, future.reserved_flags, future.trailing) == ("idle", 0x04, b"\x99")
    assert ftms.encode_training_status(future) == b"\x04\x01\x99"


def test_control_point_accepts_only_responses() -> None:
    spin_down = ftms.decode_control_point(bytes.fromhex("801301") + bytes.fromhex("c4091027"))
    assert (spin_down.request, spin_down.result, spin_down.parameter) == (
        "spin_down_control",
        "success",
        bytes.fromhex("c4091027"),
    )
    with pytest.raises(InvalidFrame) as info:
        ftms.decode_control_point(b"\x05\x2c\x01")  # a request, not a response
    assert info.value.offset == 0
    with pytest.raises(InvalidFrame):
        ftms.decode_control_point(b"\x80\x05\x06")
    with pytest.raises(FrameTooShort):
        ftms.decode_control_point(b"\x80\x05")
