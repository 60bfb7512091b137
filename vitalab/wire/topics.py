"""The MQTT topic tree, version 1.

``vitalab/v1/{site}/dev/{device}/{telemetry|state|meta|raw}`` and ``vitalab/v1/{site}/gw/{gateway}/status``.

| kind      | retained | QoS | content                                   |
|-----------|----------|-----|-------------------------------------------|
| telemetry | no       | 1   | :class:`vitalab.wire.payload.TelemetryMessage` |
| state     | yes      | 1   | :class:`vitalab.wire.payload.DeviceState` |
| meta      | yes      | 1   | :class:`vitalab.wire.payload.DeviceMeta`  |
| raw       | no       | 0   | :class:`vitalab.wire.payload.RawFrame`    |
| status    | yes      | 1   | :class:`vitalab.wire.payload.GatewayStatus` (birth; LWT offline) |

Commit acknowledgements go the other way, from the ingesters to whoever sent the telemetry:
``vitalab/v1/{site}/gw/{gateway}/ack`` and ``vitalab/v1/{site}/dev/{device}/ack`` (QoS 1, not retained,
:class:`vitalab.wire.acks.CommitAck`). They are not a :class:`TopicKind`: nothing the platform ingests comes
on them (:func:`parse_topic` refuses them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from vitalab.wire.errors import TopicError

PREFIX = "vitalab/v1"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID = re.compile(ID_PATTERN)


class TopicKind(StrEnum):
    TELEMETRY = "telemetry"
    STATE = "state"
    META = "meta"
    RAW = "raw"
    GATEWAY_STATUS = "status"


DEVICE_KINDS = frozenset({TopicKind.TELEMETRY, TopicKind.STATE, TopicKind.META, TopicKind.RAW})
RETAINED = frozenset({TopicKind.STATE, TopicKind.META, TopicKind.GATEWAY_STATUS})


@dataclass(frozen=True, slots=True)
class Topic:
    kind: TopicKind
    site: str
    source: str
    """The device id, or the gateway id for ``status`` topics."""

    def __str__(self) -> str:
        middle = "gw" if self.kind is TopicKind.GATEWAY_STATUS else "dev"
        return f"{PREFIX}/{self.site}/{middle}/{self.source}/{self.kind.value}"


def valid_id(value: str) -> bool:
    return _ID.match(value) is not None


def _check_id(what: str, value: str) -> str:
    if not valid_id(value):
        raise TopicError(f"{what} id {value!r} must match {ID_PATTERN}")
    return value


def device_topic(site: str, device: str, kind: TopicKind) -> str:
    if kind not in DEVICE_KINDS:
        raise TopicError(f"{kind.value} is not a device topic")
    return str(Topic(kind, _check_id("site", site), _check_id("device", device)))


def telemetry_topic(site: str, device: str) -> str:
    return device_topic(site, device, TopicKind.TELEMETRY)


def gateway_status_topic(site: str, gateway: str) -> str:
    return str(Topic(TopicKind.GATEWAY_STATUS, _check_id("site", site), _check_id("gateway", gateway)))


ACK = "ack"


def gateway_ack_topic(site: str, gateway: str) -> str:
    """Where ingesters acknowledge the committed telemetry that gateway ``gateway`` sent."""
    return f"{PREFIX}/{_check_id('site', site)}/gw/{_check_id('gateway', gateway)}/{ACK}"


def device_ack_topic(site: str, device: str) -> str:
    """Where ingesters acknowledge the committed telemetry a device sent itself (no gateway named)."""
    return f"{PREFIX}/{_check_id('site', site)}/dev/{_check_id('device', device)}/{ACK}"


def ack_subscription(middle: str, *, site: str = "+") -> str:
    """The filter of every gateway's (``gw``) or device's (``dev``) ack topic of a site."""
    return f"{PREFIX}/{site}/{middle}/+/{ACK}"


def parse_topic(topic: str) -> Topic:
    """Split a concrete topic into its parts; anything outside the tree raises :class:`TopicError`."""
    parts = topic.split("/")
    if len(parts) != 6 or f"{parts[0]}/{parts[1]}" != PREFIX:
        raise TopicError(f"{topic!r} is not under {PREFIX}/<site>/(dev|gw)/<id>/<kind>")
    _, _, site, middle, source, kind_s = parts
    try:
        kind = TopicKind(kind_s)
    except ValueError:
        raise TopicError(f"unknown topic kind {kind_s!r} in {topic!r}") from None
    if (middle == "gw") != (kind is TopicKind.GATEWAY_STATUS) or middle not in ("gw", "dev"):
        raise TopicError(f"{topic!r}: kind {kind_s!r} does not belong under {middle!r}")
    return Topic(kind, _check_id("site", site), _check_id("gateway" if middle == "gw" else "device", source))


def subscription(kind: TopicKind, *, site: str = "+", share_group: str | None = None) -> str:
    """A subscription filter for one kind of topic, optionally as an MQTT shared subscription."""
    middle = "gw" if kind is TopicKind.GATEWAY_STATUS else "dev"
    flt = f"{PREFIX}/{site}/{middle}/+/{kind.value}"
    return f"$share/{share_group}/{flt}" if share_group else flt
