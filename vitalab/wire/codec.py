"""Strict decoding of wire payloads into typed records, and encoding for publishers.

The telemetry path is the hot one. A message is first decoded in one typed pass; only when that fails is
it taken apart, so that a single bad sample is rejected on its own (with its reason and JSON path) while
the good samples beside it are kept.

Whatever the bytes, a decoder returns a record or raises a :class:`WireError`. A valid payload is at most
4 levels deep (message, samples, sample, rr_ms), which the typed pass enforces by itself; the slow paths
(the per-sample pass and the version probe skip or keep values of any shape) first measure the nesting
(:func:`nesting_depth`) and refuse more than ``WireLimits.max_depth`` with :class:`PayloadTooDeep`, so no
parser recursion depends on the sender.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, TypeVar

import msgspec

from vitalab.wire.errors import (
    DeviceMismatch,
    ImplausibleValue,
    MalformedPayload,
    NulCharacter,
    PayloadTooDeep,
    PayloadTooLarge,
    SchemaViolation,
    TimestampOutOfRange,
    UnsupportedVersion,
    WireError,
)
from vitalab.wire.payload import (
    NO_NUL,
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
DEFAULT_MAX_DEPTH: Final = 16
"""Arrays/objects nested deeper than this are refused; the schema's deepest payload has 4 levels."""
_T = TypeVar("_T")

_PATH = re.compile(r" - at `(\$[^`]*)`$")
_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]+)`")
_BOUND = re.compile(r"Expected `[a-z]+` (<=|>=|<|>) ")
_NUL_PATTERN = f"matching regex {NO_NUL!r}"

# A JSON string (or an unterminated one, to the end): written so that no input makes it backtrack.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
_CHUNK = 512


def nesting_depth(payload: bytes, limit: int | None = None) -> int:
    """How deep arrays and objects nest in ``payload`` (brackets inside strings do not count). Linear in
    the size, and defined for any bytes: for broken JSON it is the depth a parser would reach. With
    ``limit``, counting stops soon after the depth exceeds it (the result is then only known to be more)."""
    brackets = _STRING.sub(b"", payload).translate(None, _NOT_BRACKETS)
    depth = peak = 0
    for start in range(0, len(brackets), _CHUNK):
        steps = map(_STEP.__getitem__, brackets[start : start + _CHUNK])
        running = list(itertools.accumulate(steps, initial=depth))
        peak = max(peak, max(running))
        depth = running[-1]
        if limit is not None and peak > limit:
            break
    return peak


def _guard_depth(payload: bytes, limits: WireLimits) -> None:
    depth = nesting_depth(payload, limits.max_depth)
    if depth > limits.max_depth:
        raise PayloadTooDeep(depth, limits.max_depth)


@dataclass(frozen=True, slots=True)
class WireLimits:
    """What a receiver accepts besides the static schema."""

    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
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
    if _NUL_PATTERN in text or "\x00" in path:
        return NulCharacter(
            "NUL character in a field name" if "\x00" in path else "NUL character in a string", path=path
        )
    if _BOUND.match(text) or text.startswith("Number out of range"):
        return ImplausibleValue(text, path=path)
    return SchemaViolation(text, path=path)


def _decode_strict(payload: bytes, decoder: msgspec.json.Decoder[_T], limits: WireLimits) -> _T:
    if len(payload) > limits.max_payload_bytes:
        raise PayloadTooLarge(len(payload), limits.max_payload_bytes)
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        error: WireError = _classify(exc)
    except msgspec.DecodeError as exc:
        raise MalformedPayload(str(exc)) from None
    except RecursionError:
        error = PayloadTooDeep(nesting_depth(payload, limits.max_depth), limits.max_depth)
    _guard_depth(payload, limits)
    version = _version_of(payload)
    if version is not None and version != SCHEMA_VERSION:
        raise UnsupportedVersion(version) from None
    raise error


def _version_of(payload: bytes) -> object:
    """The ``v`` of a payload that failed to decode (only called once the nesting is known to be bounded)."""
    try:
        return _VERSION.decode(payload).v
    except (msgspec.DecodeError, RecursionError):
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
        _guard_depth(payload, limits)
        return _decode_per_sample(payload, topic_device=topic_device, now=now, limits=limits)
    except RecursionError:
        _guard_depth(payload, limits)
        raise PayloadTooDeep(nesting_depth(payload, limits.max_depth), limits.max_depth) from None
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
            except RecursionError:  # not reached: the nesting was measured before
                raise PayloadTooDeep(nesting_depth(bytes(raw), limits.max_depth), limits.max_depth) from None
            _check_time(s.t, now, limits, prefix + ".t")
        except WireError as exc:
            rejected.append(RejectedSample(i, exc, bytes(raw)))
        else:
            kept.append(s)
    return DecodedTelemetry(env.device, env.seq, kept, rejected)


def decode_meta(payload: bytes, limits: WireLimits = WireLimits()) -> DeviceMeta:
    return _decode_strict(payload, _META, limits)


def decode_state(
    payload: bytes, limits: WireLimits = WireLimits(), *, now: datetime | None = None
) -> DeviceState:
    """With ``now``, the state's device time must lie in the same window as a sample's."""
    state = _decode_strict(payload, _STATE, limits)
    if now is not None:
        _check_time(state.t, now, limits, "$.t")
    return state


def decode_gateway_status(
    payload: bytes, limits: WireLimits = WireLimits(), *, now: datetime | None = None
) -> GatewayStatus:
    """With ``now``, a status that carries a time must carry one in the same window as a sample's."""
    status = _decode_strict(payload, _GW_STATUS, limits)
    if now is not None and status.t is not None:
        _check_time(status.t, now, limits, "$.t")
    return status


def decode_raw_frame(payload: bytes, limits: WireLimits = WireLimits()) -> RawFrame:
    return _decode_strict(payload, _RAW, limits)


def encode(record: TelemetryMessage | DeviceMeta | DeviceState | GatewayStatus | RawFrame) -> bytes:
    return _ENCODER.encode(record)
