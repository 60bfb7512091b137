"""Strict decoding of wire payloads into typed records, and encoding for publishers.

The telemetry path is the hot one. A message is first decoded in one typed pass; only when that fails is
it taken apart, so that a single bad sample is rejected on its own (with its reason and JSON path) while
the good samples beside it are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, TypeVar

import msgspec

from vitalab.wire.errors import (
    DeviceMismatch,
    ImplausibleValue,
    MalformedPayload,
    PayloadTooLarge,
    SchemaViolation,
    TimestampOutOfRange,
    UnsupportedVersion,
    WireError,
)
from vitalab.wire.payload import (
    SCHEMA_VERSION,
    DeviceMeta,
    DeviceState,
    Envelope,
    GatewayStatus,
    RawFrame,
    Sample,
    TelemetryMessage,
    Version,
)

DEFAULT_MAX_PAYLOAD_BYTES: Final = 256 * 1024
_T = TypeVar("_T")

_PATH = re.compile(r" - at `(\$[^`]*)`$")
_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]+)`")
_BOUND = re.compile(r"Expected `[a-z]+` (<=|>=|<|>) ")


@dataclass(frozen=True, slots=True)
class WireLimits:
    """What a receiver accepts besides the static schema."""

    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_future: timedelta = timedelta(minutes=5)
    max_past: timedelta = timedelta(days=400)


@dataclass(frozen=True, slots=True)
class RejectedSample:
    index: int
    error: WireError
    raw: bytes


@dataclass(frozen=True, slots=True)
class DecodedTelemetry:
    device: str
    seq: int
    samples: list[Sample]
    rejected: list[RejectedSample] = field(default_factory=list)


def _classify(exc: msgspec.ValidationError, prefix: str = "$") -> WireError:
    """Map msgspec's message to our error class and a full JSON path (``$.samples[3].hr_bpm``)."""
    text = str(exc)
    path = prefix
    m = _PATH.search(text)
    if m:
        path = prefix + m.group(1)[1:]
        text = text[: m.start()]
    f = _FIELD.search(text)
    if f:
        path = f"{path}.{f.group(1)}"
    if _BOUND.match(text) or text.startswith("Number out of range"):
        return ImplausibleValue(text, path=path)
    return SchemaViolation(text, path=path)


def _decode_strict(payload: bytes, decoder: msgspec.json.Decoder[_T], limits: WireLimits) -> _T:
    if len(payload) > limits.max_payload_bytes:
        raise PayloadTooLarge(len(payload), limits.max_payload_bytes)
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        version = _version_of(payload)
        if version is not None and version != SCHEMA_VERSION:
            raise UnsupportedVersion(version) from None
        raise _classify(exc) from None
    except msgspec.DecodeError as exc:
        raise MalformedPayload(str(exc)) from None


def _version_of(payload: bytes) -> object:
    try:
        return _VERSION.decode(payload).v
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


_VERSION = msgspec.json.Decoder(Version)
_TELEMETRY = msgspec.json.Decoder(TelemetryMessage)
_ENVELOPE = msgspec.json.Decoder(Envelope)
_SAMPLE = msgspec.json.Decoder(Sample)
_META = msgspec.json.Decoder(DeviceMeta)
_STATE = msgspec.json.Decoder(DeviceState)
_GW_STATUS = msgspec.json.Decoder(GatewayStatus)
_RAW = msgspec.json.Decoder(RawFrame)
_ENCODER = msgspec.json.Encoder()


def _check_time(t: datetime, now: datetime, limits: WireLimits, path: str) -> None:
    if t > now + limits.max_future:
        raise TimestampOutOfRange(f"{t.isoformat()} is more than {limits.max_future} ahead", path=path)
    if t < now - limits.max_past:
        raise TimestampOutOfRange(f"{t.isoformat()} is more than {limits.max_past} old", path=path)


def decode_telemetry(
    payload: bytes, *, topic_device: str, now: datetime, limits: WireLimits = WireLimits()
) -> DecodedTelemetry:
    """Decode a telemetry message published on ``topic_device``'s topic.

    Raises a :class:`WireError` when the message as a whole is unusable (size, syntax, envelope, version,
    device). Samples that break the contract on their own come back in ``rejected``; the rest are kept.
    """
    if len(payload) > limits.max_payload_bytes:
        raise PayloadTooLarge(len(payload), limits.max_payload_bytes)
    try:
        msg = _TELEMETRY.decode(payload)
    except msgspec.DecodeError as exc:
        if not isinstance(exc, msgspec.ValidationError):
            raise MalformedPayload(str(exc)) from None
        return _decode_per_sample(payload, topic_device=topic_device, now=now, limits=limits)
    if msg.device != topic_device:
        raise DeviceMismatch(
            f"payload device {msg.device!r} on the topic of {topic_device!r}", path="$.device"
        )
    lo, hi = now - limits.max_past, now + limits.max_future
    if all(lo <= s.t <= hi for s in msg.samples):
        return DecodedTelemetry(msg.device, msg.seq, msg.samples)
    kept: list[Sample] = []
    rejected: list[RejectedSample] = []
    for i, s in enumerate(msg.samples):
        try:
            _check_time(s.t, now, limits, f"$.samples[{i}].t")
        except TimestampOutOfRange as exc:
            rejected.append(RejectedSample(i, exc, msgspec.json.encode(s)))
        else:
            kept.append(s)
    return DecodedTelemetry(msg.device, msg.seq, kept, rejected)


def _decode_per_sample(
    payload: bytes, *, topic_device: str, now: datetime, limits: WireLimits
) -> DecodedTelemetry:
    env = _decode_strict(payload, _ENVELOPE, limits)
    if env.device != topic_device:
        raise DeviceMismatch(
            f"payload device {env.device!r} on the topic of {topic_device!r}", path="$.device"
        )
    kept: list[Sample] = []
    rejected: list[RejectedSample] = []
    for i, raw in enumerate(env.samples):
        prefix = f"$.samples[{i}]"
        try:
            try:
                s = _SAMPLE.decode(raw)
            except msgspec.ValidationError as exc:
                raise _classify(exc, prefix) from None
            _check_time(s.t, now, limits, prefix + ".t")
        except WireError as exc:
            rejected.append(RejectedSample(i, exc, bytes(raw)))
        else:
            kept.append(s)
    return DecodedTelemetry(env.device, env.seq, kept, rejected)


def decode_meta(payload: bytes, limits: WireLimits = WireLimits()) -> DeviceMeta:
    return _decode_strict(payload, _META, limits)


def decode_state(payload: bytes, limits: WireLimits = WireLimits()) -> DeviceState:
    return _decode_strict(payload, _STATE, limits)


def decode_gateway_status(payload: bytes, limits: WireLimits = WireLimits()) -> GatewayStatus:
    return _decode_strict(payload, _GW_STATUS, limits)


def decode_raw_frame(payload: bytes, limits: WireLimits = WireLimits()) -> RawFrame:
    return _decode_strict(payload, _RAW, limits)


def encode(record: TelemetryMessage | DeviceMeta | DeviceState | GatewayStatus | RawFrame) -> bytes:
    return _ENCODER.encode(record)
