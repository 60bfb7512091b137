"""Where the gateway's frames come from: one interface for BLE, ANT+, MQTT raw topics and the simulator.

A :class:`Transport` is an async iterable of event batches. Events are

* :class:`DeviceInfo` — a device the transport serves (announced before its first frame, again when it
  changes); the service publishes its retained meta;
* :class:`Frame` — one raw notification: device, source (``decode_frame``'s names: ``"ble:2ad2"``,
  ``"ant:fe:16"``), the bytes as received, and the time the transport took them. The values a BLE
  transport reads from the Device Information Service when it connects (``"ble:2a29"`` manufacturer,
  ``"ble:2a24"`` model, ``"ble:2a26"`` firmware, ``"ble:2a27"`` hardware, ``"ble:2a28"`` software;
  see :mod:`gateway.dis`) are frames too, handed over before the device's first notification: the service
  chooses the device's quirks from them;
* :class:`Link` — a device connected or disconnected (published as its retained ``state``);
* :class:`Rejected` — input the transport itself could not read (a raw-topic payload that breaks the
  wire contract): dead-lettered like an undecodable frame.

``live`` transports (radios, the MQTT raw topics, a simulator in real time) must never be held up: the
service buffers on disk instead. A transport that is not live (a simulator backfilling history) is paced
by the service: it waits while the publisher's backlog is above its high-water mark.

The radio adapters (:mod:`gateway.transport_ble`, :mod:`gateway.transport_ant`) import their libraries
lazily; without the extra installed they raise :class:`gateway.errors.TransportUnavailable`.

ANT+ on a raw topic: the wire contract's ``RawFrame.char`` has four hex digits; for ``src="ant"`` they are
the ANT+ device type and the data page, one byte each: ``"1110"`` = FE-C (type 17) page 16, ``"7804"`` =
HRM (type 120) page 4.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Literal, Protocol, get_args

from gateway.errors import DeviceListError
from gateway.quirks import PROFILES, profile
from vitalab.wire import DeviceKind, DeviceMeta, registry
from vitalab.wire.topics import valid_id

logger = logging.getLogger(__name__)

Radio = Literal["ble", "ant", "sim", "mqtt"]
ANT_FE: Final = 17
ANT_HRM: Final = 120

# the kind of device a data characteristic comes from (for devices nobody configured): the registry's
KIND_OF_SOURCE: Final[dict[str, DeviceKind]] = {
    f"ble:{c}": k.name for k in registry.KINDS for c in k.ble_data
}


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A device a gateway serves. ``vendor`` / ``model`` / ``firmware`` as configured (what the device's
    Device Information Service says replaces them); ``quirks`` names a profile of ``gateway.quirks.PROFILES``
    that overrides the quirks the device's identity selects; ``address`` is the BLE address or the ANT+
    device number."""

    device_id: str
    kind: DeviceKind
    transport: Radio
    model: str | None = None
    vendor: str | None = None
    firmware: str | None = None
    address: str | None = None
    quirks: str | None = None

    def meta(self) -> DeviceMeta:
        return DeviceMeta(
            v=1,
            device=self.device_id,
            kind=self.kind,
            vendor=self.vendor,
            model=self.model,
            firmware=self.firmware,
            transport=self.transport,
        )


@dataclass(frozen=True, slots=True)
class Frame:
    device_id: str
    source: str
    data: bytes
    t: datetime


@dataclass(frozen=True, slots=True)
class Link:
    device_id: str
    connected: bool
    t: datetime


@dataclass(frozen=True, slots=True)
class Rejected:
    device_id: str | None
    source: str
    data: bytes
    t: datetime
    reason: str


Event = DeviceInfo | Frame | Link | Rejected


class Transport(Protocol):
    name: str
    live: bool

    def events(self) -> AsyncIterator[Sequence[Event]]:
        """Batches of events until the transport ends (or forever); cancelling the iteration stops it."""
        ...


def kind_of_source(source: str) -> DeviceKind | None:
    """The device kind a frame source implies, if any (ANT+ FE does not say which machine)."""
    if source.startswith("ant:hrm:"):
        return "hr_strap"
    return KIND_OF_SOURCE.get(source)


def ant_source(device_type: int, page: int) -> str:
    """``decode_frame``'s source for an ANT+ page of a device type (17 FE-C, 120 HRM)."""
    if device_type == ANT_FE:
        return f"ant:fe:{page}"
    if device_type == ANT_HRM:
        return f"ant:hrm:{page & 0x7F}"
    return f"ant:{device_type}:{page}"  # decode_frame refuses it: UnknownSource, dead-lettered


def raw_char_source(src: str, char: str) -> str:
    """``RawFrame`` (src, char) -> ``decode_frame`` source (see the module doc for ANT+)."""
    if src == "ant":
        return ant_source(int(char[:2], 16), int(char[2:], 16))
    return f"ble:{char}"


# --- device list file ---------------------------------------------------------------------------------
KINDS: Final[dict[str, DeviceKind]] = {k: k for k in registry.KIND_NAMES}
RADIOS: Final[dict[str, Radio]] = {r: r for r in get_args(Radio)}


def load_device_list(path: Path) -> list[DeviceInfo]:
    """Devices from a TOML file::

        [[device]]
        id = "bike-01"            # the device id on the wire
        kind = "bike"             # treadmill, bike, rower, cross_trainer, hr_strap, power_meter
        transport = "ble"         # ble, ant, mqtt (raw topic), sim
        address = "C4:12:..."     # BLE address, or ANT+ device number
        vendor = "..."            # optional: meta and quirk selection, until the device's own
        model = "SimBike 1"       #   Device Information Service says otherwise (BLE reads it on connect)
        firmware = "..."          #
        quirks = "..."            # optional: a quirk profile (gateway.quirks.PROFILES) that overrides
                                  #   the one the identity selects; "specification" for none

    Raises :class:`DeviceListError` naming the entry and the problem.
    """
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DeviceListError(str(path), None, str(exc)) from exc
    entries = doc.get("device", [])
    if not isinstance(entries, list):
        raise DeviceListError(str(path), None, "'device' must be an array of tables ([[device]])")
    unknown_top = set(doc) - {"device"}
    if unknown_top:
        raise DeviceListError(str(path), None, f"unknown keys {sorted(unknown_top)}")
    out: list[DeviceInfo] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        out.append(_device(str(path), i, entry))
        if out[-1].device_id in seen:
            raise DeviceListError(str(path), i, f"device id {out[-1].device_id!r} appears twice")
        seen.add(out[-1].device_id)
    return out


_FIELDS: Final = {"id", "kind", "transport", "address", "model", "vendor", "firmware", "quirks"}


def _device(path: str, i: int, entry: object) -> DeviceInfo:
    if not isinstance(entry, dict):
        raise DeviceListError(path, i, "not a table")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise DeviceListError(path, i, f"unknown keys {sorted(unknown)}")
    for key in _FIELDS:
        if key in entry and not isinstance(entry[key], str):
            raise DeviceListError(path, i, f"{key} must be a string")
    device_id = entry.get("id")
    if not isinstance(device_id, str) or not valid_id(device_id):
        raise DeviceListError(path, i, f"id {device_id!r} is missing or not a valid device id")
    kind = KINDS.get(entry.get("kind", ""))
    if kind is None:
        raise DeviceListError(path, i, f"kind {entry.get('kind')!r} is not one of {sorted(KINDS)}")
    radio = RADIOS.get(entry.get("transport", ""))
    if radio is None:
        raise DeviceListError(path, i, f"transport {entry.get('transport')!r} is not one of {sorted(RADIOS)}")
    if radio in ("ble", "ant") and not entry.get("address"):
        raise DeviceListError(path, i, f"a {radio} device needs an address")
    if radio == "ant":
        try:
            number = int(entry["address"], 0)
        except ValueError:
            number = -1
        if not 0 <= number <= 0xFFFF:
            raise DeviceListError(path, i, "an ANT+ address is the device number, 0..65535")
    if "quirks" in entry and profile(entry["quirks"]) is None:
        raise DeviceListError(path, i, f"quirks {entry['quirks']!r} is not one of {sorted(PROFILES)}")
    return DeviceInfo(
        device_id=device_id,
        kind=kind,
        transport=radio,
        model=entry.get("model"),
        vendor=entry.get("vendor"),
        firmware=entry.get("firmware"),
        address=entry.get("address"),
        quirks=entry.get("quirks"),
    )
