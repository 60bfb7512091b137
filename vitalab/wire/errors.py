"""Typed errors of the wire contract. Each names a machine-readable ``reason`` and, where it applies,
the JSON path of the offending field (``$.samples[3].hr_bpm``)."""

from __future__ import annotations

from vitalab.errors import VitalabError


class WireError(VitalabError):
    """A topic or payload that breaks the wire contract. ``reason`` is stable and goes to dead letters."""

    reason = "invalid"

    def __init__(self, detail: str, *, path: str | None = None) -> None:
        super().__init__(f"{self.reason}: {detail}" + (f" (at {path})" if path else ""))
        self.detail = detail
        self.path = path


class TopicError(WireError):
    reason = "bad_topic"


class PayloadTooLarge(WireError):
    reason = "too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class MalformedPayload(WireError):
    """Not parseable at all (not JSON, truncated, NaN literals, wrong top-level type)."""

    reason = "malformed"


class UnsupportedVersion(WireError):
    reason = "unsupported_version"

    def __init__(self, version: object) -> None:
        super().__init__(f"schema version {version!r} is not supported", path="$.v")
        self.version = version


class SchemaViolation(WireError):
    """Well-formed JSON of the wrong shape: a missing or unknown field, a wrong type."""

    reason = "schema"


class ImplausibleValue(WireError):
    """A value outside what a body or a machine can physically produce (or not finite)."""

    reason = "implausible_value"


class TimestampOutOfRange(WireError):
    reason = "timestamp_out_of_range"


class DeviceMismatch(WireError):
    """The payload names another device than the topic it was published on."""

    reason = "device_mismatch"
