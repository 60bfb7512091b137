"""ANT+ broadcast payloads (the 8 data bytes of message 0x4E): Fitness Equipment (FE-C, device type 17) data
pages 16, 17, 19, 20, 22, 25 and Heart Rate (device type 120) pages 0-7; a pure accumulator turns the
wrapping FE counters into monotonic totals.

Byte layouts, checked against open-source decoders (no ANT+ profile text is quoted here):

* FE page 16: GoldenCheetah/GoldenCheetah src/ANT/ANTMessage.cpp (FITNESS_EQUIPMENT_GENERAL_PAGE, "ANT+
  Device Profile Fitness Equipment rev 4.1 6.5.2"): equipment type = byte 1 bits 0-4, elapsed 0.25 s
  (rollover 64 s), distance m (rollover 256 m), speed 0.001 m/s (0xFFFF invalid), HR (0xFF invalid),
  byte 7: bits 0-1 HR source, bit 2 distance enabled, bit 3 virtual speed, bits 4-6 FE state, bit 7 lap
  toggle (StephenHidem/AntPlus FitnessEquipment.cs masks the state with 0x70; GoldenCheetah's 0xF0 keeps
  the lap bit in, and Tigge/openant fitness_equipment.py's ``data[7] & 0x70 >> 4`` reads bits 0-2).
* FE page 17: StephenHidem/AntPlus FitnessEquipment.cs: cycle length byte 3 (0.01 m), incline bytes 4-5
  s16 (0.01 %), resistance byte 6 (0.5 %); openant: incline 0x7FFF = invalid.
* FE pages 19, 20, 22: StephenHidem/AntPlus Treadmill.cs, Elliptical.cs, Rower.cs (and their unit tests).
* FE page 25: GoldenCheetah ANTMessage.cpp (rev 4.1 6.6.7) and openant: event count, cadence, accumulated
  power u16, instantaneous power = byte 5 + low nibble of byte 6, trainer status = high nibble of byte 6,
  byte 7 low nibble target-power flags.
* HRM: openant heart_rate.py, GoldenCheetah: page = byte 0 & 0x7F (bit 7 toggles), beat event time u16
  1/1024 s in bytes 4-5, beat count byte 6, computed HR byte 7; page 4 bytes 2-3 = previous beat time.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from fractions import Fraction
from functools import cached_property
from typing import Any, ClassVar, Final

from gateway.errors import EncodeError, FrameTooShort, InvalidFrame, UnknownSource
from gateway.fields import SIZE, Kind, Value, kind_range, read_int, to_raw, write_int

PAYLOAD: Final = 8
RR_MS_PER_TICK: Final = Fraction(1000, 1024)


@dataclass(frozen=True)
class Bits:
    """A field of an 8-byte page: ``kind`` read at byte ``offset``, then ``width`` bits from ``shift``."""

    name: str
    offset: int
    kind: Kind = "u8"
    shift: int = 0
    width: int | None = None
    resolution: Fraction = Fraction(1)
    sentinel: int | None = None

    @property
    def size(self) -> int:
        return SIZE[self.kind]

    @property
    def signed(self) -> bool:
        """A whole signed field (``s16``): read and written as two's complement, never masked."""
        return self.kind.startswith("s") and self.width is None

    @property
    def mask(self) -> int:
        return (1 << 8 * self.size) - 1 if self.width is None else (1 << self.width) - 1

    @cached_property
    def step(self) -> Step:
        """Everything :func:`decode_fe` needs, precomputed: name, offset, end, signed, shift, mask, num, den,
        sentinel (``value = raw * num / den``)."""
        res = self.resolution
        return (self.name, self.offset, self.offset + self.size, self.signed, self.shift, self.mask,
                res.numerator, res.denominator, self.sentinel)  # fmt: skip

    def decode(self, data: bytes) -> Value | None:
        return _decode_step(self.step, data)

    def encode_into(self, out: bytearray, value: Value | None, source: str) -> None:
        lo, hi = kind_range(self.kind) if self.signed else (0, self.mask)
        if value is None:
            if self.sentinel is None:
                raise EncodeError(source, self.name, "no value, and the page has no 'invalid' value")
            raw = self.sentinel
        else:
            raw = to_raw(value, self.resolution.numerator, self.resolution.denominator)
            if not lo <= raw <= hi or raw == self.sentinel:
                raise EncodeError(source, self.name, f"{value} does not fit {self.kind} ({lo}..{hi})")
        end = self.offset + self.size
        if self.signed:
            out[self.offset : end] = write_int(raw, self.kind)
            return
        current = int.from_bytes(out[self.offset : end], "little")
        current = current & ~(self.mask << self.shift) | raw << self.shift
        out[self.offset : end] = current.to_bytes(self.size, "little")


Step = tuple[str, int, int, bool, int, int, int, int, int | None]


def _decode_step(step: Step, data: bytes) -> Value | None:
    _, offset, end, signed, shift, mask, num, den, sentinel = step
    raw = int.from_bytes(data[offset:end], "little", signed=signed)
    if not signed:
        raw = raw >> shift & mask
    if raw == sentinel:
        return None
    return raw if den == 1 and num == 1 else raw * num / den


FE_STATE_BITS: Final = (
    Bits("capabilities", 7, width=4),
    Bits("fe_state", 7, shift=4, width=3),
    Bits("lap_toggle", 7, shift=7, width=1),
)
EQUIPMENT: Final = {
    16: "general",
    19: "treadmill",
    20: "elliptical",
    22: "rower",
    23: "climber",
    24: "nordic_skier",
    25: "trainer",
}
FE_STATES: Final = {1: "asleep", 2: "ready", 3: "in_use", 4: "finished"}


@dataclass(frozen=True, kw_only=True)
class FePage:
    """Common byte 7 of every FE data page: page-specific capability/flag nibble, FE state, lap toggle.

    ``reserved`` holds the page's bytes no field covers (bytes 1-2 of page 17, 1-3 of page 19, ...), as
    received, so a page re-encodes to the same 8 bytes; empty means the profile's 0xFF.
    """

    PAGE: ClassVar[int]
    FIELDS: ClassVar[tuple[Bits, ...]]
    capabilities: int = 0
    fe_state: int = 0
    lap_toggle: int = 0
    reserved: bytes = b""

    @property
    def source(self) -> str:
        return f"ant:fe:{self.PAGE}"

    @property
    def fe_state_name(self) -> str:
        return FE_STATES.get(self.fe_state, "reserved")


@dataclass(frozen=True, kw_only=True)
class FeGeneral(FePage):
    PAGE = 16
    FIELDS = (
        Bits("equipment_type", 1),
        Bits("elapsed_s", 2, resolution=Fraction(1, 4)),
        Bits("distance_m", 3),
        Bits("speed_mps", 4, "u16", resolution=Fraction(1, 1000), sentinel=0xFFFF),
        Bits("hr_bpm", 6, sentinel=0xFF),
    )
    equipment_type: int = 25
    elapsed_s: float = 0.0  # wraps at 64 s
    distance_m: int = 0  # wraps at 256 m
    speed_mps: Value | None = None
    hr_bpm: int | None = None

    @property
    def equipment(self) -> str:
        return EQUIPMENT.get(self.equipment_type & 0x1F, "reserved")


@dataclass(frozen=True, kw_only=True)
class FeSettings(FePage):
    PAGE = 17
    FIELDS = (
        Bits("cycle_length_m", 3, resolution=Fraction(1, 100), sentinel=0xFF),
        Bits("incline_pct", 4, "s16", resolution=Fraction(1, 100), sentinel=0x7FFF),
        Bits("resistance_pct", 6, resolution=Fraction(1, 2), sentinel=0xFF),
    )
    cycle_length_m: Value | None = None
    incline_pct: Value | None = None
    resistance_pct: Value | None = None


@dataclass(frozen=True, kw_only=True)
class FeTreadmill(FePage):
    PAGE = 19
    FIELDS = (
        Bits("cadence_spm", 4),
        Bits("neg_vertical_m", 5, resolution=Fraction(1, 10)),  # wraps at 25.6 m
        Bits("pos_vertical_m", 6, resolution=Fraction(1, 10)),
    )
    cadence_spm: int = 0  # strides per minute
    neg_vertical_m: float = 0.0
    pos_vertical_m: float = 0.0


@dataclass(frozen=True, kw_only=True)
class FeElliptical(FePage):
    PAGE = 20
    FIELDS = (
        Bits("pos_vertical_m", 2, resolution=Fraction(1, 10)),
        Bits("stride_count", 3),  # wraps at 256
        Bits("cadence_spm", 4),
        Bits("power_w", 5, "u16"),
    )
    pos_vertical_m: float = 0.0
    stride_count: int = 0
    cadence_spm: int = 0
    power_w: int = 0


@dataclass(frozen=True, kw_only=True)
class FeRower(FePage):
    PAGE = 22
    FIELDS = (Bits("stroke_count", 3), Bits("stroke_rate_spm", 4), Bits("power_w", 5, "u16"))
    stroke_count: int = 0  # wraps at 256
    stroke_rate_spm: int = 0
    power_w: int = 0


@dataclass(frozen=True, kw_only=True)
class FeTrainer(FePage):
    PAGE = 25
    FIELDS = (
        Bits("event_count", 1),
        Bits("cadence_rpm", 2),
        Bits("accumulated_power_w", 3, "u16"),  # sum of power per event, wraps at 65536
        Bits("power_w", 5, "u16", width=12),
        Bits("trainer_status", 6, shift=4, width=4),
    )
    event_count: int = 0
    cadence_rpm: int = 0
    accumulated_power_w: int = 0
    power_w: int = 0
    trainer_status: int = 0


FE_PAGES: Final[dict[int, type[FePage]]] = {
    c.PAGE: c for c in (FeGeneral, FeSettings, FeTreadmill, FeElliptical, FeRower, FeTrainer)
}


@dataclass(frozen=True, kw_only=True)
class HrmPage:
    """Any HRM data page 0-7. ``page_specific`` is bytes 1-3; the named views are filled for pages 1-4."""

    page: int
    toggle: bool = False
    page_specific: int = 0xFFFFFF
    beat_time_s: float = 0.0  # wraps at 64 s
    beat_count: int = 0  # wraps at 256
    hr_bpm: int = 0
    operating_time_s: int | None = None
    manufacturer_id: int | None = None
    serial_number: int | None = None
    hardware_version: int | None = None
    software_version: int | None = None
    model_number: int | None = None
    previous_beat_time_s: float | None = None
    rr_ms: float | None = None
    quirks: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return f"ant:hrm:{self.page}"


HRM_PAGES: Final = range(8)
LEGACY_HRM_MODELS: Final = frozenset({"ant-hrm-legacy"})


def _payload(source: str, data: bytes) -> bytes:
    data = bytes(data)
    if len(data) < PAYLOAD:
        raise FrameTooShort(source, f"an ANT+ payload has 8 bytes, got {len(data)}", len(data))
    if len(data) > PAYLOAD:
        raise InvalidFrame(source, f"an ANT+ payload has 8 bytes, got {len(data)}", PAYLOAD)
    return data


def reserved_offsets(cls: type[FePage]) -> tuple[int, ...]:
    """Byte offsets 1-6 of a page that none of its fields covers."""
    covered = {b.offset + i for b in cls.FIELDS for i in range(b.size)}
    return tuple(i for i in range(1, PAYLOAD - 1) if i not in covered)


# Per page, precomputed once: how to read each field, and which bytes are reserved.
FE_STEPS: Final[dict[int, tuple[Step, ...]]] = {
    p: tuple(b.step for b in (*FE_STATE_BITS, *c.FIELDS)) for p, c in FE_PAGES.items()
}
FE_RESERVED: Final[dict[int, tuple[int, ...]]] = {p: reserved_offsets(c) for p, c in FE_PAGES.items()}


def decode_fe(page: int, data: bytes) -> FePage:
    source = f"ant:fe:{page}"
    cls = FE_PAGES.get(page)
    if cls is None:
        raise UnknownSource(source, f"no decoder for FE data page {page}")
    data = _payload(source, data)
    if data[0] != page:
        raise InvalidFrame(source, f"byte 0 says page {data[0]}", 0)
    values: dict[str, Any] = {step[0]: _decode_step(step, data) for step in FE_STEPS[page]}
    return cls(**values, reserved=bytes(data[i] for i in FE_RESERVED[page]))


def encode_fe(record: FePage) -> bytes:
    out = bytearray((record.PAGE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00))
    offsets = FE_RESERVED[record.PAGE]
    if record.reserved:
        if len(record.reserved) != len(offsets):
            got = len(record.reserved)
            raise EncodeError(record.source, "reserved", f"{len(offsets)} reserved bytes, got {got}")
        for i, byte in zip(offsets, record.reserved, strict=True):
            out[i] = byte
    for bits in (*record.FIELDS, *FE_STATE_BITS):
        bits.encode_into(out, getattr(record, bits.name), record.source)
    return bytes(out)


def decode_hrm(page: int, data: bytes, *, model: str | None = None) -> HrmPage:
    """An HRM page. ``model="ant-hrm-legacy"``: old straps send no page number in byte 0 (GoldenCheetah
    ANTMessage.cpp: "older devices (e.g. GARMIN) do not support multiple data pages"), so it is not
    checked."""
    source = f"ant:hrm:{page}"
    if page not in HRM_PAGES:
        raise UnknownSource(source, f"no decoder for HRM data page {page}")
    data = _payload(source, data)
    legacy = model is not None and model.strip().casefold() in LEGACY_HRM_MODELS
    if data[0] & 0x7F != page and not legacy:
        raise InvalidFrame(source, f"byte 0 says page {data[0] & 0x7F}", 0)
    specific = read_int(data, 1, "u24")
    beat_ticks = read_int(data, 4, "u16")
    views: dict[str, Any] = {}
    if page == 1:
        views["operating_time_s"] = specific * 2
    elif page == 2:
        views.update(manufacturer_id=data[1], serial_number=read_int(data, 2, "u16"))
    elif page == 3:
        views.update(hardware_version=data[1], software_version=data[2], model_number=data[3])
    elif page == 4:
        previous = read_int(data, 2, "u16")
        views.update(
            previous_beat_time_s=previous / 1024,
            rr_ms=(beat_ticks - previous) % 0x10000 * 1000 / 1024,
        )
    return HrmPage(
        page=page,
        toggle=bool(data[0] & 0x80),
        page_specific=specific,
        beat_time_s=beat_ticks / 1024,
        beat_count=data[6],
        hr_bpm=data[7],
        quirks=("legacy_page_byte",) if legacy else (),
        **views,
    )


def encode_hrm(record: HrmPage) -> bytes:
    src = record.source
    if record.page not in HRM_PAGES:
        raise EncodeError(src, "page", f"no HRM data page {record.page}")
    ticks = round(record.beat_time_s * 1024)
    for name, value, hi in (
        ("page_specific", record.page_specific, 0xFFFFFF),
        ("beat_time_s", ticks, 0xFFFF),
        ("beat_count", record.beat_count, 0xFF),
        ("hr_bpm", record.hr_bpm, 0xFF),
    ):
        if not 0 <= value <= hi:
            raise EncodeError(src, name, f"{value} out of range")
    return (
        bytes((record.page | (0x80 if record.toggle else 0),))
        + write_int(record.page_specific, "u24")
        + write_int(ticks, "u16")
        + bytes((record.beat_count, record.hr_bpm))
    )


class WrapCounter:
    """A counter that wraps at ``modulus`` turned into a monotonic total. The first value seen is taken as
    the total so far (nothing is known about wraps before it); at most one wrap between updates."""

    def __init__(self, modulus: int) -> None:
        self.modulus = modulus
        self.total = 0
        self._last: int | None = None

    def update(self, raw: int) -> int:
        raw %= self.modulus
        self.total += raw if self._last is None else (raw - self._last) % self.modulus
        self._last = raw
        return self.total


@dataclass(frozen=True)
class FeTotals:
    elapsed_s: float | None = None
    distance_m: int | None = None
    accumulated_power_w: int | None = None  # sum of per-event power since the first page seen
    power_events: int | None = None
    average_power_w: float | None = None  # over the events since the previous page 25
    strokes: int | None = None
    strides: int | None = None


class FeAccumulator:
    """Monotonic totals from the wrapping counters of FE pages 16, 20, 22 and 25 of one device."""

    def __init__(self) -> None:
        self._elapsed = WrapCounter(256)  # 0.25 s ticks, 64 s
        self._distance = WrapCounter(256)
        self._power = WrapCounter(0x10000)
        self._events = WrapCounter(256)
        self._strokes = WrapCounter(256)
        self._strides = WrapCounter(256)
        self._totals = FeTotals()

    def update(self, record: FePage) -> FeTotals:
        t = self._totals
        changes: dict[str, Any] = {}
        if isinstance(record, FeGeneral):
            changes["elapsed_s"] = self._elapsed.update(round(record.elapsed_s * 4)) / 4
            changes["distance_m"] = self._distance.update(record.distance_m)
        elif isinstance(record, FeTrainer):
            before_power, before_events = t.accumulated_power_w, t.power_events
            power, events = (
                self._power.update(record.accumulated_power_w),
                self._events.update(record.event_count),
            )
            changes.update(accumulated_power_w=power, power_events=events)
            if before_power is not None and before_events is not None and events > before_events:
                changes["average_power_w"] = (power - before_power) / (events - before_events)
        elif isinstance(record, FeRower):
            changes["strokes"] = self._strokes.update(record.stroke_count)
        elif isinstance(record, FeElliptical):
            changes["strides"] = self._strides.update(record.stride_count)
        self._totals = FeTotals(**{**{f.name: getattr(t, f.name) for f in fields(t)}, **changes})
        return self._totals
