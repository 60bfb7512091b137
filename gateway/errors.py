"""Errors of the gateway package. Each carries fields, not only a message.

A decoder given bytes raises only :class:`DecodeError` (or a subclass); an encoder given a record it cannot
put on the wire raises only :class:`EncodeError`. Both derive from :class:`vitalab.errors.VitalabError`.
"""

from __future__ import annotations

from vitalab.errors import VitalabError


class DecodeError(VitalabError):
    """A frame could not be decoded.

    ``source`` names what was decoded ("ble:2ad2", "ant:fe:16"), ``offset`` is the byte the problem was found
    at (``None`` when it is not about one byte) and ``detail`` says what was wrong.
    """

    def __init__(self, source: str, detail: str, offset: int | None = None) -> None:
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{source}: {detail}{where}")
        self.source = source
        self.offset = offset
        self.detail = detail


class FrameTooShort(DecodeError):
    """Even the mandatory part of the frame (flags, page number, heart rate ...) is not there."""


class UnknownSource(DecodeError):
    """No decoder for this characteristic or ANT+ page."""


class InvalidFrame(DecodeError):
    """Structurally impossible: reserved flags no quirk explains, bytes left over, wrong page number ..."""


class EncodeError(VitalabError):
    """A record cannot be encoded: a value does not fit its wire type or is missing where the wire has no
    "not available" value."""

    def __init__(self, source: str, field: str, detail: str) -> None:
        super().__init__(f"{source}: {field}: {detail}")
        self.source = source
        self.field = field
        self.detail = detail


class TransportUnavailable(VitalabError):
    """A transport's optional library is not installed (``extra`` names the pip extra that brings it)."""

    def __init__(self, transport: str, extra: str, detail: str) -> None:
        super().__init__(f"the {transport} transport needs `pip install 'vitalab[{extra}]'` ({detail})")
        self.transport = transport
        self.extra = extra
        self.detail = detail


class DeviceListError(VitalabError):
    """The gateway's device list file is unreadable or an entry is invalid (``index`` counts from 0)."""

    def __init__(self, path: str, index: int | None, detail: str) -> None:
        where = f" entry {index}" if index is not None else ""
        super().__init__(f"{path}{where}: {detail}")
        self.path = path
        self.index = index
        self.detail = detail


class DeliveryTimeout(VitalabError, TimeoutError):
    """:meth:`gateway.publisher.GatewayPublisher.wait_delivered` gave up; the messages stay buffered."""

    def __init__(self, buffered: int, in_flight: int, waited_s: float) -> None:
        super().__init__(f"{buffered} messages still buffered ({in_flight} in flight) after {waited_s:.1f} s")
        self.buffered = buffered
        self.in_flight = in_flight
        self.waited_s = waited_s
