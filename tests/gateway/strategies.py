"""Hypothesis settings and frame builders shared by the gateway property tests.

The builders write frames straight from *our own* layout tables (``gateway.fields.FlagLayout``) with
``int.to_bytes``, so a test can state what the decoder must return without asking the decoder. What they
prove is that the decoder follows our tables (and that encoder and decoder agree): symmetry, not conformance.
The tables themselves are checked against the specification's tables in test_conformance.py (frames written
byte by byte in the test) and against other projects' frames in test_captures.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cache, lru_cache
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from gateway import quirks
from gateway.fields import SIZE, FieldSpec, FlagLayout, Value, kind_range
from gateway.ftms import FtmsData

# No example database (nothing written next to the tests), no deadline (CI machines are shared), and few
# enough examples that the whole gateway suite stays well under a minute.
FAST = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings(FAST, max_examples=100)


def to_bytes(raw: int, kind: str) -> bytes:
    return raw.to_bytes(SIZE[kind], "little", signed=kind.startswith("s"))  # type: ignore[index]


@lru_cache(maxsize=65536)
def value_of(spec: FieldSpec, raw: int) -> Value | None:
    """What the specification says ``raw`` means: ``None`` for the sentinel, else raw × resolution."""
    if spec.sentinel is not None and raw == spec.sentinel:
        return None
    if spec.resolution == 1:
        return raw
    return float(Fraction(raw) * spec.resolution)


def present_specs(layout: FlagLayout, presence: int) -> list[FieldSpec]:
    return [f for g in layout.groups if g.present(presence) for f in g.fields]


@dataclass(frozen=True)
class Built:
    """A frame and what each of its fields holds."""

    flags: int
    frame: bytes
    raws: tuple[tuple[FieldSpec, int], ...]
    header: int  # bytes before the first field
    trailing: bytes = b""

    def values(self) -> dict[str, Value | None]:
        return {spec.name: value_of(spec, raw) for spec, raw in self.raws}

    def ends(self) -> list[int]:
        """Offset after each field."""
        out, end = [], self.header
        for spec, _ in self.raws:
            end += spec.size
            out.append(end)
        return out


def build(layout: FlagLayout, flags: int, raws: list[tuple[FieldSpec, int]], *, header: bytes = b"") -> Built:
    head = to_bytes(flags, layout.flags_kind) + header
    body = b"".join(to_bytes(raw, spec.kind) for spec, raw in raws)
    return Built(flags=flags, frame=head + body, raws=tuple(raws), header=len(head))


@cache
def raw_values(spec: FieldSpec) -> st.SearchStrategy[int]:
    """Any raw value of the field's wire type, with the sentinel and the extremes drawn often."""
    lo, hi = kind_range(spec.kind)
    special = [lo, hi, 0] + ([spec.sentinel] if spec.sentinel is not None else [])
    return st.one_of(st.sampled_from(special), st.integers(lo, hi))


@st.composite
def flag_frames(
    draw: st.DrawFn,
    layout: FlagLayout,
    *,
    allowed: int | None = None,
    force: int = 0,
    header: bytes = b"",
) -> Built:
    """A whole, well-formed frame of ``layout``: flags drawn from ``allowed`` (default: every defined bit)."""
    mask = layout.defined_mask if allowed is None else allowed
    flags = draw(st.integers(0, kind_range(layout.flags_kind)[1])) & mask
    raws = [(spec, draw(raw_values(spec))) for spec in present_specs(layout, flags | force)]
    return build(layout, flags, raws, header=header)


@st.composite
def data_frames(draw: st.DrawFn, cls: type[FtmsData], selection: quirks.Selection = quirks.SPEC) -> Built:
    """A frame of an FTMS data characteristic as the selected quirks allow it (forced groups, trailing
    bytes), sometimes with flag bits reserved for future use set and bytes after the fields that they
    account for."""
    applied = quirks.apply(cls.LAYOUT, selection)
    layout = applied.layout
    built = draw(
        flag_frames(layout, allowed=layout.defined_mask | layout.reserved_mask, force=applied.force_bits)
    )
    reserved = built.flags & layout.reserved_mask
    trailing = draw(st.binary(max_size=8 if reserved else applied.trailing_bytes))
    return Built(built.flags, built.frame + trailing, built.raws, built.header, trailing)


def expected_record(cls: type[FtmsData], built: Built, selection: quirks.Selection = quirks.SPEC) -> FtmsData:
    """The record our tables (and the selected quirks) say ``built`` holds, written without the decoder."""
    applied = quirks.apply(cls.LAYOUT, selection)
    values: dict[str, Any] = built.values()
    for name in applied.zero_is_unavailable:
        if values.get(name) == 0:
            values[name] = None
    values.update({name: bool(built.flags & mask) for name, mask in cls.FLAG_FIELDS.items()})
    notes = list(applied.names)
    reserved = built.flags & applied.layout.reserved_mask
    if reserved:
        notes.append(f"reserved_flags:{reserved:#x}")
    return cls(
        flags=built.flags,
        more_data=bool(built.flags & 1),
        quirks=tuple(notes),
        reserved_flags=reserved,
        trailing=built.trailing,
        **values,
    )
