"""FHIR R4 output: one ``Bundle`` (type ``collection``) of ``Observation`` resources per session (or per
participant-day), built as dicts and validated by the ``fhir.resources`` R4B models before serialisation.

* ``sessions``: the session summary. LOINC where a code exists (exercise duration 55411-3, mean and maximum
  heart rate during activity 55425-3 / 55426-1, energy 41981-2, moderate / vigorous minutes 77592-4 /
  77593-2, SDNN 80404-7); a vitalab code system for what LOINC lacks (RMSSD, power, TRIMP, distance).
* ``samples``: the per-second series of the session (heart rate 8867-4 in the vital-signs category; power,
  cadence, speed as vitalab codes) as ``valueSampledData``: origin 0, period 1000 ms, one value per second
  from ``started_at`` (the mean of the samples of that second; ``E`` where there is none).
* ``daily``: resting heart rate 40443-4, moderate / vigorous minutes, RMSSD and training load of the day.

Subjects are logical references by identifier: the pseudonym in the study's identifier system. Ids and
``fullUrl`` values derive from the session reference / pseudonym and day, and no resource carries a
timestamp of its own making, so an export of unchanged data is byte-identical.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fhir.resources.R4B.bundle import Bundle

LOINC: Final = "http://loinc.org"
UCUM: Final = "http://unitsofmeasure.org"
VITALAB: Final = "tag:vitalab.dev,2026:fhir/metric"
"""The vitalab code system for metrics LOINC has no code for."""
CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
_NS: Final = uuid.UUID("6c3b8f0e-3c1f-5d7a-9a53-0b1f7d1c2e44")
MEDIA_TYPE: Final = "application/fhir+ndjson"


@dataclass(frozen=True, slots=True)
class Code:
    system: str
    code: str
    text: str
    unit: str  # UCUM
    category: str = "activity"

    def concept(self) -> dict[str, Any]:
        return {"coding": [{"system": self.system, "code": self.code}], "text": self.text}


# (column of the sessions dataset, code, factor applied to the column's value)
SESSION_CODES: Final[tuple[tuple[str, Code, float], ...]] = (
    ("duration_s", Code(LOINC, "55411-3", "Exercise duration", "min"), 1 / 60),
    ("hr_avg_bpm", Code(LOINC, "55425-3", "Mean heart rate during activity", "/min"), 1.0),
    ("hr_max_bpm", Code(LOINC, "55426-1", "Maximum heart rate during activity", "/min"), 1.0),
    ("energy_kcal", Code(LOINC, "41981-2", "Energy burned", "kcal"), 1.0),
    ("moderate_min", Code(LOINC, "77592-4", "Moderate intensity activity duration", "min"), 1.0),
    ("vigorous_min", Code(LOINC, "77593-2", "Vigorous intensity activity duration", "min"), 1.0),
    ("hrv_sdnn_ms", Code(LOINC, "80404-7", "R-R interval standard deviation (SDNN)", "ms"), 1.0),
    ("hrv_rmssd_ms", Code(VITALAB, "rmssd", "Root mean square of successive RR differences", "ms"), 1.0),
    ("power_avg_w", Code(VITALAB, "power-mean", "Mean power", "W"), 1.0),
    ("power_max_w", Code(VITALAB, "power-max", "Maximum power", "W"), 1.0),
    ("trimp", Code(VITALAB, "trimp", "Banister training impulse", "{score}"), 1.0),
    ("distance_m", Code(VITALAB, "distance", "Distance covered", "m"), 1.0),
)
SERIES_CODES: Final[tuple[tuple[str, Code], ...]] = (
    ("hr_bpm", Code(LOINC, "8867-4", "Heart rate", "/min", "vital-signs")),
    ("power_w", Code(VITALAB, "power", "Power", "W")),
    ("cadence_rpm", Code(VITALAB, "cadence", "Cadence", "/min")),
    ("speed_kmh", Code(VITALAB, "speed", "Speed", "km/h")),
)
DAILY_CODES: Final[tuple[tuple[str, Code, float], ...]] = (
    ("rhr_bpm", Code(LOINC, "40443-4", "Resting heart rate", "/min", "vital-signs"), 1.0),
    ("moderate_min", Code(LOINC, "77592-4", "Moderate intensity activity duration", "min"), 1.0),
    ("vigorous_min", Code(LOINC, "77593-2", "Vigorous intensity activity duration", "min"), 1.0),
    ("rmssd_ms", Code(VITALAB, "rmssd", "Root mean square of successive RR differences", "ms"), 1.0),
    ("load", Code(VITALAB, "training-load", "Training load (sum of session TRIMP)", "{score}"), 1.0),
)
PERIOD_MS: Final = 1000.0


def subject_system(study_id: str) -> str:
    return f"tag:vitalab.dev,2026:study/{study_id}/pseudonym"


def _number(value: float) -> float:
    """Values as stored (float32 read as text), rounded to what the sensors resolve."""
    return round(value, 3)


def _sample(value: float | None) -> str:
    return "E" if value is None else f"{round(value, 2):g}"


def _observation(
    oid: str,
    code: Code,
    subject: dict[str, Any],
    effective: dict[str, Any],
    value: dict[str, Any],
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": code.category}]}],
        "code": code.concept(),
        "subject": subject,
        **effective,
        **value,
    }


def _quantity(value: float, code: Code) -> dict[str, Any]:
    return {"valueQuantity": {"value": _number(value), "unit": code.unit, "system": UCUM, "code": code.unit}}


def _bundle(study_id: str, bid: str, resources: list[dict[str, Any]]) -> bytes:
    data = {
        "resourceType": "Bundle",
        "id": bid,
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:" + str(uuid.uuid5(_NS, study_id + "/" + r["id"])), "resource": r}
            for r in resources
        ],
    }
    bundle = Bundle.model_validate(data)
    return bundle.model_dump_json(exclude_none=True).encode() + b"\n"


def _subject(study_id: str, pseudonym: str) -> dict[str, Any]:
    return {"identifier": {"system": subject_system(study_id), "value": pseudonym}}


def session_bundles(study_id: str, rows: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    """A Bundle of summary Observations per row of the sessions dataset."""
    for row in rows:
        ref = str(row["session_ref"])
        subject = _subject(study_id, str(row["pseudonym"]))
        period = {"effectivePeriod": {"start": row["started_at"], "end": row["ended_at"]}}
        resources = [
            _observation(
                f"{ref}-{code.code}", code, subject, period, _quantity(float(row[col]) * factor, code)
            )
            for col, code, factor in SESSION_CODES
            if row[col] is not None
        ]
        yield _bundle(study_id, ref, resources)


@dataclass(frozen=True, slots=True)
class Series:
    """One session's per-second values: ``values[column][second]`` (None: no sample that second)."""

    pseudonym: str
    session_ref: str
    started_at: str
    ended_at: str
    values: dict[str, list[float | None]]


def series_of(rows: Iterable[Mapping[str, Any]]) -> Iterator[Series]:
    """Group the rows of the per-second query (ordered by session, then second) into one Series each."""
    current: Series | None = None
    for row in rows:
        ref = str(row["session_ref"])
        if current is None or current.session_ref != ref:
            if current is not None:
                yield current
            seconds = int(row["seconds"])
            current = Series(
                str(row["pseudonym"]),
                ref,
                str(row["started_at"]),
                str(row["ended_at"]),
                {col: [None] * seconds for col, _ in SERIES_CODES},
            )
        sec = int(row["sec"])
        for col, _ in SERIES_CODES:
            value = row[col]
            if value is not None and 0 <= sec < len(current.values[col]):
                current.values[col][sec] = float(value)
    if current is not None:
        yield current


def series_bundles(study_id: str, series: Iterable[Series]) -> Iterator[bytes]:
    """A Bundle of SampledData Observations (one per measured channel) per session."""
    for s in series:
        subject = _subject(study_id, s.pseudonym)
        period = {"effectivePeriod": {"start": s.started_at, "end": s.ended_at}}
        resources = []
        for col, code in SERIES_CODES:
            values = s.values[col]
            if all(v is None for v in values):
                continue
            sampled = {
                "valueSampledData": {
                    "origin": {"value": 0, "unit": code.unit, "system": UCUM, "code": code.unit},
                    "period": PERIOD_MS,
                    "dimensions": 1,
                    "data": " ".join(_sample(v) for v in values),
                }
            }
            resources.append(_observation(f"{s.session_ref}-{code.code}", code, subject, period, sampled))
        yield _bundle(study_id, f"{s.session_ref}-series", resources)


def daily_bundles(study_id: str, rows: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    """A Bundle of the day's Observations per row of the daily dataset."""
    for row in rows:
        pseudonym, day = str(row["pseudonym"]), str(row["day"])
        subject = _subject(study_id, pseudonym)
        effective = {"effectiveDateTime": day}
        bid = f"{pseudonym}-{day}"
        resources = [
            _observation(
                f"{bid}-{code.code}", code, subject, effective, _quantity(float(row[col]) * factor, code)
            )
            for col, code, factor in DAILY_CODES
            if row[col] is not None
        ]
        yield _bundle(study_id, bid, resources)
