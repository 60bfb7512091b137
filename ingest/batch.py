"""Turning received MQTT messages into rows: pure, no I/O.

A :class:`Batch` collects the rows of many messages and the messages to acknowledge once they are
committed. Anything that breaks the wire contract becomes a dead-letter row with its reason; the valid
samples of the same message are kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from ingest.mqtt import Inbound
from vitalab.wire import (
    METRIC_FIELDS,
    DeviceMeta,
    DeviceMismatch,
    DeviceState,
    GatewayStatus,
    Sample,
    TopicKind,
    WireError,
    WireLimits,
    decode_gateway_status,
    decode_meta,
    decode_state,
    decode_telemetry,
    parse_topic,
)

logger = logging.getLogger(__name__)

UnknownDevicePolicy = Literal["register", "quarantine"]

SAMPLE_COLUMNS: tuple[str, ...] = ("device_id", "t", "site_id", "seq", "received_at", *METRIC_FIELDS)
RR_COLUMNS: tuple[str, ...] = ("device_id", "t", "idx", "rr_ms")
DEAD_LETTER_COLUMNS: tuple[str, ...] = (
    "received_at",
    "topic",
    "reason",
    "detail",
    "path",
    "device_id",
    "payload",
    "payload_size",
)


@dataclass(slots=True)
class DeadLetter:
    received_at: datetime
    topic: str
    reason: str
    detail: str
    path: str | None
    device_id: str | None
    payload: bytes
    payload_size: int

    def row(self) -> tuple[Any, ...]:
        return (
            self.received_at,
            self.topic,
            self.reason,
            self.detail,
            self.path,
            self.device_id,
            self.payload,
            self.payload_size,
        )


@dataclass(slots=True)
class Batch:
    samples: list[tuple[Any, ...]] = field(default_factory=list)
    rr: list[tuple[Any, ...]] = field(default_factory=list)
    seen: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    """device id -> (site id, newest sample time)"""
    metas: dict[str, tuple[str, DeviceMeta]] = field(default_factory=dict)
    states: list[tuple[str, DeviceState]] = field(default_factory=list)
    gateways: dict[str, tuple[str, GatewayStatus, datetime]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    acks: list[Inbound] = field(default_factory=list)
    messages: int = 0
    samples_rejected: int = 0
    oldest_received: float | None = None

    @property
    def size(self) -> int:
        """Rows this batch will write; what the flush threshold is measured in."""
        return len(self.samples) + len(self.rr) + len(self.dead) + len(self.states) + 1

    def __bool__(self) -> bool:
        return self.messages > 0

    def sites(self) -> set[str]:
        out = {site for site, _ in self.seen.values()}
        out.update(site for site, _ in self.metas.values())
        out.update(site for site, _ in self.states)
        out.update(site for site, _, _ in self.gateways.values())
        return out


@dataclass(frozen=True, slots=True)
class Router:
    """Decodes messages into a batch with the receiver's limits and unknown-device policy."""

    limits: WireLimits = field(default_factory=WireLimits)
    dead_letter_max_bytes: int = 16 * 1024
    unknown_devices: UnknownDevicePolicy = "register"

    def add(self, batch: Batch, msg: Inbound, *, known_devices: set[str] | None = None) -> None:
        batch.messages += 1
        batch.acks.append(msg)
        if batch.oldest_received is None:
            batch.oldest_received = msg.received_at
        received = datetime.fromtimestamp(msg.received_at, UTC)
        device: str | None = None
        try:
            topic = parse_topic(msg.topic)
            device = topic.source
            if topic.kind is TopicKind.TELEMETRY:
                if (
                    self.unknown_devices == "quarantine"
                    and known_devices is not None
                    and device not in known_devices
                ):
                    self._dead(
                        batch, msg, received, "unknown_device", "device is not registered", None, device
                    )
                    return
                self._telemetry(batch, msg, received, topic.site, device)
            elif topic.kind is TopicKind.META:
                meta = decode_meta(msg.payload, self.limits)
                self._same_device(meta.device, device)
                batch.metas[device] = (topic.site, meta)
            elif topic.kind is TopicKind.STATE:
                state = decode_state(msg.payload, self.limits)
                self._same_device(state.device, device)
                batch.states.append((topic.site, state))
            elif topic.kind is TopicKind.GATEWAY_STATUS:
                if not msg.payload:  # a retained status being cleared
                    return
                status = decode_gateway_status(msg.payload, self.limits)
                self._same_device(status.gateway, device)
                batch.gateways[device] = (topic.site, status, received)
            else:
                self._dead(
                    batch,
                    msg,
                    received,
                    "unexpected_topic",
                    f"ingest does not take {topic.kind}",
                    None,
                    device,
                )
        except WireError as exc:
            self._dead(batch, msg, received, exc.reason, exc.detail, exc.path, device)

    @staticmethod
    def _same_device(in_payload: str, in_topic: str) -> None:
        if in_payload != in_topic:
            raise DeviceMismatch(f"payload names {in_payload!r} on the topic of {in_topic!r}")

    def _telemetry(self, batch: Batch, msg: Inbound, received: datetime, site: str, device: str) -> None:
        decoded = decode_telemetry(msg.payload, topic_device=device, now=received, limits=self.limits)
        for rej in decoded.rejected:
            batch.samples_rejected += 1
            self._dead(
                batch, msg, received, rej.error.reason, rej.error.detail, rej.error.path, device, rej.raw
            )
        if not decoded.samples:
            return
        newest = _add_samples(batch, decoded.samples, device, site, decoded.seq, received)
        prev = batch.seen.get(device)
        if prev is None or prev[1] < newest:
            batch.seen[device] = (site, newest)

    def _dead(
        self,
        batch: Batch,
        msg: Inbound,
        received: datetime,
        reason: str,
        detail: str,
        path: str | None,
        device: str | None,
        raw: bytes | None = None,
    ) -> None:
        payload = msg.payload if raw is None else raw
        batch.dead.append(
            DeadLetter(
                received_at=received,
                topic=msg.topic,
                reason=reason,
                detail=detail,
                path=path,
                device_id=device,
                payload=payload[: self.dead_letter_max_bytes],
                payload_size=len(payload),
            )
        )


def _add_samples(
    batch: Batch, samples: list[Sample], device: str, site: str, seq: int, received: datetime
) -> datetime:
    newest = samples[0].t
    append = batch.samples.append
    for s in samples:
        append((device, s.t, site, seq, received, *(getattr(s, f) for f in METRIC_FIELDS)))
        if s.rr_ms:
            batch.rr.extend((device, s.t, i, rr) for i, rr in enumerate(s.rr_ms))
        if s.t > newest:
            newest = s.t
    return newest


def state_detail(state: DeviceState) -> bytes:
    """The ``device_events`` detail of a state: online, training, errors, and the battery when reported."""
    detail: dict[str, object] = {"online": state.online, "training": state.training, "errors": state.errors}
    if state.battery_pct is not None:
        detail["battery_pct"] = state.battery_pct
    return msgspec.json.encode(detail)
