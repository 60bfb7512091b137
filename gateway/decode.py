"""One entry point for every frame the gateway understands, its inverse, and a JSON view for the CLI.

Sources: a BLE characteristic as 4 hex digits ("2ad2", also "ble:2ad2", "0x2AD2") or an ANT+ page as
"ant:fe:<page>" / "ant:hrm:<page>" (decimal page number). The Device Information Service strings (0x2A29
manufacturer, 0x2A24 model, 0x2A26 firmware, 0x2A27 hardware, 0x2A28 software) are sources too: a transport
hands the values it read on connect over as frames, like notifications.

Quirks: ``quirks=`` a :class:`gateway._quirks.Selection` (what the gateway chose from the device's identity),
or ``model=`` the name of a profile (``gateway.quirks.PROFILES``) an operator named; neither: the
specification. Nothing but ``DecodeError`` escapes
``decode_frame``: every decoder checks lengths, and anything else raised inside is a bug the fuzz tests hunt.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any, Final

import msgspec

from gateway import ant, cycling, dis, ftms, hrm
from gateway import quirks as _quirks
from gateway.errors import DecodeError, EncodeError, UnknownSource
from gateway.normalize import to_sample_with_notes

Record = (
    ftms.FtmsData
    | ftms.TrainingStatus
    | ftms.MachineStatus
    | ftms.MachineFeature
    | ftms.ControlPointResponse
    | hrm.HeartRateMeasurement
    | hrm.BodySensorLocation
    | cycling.CyclingPower
    | cycling.CscMeasurement
    | ant.FePage
    | ant.HrmPage
    | dis.DisString
)

Decoder = Callable[[bytes, _quirks.Selection], Record]


def _dis_decoder(char: str) -> Decoder:
    return lambda data, _selection: dis.decode_string(char, data)


BLE: Final[dict[str, Decoder]] = {
    "2ad2": lambda d, q: ftms.decode_data(ftms.IndoorBikeData, d, quirks=q),
    "2acd": lambda d, q: ftms.decode_data(ftms.TreadmillData, d, quirks=q),
    "2ace": lambda d, q: ftms.decode_data(ftms.CrossTrainerData, d, quirks=q),
    "2ad1": lambda d, q: ftms.decode_data(ftms.RowerData, d, quirks=q),
    "2ad3": lambda d, m: ftms.decode_training_status(d),
    "2ada": lambda d, m: ftms.decode_machine_status(d),
    "2acc": lambda d, m: ftms.decode_machine_feature(d),
    "2ad9": lambda d, m: ftms.decode_control_point(d),
    "2a37": lambda d, m: hrm.decode_heart_rate(d),
    "2a38": lambda d, m: hrm.decode_body_sensor_location(d),
    "2a63": lambda d, m: cycling.decode_cycling_power(d),
    "2a5b": lambda d, m: cycling.decode_csc(d),
    **{char: _dis_decoder(char) for char in dis.FIELDS},
}
ANT_FE_PAGES: Final = tuple(sorted(ant.FE_PAGES))
ANT_HRM_PAGES: Final = tuple(ant.HRM_PAGES)


def sources() -> tuple[str, ...]:
    """Every source ``decode_frame`` accepts, in canonical form."""
    return (
        *(f"ble:{c}" for c in BLE),
        *(f"ant:fe:{p}" for p in ANT_FE_PAGES),
        *(f"ant:hrm:{p}" for p in ANT_HRM_PAGES),
    )


def canonical_source(source: str) -> str:
    """ "2AD2", "0x2ad2", "ble:2ad2" -> "ble:2ad2"; "ANT:FE:16" -> "ant:fe:16". Raises ``UnknownSource``."""
    return _canonical(source)


@lru_cache(maxsize=256)
def _canonical(source: str) -> str:
    text = source.strip().casefold()
    if text.startswith("ant:"):
        parts = text.split(":")
        if len(parts) == 3 and parts[1] in ("fe", "hrm") and parts[2].isdigit() and len(parts[2]) <= 3:
            return f"ant:{parts[1]}:{int(parts[2])}"
        raise UnknownSource(source, "expected ant:fe:<page> or ant:hrm:<page>")
    text = text.removeprefix("ble:").removeprefix("0x")
    if text in BLE:
        return f"ble:{text}"
    raise UnknownSource(source, f"unknown characteristic; known: {', '.join(BLE)}")


def decode_frame(
    source: str, data: bytes, *, model: str | None = None, quirks: _quirks.Selection | None = None
) -> Record:
    """Decode one raw frame into its typed record, with the quirks ``quirks`` selects or, when it is not
    given, those of the profile ``model`` names (an unknown name: none; see ``gateway.quirks``)."""
    selection = _selection(model) if quirks is None else quirks
    canonical = canonical_source(source)
    payload = bytes(data)
    if canonical.startswith("ant:fe:"):
        return ant.decode_fe(int(canonical.rsplit(":", 1)[1]), payload)
    if canonical.startswith("ant:hrm:"):
        legacy = "ant-hrm-legacy" if selection.has(_quirks.LEGACY_HRM_PAGE_BYTE) else None
        return ant.decode_hrm(int(canonical.rsplit(":", 1)[1]), payload, model=legacy)
    return BLE[canonical.removeprefix("ble:")](payload, selection)


def _selection(model: str | None) -> _quirks.Selection:
    found = _quirks.profile(model)
    return _quirks.SPEC if found is None else found


def source_of(record: Record) -> str:
    if isinstance(record, ant.FePage | ant.HrmPage | dis.DisString):
        return record.source
    return record.SOURCE


def encode_frame(
    record: Record, *, model: str | None = None, quirks: _quirks.Selection | None = None
) -> bytes:
    """The raw frame of a record: the inverse of ``decode_frame`` (for simulated raw-frame devices)."""
    selection = _selection(model) if quirks is None else quirks
    encoders: list[tuple[type[Any], Callable[[Any], bytes]]] = [
        (ftms.FtmsData, lambda r: ftms.encode_data(r, quirks=selection)),
        (ftms.TrainingStatus, ftms.encode_training_status),
        (ftms.MachineStatus, ftms.encode_machine_status),
        (ftms.MachineFeature, ftms.encode_machine_feature),
        (ftms.ControlPointResponse, ftms.encode_control_point),
        (hrm.HeartRateMeasurement, hrm.encode_heart_rate),
        (hrm.BodySensorLocation, hrm.encode_body_sensor_location),
        (cycling.CyclingPower, cycling.encode_cycling_power),
        (cycling.CscMeasurement, cycling.encode_csc),
        (ant.FePage, ant.encode_fe),
        (ant.HrmPage, ant.encode_hrm),
        (dis.DisString, dis.encode_string),
    ]
    for kind, encode in encoders:
        if isinstance(record, kind):
            return encode(record)
    raise EncodeError(type(record).__name__, "record", "not a gateway record")


def _json_value(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    return value


# Read-only views worth printing next to the stored fields.
EXTRA_JSON: Final[dict[type[Any], tuple[str, ...]]] = {
    ant.FeGeneral: ("equipment",),
    cycling.CyclingPower: ("extreme_angle_max_deg", "extreme_angle_min_deg"),
}


def record_to_json(record: Record) -> dict[str, Any]:
    """A JSON-ready dict: ``record`` (type name), ``source``, then every field (bytes as hex)."""
    out: dict[str, Any] = {"record": type(record).__name__, "source": source_of(record)}
    for f in dataclasses.fields(record):
        out[f.name] = _json_value(getattr(record, f.name))
    if isinstance(record, ant.FePage):
        out["fe_state_name"] = record.fe_state_name
    for kind, names in EXTRA_JSON.items():
        if isinstance(record, kind):
            out.update({n: getattr(record, n) for n in names})
    if isinstance(record, ftms.MachineStatus):
        out["params"] = dict(record.params)
    return out


def parse_hex(text: str) -> bytes:
    """Bytes from hex as people paste it: "4402 5e0b", "44:02:5e:0b", "0x44-02-5E-0B", "0x44 0x02".

    Raises ``ValueError`` saying what is wrong (the CLI's usage error)."""
    tokens = [t.removeprefix("0x").removeprefix("0X") for t in re.split(r"[\s:,_-]+", text.strip()) if t]
    digits = "".join(tokens)
    if not digits:
        raise ValueError("no bytes given")
    bad = next((ch for ch in digits if ch not in string.hexdigits), None)
    if bad is not None:
        raise ValueError(f"{bad!r} is not a hex digit")
    if len(digits) % 2:
        raise ValueError(f"{len(digits)} hex digits: a byte needs two")
    return bytes.fromhex(digits)


def known_models() -> tuple[str, ...]:
    """Every quirk profile an operator may name (``gateway.quirks.PROFILES``)."""
    return tuple(sorted(_quirks.PROFILES))


def decode_report(
    source: str, data: bytes, *, model: str | None = None, sample_at: datetime | None = None
) -> dict[str, Any]:
    """What ``vitalab decode`` prints: the record as JSON and, when ``sample_at`` is given, the wire Sample it
    normalises to at that time (``null`` if it carries no telemetry) with the notes on dropped values."""
    record = decode_frame(source, data, model=model)
    out = record_to_json(record)
    if sample_at is not None:
        normalized = to_sample_with_notes(record, sample_at)
        out["sample"] = None if normalized.sample is None else msgspec.to_builtins(normalized.sample)
        out["sample_notes"] = list(normalized.notes)
    return out


__all__ = [
    "DecodeError",
    "Record",
    "canonical_source",
    "decode_frame",
    "decode_report",
    "encode_frame",
    "known_models",
    "parse_hex",
    "record_to_json",
    "source_of",
    "sources",
]
