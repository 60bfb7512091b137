"""The commit-acknowledgement contract (vitalab.wire.acks): topics, ranges, strict decoding."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from vitalab.wire import (
    Sample,
    TelemetryMessage,
    TopicError,
    decode_ack,
    device_ack_topic,
    encode,
    gateway_ack_topic,
    parse_topic,
    plan_acks,
    seq_ranges,
)

T = datetime(2026, 11, 25, 10, tzinfo=UTC)


def _msg(device: str, seq: int, gw: str | None = None, ack: bool = False) -> bytes:
    return encode(TelemetryMessage(v=1, device=device, seq=seq, samples=[Sample(t=T)], gw=gw, ack=ack))


def test_seq_ranges_merge_and_sort() -> None:
    assert seq_ranges([7, 0, 1, 2, 5, 8, 1]) == [(0, 2), (5, 5), (7, 8)]
    assert seq_ranges([]) == []


def test_ack_topics_are_outside_the_ingested_tree() -> None:
    assert gateway_ack_topic("gym", "gw-1") == "vitalab/v1/gym/gw/gw-1/ack"
    assert device_ack_topic("gym", "bike-1") == "vitalab/v1/gym/dev/bike-1/ack"
    with pytest.raises(TopicError):
        parse_topic("vitalab/v1/gym/dev/bike-1/ack")
    with pytest.raises(TopicError):
        gateway_ack_topic("gym", "bad/id")


def test_gw_and_ack_are_omitted_when_absent() -> None:
    assert b'"gw"' not in _msg("bike-1", 1)
    assert b'"ack"' not in _msg("bike-1", 1)
    assert msgspec.json.decode(_msg("bike-1", 1, "gw-1"))["gw"] == "gw-1"


def test_plan_acks_goes_to_the_sender() -> None:
    topic = "vitalab/v1/gym/dev/{}/telemetry".format
    planned = dict(
        plan_acks(
            [
                (topic("bike-1"), _msg("bike-1", 4, "gw-1")),
                (topic("bike-1"), _msg("bike-1", 3, "gw-1")),
                (topic("hr-2"), _msg("hr-2", 9, "gw-1")),
                (topic("row-3"), _msg("row-3", 0, ack=True)),
                (topic("row-3"), b"not json"),  # dead-lettered, no identity: acked to nobody
                ("vitalab/v1/gym/dev/row-3/state", b'{"v":1}'),
                (topic("row-4"), _msg("row-3", 1, ack=True)),  # device mismatch: acked to nobody
                (topic("row-5"), _msg("row-5", 1)),  # asks for no ack
            ]
        )
    )
    assert set(planned) == {"vitalab/v1/gym/gw/gw-1/ack", "vitalab/v1/gym/dev/row-3/ack"}
    gw = decode_ack(planned["vitalab/v1/gym/gw/gw-1/ack"])
    assert [(a.device, a.seqs) for a in gw.acks] == [("bike-1", [(3, 4)]), ("hr-2", [(9, 9)])]
    dev = decode_ack(planned["vitalab/v1/gym/dev/row-3/ack"])
    assert [(a.device, a.seqs) for a in dev.acks] == [("row-3", [(0, 0)])]


def test_decode_ack_is_strict() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_ack(b'{"v":1,"acks":[{"device":"b","seqs":[[1,2]],"x":1}]}')
    with pytest.raises(msgspec.ValidationError):
        decode_ack(b'{"v":1,"acks":[]}')
