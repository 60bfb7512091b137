"""BLE Cycling Power Measurement 0x2A63 and CSC Measurement 0x2A5B, plus pure trackers that turn cumulative
revolution counters into cadence and wheel speed.

Field order per org.bluetooth.characteristic.cycling_power_measurement and csc_measurement (Bluetooth SIG;
mirrored in oesmith/gatt-xml): CPM flags u16, instantaneous power s16 W (mandatory), then every optional
field in flag order; all of them are decoded. CSC flags u8, wheel then crank revolution data.

Flag bits reserved for future use (CPM bits 13-15, CSC bits 2-7) are ignored, as the specification asks of
a receiver: the defined fields are decoded (they come first), the bits are kept in ``reserved_flags`` and
what they appended in ``trailing``. Bytes after the last field without a reserved bit are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, Final

from gateway.errors import EncodeError, FrameTooShort, InvalidFrame
from gateway.fields import (
    Decoded,
    FieldGroup,
    FieldSpec,
    FlagLayout,
    Value,
    kind_range,
    read_fields,
    read_flags,
    read_int,
    write_fields,
    write_int,
)

F = FieldSpec
Opt = Value | None

CPM_LAYOUT: Final = FlagLayout(
    "ble:2a63",
    "u16",
    (
        FieldGroup(0, (F("pedal_balance_pct", "u8", Fraction(1, 2)),)),
        FieldGroup(2, (F("accumulated_torque_nm", "u16", Fraction(1, 32)),)),
        FieldGroup(4, (F("wheel_revs", "u32"), F("wheel_event_s", "u16", Fraction(1, 2048)))),
        FieldGroup(5, (F("crank_revs", "u16"), F("crank_event_s", "u16", Fraction(1, 1024)))),
        FieldGroup(6, (F("max_force_n", "s16"), F("min_force_n", "s16"))),
        FieldGroup(
            7, (F("max_torque_nm", "s16", Fraction(1, 32)), F("min_torque_nm", "s16", Fraction(1, 32)))
        ),
        FieldGroup(8, (F("extreme_angles_packed", "u24"),)),
        FieldGroup(9, (F("top_dead_spot_deg", "u16"),)),
        FieldGroup(10, (F("bottom_dead_spot_deg", "u16"),)),
        FieldGroup(11, (F("accumulated_energy_kj", "u16"),)),
    ),
    # bit 1 pedal power balance reference (left), bit 3 accumulated torque source (crank), bit 12 offset
    # compensation indicator: meaning, no field.
    flag_only_bits=(1 << 1) | (1 << 3) | (1 << 12),
)
CSC_LAYOUT: Final = FlagLayout(
    "ble:2a5b",
    "u8",
    (
        FieldGroup(0, (F("wheel_revs", "u32"), F("wheel_event_s", "u16", Fraction(1, 1024)))),
        FieldGroup(1, (F("crank_revs", "u16"), F("crank_event_s", "u16", Fraction(1, 1024)))),
    ),
)


@dataclass(frozen=True, kw_only=True)
class CyclingPower:
    SOURCE: ClassVar[str] = "ble:2a63"
    LAYOUT: ClassVar[FlagLayout] = CPM_LAYOUT
    flags: int
    power_w: int
    pedal_balance_pct: Opt = None
    accumulated_torque_nm: Opt = None
    wheel_revs: Opt = None
    wheel_event_s: Opt = None
    crank_revs: Opt = None
    crank_event_s: Opt = None
    max_force_n: Opt = None
    min_force_n: Opt = None
    max_torque_nm: Opt = None
    min_torque_nm: Opt = None
    extreme_angles_packed: Opt = None
    top_dead_spot_deg: Opt = None
    bottom_dead_spot_deg: Opt = None
    accumulated_energy_kj: Opt = None
    truncated: bool = False
    missing: tuple[str, ...] = ()
    reserved_flags: int = 0
    trailing: bytes = b""
    """The start of the first field that did not fit (a truncated frame), or what reserved bits added."""

    @property
    def extreme_angle_max_deg(self) -> int | None:
        """Low 12 bits of the packed extreme angles (the maximum angle comes first on the wire)."""
        return None if self.extreme_angles_packed is None else int(self.extreme_angles_packed) & 0xFFF

    @property
    def extreme_angle_min_deg(self) -> int | None:
        return None if self.extreme_angles_packed is None else int(self.extreme_angles_packed) >> 12


@dataclass(frozen=True, kw_only=True)
class CscMeasurement:
    SOURCE: ClassVar[str] = "ble:2a5b"
    LAYOUT: ClassVar[FlagLayout] = CSC_LAYOUT
    flags: int
    wheel_revs: Opt = None
    wheel_event_s: Opt = None
    crank_revs: Opt = None
    crank_event_s: Opt = None
    truncated: bool = False
    missing: tuple[str, ...] = ()
    reserved_flags: int = 0
    trailing: bytes = b""
    """The start of the first field that did not fit (a truncated frame), or what reserved bits added."""


def _rest(layout: FlagLayout, found: Decoded, data: bytes, reserved: int) -> bytes:
    """Bytes after the last decoded field: the cut start of a field that did not fit, or what reserved flag
    bits appended; anything else is refused."""
    if found.end < len(data) and not found.truncated and not reserved:
        raise InvalidFrame(layout.source, f"{len(data) - found.end} bytes after the last field", found.end)
    return data[found.end :]


def decode_cycling_power(data: bytes) -> CyclingPower:
    data = bytes(data)
    flags = read_flags(CPM_LAYOUT, data)
    reserved = flags & CPM_LAYOUT.reserved_mask
    if len(data) < 4:
        raise FrameTooShort(CPM_LAYOUT.source, "instantaneous power is mandatory", len(data))
    found = read_fields(CPM_LAYOUT, data, flags, start=4)
    return CyclingPower(
        flags=flags,
        power_w=read_int(data, 2, "s16"),
        truncated=found.truncated,
        missing=found.missing,
        reserved_flags=reserved,
        trailing=_rest(CPM_LAYOUT, found, data, reserved),
        **found.values,
    )


def encode_cycling_power(record: CyclingPower) -> bytes:
    lo, hi = kind_range("s16")
    if not lo <= record.power_w <= hi:
        raise EncodeError(CPM_LAYOUT.source, "power_w", f"{record.power_w} does not fit s16")
    if not 0 <= record.flags <= 0xFFFF:
        raise EncodeError(CPM_LAYOUT.source, "flags", f"{record.flags:#x} does not fit u16")
    values = {name: getattr(record, name) for name in CPM_LAYOUT.field_names}
    body = write_fields(CPM_LAYOUT, record.flags, values, record.missing)
    return write_int(record.flags, "u16") + write_int(record.power_w, "s16") + body + record.trailing


def decode_csc(data: bytes) -> CscMeasurement:
    data = bytes(data)
    flags = read_flags(CSC_LAYOUT, data)
    reserved = flags & CSC_LAYOUT.reserved_mask
    found = read_fields(CSC_LAYOUT, data, flags)
    return CscMeasurement(
        flags=flags,
        truncated=found.truncated,
        missing=found.missing,
        reserved_flags=reserved,
        trailing=_rest(CSC_LAYOUT, found, data, reserved),
        **found.values,
    )


def encode_csc(record: CscMeasurement) -> bytes:
    if not 0 <= record.flags <= 0xFF:
        raise EncodeError(CSC_LAYOUT.source, "flags", f"{record.flags:#x} does not fit u8")
    values = {name: getattr(record, name) for name in CSC_LAYOUT.field_names}
    body = write_fields(CSC_LAYOUT, record.flags, values, record.missing)
    return write_int(record.flags, "u8") + body + record.trailing


class RevolutionTracker:
    """Revolutions per second from consecutive (cumulative revolutions, last event time) pairs.

    Both counters wrap: revolutions at ``rev_modulus``, the event time at 65536 ticks of 1/``ticks_per_s``
    s (64 s for 1/1024, 32 s for 1/2048). Returns ``None`` for the first pair and whenever no new
    revolution happened (same count or same event time); at most one wrap between pairs is assumed.
    """

    def __init__(self, *, ticks_per_s: int = 1024, rev_modulus: int = 1 << 16) -> None:
        self.ticks_per_s = ticks_per_s
        self.rev_modulus = rev_modulus
        self._last: tuple[int, int] | None = None

    def revs_per_s(self, revs: int, event_s: float) -> float | None:
        ticks = round(event_s * self.ticks_per_s) % 0x10000
        revs %= self.rev_modulus
        last, self._last = self._last, (revs, ticks)
        if last is None:
            return None
        d_revs = (revs - last[0]) % self.rev_modulus
        d_ticks = (ticks - last[1]) % 0x10000
        if d_revs == 0 or d_ticks == 0:
            self._last = last if d_revs == 0 else self._last
            return None
        return d_revs * self.ticks_per_s / d_ticks


class CadenceTracker(RevolutionTracker):
    """Crank cadence in rpm (u16 crank revolutions, 1/1024 s event time: CPM and CSC)."""

    def update(self, crank_revs: int, crank_event_s: float) -> float | None:
        rps = self.revs_per_s(crank_revs, crank_event_s)
        return None if rps is None else rps * 60


class WheelSpeedTracker(RevolutionTracker):
    """Wheel speed in km/h from u32 wheel revolutions; ``ticks_per_s`` is 1024 for CSC, 2048 for CPM."""

    def __init__(self, circumference_m: float, *, ticks_per_s: int = 1024) -> None:
        super().__init__(ticks_per_s=ticks_per_s, rev_modulus=1 << 32)
        self.circumference_m = circumference_m

    def update(self, wheel_revs: int, wheel_event_s: float) -> float | None:
        rps = self.revs_per_s(wheel_revs, wheel_event_s)
        return None if rps is None else rps * self.circumference_m * 3.6
