"""BLE Heart Rate Service: Heart Rate Measurement 0x2A37 and Body Sensor Location 0x2A38.

Layout per org.bluetooth.characteristic.heart_rate_measurement (Bluetooth SIG; mirrored in oesmith/gatt-xml):
flags u8 (bit 0: heart rate is u16, else u8; bits 1-2 sensor contact; bit 3 energy expended u16 kJ present;
bit 4 RR intervals present; bits 5-7 reserved for future use), heart rate, energy expended, then RR
intervals (u16, 1/1024 s, oldest first) filling the rest of the frame.

Reserved flag bits are ignored, as the specification asks of a receiver: the defined fields are decoded and
the bits kept in ``reserved_flags``. Without RR intervals, the bytes a reserved bit appended are kept in
``trailing``; with them, the RR list fills the rest of the frame as the specification says, so a future
field after it could not be told apart (none is defined).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, Final

from gateway.errors import EncodeError, FrameTooShort, InvalidFrame
from gateway.fields import (
    FieldGroup,
    FieldSpec,
    FlagLayout,
    read_fields,
    read_flags,
    to_raw,
    write_fields,
    write_int,
)

SOURCE: Final = "ble:2a37"
RR_BIT: Final = 1 << 4
RR_MS_PER_TICK: Final = Fraction(1000, 1024)

LAYOUT: Final = FlagLayout(
    SOURCE,
    "u8",
    (
        FieldGroup(0, (FieldSpec("hr_bpm", "u8"),), inverted=True),
        FieldGroup(0, (FieldSpec("hr_bpm", "u16"),)),
        FieldGroup(3, (FieldSpec("energy_expended_kj", "u16"),)),
    ),
    flag_only_bits=0b110 | RR_BIT,
)
CONTACT: Final = {0: "not_supported", 1: "not_supported", 2: "no_contact", 3: "contact"}


@dataclass(frozen=True, kw_only=True)
class HeartRateMeasurement:
    SOURCE: ClassVar[str] = SOURCE
    flags: int
    hr_bpm: int
    sensor_contact: str = "not_supported"
    energy_expended_kj: int | None = None
    rr_ms: tuple[float, ...] = ()
    truncated: bool = False
    missing: tuple[str, ...] = ()
    quirks: tuple[str, ...] = ()
    reserved_flags: int = 0
    trailing: bytes = b""
    """A cut field of a truncated frame, the odd last byte of the RR list, or what reserved bits added."""


def decode_heart_rate(data: bytes) -> HeartRateMeasurement:
    data = bytes(data)
    flags = read_flags(LAYOUT, data)
    reserved = flags & LAYOUT.reserved_mask
    found = read_fields(LAYOUT, data, flags)
    if "hr_bpm" in found.missing:
        raise FrameTooShort(SOURCE, "the heart rate value is mandatory", len(data))
    missing = list(found.missing)
    notes: list[str] = [f"reserved_flags:{reserved:#x}"] if reserved else []
    rest = data[found.end :]
    rr: tuple[float, ...] = ()
    trailing = rest
    if flags & RR_BIT and not missing:
        rr = tuple(ticks * 1000 / 1024 for ticks in struct.unpack_from(f"<{len(rest) // 2}H", rest))
        trailing = rest[len(rest) - len(rest) % 2 :]
        if len(rest) % 2:
            notes.append("odd_rr_byte")
            missing.append("rr_ms")
        elif not rest:
            missing.append("rr_ms")
    elif flags & RR_BIT:
        missing.append("rr_ms")
    elif rest and not missing and not reserved:
        raise InvalidFrame(SOURCE, f"{len(rest)} bytes after the last flagged field", found.end)
    hr = found.values["hr_bpm"]
    energy = found.values.get("energy_expended_kj")
    return HeartRateMeasurement(
        flags=flags,
        hr_bpm=int(hr or 0),
        sensor_contact=CONTACT[flags >> 1 & 3],
        energy_expended_kj=None if energy is None else int(energy),
        rr_ms=rr,
        truncated=bool(missing),
        missing=tuple(missing),
        quirks=tuple(notes),
        reserved_flags=reserved,
        trailing=trailing,
    )


def encode_heart_rate(record: HeartRateMeasurement) -> bytes:
    if not 0 <= record.flags <= 0xFF:
        raise EncodeError(SOURCE, "flags", f"{record.flags:#x} does not fit u8")
    values = {"hr_bpm": record.hr_bpm, "energy_expended_kj": record.energy_expended_kj}
    out = write_int(record.flags, "u8") + write_fields(LAYOUT, record.flags, values, record.missing)
    if record.flags & RR_BIT and "energy_expended_kj" not in record.missing:
        for ms in record.rr_ms:
            raw = to_raw(ms, RR_MS_PER_TICK.numerator, RR_MS_PER_TICK.denominator)
            if not 0 <= raw <= 0xFFFF:
                raise EncodeError(SOURCE, "rr_ms", f"{ms} ms does not fit u16 in 1/1024 s")
            out += write_int(raw, "u16")
    return out + record.trailing


# --- Body Sensor Location 0x2A38 --------------------------------------------------------------------------

LOCATIONS: Final = ("other", "chest", "wrist", "finger", "hand", "ear_lobe", "foot")


@dataclass(frozen=True, kw_only=True)
class BodySensorLocation:
    SOURCE: ClassVar[str] = "ble:2a38"
    code: int
    location: str


def decode_body_sensor_location(data: bytes) -> BodySensorLocation:
    src = BodySensorLocation.SOURCE
    if not data:
        raise FrameTooShort(src, "empty frame", 0)
    if len(data) > 1:
        raise InvalidFrame(src, f"1 byte expected, got {len(data)}", 1)
    code = data[0]
    return BodySensorLocation(
        code=code, location=LOCATIONS[code] if code < len(LOCATIONS) else f"reserved_{code}"
    )


def encode_body_sensor_location(record: BodySensorLocation) -> bytes:
    return bytes((record.code & 0xFF,))
