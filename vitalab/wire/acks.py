"""End-to-end commit acknowledgements: what an ingester stored, told back to whoever sent it.

A broker's PUBACK only says that the broker took a message; a broker crash, a shared-subscription member
that died, or a persistent subscriber that makes the broker answer "success" for telemetry nobody will
store can all still lose it. So, after each commit, an ingester publishes per sender which telemetry
messages it is done with (their rows stored, or dead-lettered with a reason), identified by
``(device, seq)``:

- on ``vitalab/v1/{site}/gw/{gateway}/ack`` for messages that name their gateway (``TelemetryMessage.gw``);
- on ``vitalab/v1/{site}/dev/{device}/ack`` for messages of devices that speak MQTT themselves and ask for
  acks (``TelemetryMessage.ack``). Messages that do neither are not acknowledged (a device that does not
  listen costs no ack traffic).

QoS 1, not retained. A sender keeps every telemetry message until an ack covers it and sends it again when
none has come within its ack timeout; the row identity ``(device, t)`` absorbs the duplicates. An ack may
repeat or cover messages the sender no longer holds: both are ignored.

Example::

    {"v": 1, "acks": [{"device": "bike-07", "seqs": [[1200, 1234], [1240, 1240]]}]}
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta, Struct

from vitalab.wire.errors import TopicError
from vitalab.wire.payload import DeviceId
from vitalab.wire.topics import device_ack_topic, gateway_ack_topic

MAX_ACK_DEVICES: Final = 100_000

Seq = Annotated[int, Meta(ge=0, le=2**63 - 1)]
SeqRange = Annotated[tuple[Seq, Seq], Meta(description="first and last seq, inclusive")]


class DeviceAck(Struct, frozen=True, forbid_unknown_fields=True):
    """The committed telemetry messages of one device: ``seqs`` are inclusive ranges, in ascending order."""

    device: DeviceId
    seqs: Annotated[list[SeqRange], Meta(min_length=1)]


class CommitAck(Struct, frozen=True, forbid_unknown_fields=True):
    """``vitalab/v1/{site}/gw/{gateway}/ack`` and ``vitalab/v1/{site}/dev/{device}/ack``, QoS 1, not
    retained: telemetry messages an ingester has committed (stored or dead-lettered)."""

    v: Literal[1]
    acks: Annotated[list[DeviceAck], Meta(min_length=1, max_length=MAX_ACK_DEVICES)]


class MessageKey(Struct, frozen=True):
    """What identifies a telemetry message for its sender (the rest of the payload is skipped)."""

    device: str
    seq: int
    gw: str | None = None
    ack: bool = False


_KEY = msgspec.json.Decoder(MessageKey)
_ACK = msgspec.json.Decoder(CommitAck)
_ENCODER = msgspec.json.Encoder()


def message_key(payload: bytes) -> MessageKey | None:
    """The ``(device, seq, gw)`` of a telemetry payload, or None when it has none (it is not one)."""
    try:
        return _KEY.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        return None


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """``[0, 1, 2, 5, 7, 8]`` -> ``[(0, 2), (5, 5), (7, 8)]`` (sorted, duplicates merged)."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def commit_ack(seqs: Mapping[str, Iterable[int]]) -> CommitAck:
    """The ack of ``{device: committed seqs}`` (devices in name order)."""
    return CommitAck(v=1, acks=[DeviceAck(device, seq_ranges(s)) for device, s in sorted(seqs.items())])


def encode_ack(ack: CommitAck) -> bytes:
    return _ENCODER.encode(ack)


def decode_ack(payload: bytes) -> CommitAck:
    """Strict, like every wire decoder; raises :class:`msgspec.DecodeError` (a sender ignores what it cannot
    read: it resends after its timeout)."""
    return _ACK.decode(payload)


def plan_acks(committed: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The ack messages for committed messages given as ``(topic, payload)``: one per ack topic, each
    naming every committed telemetry message of that sender. Messages that are not telemetry, that ask for
    no ack (neither ``gw`` nor ``ack``), or whose payload has no ``device``/``seq`` (dead-lettered as
    unreadable), are acked to nobody."""
    # (site, gateway or None, device) -> seqs; topics are built (and their ids checked) once per sender
    seqs: dict[tuple[str, str | None, str], list[int]] = defaultdict(list)
    for topic, payload in committed:
        parts = topic.split("/")
        if len(parts) != 6 or parts[3] != "dev" or parts[5] != "telemetry":
            continue
        if b'"gw"' not in payload and b'"ack"' not in payload:
            continue  # asks for no ack (a cheap look first: most messages of a deployment are these)
        key = message_key(payload)
        if key is None or key.device != parts[4] or not (key.gw or key.ack):
            continue
        seqs[(parts[2], key.gw or None, parts[4])].append(key.seq)
    by_topic: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for (site, gw, device), device_seqs in seqs.items():
        try:
            target = gateway_ack_topic(site, gw) if gw else device_ack_topic(site, device)
        except TopicError:
            continue
        by_topic[target][device] = device_seqs
    return [(topic, encode_ack(commit_ack(devices))) for topic, devices in sorted(by_topic.items())]
