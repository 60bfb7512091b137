"""Typed errors of the wire contract. Each names a machine-readable ``reason`` and, where it applies,
the JSON path of the offending field (``$.samples[3].hr_bpm``).

An error's ``detail`` and ``path`` quote what came in (a field name, a value); they are made storable text
on construction (:func:`storable_text`), so that a dead letter can always be written."""

from __future__ import annotations

from vitalab.errors import VitalabError


def storable_text(text: str) -> str:
    r"""``text`` with what PostgreSQL cannot hold in ``text``/``jsonb`` written as escapes: NUL becomes the
    six characters ``\u0000`` and a lone surrogate ``\udXXX``. Everything else is kept as it is."""
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class WireError(VitalabError):
    """A topic or payload that breaks the wire contract. ``reason`` is stable and goes to dead letters."""

    reason = "invalid"

    def __init__(self, detail: str, *, path: str | None = None) -> None:
        detail = storable_text(detail)
        path = None if path is None else storable_text(path)
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


class PayloadTooDeep(WireError):
    """Arrays and objects nested deeper than any payload of the schema can be (and than a recursive
    parser should be asked to follow)."""

    reason = "too_deep"
    # ``depth`` is where counting stopped, at least ``limit + 1``

    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(f"nested more than {limit} levels deep (at least {depth})")
        self.depth = depth
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


class NulCharacter(SchemaViolation):
    r"""A NUL character (``\u0000``) in a string or a field name: no text column can store it, so the
    contract forbids it everywhere. ``path`` names the field (a NUL in a field name is shown escaped)."""

    reason = "nul_character"


class ImplausibleValue(WireError):
    """A value outside what a body or a machine can physically produce (or not finite)."""

    reason = "implausible_value"


class TimestampOutOfRange(WireError):
    reason = "timestamp_out_of_range"


class DeviceMismatch(WireError):
    """The payload names another device than the topic it was published on."""

    reason = "device_mismatch"
