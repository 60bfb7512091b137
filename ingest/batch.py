"""Turning received MQTT messages into rows: pure, no I/O.

A :class:`Batch` collects the rows of many messages and the messages to acknowledge once they are
committed. Anything that breaks the wire contract becomes a dead-letter row with its reason; the valid
samples of the same message are kept. Whatever a message's bytes, :meth:`Router.add` takes it: a decoder
failure that is not a wire error (a bug) is logged and the message dead-lettered as ``internal_error``,
so that one message can never stop ingestion. Dead letters are always storable: the payload is bytes
(``bytea``) and their text is escaped (:func:`~vitalab.wire.storable_text`).

Identity rule (issue 11): a device belongs to one site, and its telemetry, state and meta must come under
that site's topics. The router is given the sites of the devices it knows (``device_sites``); a message whose
topic names another site is dead-lettered as ``site_mismatch``. A device it does not know is bound to the site
of its first accepted message (``Batch.claims``; the writer checks the claims against the database in the
batch's transaction, see :class:`~ingest.errors.SiteConflict`). Under the ``quarantine`` policy only known
devices (``known_devices``: in the database, not quarantined, not retired) are taken at all
(``unknown_device``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Literal

import msgspec

from ingest.source import Inbound
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
    storable_text,
)

logger = logging.getLogger(__name__)

UnknownDevicePolicy = Literal["register", "quarantine"]
IDENTITY_CHECKED = frozenset({TopicKind.TELEMETRY, TopicKind.STATE, TopicKind.META})
"""The topics whose device must be known (quarantine) and at its own site."""

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
            storable_text(self.topic),
            storable_text(self.reason),
            storable_text(self.detail),
            None if self.path is None else storable_text(self.path),
            None if self.device_id is None else storable_text(self.device_id),
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
    claims: dict[str, str] = field(default_factory=dict)
    """device id -> site, for devices the router did not know: the site this batch binds them to."""
    messages: int = 0
    redelivered: int = 0
    """Messages the broker sent again (MQTT DUP flag): it had not seen our PUBACK."""
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

    def add(
        self,
        batch: Batch,
        msg: Inbound,
        *,
        known_devices: set[str] | None = None,
        device_sites: Mapping[str, str] | None = None,
    ) -> None:
        """Route one message into ``batch``. ``known_devices``: the devices the ``quarantine`` policy takes
        (None: not checked); ``device_sites``: the site of each device known so far (None: the identity rule
        is not checked)."""
        batch.messages += 1
        batch.redelivered += msg.dup
        batch.acks.append(msg)
        if batch.oldest_received is None:
            batch.oldest_received = msg.received_at
        received = datetime.fromtimestamp(msg.received_at, UTC)
        before = (len(batch.samples), len(batch.rr), len(batch.dead), len(batch.states))
        try:
            self._route(batch, msg, received, known_devices, device_sites)
        except Exception as exc:  # a decoder bug must not stop ingestion: log it, dead-letter the message
            logger.exception("message on %r could not be routed; dead-lettered", storable_text(msg.topic))
            _undo(batch, before)
            self._dead(batch, msg, received, "internal_error", f"{type(exc).__name__}: {exc}", None, None)

    def reject(self, batch: Batch, msg: Inbound, reason: str, detail: str) -> None:
        """Add ``msg`` to ``batch`` as one dead letter of the whole message, whatever it contains."""
        batch.messages += 1
        batch.redelivered += msg.dup
        batch.acks.append(msg)
        try:
            device: str | None = parse_topic(msg.topic).source
        except WireError:
            device = None
        self._dead(batch, msg, datetime.fromtimestamp(msg.received_at, UTC), reason, detail, None, device)

    def _route(
        self,
        batch: Batch,
        msg: Inbound,
        received: datetime,
        known_devices: set[str] | None,
        device_sites: Mapping[str, str] | None,
    ) -> None:
        device: str | None = None
        try:
            topic = parse_topic(msg.topic)
            device = topic.source
            if topic.kind in IDENTITY_CHECKED:
                refused = self._identity(batch, topic.site, device, known_devices, device_sites)
                if refused is not None:
                    self._dead(batch, msg, received, refused[0], refused[1], None, device)
                    return
            if topic.kind is TopicKind.TELEMETRY:
                if self._telemetry(batch, msg, received, topic.site, device):
                    self._claim(batch, topic.site, device, device_sites)
            elif topic.kind is TopicKind.META:
                meta = decode_meta(msg.payload, self.limits)
                self._same_device(meta.device, device)
                batch.metas[device] = (topic.site, meta)
                self._claim(batch, topic.site, device, device_sites)
            elif topic.kind is TopicKind.STATE:
                state = decode_state(msg.payload, self.limits, now=received)
                self._same_device(state.device, device)
                batch.states.append((topic.site, state))
                self._claim(batch, topic.site, device, device_sites)
            elif topic.kind is TopicKind.GATEWAY_STATUS:
                if not msg.payload:  # a retained status being cleared
                    return
                status = decode_gateway_status(msg.payload, self.limits, now=received)
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

    def _identity(
        self,
        batch: Batch,
        site: str,
        device: str,
        known_devices: set[str] | None,
        device_sites: Mapping[str, str] | None,
    ) -> tuple[str, str] | None:
        """(reason, detail) when the device's message is refused for who it is or where it comes from."""
        if self.unknown_devices == "quarantine" and known_devices is not None and device not in known_devices:
            return "unknown_device", "device is not registered"
        if device_sites is None:
            return None
        home = device_sites.get(device) or batch.claims.get(device)
        if home is not None and home != site:
            # the other site is not named: dead letters are readable by the integrators of the topic's site
            return "site_mismatch", f"device {device!r} belongs to another site than {site!r}"
        return None

    @staticmethod
    def _claim(batch: Batch, site: str, device: str, device_sites: Mapping[str, str] | None) -> None:
        """Something of a device not known yet is written: this batch binds it to ``site``."""
        if device_sites is not None and device not in device_sites:
            batch.claims.setdefault(device, site)

    @staticmethod
    def _same_device(in_payload: str, in_topic: str) -> None:
        if in_payload != in_topic:
            raise DeviceMismatch(f"payload names {in_payload!r} on the topic of {in_topic!r}")

    def _telemetry(self, batch: Batch, msg: Inbound, received: datetime, site: str, device: str) -> bool:
        """Whether any sample of the message is kept."""
        decoded = decode_telemetry(msg.payload, topic_device=device, now=received, limits=self.limits)
        for rej in decoded.rejected:
            batch.samples_rejected += 1
            self._dead(
                batch, msg, received, rej.error.reason, rej.error.detail, rej.error.path, device, rej.raw
            )
        if not decoded.samples:
            return False
        newest = _add_samples(batch, decoded.samples, device, site, decoded.seq, received)
        prev = batch.seen.get(device)
        if prev is None or prev[1] < newest:
            batch.seen[device] = (site, newest)
        return True

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


def _undo(batch: Batch, lengths: tuple[int, int, int, int]) -> None:
    """Drop the rows a message added before its routing failed (its metas/gateways are set last)."""
    samples, rr, dead, states = lengths
    del batch.samples[samples:]
    del batch.rr[rr:]
    del batch.dead[dead:]
    del batch.states[states:]


_metrics = attrgetter(*METRIC_FIELDS)
"""A sample's metrics in column order, as a tuple (one C call, not one getattr per field)."""


def _add_samples(
    batch: Batch, samples: list[Sample], device: str, site: str, seq: int, received: datetime
) -> datetime:
    newest = samples[0].t
    append = batch.samples.append
    for s in samples:
        append((device, s.t, site, seq, received, *_metrics(s)))
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
