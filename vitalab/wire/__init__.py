"""The wire contract: topics, payload schema v1, strict decoding and its typed errors.

Gateway, simulators and ingest import this package; no raw dicts cross package boundaries.
"""

from vitalab.wire.codec import (
    DecodedTelemetry,
    RejectedSample,
    WireLimits,
    decode_gateway_status,
    decode_meta,
    decode_raw_frame,
    decode_state,
    decode_telemetry,
    encode,
)
from vitalab.wire.errors import (
    DeviceMismatch,
    ImplausibleValue,
    MalformedPayload,
    PayloadTooLarge,
    SchemaViolation,
    TimestampOutOfRange,
    TopicError,
    UnsupportedVersion,
    WireError,
)
from vitalab.wire.payload import (
    METRIC_FIELDS,
    SCHEMA_VERSION,
    DeviceKind,
    DeviceMeta,
    DeviceState,
    GatewayStatus,
    RawFrame,
    Sample,
    TelemetryMessage,
)
from vitalab.wire.topics import (
    Topic,
    TopicKind,
    device_topic,
    gateway_status_topic,
    parse_topic,
    subscription,
    telemetry_topic,
)

__all__ = [
    "METRIC_FIELDS",
    "SCHEMA_VERSION",
    "DecodedTelemetry",
    "DeviceKind",
    "DeviceMeta",
    "DeviceMismatch",
    "DeviceState",
    "GatewayStatus",
    "ImplausibleValue",
    "MalformedPayload",
    "PayloadTooLarge",
    "RawFrame",
    "RejectedSample",
    "Sample",
    "SchemaViolation",
    "TelemetryMessage",
    "TimestampOutOfRange",
    "Topic",
    "TopicError",
    "TopicKind",
    "UnsupportedVersion",
    "WireError",
    "WireLimits",
    "decode_gateway_status",
    "decode_meta",
    "decode_raw_frame",
    "decode_state",
    "decode_telemetry",
    "device_topic",
    "encode",
    "gateway_status_topic",
    "parse_topic",
    "subscription",
    "telemetry_topic",
]
