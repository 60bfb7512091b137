"""BLE Device Information Service (0x180A): the strings a device reads out about itself.

Per org.bluetooth.characteristic.{manufacturer_name_string, model_number_string, firmware_revision_string,
hardware_revision_string, software_revision_string} (Bluetooth SIG; mirrored in oesmith/gatt-xml): each is
one ``utf8s`` value filling the characteristic, read (not notified) once after connecting. A gateway reads
them on every connect and chooses the device's quirks from them (:func:`gateway.quirks.select`); they also
become the device's meta (vendor, model, firmware).

Devices are sloppy with these strings: C-style trailing NULs, padding, control characters. The decoded
record keeps the text as sent (minus trailing NULs and surrounding whitespace); :func:`clean` is what goes
into the meta (control characters removed, whitespace collapsed, at most :data:`MAX_CHARS` characters, the
wire contract's limit). Bytes that are not UTF-8 are an :class:`InvalidFrame`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from gateway.errors import InvalidFrame
from gateway.quirks import DeviceIdentity

SERVICE: Final = "180a"
FIELDS: Final[dict[str, str]] = {
    "2a29": "manufacturer",
    "2a24": "model",
    "2a26": "firmware",
    "2a27": "hardware",
    "2a28": "software",
}
"""Characteristic -> :class:`gateway.quirks.DeviceIdentity` field, in the order a gateway reads them."""
MAX_CHARS: Final = 64
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, kw_only=True)
class DisString:
    """One Device Information Service string. ``source`` is ``ble:<characteristic>``."""

    source: str
    field: str
    text: str


def decode_string(char: str, data: bytes) -> DisString:
    """Decode one DIS characteristic (``char``: one of :data:`FIELDS`, 4 lower-case hex digits)."""
    source = f"ble:{char}"
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidFrame(source, "a device information string is not UTF-8", exc.start) from None
    return DisString(source=source, field=FIELDS[char], text=text.rstrip("\x00").strip())


def encode_string(record: DisString) -> bytes:
    return record.text.encode("utf-8")


def clean(text: str) -> str | None:
    """The string as device meta may carry it: no control characters (NULs included), whitespace collapsed,
    at most :data:`MAX_CHARS` characters; ``None`` when nothing is left."""
    out = " ".join(_CONTROL.sub(" ", text).split())[:MAX_CHARS].rstrip()
    return out or None


def with_string(identity: DeviceIdentity | None, record: DisString) -> DeviceIdentity:
    """``identity`` with the field ``record`` reads replaced (by its cleaned text)."""
    base = identity if identity is not None else DeviceIdentity()
    return replace(base, **{record.field: clean(record.text)})


def identity_of(records: Iterable[DisString]) -> DeviceIdentity:
    out = DeviceIdentity()
    for record in records:
        out = with_string(out, record)
    return out


def strings_of(identity: DeviceIdentity) -> list[DisString]:
    """The DIS strings a device with this identity reads out (for simulated devices)."""
    out = []
    for char, name in FIELDS.items():
        text = getattr(identity, name)
        if text is not None:
            out.append(DisString(source=f"ble:{char}", field=name, text=text))
    return out
