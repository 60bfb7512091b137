"""Table-driven reading and writing of flag-gated binary records (BLE FTMS, HRM, CPM, CSC).

A :class:`FlagLayout` lists :class:`FieldGroup` s in flag-bit order; each group is gated by one bit of the
little-endian flags field that opens the frame and holds one or more :class:`FieldSpec` (name, wire type,
resolution, "not available" sentinel). FTMS bit 0 ("More Data") is inverted: the first group is present
when the bit is 0, so that group is declared with ``inverted=True``.

:func:`read_fields` walks the present groups in order, checks every length, decodes what fits and reports
the rest as missing (``truncated``); it never reads past the end. :func:`write_fields` is its inverse and
stops where the record says a field was missing, so a truncated record re-encodes to the same cut frame.
Pure functions: no I/O, no clocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Final, Literal

from gateway.errors import EncodeError, FrameTooShort

Kind = Literal["u8", "s8", "u16", "s16", "u24", "u32"]
Value = int | float

SIZE: Final[dict[Kind, int]] = {"u8": 1, "s8": 1, "u16": 2, "s16": 2, "u24": 3, "u32": 4}
ONE: Final = Fraction(1)


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

    def decode(self, raw: int) -> Value | None:
        if self.sentinel is not None and raw == self.sentinel:
            return None
        if self.resolution == ONE:
            return raw
        return float(raw * self.resolution)

    def encode(self, value: Value | None, source: str) -> int:
        """Raw wire value for ``value`` (``None`` becomes the sentinel)."""
        if value is None:
            if self.sentinel is None:
                raise EncodeError(source, self.name, "no value, and the wire has no 'not available' value")
            return self.sentinel
        raw = round(Fraction(value) / self.resolution)
        lo, hi = kind_range(self.kind)
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

    @property
    def defined_mask(self) -> int:
        mask = self.flag_only_bits
        for group in self.groups:
            mask |= 1 << group.bit
        return mask

    @property
    def reserved_mask(self) -> int:
        return kind_range(self.flags_kind)[1] & ~self.defined_mask

    @property
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
    """Decode the groups ``presence`` switches on, from ``start`` (default: right after the flags)."""
    offset = SIZE[layout.flags_kind] if start is None else start
    values: dict[str, Value | None] = {}
    missing: list[str] = []
    for group in layout.groups:
        if not group.present(presence):
            continue
        for spec in group.fields:
            if missing or offset + spec.size > len(data):
                missing.append(spec.name)
                continue
            values[spec.name] = spec.decode(read_int(data, offset, spec.kind))
            offset += spec.size
    return Decoded(flags=presence, values=values, missing=tuple(missing), end=offset)


def write_fields(
    layout: FlagLayout,
    presence: int,
    values: Mapping[str, Value | None],
    missing: tuple[str, ...] = (),
) -> bytes:
    """Encode the groups ``presence`` switches on, stopping at the first field the record says was missing."""
    out = bytearray()
    for group in layout.groups:
        if not group.present(presence):
            continue
        for spec in group.fields:
            if spec.name in missing:
                return bytes(out)
            out += write_int(spec.encode(values.get(spec.name), layout.source), spec.kind)
    return bytes(out)
