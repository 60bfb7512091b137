"""Choosing a device's quirks from what it says it is (Device Information Service strings) and from what an
operator names; decoding the DIS strings themselves."""

from __future__ import annotations

import pytest

from gateway import dis, quirks
from gateway.decode import decode_frame
from gateway.errors import InvalidFrame
from gateway.quirks import DeviceIdentity, Rule

TEST_QUIRK = quirks.Quirk(name="test_quirk", sources=quirks.FTMS_DATA, seen="this test", trailing_bytes=2)
RANGED = Rule(
    name="acme-old",
    manufacturer="Acme Fitness",
    model="Row",
    firmware_from="1.2",
    firmware_before="2.0.1",
    quirks=(TEST_QUIRK,),
    seen="this test",
)


@pytest.mark.parametrize(
    ("identity", "matches"),
    [
        (DeviceIdentity("Acme Fitness", "Row 500", "1.2"), True),  # the lower bound is included
        (DeviceIdentity("ACME-FITNESS", "row500", "v1.10 build 7"), True),  # (1, 10, 7): 1.10 > 1.2
        (DeviceIdentity("acme_fitness\x00", "ROW 500", "2.0.0"), True),
        (DeviceIdentity("Acme Fitness", "Row 500", "2.0.1"), False),  # the upper bound is excluded
        (DeviceIdentity("Acme Fitness", "Row 500", "1.1.9"), False),
        (DeviceIdentity("Acme Fitness", "Row 500", None), False),  # unknown firmware: a range cannot match
        (DeviceIdentity("Acme Fitness", "Row 500", "beta"), False),  # no number in it
        (DeviceIdentity("Acme Fitness", "Bike 500", "1.5"), False),  # another model
        (DeviceIdentity("Acme Fitness", None, "1.5"), False),
        (DeviceIdentity("Acme", "Row 500", "1.5"), False),  # another manufacturer
        (DeviceIdentity(None, "Row 500", "1.5"), False),
    ],
)
def test_a_rule_matches_manufacturer_model_prefix_and_firmware_range(
    identity: DeviceIdentity, matches: bool
) -> None:
    assert RANGED.matches(identity) is matches
    chosen = quirks.select(identity, rules=(RANGED,))
    assert chosen == (quirks.Selection((TEST_QUIRK,), "rule:acme-old") if matches else quirks.SPEC)


def test_versions_are_the_numbers_in_the_revision_string() -> None:
    assert quirks.version("v2.10-b3") == (2, 10, 3)
    assert quirks.version("FTMS_SERVER_V022") == (22,)
    assert quirks.version("") is None
    assert quirks.version(None) is None
    assert quirks.version("2.9") < quirks.version("2.10")  # type: ignore[operator]


def test_a_rule_without_model_or_firmware_matches_every_device_of_the_manufacturer() -> None:
    rule = Rule(name="any", manufacturer="Acme", quirks=(TEST_QUIRK,), seen="this test")
    assert rule.matches(DeviceIdentity("acme"))
    assert rule.matches(DeviceIdentity("ACME", "anything", "0"))
    assert not rule.matches(DeviceIdentity("Acme Fitness"))


def test_every_matching_rule_contributes_and_a_profile_wins() -> None:
    other = quirks.Quirk(name="other", sources=quirks.FTMS_DATA, seen="this test")
    rules = (
        RANGED,
        Rule(name="acme-all", manufacturer="Acme Fitness", quirks=(other, TEST_QUIRK), seen="this test"),
    )
    identity = DeviceIdentity("Acme Fitness", "Row 500", "1.5")
    chosen = quirks.select(identity, rules=rules)
    assert chosen.names == ("test_quirk", "other")  # once each, in rule order
    assert chosen.origin == "rule:acme-old+acme-all"
    assert quirks.select(identity, override="Specification", rules=rules) == quirks.Selection(
        (), "profile:specification"
    )
    assert quirks.select(identity, override="ftms-trailing-byte", rules=rules).names == ("trailing_byte",)
    with pytest.raises(ValueError, match="unknown quirk profile"):
        quirks.select(identity, override="no such profile", rules=rules)


def test_the_registered_rules_select_the_reported_machines() -> None:
    concept2 = quirks.select(DeviceIdentity("Concept2", "PM5", "32.100"))
    assert (concept2.names, concept2.origin) == (("trailing_byte",), "rule:concept2-pm")
    life_fitness = quirks.select(DeviceIdentity("Life Fitness", "IC Bike", None))
    assert life_fitness.names == ("cadence_without_flag", "speed_zero_unavailable")
    assert quirks.select(DeviceIdentity("vitalab-sim", "SimRow 1", "1.0.0")) == quirks.SPEC
    assert quirks.select(None) == quirks.SPEC


def test_the_life_fitness_capture_decodes_with_the_quirks_its_identity_selects() -> None:
    """The bike frame from tests/data/captures (tmiw-life-fitness-indoor-bike-L76): cadence sent without flag
    bit 2. Per the specification it has two bytes too many; with the quirks a Life Fitness identity selects
    the cadence is read (0x0074 = 116 half-rpm = 58 rpm)."""
    frame = bytes.fromhex("fa092d09f208740077006500000d00660061000200ffffff1100")
    with pytest.raises(InvalidFrame):
        decode_frame("2ad2", frame)
    chosen = quirks.select(DeviceIdentity("LifeFitness", "Bike", None))
    record = decode_frame("2ad2", frame, quirks=chosen)
    assert getattr(record, "cadence_rpm") == 58.0  # noqa: B009


# --- Device Information Service strings ---------------------------------------------------------------


def test_dis_strings_decode_with_their_field_and_without_c_terminators() -> None:
    record = decode_frame("2a29", b"Concept2\x00\x00")
    assert isinstance(record, dis.DisString)
    assert (record.source, record.field, record.text) == ("ble:2a29", "manufacturer", "Concept2")
    firmware = decode_frame("ble:2a26", b" 32.100 ")
    assert isinstance(firmware, dis.DisString)
    assert (firmware.field, firmware.text) == ("firmware", "32.100")
    assert [decode_frame(c, b"x").field for c in ("2a24", "2a27", "2a28")] == [  # type: ignore[union-attr]
        "model",
        "hardware",
        "software",
    ]


def test_a_dis_string_that_is_not_utf8_is_invalid() -> None:
    with pytest.raises(InvalidFrame) as info:
        decode_frame("2a24", b"PM\xff5")
    assert (info.value.source, info.value.offset) == ("ble:2a24", 2)


def test_meta_strings_are_cleaned_of_control_characters_and_cut_to_the_wire_limit() -> None:
    assert dis.clean("Life\x00Fitness\t  X\n") == "Life Fitness X"
    assert dis.clean("\x00\x01 ") is None
    assert dis.clean("é" * 100) == "é" * dis.MAX_CHARS
    identity = dis.identity_of(
        [
            dis.decode_string("2a29", b"Acme\x00"),
            dis.decode_string("2a24", b"Row\x07 500"),
            dis.decode_string("2a26", b"1.5"),
        ]
    )
    assert identity == DeviceIdentity("Acme", "Row 500", "1.5")


def test_dis_strings_round_trip_for_simulated_devices() -> None:
    identity = DeviceIdentity("vitalab-sim", "SimRow 1", "1.0.0", None, "2.1")
    strings = dis.strings_of(identity)
    assert [s.source for s in strings] == ["ble:2a29", "ble:2a24", "ble:2a26", "ble:2a28"]
    assert dis.identity_of(dis.decode_string(s.source[4:], dis.encode_string(s)) for s in strings) == identity
