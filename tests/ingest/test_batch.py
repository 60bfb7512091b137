"""Routing messages into a batch: pure, no I/O. Whatever a message holds, it leaves a row to write."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ingest.batch import Batch, Router
from ingest.source import Inbound
from vitalab.wire import Sample, TelemetryMessage, encode, telemetry_topic

RECEIVED = datetime(2026, 12, 4, 14, 0, tzinfo=UTC)


def inbound(topic: str, payload: bytes, *, dup: bool = False) -> Inbound:
    return Inbound(topic, payload, 1, False, 1, 1, RECEIVED.timestamp(), dup)


def good(device: str, n: int = 3) -> Inbound:
    samples = [Sample(t=RECEIVED - timedelta(seconds=60 - i), hr_bpm=100 + i) for i in range(n)]
    return inbound(
        telemetry_topic("gym", device), encode(TelemetryMessage(v=1, device=device, seq=1, samples=samples))
    )


@dataclass(frozen=True, slots=True)
class BuggyRouter(Router):
    """A router whose telemetry step fails half-way for one device, as a decoder bug would."""

    def _telemetry(self, batch: Batch, msg: Inbound, received: datetime, site: str, device: str) -> bool:
        kept = Router._telemetry(self, batch, msg, received, site, device)  # slots: no zero-argument super()
        if device == "bike-bug":
            raise KeyError("a bug")
        return kept


def test_a_routing_bug_dead_letters_the_message_and_keeps_the_others() -> None:
    router, batch = BuggyRouter(), Batch()
    router.add(batch, good("bike-a"))
    router.add(batch, good("bike-bug"))
    router.add(batch, good("bike-b"))
    assert batch.messages == 3
    assert len(batch.acks) == 3  # every message is acknowledged once written
    assert [row[0] for row in batch.samples] == ["bike-a"] * 3 + ["bike-b"] * 3  # the half-done rows are gone
    (dead,) = batch.dead
    assert (dead.reason, dead.topic) == ("internal_error", telemetry_topic("gym", "bike-bug"))
    assert dead.detail == "KeyError: 'a bug'"
    assert dead.payload == good("bike-bug").payload


def test_dead_letter_text_is_made_storable_and_the_payload_kept_as_bytes() -> None:
    batch = Batch()
    payload = b'{"v":1,"device":"bike-1","kind":"bike","ve\\u0000ndor":"x"}'
    Router().add(batch, inbound("vitalab/v1/gym/dev/bike-1/meta", payload))
    (dead,) = batch.dead
    names = ("received_at", "topic", "reason", "detail", "path", "device", "payload", "size")
    row = dict(zip(names, dead.row(), strict=True))
    assert row["reason"] == "nul_character"
    assert row["path"] == "$.ve\\u0000ndor"
    assert all("\x00" not in str(v) for k, v in row.items() if k != "payload")
    assert row["payload"] == payload
    assert row["size"] == len(payload)


def test_reject_dead_letters_a_whole_message_and_counts_its_redelivery() -> None:
    batch = Batch()
    msg = inbound(telemetry_topic("gym", "bike-1"), b"whatever", dup=True)
    Router().reject(batch, msg, "database_rejected", "23514 CheckViolation: no")
    (dead,) = batch.dead
    assert (dead.reason, dead.device_id, dead.payload) == ("database_rejected", "bike-1", b"whatever")
    assert (batch.messages, batch.redelivered, batch.acks) == (1, 1, [msg])
    assert batch.samples == []


def test_state_times_outside_the_window_are_dead_lettered() -> None:
    batch = Batch()
    payload = b'{"v":1,"device":"bike-1","t":"0001-01-01T00:00:00+14:00","online":true}'
    Router().add(batch, inbound("vitalab/v1/gym/dev/bike-1/state", payload))
    assert batch.states == []
    (dead,) = batch.dead
    assert (dead.reason, dead.path) == ("timestamp_out_of_range", "$.t")
