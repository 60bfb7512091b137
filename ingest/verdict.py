"""What the ingester does with one message, as data: the verdict behind ``POST /v1/contract/validate`` and
``vitalab conform``.

:func:`judge` puts the message through the ingester's own :class:`~ingest.batch.Router` (the same decoder,
limits, unknown-device policy and dead-letter rules; nothing is reimplemented here) into an empty
:class:`~ingest.batch.Batch`, and reads back what that batch would write: sample rows, the decoded
meta/state/status record, and the dead letters with their reasons and JSON paths. Pure: ``now`` stands for
the receive time, no I/O.

Topics that no ingester subscription covers (``raw`` frames, anything outside the tree) never reach the
ingester; their verdict says so (``not_received``), with the contract error of a topic outside the tree and,
for ``raw``, what the gateways' raw-frame decoder makes of the payload.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from paho.mqtt.client import topic_matches_sub

from ingest.batch import SAMPLE_COLUMNS, Batch, DeadLetter, Router
from ingest.service import subscriptions
from ingest.source import Inbound
from vitalab.wire import (
    DeviceMeta,
    DeviceState,
    GatewayStatus,
    RawFrame,
    Topic,
    TopicKind,
    WireError,
    decode_raw_frame,
    parse_topic,
)

Outcome = Literal["stored", "partly_stored", "dead_letter", "ignored", "not_received"]
Record = DeviceMeta | DeviceState | GatewayStatus | RawFrame

INGEST_FILTERS: tuple[str, ...] = tuple(subscriptions(None))
"""The ingester's subscription filters (its shared group aside: the same topics)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    topic: str
    outcome: Outcome
    parsed: Topic | None = None
    """The topic's parts, when it is in the tree."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Sample rows the ingester would write (columns of ``samples``, unset metrics left out, ``rr_ms``
    added when the sample has RR intervals)."""
    seq: int | None = None
    """The telemetry message's ``seq``, when any of its samples is stored."""
    record: Record | None = None
    """The decoded meta, state, gateway status (or, for raw topics, raw frame)."""
    dead: list[DeadLetter] = field(default_factory=list)
    """Dead letters the ingester would write (for ``not_received`` topics: the contract errors, stored
    nowhere)."""
    note: str | None = None


def received_by_ingester(topic: str) -> bool:
    """Whether a message on ``topic`` reaches an ingester (some subscription of it matches)."""
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        return False  # not a topic a client can publish to
    return any(topic_matches_sub(flt, topic) for flt in INGEST_FILTERS)


def judge(
    topic: str,
    payload: bytes,
    *,
    now: datetime,
    router: Router,
    known_devices: set[str] | None = None,
    device_sites: Mapping[str, str] | None = None,
    retained: bool = False,
) -> Verdict:
    """The ingester's verdict on ``payload`` published on ``topic`` and received at ``now`` (aware).

    ``known_devices``: the registered, not quarantined, not retired devices, as the ingester knows them under
    the ``quarantine`` policy (None: not checked, as under ``register``). ``device_sites``: the sites of the
    devices known to the ingester (a device is bound to one site; None: not checked)."""
    if not received_by_ingester(topic):
        return _not_received(topic, payload, now, router)
    msg = Inbound(
        topic=topic,
        payload=payload,
        qos=1,
        retain=retained,
        mid=0,
        generation=0,
        received_at=now.timestamp(),
    )
    batch = Batch()
    router.add(batch, msg, known_devices=known_devices, device_sites=device_sites)
    parsed = _parse(topic)
    rows = _rows(batch)
    record = _record(batch)
    outcome: Outcome
    if batch.dead:
        outcome = "partly_stored" if rows or record is not None else "dead_letter"
    elif rows or record is not None:
        outcome = "stored"
    else:
        outcome = "ignored"
    note = None
    if outcome == "ignored" and parsed is not None and parsed.kind is TopicKind.GATEWAY_STATUS:
        note = "an empty retained status clears it on the broker; the ingester writes nothing"
    seq = rows[0]["seq"] if rows else None
    return Verdict(topic, outcome, parsed, rows, seq, record, list(batch.dead), note)


def _parse(topic: str) -> Topic | None:
    try:
        return parse_topic(topic)
    except WireError:
        return None


def _rows(batch: Batch) -> list[dict[str, Any]]:
    rr: dict[tuple[str, datetime], list[float]] = defaultdict(list)
    for device, t, _idx, rr_ms in sorted(batch.rr, key=lambda r: (r[0], r[1], r[2])):
        rr[(device, t)].append(rr_ms)
    out = []
    for row in batch.samples:
        values = {k: v for k, v in zip(SAMPLE_COLUMNS, row, strict=True) if v is not None}
        intervals = rr.get((row[0], row[1]))
        if intervals:
            values["rr_ms"] = intervals
        out.append(values)
    return out


def _record(batch: Batch) -> Record | None:
    for _site, meta in batch.metas.values():
        return meta
    for _site, state in batch.states:
        return state
    for _site, status, _received in batch.gateways.values():
        return status
    return None


def _not_received(topic: str, payload: bytes, now: datetime, router: Router) -> Verdict:
    def refusal(exc: WireError, device: str | None) -> DeadLetter:
        return DeadLetter(
            received_at=now,
            topic=topic,
            reason=exc.reason,
            detail=exc.detail,
            path=exc.path,
            device_id=device,
            payload=payload[: router.dead_letter_max_bytes],
            payload_size=len(payload),
        )

    try:
        parsed = parse_topic(topic)
    except WireError as exc:
        return Verdict(
            topic,
            "not_received",
            dead=[refusal(exc, None)],
            note="the topic is outside the contract: no ingester subscribes to it",
        )
    note = f"the ingester does not subscribe to {parsed.kind.value} topics"
    if parsed.kind is not TopicKind.RAW:  # every other kind in the tree is subscribed to
        return Verdict(topic, "not_received", parsed, note=note)
    note += "; a gateway (vitalab gateway --transport mqtt) decodes raw frames into telemetry"
    try:
        frame = decode_raw_frame(payload, router.limits)
    except WireError as exc:
        return Verdict(topic, "not_received", parsed, dead=[refusal(exc, parsed.source)], note=note)
    return Verdict(topic, "not_received", parsed, record=frame, note=note)
