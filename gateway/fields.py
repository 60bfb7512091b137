"""Table-driven reading and writing of flag-gated binary records (BLE FTMS, HRM, CPM, CSC).

A :class:`FlagLayout` lists :class:`FieldGroup` s in flag-bit order; each group is gated by one bit of the
little-endian flags field that opens the frame and holds one or more :class:`FieldSpec` (name, wire type,
resolution, "not available" sentinel). FTMS bit 0 ("More Data") is inverted: the first group is present
when the bit is 0, so that group is declared with ``inverted=True``.

:func:`read_fields` walks the present groups in order, checks every length, decodes what fits and reports
the rest as missing (``truncated``); it never reads past the end. :func:`write_fields` is its inverse and
stops where the record says a field was missing, so a truncated record re-encodes to the same cut frame.
Reading is compiled: for each combination of present groups a :class:`Plan` (a ``struct`` format for the
whole record, the end offset of every field, integer scale factors) is built once and cached on the layout,
so a frame costs one ``unpack_from`` plus a loop over its fields. A frame shorter than its flags promise
takes the field-by-field path. Pure functions: no I/O, no clocks.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import cached_property
from typing import Final, Literal

from gateway.errors import EncodeError, FrameTooShort

Kind = Literal["u8", "s8", "u16", "s16", "u24", "u32"]
Value = int | float

SIZE: Final[dict[Kind, int]] = {"u8": 1, "s8": 1, "u16": 2, "s16": 2, "u24": 3, "u32": 4}
# struct codes; a u24 is read as its low u16 and high u8 and put back together.
STRUCT_CODE: Final[dict[Kind, str]] = {"u8": "B", "s8": "b", "u16": "H", "s16": "h", "u24": "HB", "u32": "I"}
ONE: Final = Fraction(1)
MAX_PLANS: Final = 4096  # per layout; real devices use a handful of flag combinations


def kind_range(kind: Kind) -> tuple[int, int]:
    """Smallest and largest raw value of a wire type."""
    bits = 8 * SIZE[kind]
    if kind.startswith("s"):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def read_int(data: bytes, offset: int, kind: Kind) -> int:
    """Little-endian integer at ``offset``; the caller has checked the length."""
    size = SIZE[kind]
    return int.from_bytes(data[offset : offset + size], "little", signed=kind.startswith("s"))


def write_int(value: int, kind: Kind) -> bytes:
    return value.to_bytes(SIZE[kind], "little", signed=kind.startswith("s"))


def to_raw(value: Value, num: int, den: int) -> int:
    """``round(value / (num / den))`` computed exactly (round half to even), without float error: the raw
    wire integer of ``value`` at resolution ``num/den``."""
    n, d = value.as_integer_ratio()
    q, r = divmod(n * den, d * num)
    twice = 2 * r
    if twice > d * num or (twice == d * num and q % 2):
        q += 1
    return q


@dataclass(frozen=True)
class FieldSpec:
    """One field on the wire: ``value = raw * resolution``; ``raw == sentinel`` decodes to ``None``."""

    name: str
    kind: Kind
    resolution: Fraction = ONE
    sentinel: int | None = None

    @property
    def size(self) -> int:
        return SIZE[self.kind]

    @cached_property
    def bounds(self) -> tuple[int, int]:
        return kind_range(self.kind)

    @cached_property
    def ratio(self) -> tuple[int, int]:
        """The resolution as integers (numerator, denominator): ``value = raw * num / den``."""
        return self.resolution.numerator, self.resolution.denominator

    def decode(self, raw: int) -> Value | None:
        if raw == self.sentinel:
            return None
        num, den = self.ratio
        if den == 1 and num == 1:
            return raw
        return raw * num / den  # int / int is correctly rounded: the float nearest raw * resolution

    def encode(self, value: Value | None, source: str) -> int:
        """Raw wire value for ``value`` (``None`` becomes the sentinel)."""
        if value is None:
            if self.sentinel is None:
                raise EncodeError(source, self.name, "no value, and the wire has no 'not available' value")
            return self.sentinel
        num, den = self.ratio
        raw = value if num == den == 1 and type(value) is int else to_raw(value, num, den)
        lo, hi = self.bounds
        if not lo <= raw <= hi:
            raise EncodeError(source, self.name, f"{value} does not fit {self.kind} at {self.resolution}")
        if raw == self.sentinel:
            raise EncodeError(source, self.name, f"{value} encodes to the 'not available' value")
        return raw


@dataclass(frozen=True)
class FieldGroup:
    """Fields gated by one flag bit; ``inverted`` for FTMS bit 0 (present when the bit is 0)."""

    bit: int
    fields: tuple[FieldSpec, ...]
    inverted: bool = False

    def present(self, flags: int) -> bool:
        return bool(flags >> self.bit & 1) != self.inverted


@dataclass(frozen=True)
class FlagLayout:
    """A whole flag-gated record: flags type, groups in bit order, bits with a meaning but no field."""

    source: str
    flags_kind: Kind
    groups: tuple[FieldGroup, ...]
    flag_only_bits: int = 0
    plans: dict[int, Plan] = field(default_factory=dict, init=False, compare=False, repr=False, hash=False)

    @cached_property
    def group_mask(self) -> int:
        """The flag bits that switch field groups (the only ones a read plan depends on)."""
        mask = 0
        for group in self.groups:
            mask |= 1 << group.bit
        return mask

    def plan(self, presence: int) -> Plan:
        """The compiled read plan for the groups ``presence`` switches on (built once, then cached)."""
        key = presence & self.group_mask
        found = self.plans.get(key)
        if found is None:
            found = Plan.build(tuple(f for g in self.groups if g.present(key) for f in g.fields))
            if len(self.plans) >= MAX_PLANS:  # a flood of odd flag combinations: start over, stay bounded
                self.plans.clear()
            self.plans[key] = found
        return found

    @cached_property
    def defined_mask(self) -> int:
        mask = self.flag_only_bits
        for group in self.groups:
            mask |= 1 << group.bit
        return mask

    @cached_property
    def reserved_mask(self) -> int:
        return kind_range(self.flags_kind)[1] & ~self.defined_mask

    @cached_property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for g in self.groups for f in g.fields)

    def with_resolution(self, overrides: Mapping[str, Fraction]) -> FlagLayout:
        """The same layout with some fields' resolutions replaced (model quirks)."""
        groups = tuple(
            replace(
                g, fields=tuple(replace(f, resolution=overrides.get(f.name, f.resolution)) for f in g.fields)
            )
            for g in self.groups
        )
        return replace(self, groups=groups)

    def with_groups(self, extra: tuple[FieldGroup, ...]) -> FlagLayout:
        """The same layout with vendor groups on otherwise reserved bits, kept in bit order."""
        return replace(self, groups=tuple(sorted(self.groups + extra, key=lambda g: g.bit)))


@dataclass(frozen=True)
class Plan:
    """How to read one combination of present fields: ``unpack`` reads them all when the frame is long enough,
    ``steps`` turn the unpacked items into values, ``ends`` (offsets after each field, relative to the first)
    say how many fit when it is not."""

    specs: tuple[FieldSpec, ...]
    unpack: struct.Struct
    steps: tuple[tuple[str, int, bool, int | None, int, int], ...]  # name, item, is u24, sentinel, num, den
    ends: tuple[int, ...]

    @property
    def size(self) -> int:
        return self.ends[-1] if self.ends else 0

    def pack(self, raws: list[int]) -> bytes:
        """The bytes of one raw value per field (each already checked against its wire type)."""
        items: list[int] = []
        for (_, _, u24, *_), raw in zip(self.steps, raws, strict=True):
            if u24:
                items += (raw & 0xFFFF, raw >> 16)
            else:
                items.append(raw)
        return self.unpack.pack(*items)

    @classmethod
    def build(cls, specs: tuple[FieldSpec, ...]) -> Plan:
        steps = []
        ends = []
        item = end = 0
        for spec in specs:
            num, den = spec.ratio
            steps.append((spec.name, item, spec.kind == "u24", spec.sentinel, num, den))
            item += len(STRUCT_CODE[spec.kind])
            end += spec.size
            ends.append(end)
        fmt = "<" + "".join(STRUCT_CODE[s.kind] for s in specs)
        return cls(specs=specs, unpack=struct.Struct(fmt), steps=tuple(steps), ends=tuple(ends))


@dataclass(frozen=True)
class Decoded:
    """What :func:`read_fields` found: values of the present fields that fit, and what did not fit."""

    flags: int
    values: dict[str, Value | None]
    missing: tuple[str, ...]
    end: int

    @property
    def truncated(self) -> bool:
        return bool(self.missing)


def read_flags(layout: FlagLayout, data: bytes) -> int:
    size = SIZE[layout.flags_kind]
    if len(data) < size:
        raise FrameTooShort(
            layout.source, f"{len(data)} bytes, the flags field alone needs {size}", len(data)
        )
    return read_int(data, 0, layout.flags_kind)


def read_fields(layout: FlagLayout, data: bytes, presence: int, start: int | None = None) -> Decoded:
    """Decode the groups ``presence`` switches on, from ``start`` (default: right after the flags).

    Every field that fits whole is decoded; the first that does not, and all after it, are ``missing``.
    """
    offset = SIZE[layout.flags_kind] if start is None else start
    plan = layout.plan(presence)
    if offset + plan.size <= len(data):
        items = plan.unpack.unpack_from(data, offset)
        values: dict[str, Value | None] = {}
        for name, item, u24, sentinel, num, den in plan.steps:
            raw = items[item] | items[item + 1] << 16 if u24 else items[item]
            if raw == sentinel:
                values[name] = None
            elif den == 1 and num == 1:
                values[name] = raw
            else:
                values[name] = raw * num / den
        return Decoded(flags=presence, values=values, missing=(), end=offset + plan.size)
    fit = 0
    while fit < len(plan.ends) and offset + plan.ends[fit] <= len(data):
        fit += 1
    values = {}
    at = offset
    for spec in plan.specs[:fit]:
        values[spec.name] = spec.decode(read_int(data, at, spec.kind))
        at += spec.size
    missing = tuple(spec.name for spec in plan.specs[fit:])
    return Decoded(flags=presence, values=values, missing=missing, end=at)


def write_fields(
    layout: FlagLayout,
    presence: int,
    values: Mapping[str, Value | None],
    missing: tuple[str, ...] = (),
) -> bytes:
    """Encode the groups ``presence`` switches on, stopping at the first field the record says was missing."""
    plan = layout.plan(presence)
    items: list[int] = []
    for spec in plan.specs:
        if spec.name in missing:
            return b"".join(write_int(raw, s.kind) for s, raw in zip(plan.specs, items, strict=False))
        items.append(spec.encode(values.get(spec.name), layout.source))
    return plan.pack(items)
