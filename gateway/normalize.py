"""Decoded record -> one ``vitalab.wire.Sample`` (the wire contract), at a time the caller passes.

Bounds come from the contract itself (``msgspec.inspect`` of ``Sample``), so a value outside them becomes
``None`` here, with a note (``out_of_bounds:<field>=<value>``) and the field's name in ``dropped`` (the
gateway counts them per field), instead of a Sample the ingester would reject: an implausible value, such
as a vendor's "not available" marker the decoder does not know, is never published. The decoders' own
"not available" markers are ``None`` before they get here (see :mod:`gateway.ftms`). Records with no
telemetry (machine status, features, control point, body sensor location, raw counters) map to ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import msgspec

from gateway.ant import FeElliptical, FeGeneral, FePage, FeRower, FeSettings, FeTotals, FeTrainer, HrmPage
from gateway.cycling import CyclingPower
from gateway.ftms import CrossTrainerData, FtmsData, IndoorBikeData, RowerData, TreadmillData
from gateway.hrm import HeartRateMeasurement
from vitalab.wire.payload import MAX_RR_PER_SAMPLE, Sample


def _bounds() -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    info = msgspec.inspect.type_info(Sample)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        kinds = f.type.types if isinstance(f.type, msgspec.inspect.UnionType) else (f.type,)
        for kind in kinds:
            inner = kind.type if isinstance(kind, msgspec.inspect.Metadata) else kind
            if isinstance(inner, msgspec.inspect.ListType):
                inner = (
                    inner.item_type.type
                    if isinstance(inner.item_type, msgspec.inspect.Metadata)
                    else inner.item_type
                )
            if isinstance(inner, msgspec.inspect.FloatType) and inner.ge is not None and inner.le is not None:
                out[f.name] = (float(inner.ge), float(inner.le))
    return out


BOUNDS: Final = _bounds()

# Sample field <- record attribute, per FTMS data record type.
_COMMON: Final = {
    "distance_m": "distance_m",
    "power_w": "power_w",
    "energy_kcal": "energy_total_kcal",
    "hr_bpm": "hr_bpm",
    "met": "met",
    "elapsed_s": "elapsed_s",
}
FTMS_MAP: Final[dict[type[FtmsData], dict[str, str]]] = {
    IndoorBikeData: {
        **_COMMON,
        "speed_kmh": "speed_kmh",
        "cadence_rpm": "cadence_rpm",
        "resistance_level": "resistance_level",
    },
    TreadmillData: {**_COMMON, "speed_kmh": "speed_kmh", "incline_pct": "incline_pct"},
    CrossTrainerData: {
        **_COMMON,
        "speed_kmh": "speed_kmh",
        "incline_pct": "incline_pct",
        "resistance_level": "resistance_level",
    },
    RowerData: {
        **_COMMON,
        "stroke_rate_spm": "stroke_rate_spm",
        "pace_s_per_500m": "pace_s_per_500m",
        "resistance_level": "resistance_level",
    },
}


@dataclass(frozen=True)
class Normalized:
    sample: Sample | None
    notes: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    """The Sample fields whose value was outside the wire contract's bounds (one entry per value)."""


def _metrics(record: object, totals: FeTotals | None) -> dict[str, Any]:
    """Candidate Sample values (unchecked) for a record."""
    if isinstance(record, FtmsData):
        mapping = FTMS_MAP.get(type(record), {})
        return {k: getattr(record, v) for k, v in mapping.items()}
    if isinstance(record, HeartRateMeasurement):
        return {"hr_bpm": record.hr_bpm, "rr_ms": list(record.rr_ms) or None}
    if isinstance(record, CyclingPower):
        return {"power_w": record.power_w}
    if isinstance(record, HrmPage):
        return {"hr_bpm": record.hr_bpm, "rr_ms": None if record.rr_ms is None else [record.rr_ms]}
    if isinstance(record, FePage):
        out = _fe_metrics(record)
        if totals is not None:
            out.update(elapsed_s=totals.elapsed_s, distance_m=totals.distance_m)
        return out
    return {}


def _fe_metrics(record: FePage) -> dict[str, Any]:
    if isinstance(record, FeGeneral):
        speed = None if record.speed_mps is None else record.speed_mps * 3.6
        return {"speed_kmh": speed, "hr_bpm": record.hr_bpm}
    if isinstance(record, FeSettings):
        return {"incline_pct": record.incline_pct}
    if isinstance(record, FeTrainer):
        return {"cadence_rpm": record.cadence_rpm, "power_w": record.power_w}
    if isinstance(record, FeRower):
        return {"stroke_rate_spm": record.stroke_rate_spm, "power_w": record.power_w}
    if isinstance(record, FeElliptical):
        return {"power_w": record.power_w}
    return {}


def _check(name: str, value: float, notes: list[str], dropped: list[str]) -> float | None:
    lo, hi = BOUNDS[name]
    if lo <= value <= hi:
        return value
    notes.append(f"out_of_bounds:{name}={value:g}")
    dropped.append(name)
    return None


def to_sample_with_notes(record: object, t: datetime, *, totals: FeTotals | None = None) -> Normalized:
    """The Sample for ``record`` at ``t`` (``None`` if it carries no telemetry) and what was dropped."""
    notes: list[str] = []
    dropped: list[str] = []
    values: dict[str, Any] = {}
    for name, value in _metrics(record, totals).items():
        if value is None:
            continue
        if name == "rr_ms":
            kept = [v for v in (_check(name, float(ms), notes, dropped) for ms in value) if v is not None]
            if len(kept) > MAX_RR_PER_SAMPLE:
                notes.append(f"rr_ms_over_{MAX_RR_PER_SAMPLE}")
                kept = kept[-MAX_RR_PER_SAMPLE:]
            if kept:
                values[name] = kept
            continue
        checked = _check(name, float(value), notes, dropped)
        if checked is not None:
            values[name] = checked
    if not values:
        return Normalized(None, tuple(notes), tuple(dropped))
    return Normalized(Sample(t=t, **values), tuple(notes), tuple(dropped))


def to_sample(record: object, t: datetime, *, totals: FeTotals | None = None) -> Sample | None:
    return to_sample_with_notes(record, t, totals=totals).sample


def bounds() -> Mapping[str, tuple[float, float]]:
    return BOUNDS
