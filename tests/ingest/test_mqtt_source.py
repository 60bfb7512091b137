"""The MQTT source's hand-over to the event loop and its PUBLISH decoding (white-box: no broker needed for
these)."""

from __future__ import annotations

import asyncio
import struct

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet as _paho_packet
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.mqtt import MqttSource, Publish, decode_publish_v5
from ingest.source import Inbound
from vitalab.settings import MqttTarget


def _source() -> MqttSource:
    return MqttSource(MqttTarget(host="127.0.0.1", port=1), client_id="unit", filters=[])


@pytest.mark.asyncio
async def test_a_cancellation_that_meets_an_arriving_message_is_not_swallowed() -> None:
    """A stop (cancellation) arriving in the same loop iteration as a message must stop the waiter, and the
    message must stay in the buffer for whoever takes it next. (``asyncio.wait_for`` on Python 3.11 returns
    the message and drops the cancellation: the ingester would not stop.)"""
    source = _source()
    waiter = asyncio.create_task(source.get_within(60))
    while not source._waiting:  # noqa: ASYNC110  (until the waiter is parked on its event)
        await asyncio.sleep(0)
    msg = Inbound("t", b"p", 1, False, 1, 1, 0.0)
    source._buf.append(msg)  # what paho's thread does, then it wakes the loop
    source._ready.set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert source.get_nowait() is msg


@pytest.mark.asyncio
async def test_get_within_returns_none_after_its_timeout_and_a_message_before() -> None:
    source = _source()
    assert await source.get_within(0.01) is None
    msg = Inbound("t", b"p", 1, False, 1, 1, 0.0)
    source._buf.append(msg)
    assert await source.get_within(0.01) is msg


# --- the lean PUBLISH path (ingest.mqtt.decode_publish_v5), against paho's own decoding ------------------

_TEXT = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
"""What MQTT allows in a UTF-8 string (paho refuses U+0000 in properties; the lean path skips them)."""
_PROPERTIES = st.fixed_dictionaries(
    {},
    optional={
        "PayloadFormatIndicator": st.integers(0, 1),
        "MessageExpiryInterval": st.integers(0, 2**32 - 1),
        "ContentType": st.text(_TEXT, max_size=20),
        "ResponseTopic": st.text(_TEXT, min_size=1, max_size=20).filter(
            lambda t: "+" not in t and "#" not in t
        ),
        "CorrelationData": st.binary(max_size=20),
        "SubscriptionIdentifier": st.integers(1, 2**28 - 1),
        "UserProperty": st.lists(
            st.tuples(st.text(_TEXT, max_size=8), st.text(_TEXT, max_size=8)), min_size=1, max_size=3
        ),
    },
)


def _packet(topic: str, qos: int, mid: int, properties: dict[str, object], payload: bytes) -> bytes:
    """A PUBLISH packet after its fixed header, as a broker sends it to an MQTT 5 subscriber."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in properties.items():
        setattr(props, name, value)
    encoded = topic.encode()
    packed: bytes = props.pack()  # type: ignore[no-untyped-call]
    return (
        struct.pack("!H", len(encoded))
        + encoded
        + (struct.pack("!H", mid) if qos else b"")
        + packed
        + payload
    )


def _paho(header: int, data: bytes) -> Publish | None:
    """What paho's decoding makes of a packet (None: it refuses it as malformed)."""
    try:
        p = _paho_packet.decode_publish(header, data, MQTTProtocolVersion.MQTTv5)
    except MalformedPacket:
        return None
    return Publish(p.topic.decode(), bytes(p.payload), p.qos, p.retain, p.mid, p.dup)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.text(_TEXT, min_size=1, max_size=60),
    qos=st.integers(0, 1),
    mid=st.integers(1, 65535),
    retain=st.booleans(),
    dup=st.booleans(),
    properties=_PROPERTIES,
    payload=st.binary(max_size=300),
)
def test_the_lean_publish_decoding_reads_what_paho_reads(
    topic: str, qos: int, mid: int, retain: bool, dup: bool, properties: dict[str, object], payload: bytes
) -> None:
    header = 0x30 | (dup << 3) | (qos << 1) | retain
    data = _packet(topic, qos, mid, properties, payload)
    expected = Publish(topic, payload, qos, retain, mid if qos else 0, dup)
    assert _paho(header, data) == expected
    assert decode_publish_v5(header, data) == expected
    # every truncation: either the same reading as paho's, or left to paho (which refuses a malformed one)
    for end in range(len(data)):
        ours = decode_publish_v5(header, data[:end])
        assert ours is None or ours == _paho(header, data[:end])


def test_what_the_lean_path_does_not_take_is_left_to_paho() -> None:
    data = _packet("vitalab/v1/s/dev/d/telemetry", 1, 7, {}, b"{}")
    assert decode_publish_v5(0x30 | (2 << 1), data) is None  # QoS 2
    alias = struct.pack("!H", 0) + struct.pack("!H", 7) + b"\x03\x23\x00\x01" + b"{}"  # empty topic, alias 1
    assert decode_publish_v5(0x32, alias) is None
    not_utf8 = struct.pack("!H", 2) + b"\xff\xfe" + struct.pack("!H", 7) + b"\x00" + b"{}"
    assert decode_publish_v5(0x32, not_utf8) is None
    too_long = struct.pack("!H", 1) + b"t" + struct.pack("!H", 7) + b"\xff\xff\xff\xff\x01"  # 5-byte length
    assert decode_publish_v5(0x32, too_long) is None
    assert decode_publish_v5(0x32, b"\x00") is None


def test_the_source_takes_publishes_on_the_lean_path_and_on_pahos() -> None:
    """The same packet through the client's lean path and through paho's own (the client as MQTT 3.1.1 would
    use): the source buffers the same message."""
    data = _packet("vitalab/v1/s/dev/d/telemetry", 1, 9, {"UserProperty": [("k", "v")]}, b'{"v": 1}')
    taken = []
    for protocol in ("5", "3.1.1"):
        source = MqttSource(
            MqttTarget(host="127.0.0.1", port=1), client_id="unit", filters=[], protocol=protocol
        )
        source._loop = asyncio.new_event_loop()
        try:
            client = source._client
            if protocol == "3.1.1":  # paho's path, given the MQTT 5 packet to decode as such
                client.deliver = None
                client._protocol = paho.MQTTv5
            client._in_packet["command"] = 0x32
            client._in_packet["packet"] = bytearray(data)
            assert client._handle_publish() == MQTTErrorCode.MQTT_ERR_SUCCESS
            msg = source.get_nowait()
            assert msg is not None
            taken.append((msg.topic, msg.payload, msg.qos, msg.retain, msg.mid, msg.dup))
        finally:
            source._loop.close()
    assert taken[0] == taken[1] == ("vitalab/v1/s/dev/d/telemetry", b'{"v": 1}', 1, False, 9, False)
