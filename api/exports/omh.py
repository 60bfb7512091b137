"""Open mHealth output: ``omh:data-point:1.0`` documents (a header with id, creation time, schema id,
acquisition provenance and the user's pseudonym, and a body), one per line.

* ``samples`` -> ``omh:heart-rate:2.0`` (one data point per sample with a heart rate; ``beats/min``);
* ``rr`` -> ``omh:rr-interval:1.0`` (one per interval; ``ms``; the time of the sample that carried it);
* ``sessions`` -> IEEE 1752.1 ``physical-activity`` (schema id namespace ``ieee``, the time interval of the
  session, duration, distance, energy and moderate / vigorous minutes).

Header ids are UUIDv5 of the study, pseudonym, schema and time (stable across re-exports), and
``creation_date_time`` is the measurement's own time (the end of a session), never the export's, so an
export of unchanged data is byte-identical. Daily series have no Open mHealth schema (HRV neither: IEEE
P1752.2 is a draft), so ``daily`` is not offered in this format.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

import msgspec

MEDIA_TYPE: Final = "application/x-ndjson"
_NS: Final = uuid.UUID("0f4d9b8e-6a52-5c1e-8d3b-7e2a1c9f5b60")
HEART_RATE: Final = {"namespace": "omh", "name": "heart-rate", "version": "2.0"}
RR_INTERVAL: Final = {"namespace": "omh", "name": "rr-interval", "version": "1.0"}
PHYSICAL_ACTIVITY: Final = {
    "namespace": "ieee",
    "name": "physical-activity",
    "version": "1.0",
    "url": "https://w3id.org/ieee/ieee-1752-schema/physical-activity.json",
}
ACTIVITY_NAMES: Final = {
    "bike": "cycling",
    "treadmill": "running",
    "rower": "rowing",
    "cross_trainer": "elliptical",
    "hr_strap": "exercise",
}
_encode = msgspec.json.Encoder().encode


def _header(
    study_id: str, schema: dict[str, str], pseudonym: str, key: str, created: str, source: str
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid5(_NS, f"{study_id}/{pseudonym}/{schema['name']}/{key}")),
        "creation_date_time": created,
        "schema_id": schema,
        "acquisition_provenance": {"source_name": source, "modality": "sensed"},
        "user_id": pseudonym,
    }


def _value(v: float) -> float:
    return round(float(v), 3)


def heart_rate_points(study_id: str, rows: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    """A heart-rate data point per row of the samples dataset that has a heart rate."""
    for row in rows:
        hr = row["hr_bpm"]
        if hr is None:
            continue
        t, pseudonym = str(row["t"]), str(row["pseudonym"])
        point = {
            "header": _header(
                study_id,
                HEART_RATE,
                pseudonym,
                f"{t}/{row['device_kind']}",
                t,
                f"vitalab {row['device_kind']}",
            ),
            "body": {
                "heart_rate": {"value": _value(hr), "unit": "beats/min"},
                "effective_time_frame": {"date_time": t},
            },
        }
        yield _encode(point) + b"\n"


def rr_interval_points(study_id: str, rows: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    """An rr-interval data point per row of the rr dataset."""
    for row in rows:
        t, pseudonym = str(row["t"]), str(row["pseudonym"])
        point = {
            "header": _header(
                study_id,
                RR_INTERVAL,
                pseudonym,
                f"{t}/{row['device_kind']}/{row['idx']}",
                t,
                f"vitalab {row['device_kind']}",
            ),
            "body": {
                "rr_interval": {"value": _value(row["rr_ms"]), "unit": "ms"},
                "effective_time_frame": {"date_time": t},
            },
        }
        yield _encode(point) + b"\n"


def physical_activity_points(study_id: str, rows: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    """An IEEE 1752.1 physical-activity data point per row of the sessions dataset."""
    for row in rows:
        pseudonym = str(row["pseudonym"])
        start, end = str(row["started_at"]), str(row["ended_at"])
        body: dict[str, Any] = {
            "activity_name": ACTIVITY_NAMES.get(str(row["activity"]), "exercise"),
            "effective_time_frame": {"time_interval": {"start_date_time": start, "end_date_time": end}},
        }
        if row["duration_s"] is not None:
            body["duration"] = {"value": _value(row["duration_s"] / 60), "unit": "min"}
        if row["distance_m"] is not None:
            body["distance"] = {"value": _value(row["distance_m"]), "unit": "m"}
        if row["energy_kcal"] is not None:
            body["kcal_burned"] = {"value": _value(row["energy_kcal"]), "unit": "kcal"}
        if row["moderate_min"] is not None:
            body["duration_moderate_activity"] = {"value": _value(row["moderate_min"]), "unit": "min"}
        if row["vigorous_min"] is not None:
            body["duration_vigorous_activity"] = {"value": _value(row["vigorous_min"]), "unit": "min"}
        header = _header(
            study_id, PHYSICAL_ACTIVITY, pseudonym, str(row["session_ref"]), end, f"vitalab {row['activity']}"
        )
        yield _encode({"header": header, "body": body}) + b"\n"
