"""BLE Fitness Machine Service (0x1826): data characteristics, split-record reassembly, machine status,
features, training status and control-point responses. Pure: bytes in, frozen records out, and back.

Field tables follow the FTMS 1.0 characteristic XML published by the Bluetooth SIG (mirrored in
oesmith/gatt-xml @4fd2ede, org.bluetooth.characteristic.{indoor_bike,treadmill,rower,cross_trainer}_data.xml):
fields in flag-bit order, little endian. Two things the XML gets wrong, checked against captures:

* Indoor Bike Data names bit 1 "Instantaneous Cadence present" and bit 2 "Average Speed present", but its
  own ``requires`` links (bit 1 -> C2 Average Speed) and every capture (flags 0x0044 = speed, cadence,
  power in dvmarinoff/Flux test/ble/indoor-bike-data.test.js) say bit 1 = average speed, bit 2 = cadence.
* "Not available" values: the FTMS text defines 0xFFFF / 0xFF for the three energy fields only. Vendors
  also send the largest value of a field's type for "not available" (captures: 0xFFFF elevation, 0x7FFF
  sint16), and dudanov/pyftms (serializer/num.py) reads that value of every field as not available. Field
  by field we decide (tests/gateway/test_conformance.py holds one frame per decision):

  - an NA marker, decoded to ``None``: the energy fields (the specification's own); the largest value of
    every instantaneous and average measurement (speed, cadence, power, heart rate, MET, pace, stroke and
    step rates, inclination, ramp angle, resistance, elevation gains, force on belt); distance 0xFFFFFF
    (16 777 km) and elapsed / remaining time 0xFFFF (18.2 h), which no gym workout reaches but which the
    wire contract's bounds would let through;
  - a counter, kept as sent: stroke count, stride count (they are not published).

  Any other value a vendor may use as a marker (0 heart rate, a negative power, 0x8000) is a number here;
  :mod:`gateway.normalize` drops it, and counts it, when it is outside the wire contract's bounds.

Flag bits reserved for future use are ignored, as Bluetooth asks of a receiver (reserved for future use:
0 when sent, ignored when received): the defined fields are decoded (they come before anything a reserved
bit appends) and the rest is kept as ``trailing``, with the bits in ``reserved_flags`` and a
``reserved_flags:0x...`` note in ``quirks``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from fractions import Fraction
from typing import Any, ClassVar, Final, TypeVar

from gateway import quirks as quirk_registry
from gateway.errors import EncodeError, FrameTooShort, InvalidFrame
from gateway.fields import (
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
from gateway.quirks import SPEC, Selection

F = FieldSpec
HUNDREDTH, TENTH, HALF = Fraction(1, 100), Fraction(1, 10), Fraction(1, 2)


def _energy(bit: int) -> FieldGroup:
    return FieldGroup(
        bit,
        (
            F("energy_total_kcal", "u16", sentinel=0xFFFF),
            F("energy_per_hour_kcal", "u16", sentinel=0xFFFF),
            F("energy_per_minute_kcal", "u8", sentinel=0xFF),
        ),
    )


def _speed() -> FieldGroup:
    return FieldGroup(0, (F("speed_kmh", "u16", HUNDREDTH, 0xFFFF),), inverted=True)


def _tail(first: int) -> tuple[FieldGroup, ...]:
    """Energy, heart rate, MET, elapsed and remaining time: the common tail of every data characteristic."""
    return (
        _energy(first),
        FieldGroup(first + 1, (F("hr_bpm", "u8", sentinel=0xFF),)),
        FieldGroup(first + 2, (F("met", "u8", TENTH, 0xFF),)),
        FieldGroup(first + 3, (F("elapsed_s", "u16", sentinel=0xFFFF),)),
        FieldGroup(first + 4, (F("remaining_s", "u16", sentinel=0xFFFF),)),
    )


BIKE_LAYOUT: Final = FlagLayout(
    "ble:2ad2",
    "u16",
    (
        _speed(),
        FieldGroup(1, (F("avg_speed_kmh", "u16", HUNDREDTH, 0xFFFF),)),
        FieldGroup(2, (F("cadence_rpm", "u16", HALF, 0xFFFF),)),
        FieldGroup(3, (F("avg_cadence_rpm", "u16", HALF, 0xFFFF),)),
        FieldGroup(4, (F("distance_m", "u24", sentinel=0xFFFFFF),)),
        FieldGroup(5, (F("resistance_level", "s16", sentinel=0x7FFF),)),
        FieldGroup(6, (F("power_w", "s16", sentinel=0x7FFF),)),
        FieldGroup(7, (F("avg_power_w", "s16", sentinel=0x7FFF),)),
        *_tail(8),
    ),
)
TREADMILL_LAYOUT: Final = FlagLayout(
    "ble:2acd",
    "u16",
    (
        _speed(),
        FieldGroup(1, (F("avg_speed_kmh", "u16", HUNDREDTH, 0xFFFF),)),
        FieldGroup(2, (F("distance_m", "u24", sentinel=0xFFFFFF),)),
        FieldGroup(3, (F("incline_pct", "s16", TENTH, 0x7FFF), F("ramp_angle_deg", "s16", TENTH, 0x7FFF))),
        FieldGroup(
            4,
            (
                F("elevation_gain_pos_m", "u16", TENTH, 0xFFFF),
                F("elevation_gain_neg_m", "u16", TENTH, 0xFFFF),
            ),
        ),
        FieldGroup(5, (F("pace_km_per_min", "u8", TENTH, 0xFF),)),
        FieldGroup(6, (F("avg_pace_km_per_min", "u8", TENTH, 0xFF),)),
        *_tail(7),
        FieldGroup(12, (F("force_on_belt_n", "s16", sentinel=0x7FFF), F("power_w", "s16", sentinel=0x7FFF))),
    ),
)
CROSS_TRAINER_LAYOUT: Final = FlagLayout(
    "ble:2ace",
    "u24",
    (
        _speed(),
        FieldGroup(1, (F("avg_speed_kmh", "u16", HUNDREDTH, 0xFFFF),)),
        FieldGroup(2, (F("distance_m", "u24", sentinel=0xFFFFFF),)),
        FieldGroup(
            3, (F("steps_per_min", "u16", sentinel=0xFFFF), F("avg_steps_per_min", "u16", sentinel=0xFFFF))
        ),
        FieldGroup(4, (F("stride_count", "u16", TENTH),)),
        FieldGroup(
            5,
            (
                F("elevation_gain_pos_m", "u16", sentinel=0xFFFF),
                F("elevation_gain_neg_m", "u16", sentinel=0xFFFF),
            ),
        ),
        FieldGroup(6, (F("incline_pct", "s16", TENTH, 0x7FFF), F("ramp_angle_deg", "s16", TENTH, 0x7FFF))),
        FieldGroup(7, (F("resistance_level", "s16", TENTH, 0x7FFF),)),
        FieldGroup(8, (F("power_w", "s16", sentinel=0x7FFF),)),
        FieldGroup(9, (F("avg_power_w", "s16", sentinel=0x7FFF),)),
        *_tail(10),
    ),
    flag_only_bits=1 << 15,  # movement direction: 1 = backward
)
ROWER_LAYOUT: Final = FlagLayout(
    "ble:2ad1",
    "u16",
    (
        FieldGroup(0, (F("stroke_rate_spm", "u8", HALF, 0xFF), F("stroke_count", "u16")), inverted=True),
        FieldGroup(1, (F("avg_stroke_rate_spm", "u8", HALF, 0xFF),)),
        FieldGroup(2, (F("distance_m", "u24", sentinel=0xFFFFFF),)),
        FieldGroup(3, (F("pace_s_per_500m", "u16", sentinel=0xFFFF),)),
        FieldGroup(4, (F("avg_pace_s_per_500m", "u16", sentinel=0xFFFF),)),
        FieldGroup(5, (F("power_w", "s16", sentinel=0x7FFF),)),
        FieldGroup(6, (F("avg_power_w", "s16", sentinel=0x7FFF),)),
        FieldGroup(7, (F("resistance_level", "s16", sentinel=0x7FFF),)),
        *_tail(8),
    ),
)

Opt = Value | None


@dataclass(frozen=True, kw_only=True)
class FtmsData:
    """Common part of the four data characteristics. ``more_data`` is flag bit 0 (set on the non-final
    parts of a split record), ``missing`` lists flagged fields that did not fit, ``quirks`` names the model
    quirks applied and anything unusual found, ``reserved_flags`` the flag bits reserved for future use that
    the frame set, ``trailing`` holds the bytes after the last decoded field: the start of the first field
    that did not fit (a truncated frame), what the reserved flag bits appended, or extra bytes a quirk
    allows."""

    SOURCE: ClassVar[str]
    LAYOUT: ClassVar[FlagLayout]
    FLAG_FIELDS: ClassVar[dict[str, int]] = {}

    flags: int
    more_data: bool = False
    truncated: bool = False
    missing: tuple[str, ...] = ()
    quirks: tuple[str, ...] = ()
    reserved_flags: int = 0
    trailing: bytes = b""


@dataclass(frozen=True, kw_only=True)
class _Tail:
    energy_total_kcal: Opt = None
    energy_per_hour_kcal: Opt = None
    energy_per_minute_kcal: Opt = None
    hr_bpm: Opt = None
    met: Opt = None
    elapsed_s: Opt = None
    remaining_s: Opt = None


@dataclass(frozen=True, kw_only=True)
class IndoorBikeData(_Tail, FtmsData):
    SOURCE = "ble:2ad2"
    LAYOUT = BIKE_LAYOUT
    speed_kmh: Opt = None
    avg_speed_kmh: Opt = None
    cadence_rpm: Opt = None
    avg_cadence_rpm: Opt = None
    distance_m: Opt = None
    resistance_level: Opt = None
    power_w: Opt = None
    avg_power_w: Opt = None


@dataclass(frozen=True, kw_only=True)
class TreadmillData(_Tail, FtmsData):
    SOURCE = "ble:2acd"
    LAYOUT = TREADMILL_LAYOUT
    speed_kmh: Opt = None
    avg_speed_kmh: Opt = None
    distance_m: Opt = None
    incline_pct: Opt = None
    ramp_angle_deg: Opt = None
    elevation_gain_pos_m: Opt = None
    elevation_gain_neg_m: Opt = None
    pace_km_per_min: Opt = None
    avg_pace_km_per_min: Opt = None
    force_on_belt_n: Opt = None
    power_w: Opt = None
    step_count: Opt = None  # vendor use of reserved bit 13, only with the quirk (gateway.quirks)


@dataclass(frozen=True, kw_only=True)
class CrossTrainerData(_Tail, FtmsData):
    SOURCE = "ble:2ace"
    LAYOUT = CROSS_TRAINER_LAYOUT
    FLAG_FIELDS = {"backward": 1 << 15}
    speed_kmh: Opt = None
    avg_speed_kmh: Opt = None
    distance_m: Opt = None
    steps_per_min: Opt = None
    avg_steps_per_min: Opt = None
    stride_count: Opt = None
    elevation_gain_pos_m: Opt = None
    elevation_gain_neg_m: Opt = None
    incline_pct: Opt = None
    ramp_angle_deg: Opt = None
    resistance_level: Opt = None
    power_w: Opt = None
    avg_power_w: Opt = None
    backward: bool = False


@dataclass(frozen=True, kw_only=True)
class RowerData(_Tail, FtmsData):
    SOURCE = "ble:2ad1"
    LAYOUT = ROWER_LAYOUT
    stroke_rate_spm: Opt = None
    stroke_count: Opt = None
    avg_stroke_rate_spm: Opt = None
    distance_m: Opt = None
    pace_s_per_500m: Opt = None
    avg_pace_s_per_500m: Opt = None
    power_w: Opt = None
    avg_power_w: Opt = None
    resistance_level: Opt = None


D = TypeVar("D", bound=FtmsData)
DATA_TYPES: Final[tuple[type[FtmsData], ...]] = (IndoorBikeData, TreadmillData, CrossTrainerData, RowerData)


def decode_data(cls: type[D], data: bytes, *, quirks: Selection = SPEC) -> D:
    """Decode one notification of a data characteristic: what fits is decoded, the rest is ``missing``.

    Reserved flag bits are ignored (what they append is kept in ``trailing``); bytes after the last field
    that no reserved bit and no quirk accounts for are an :class:`InvalidFrame`."""
    data = bytes(data)
    applied = quirk_registry.apply(cls.LAYOUT, quirks)
    layout = applied.layout
    flags = read_flags(layout, data)
    notes = list(applied.names)
    reserved = flags & layout.reserved_mask
    if reserved:
        notes.append(f"reserved_flags:{reserved:#x}")
    found = read_fields(layout, data, flags | applied.force_bits)
    extra = len(data) - found.end
    # A truncated frame ends inside the first field that did not fit: those bytes are not "extra".
    if extra > applied.trailing_bytes and not found.truncated and not reserved:
        raise InvalidFrame(cls.SOURCE, f"{extra} bytes after the last flagged field", found.end)
    values: dict[str, Any] = dict(found.values)
    for name in applied.zero_is_unavailable:
        if values.get(name) == 0:
            values[name] = None
    values.update({name: bool(flags & mask) for name, mask in cls.FLAG_FIELDS.items()})
    return cls(
        flags=flags,
        more_data=bool(flags & 1),
        truncated=found.truncated,
        missing=found.missing,
        quirks=tuple(notes),
        reserved_flags=reserved,
        trailing=data[found.end :],
        **values,
    )


def encode_data(record: FtmsData, *, quirks: Selection = SPEC) -> bytes:
    """The notification ``record`` was decoded from (for a simulator's raw-frame devices)."""
    applied = quirk_registry.apply(record.LAYOUT, quirks)
    layout = applied.layout
    lo, hi = kind_range(layout.flags_kind)
    if not lo <= record.flags <= hi:
        raise EncodeError(record.SOURCE, "flags", f"{record.flags:#x} does not fit {layout.flags_kind}")
    values = {name: getattr(record, name) for name in layout.field_names}
    body = write_fields(layout, record.flags | applied.force_bits, values, record.missing)
    return write_int(record.flags, layout.flags_kind) + body + record.trailing


class Reassembler:
    """Merges a record split over several notifications (More Data = 1 on every part but the last), per
    (device, characteristic). Pure: the caller passes the time; nothing here reads a clock.

    ``push`` returns the records completed by this part (the merged record when the final part arrives, or
    the part itself when it was never split), plus any other pending record older than ``timeout_s``.
    ``flush`` returns the pending records older than ``timeout_s``, merged as far as they got and marked
    with the quirk ``incomplete_split``. A later part overrides the same field of an earlier one.
    """

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self._pending: dict[tuple[str, str], tuple[float, FtmsData]] = {}

    def push(self, device: str, record: FtmsData, now: float) -> list[FtmsData]:
        key = (device, record.SOURCE)
        out = self.flush(now, skip=key)
        started, pending = self._pending.pop(key, (now, None))
        merged = record if pending is None else _merge(pending, record)
        if record.more_data:
            self._pending[key] = (started, merged)
        else:
            out.append(merged)
        return out

    def flush(self, now: float, *, skip: tuple[str, str] | None = None) -> list[FtmsData]:
        expired = [k for k, (t, _) in self._pending.items() if k != skip and now - t >= self.timeout_s]
        out = []
        for key in expired:
            _, pending = self._pending.pop(key)
            out.append(replace(pending, quirks=(*pending.quirks, "incomplete_split")))
        return out

    def pending(self) -> int:
        return len(self._pending)


BASE_FIELDS: Final = frozenset(f.name for f in fields(FtmsData))


def value_fields(cls: type[FtmsData]) -> tuple[str, ...]:
    """Names of the measurement fields of a data record type (no flags, bookkeeping or flag-only fields)."""
    return tuple(f.name for f in fields(cls) if f.name not in BASE_FIELDS and f.name not in cls.FLAG_FIELDS)


def _arrived(record: FtmsData) -> set[str]:
    names = {f.name for g in record.LAYOUT.groups if g.present(record.flags) for f in g.fields}
    return names - set(record.missing)


def _merge(first: FtmsData, later: FtmsData) -> FtmsData:
    if type(first) is not type(later):
        return later
    arrived = _arrived(later)
    changes: dict[str, Any] = {
        name: getattr(later, name)
        for name in value_fields(type(later))
        if name in arrived or getattr(later, name) is not None
    }
    changes.update({name: bool(later.flags & mask) for name, mask in later.FLAG_FIELDS.items()})
    missing = tuple(
        n for n in dict.fromkeys((*first.missing, *later.missing)) if n in later.missing or n not in arrived
    )
    return replace(
        first,
        **changes,
        flags=(first.flags | later.flags) & ~1 | (later.flags & 1),
        more_data=later.more_data,
        truncated=bool(missing),
        missing=missing,
        quirks=tuple(dict.fromkeys((*first.quirks, *later.quirks, "merged"))),
        reserved_flags=first.reserved_flags | later.reserved_flags,
        trailing=later.trailing,
    )


# --- Training Status 0x2AD3 -------------------------------------------------------------------------------

TRAINING_STATUS: Final[dict[int, tuple[str, str]]] = {
    0x00: ("other", "other"),
    0x01: ("idle", "idle"),
    0x02: ("warming_up", "warm_up"),
    0x03: ("low_intensity_interval", "low_interval"),
    0x04: ("high_intensity_interval", "high_interval"),
    0x05: ("recovery_interval", "recovery"),
    0x06: ("isometric", "other"),
    0x07: ("heart_rate_control", "other"),
    0x08: ("fitness_test", "other"),
    0x09: ("speed_below_control_region", "other"),
    0x0A: ("speed_above_control_region", "other"),
    0x0B: ("cool_down", "cool_down"),
    0x0C: ("watt_control", "other"),
    0x0D: ("manual_mode", "manual"),
    0x0E: ("pre_workout", "pre_workout"),
    0x0F: ("post_workout", "post_workout"),
}


@dataclass(frozen=True, kw_only=True)
class TrainingStatus:
    """``status`` is the FTMS name; ``training`` is the wire contract's name
    (``vitalab.wire.payload.TrainingStatus``)."""

    SOURCE: ClassVar[str] = "ble:2ad3"
    flags: int
    status_code: int
    status: str
    training: str
    text: str | None = None
    extended_string: bool = False
    reserved_flags: int = 0
    trailing: bytes = b""


def decode_training_status(data: bytes) -> TrainingStatus:
    """Flags u8 (bit 0: a training status string follows, bit 1: an extended string is to be read; bits
    2-7 reserved for future use and ignored), status u8, then the string. Bytes after the status without
    the string flag are refused unless a reserved bit is set (then they are kept in ``trailing``)."""
    src = TrainingStatus.SOURCE
    if len(data) < 2:
        raise FrameTooShort(src, "flags and status need 2 bytes", len(data))
    flags, code = data[0], data[1]
    reserved = flags & ~0x03
    trailing = b""
    text = None
    if flags & 0x01:
        try:
            text = bytes(data[2:]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidFrame(src, "training status string is not UTF-8", 2 + exc.start) from None
    elif len(data) > 2:
        if not reserved:
            raise InvalidFrame(src, "bytes after the status but the string flag is clear", 2)
        trailing = bytes(data[2:])
    status, training = TRAINING_STATUS.get(code, (f"reserved_{code:#04x}", "other"))
    return TrainingStatus(
        flags=flags,
        status_code=code,
        status=status,
        training=training,
        text=text,
        extended_string=bool(flags & 2),
        reserved_flags=reserved,
        trailing=trailing,
    )


def encode_training_status(record: TrainingStatus) -> bytes:
    text = (record.text or "").encode("utf-8") if record.flags & 1 else b""
    return bytes((record.flags & 0xFF, record.status_code & 0xFF)) + text + record.trailing


# --- Fitness Machine Status 0x2ADA ------------------------------------------------------------------------

STATUS_OPS: Final[dict[int, tuple[str, tuple[FieldSpec, ...]]]] = {
    0x01: ("reset", ()),
    0x02: ("stopped_or_paused_by_user", (F("control", "u8"),)),  # 1 stop, 2 pause
    0x03: ("stopped_by_safety_key", ()),
    0x04: ("started_or_resumed_by_user", ()),
    0x05: ("target_speed_changed", (F("speed_kmh", "u16", HUNDREDTH),)),
    0x06: ("target_incline_changed", (F("incline_pct", "s16", TENTH),)),
    0x07: ("target_resistance_changed", (F("resistance_level", "u8", TENTH),)),
    0x08: ("target_power_changed", (F("power_w", "s16"),)),
    0x09: ("target_heart_rate_changed", (F("hr_bpm", "u8"),)),
    0x0A: ("targeted_energy_changed", (F("energy_kcal", "u16"),)),
    0x0B: ("targeted_steps_changed", (F("steps", "u16"),)),
    0x0C: ("targeted_strides_changed", (F("strides", "u16"),)),
    0x0D: ("targeted_distance_changed", (F("distance_m", "u24"),)),
    0x0E: ("targeted_training_time_changed", (F("time_s", "u16"),)),
    0x0F: ("targeted_time_in_2_hr_zones_changed", tuple(F(f"zone{i}_s", "u16") for i in (1, 2))),
    0x10: ("targeted_time_in_3_hr_zones_changed", tuple(F(f"zone{i}_s", "u16") for i in (1, 2, 3))),
    0x11: ("targeted_time_in_5_hr_zones_changed", tuple(F(f"zone{i}_s", "u16") for i in range(1, 6))),
    0x12: (
        "indoor_bike_simulation_changed",
        (
            F("wind_speed_mps", "s16", Fraction(1, 1000)),
            F("grade_pct", "s16", HUNDREDTH),
            F("crr", "u8", Fraction(1, 10000)),
            F("cw_kg_per_m", "u8", HUNDREDTH),
        ),
    ),
    0x13: ("wheel_circumference_changed", (F("circumference_mm", "u16", TENTH),)),
    0x14: ("spin_down_status", (F("status", "u8"),)),
    0x15: ("targeted_cadence_changed", (F("cadence_rpm", "u16", HALF),)),
    0xFF: ("control_permission_lost", ()),
}
# The FTMS table gives op 0x07 a uint8; dvmarinoff/Flux test/ble/ftms.test.js decodes [7, 100, 0] as 10.
RESISTANCE_S16: Final = (F("resistance_level", "s16", TENTH),)


@dataclass(frozen=True, kw_only=True)
class MachineStatus:
    SOURCE: ClassVar[str] = "ble:2ada"
    op_code: int
    event: str
    params: tuple[tuple[str, Value], ...] = ()
    quirks: tuple[str, ...] = ()


def _status_specs(op: int, quirk_notes: tuple[str, ...]) -> tuple[FieldSpec, ...]:
    if op == 0x07 and "resistance_param_sint16" in quirk_notes:
        return RESISTANCE_S16
    return STATUS_OPS[op][1]


def decode_machine_status(data: bytes) -> MachineStatus:
    src = MachineStatus.SOURCE
    if not data:
        raise FrameTooShort(src, "empty frame", 0)
    op = data[0]
    if op not in STATUS_OPS:
        raise InvalidFrame(src, f"reserved op code {op:#04x}", 0)
    notes: tuple[str, ...] = ("resistance_param_sint16",) if op == 0x07 and len(data) == 3 else ()
    specs = _status_specs(op, notes)
    need = 1 + sum(s.size for s in specs)
    if len(data) < need:
        raise FrameTooShort(src, f"op {op:#04x} needs {need} bytes, got {len(data)}", len(data))
    if len(data) > need:
        raise InvalidFrame(src, f"op {op:#04x} takes {need} bytes, got {len(data)}", need)
    params: list[tuple[str, Value]] = []
    offset = 1
    for spec in specs:
        raw = read_int(data, offset, spec.kind)
        params.append((spec.name, raw if spec.resolution == 1 else float(raw * spec.resolution)))
        offset += spec.size
    return MachineStatus(op_code=op, event=STATUS_OPS[op][0], params=tuple(params), quirks=notes)


def encode_machine_status(record: MachineStatus) -> bytes:
    if record.op_code not in STATUS_OPS:
        raise EncodeError(record.SOURCE, "op_code", f"unknown op code {record.op_code:#04x}")
    values = dict(record.params)
    out = bytearray((record.op_code,))
    for spec in _status_specs(record.op_code, record.quirks):
        out += write_int(spec.encode(values.get(spec.name), record.SOURCE), spec.kind)
    return bytes(out)


# --- Fitness Machine Feature 0x2ACC -----------------------------------------------------------------------

MACHINE_FEATURES: Final = (
    "average_speed", "cadence", "total_distance", "inclination", "elevation_gain", "pace", "step_count",
    "resistance_level", "stride_count", "expended_energy", "heart_rate_measurement", "metabolic_equivalent",
    "elapsed_time", "remaining_time", "power_measurement", "force_on_belt_and_power_output",
    "user_data_retention",
)  # fmt: skip
TARGET_FEATURES: Final = (
    "speed_target", "inclination_target", "resistance_target", "power_target", "heart_rate_target",
    "targeted_expended_energy", "targeted_step_number", "targeted_stride_number", "targeted_distance",
    "targeted_training_time", "targeted_time_in_two_hr_zones", "targeted_time_in_three_hr_zones",
    "targeted_time_in_five_hr_zones", "indoor_bike_simulation_parameters", "wheel_circumference",
    "spin_down_control", "targeted_cadence",
)  # fmt: skip


def _bit_names(bits: int, names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(names[i] if i < len(names) else f"reserved_bit{i}" for i in range(32) if bits >> i & 1)


@dataclass(frozen=True, kw_only=True)
class MachineFeature:
    """Two u32 bitmaps. Reserved bits do not change the layout, so they are kept as ``reserved_bitN``."""

    SOURCE: ClassVar[str] = "ble:2acc"
    machine_bits: int
    target_bits: int
    machine_features: tuple[str, ...] = ()
    target_features: tuple[str, ...] = ()


def decode_machine_feature(data: bytes) -> MachineFeature:
    src = MachineFeature.SOURCE
    if len(data) < 8:
        raise FrameTooShort(src, f"two u32 bitmaps need 8 bytes, got {len(data)}", len(data))
    if len(data) > 8:
        raise InvalidFrame(src, f"8 bytes expected, got {len(data)}", 8)
    machine, target = read_int(data, 0, "u32"), read_int(data, 4, "u32")
    return MachineFeature(
        machine_bits=machine,
        target_bits=target,
        machine_features=_bit_names(machine, MACHINE_FEATURES),
        target_features=_bit_names(target, TARGET_FEATURES),
    )


def encode_machine_feature(record: MachineFeature) -> bytes:
    return write_int(record.machine_bits, "u32") + write_int(record.target_bits, "u32")


# --- Control Point 0x2AD9 responses -----------------------------------------------------------------------

CONTROL_OPS: Final[dict[int, str]] = {
    0x00: "request_control", 0x01: "reset", 0x02: "set_target_speed", 0x03: "set_target_inclination",
    0x04: "set_target_resistance", 0x05: "set_target_power", 0x06: "set_target_heart_rate",
    0x07: "start_or_resume", 0x08: "stop_or_pause", 0x09: "set_targeted_energy", 0x0A: "set_targeted_steps",
    0x0B: "set_targeted_strides", 0x0C: "set_targeted_distance", 0x0D: "set_targeted_training_time",
    0x0E: "set_targeted_time_2_hr_zones", 0x0F: "set_targeted_time_3_hr_zones",
    0x10: "set_targeted_time_5_hr_zones", 0x11: "set_indoor_bike_simulation", 0x12: "set_wheel_circumference",
    0x13: "spin_down_control", 0x14: "set_targeted_cadence",
}  # fmt: skip
RESULTS: Final[dict[int, str]] = {
    0x01: "success", 0x02: "op_code_not_supported", 0x03: "invalid_parameter", 0x04: "operation_failed",
    0x05: "control_not_permitted",
}  # fmt: skip
RESPONSE_CODE: Final = 0x80


@dataclass(frozen=True, kw_only=True)
class ControlPointResponse:
    """``80 <request op> <result> [parameter]``; ``parameter`` holds the response parameter bytes
    (spin down control answers with two u16 target speeds)."""

    SOURCE: ClassVar[str] = "ble:2ad9"
    request_op: int
    request: str
    result_code: int
    result: str
    parameter: bytes = b""


def decode_control_point(data: bytes) -> ControlPointResponse:
    src = ControlPointResponse.SOURCE
    if len(data) < 3:
        raise FrameTooShort(src, f"a response needs 3 bytes, got {len(data)}", len(data))
    if data[0] != RESPONSE_CODE:
        raise InvalidFrame(src, f"op code {data[0]:#04x} is not a response (0x80)", 0)
    op, result = data[1], data[2]
    if op not in CONTROL_OPS:
        raise InvalidFrame(src, f"response to reserved op code {op:#04x}", 1)
    if result not in RESULTS:
        raise InvalidFrame(src, f"reserved result code {result:#04x}", 2)
    return ControlPointResponse(
        request_op=op,
        request=CONTROL_OPS[op],
        result_code=result,
        result=RESULTS[result],
        parameter=bytes(data[3:]),
    )


def encode_control_point(record: ControlPointResponse) -> bytes:
    return bytes((RESPONSE_CODE, record.request_op & 0xFF, record.result_code & 0xFF)) + record.parameter
