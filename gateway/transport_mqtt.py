"""The MQTT raw-topic transport: frames that devices (or BLE/ANT+ bridges) publish undecoded on
``vitalab/v1/{site}/dev/{device}/raw`` (``vitalab.wire.RawFrame``, QoS 0), decoded by this gateway.

A payload that breaks the wire contract, or a topic outside the tree, becomes a :class:`Rejected` event (the
service dead-letters it); the connection is re-made after a broker outage (frames sent meanwhile are gone:
QoS 0, as the topic table says). ANT+ frames name the device type and page in ``char`` (see
:mod:`gateway.transport`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import aiomqtt

from gateway.transport import Event, Frame, Rejected, raw_char_source
from vitalab.settings import MqttTarget
from vitalab.wire import (
    TopicError,
    TopicKind,
    WireError,
    WireLimits,
    decode_raw_frame,
    parse_topic,
    subscription,
)

logger = logging.getLogger(__name__)
PROTOCOLS = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311}


def raw_event(topic: str, payload: bytes, limits: WireLimits = WireLimits()) -> Event:
    """One raw-topic message as a gateway event (pure)."""
    now = datetime.now(UTC)
    try:
        device = parse_topic(topic).source
    except TopicError as exc:
        return Rejected(None, f"mqtt:{topic}", payload, now, f"topic: {exc}")
    try:
        raw = decode_raw_frame(payload, limits)
    except WireError as exc:
        return Rejected(device, "mqtt:raw", payload, now, f"{exc.reason}: {exc.detail}")
    return Frame(device, raw_char_source(raw.src, raw.char), bytes.fromhex(raw.hex), raw.t)


class MqttRawTransport:
    """Subscribes to the raw topics of one site (QoS 0) and yields their frames."""

    live = True

    def __init__(
        self,
        target: MqttTarget,
        site: str,
        *,
        client_id: str,
        protocol: str = "5",
        limits: WireLimits = WireLimits(),
        reconnect_s: float = 1.0,
        name: str = "mqtt",
    ) -> None:
        self.name = name
        self._target = target
        self._filter = subscription(TopicKind.RAW, site=site)
        self._client_id = client_id
        self._protocol = protocol
        self._limits = limits
        self._reconnect_s = reconnect_s
        self.subscribed = asyncio.Event()

    async def events(self) -> AsyncIterator[Sequence[Event]]:
        t = self._target
        while True:
            try:
                async with aiomqtt.Client(
                    t.host,
                    t.port,
                    identifier=self._client_id,
                    username=t.username,
                    password=t.password,
                    protocol=PROTOCOLS[self._protocol],
                    tls_context=t.ssl_context(),
                ) as client:
                    await client.subscribe(self._filter, qos=0)
                    self.subscribed.set()
                    async for message in client.messages:
                        payload = message.payload
                        data = payload if isinstance(payload, bytes) else str(payload).encode()
                        yield [raw_event(str(message.topic), data, self._limits)]
            except aiomqtt.MqttError as exc:
                self.subscribed.clear()
                logger.warning("raw-topic transport lost %s: %s; reconnecting", t.url(), exc)
                await asyncio.sleep(self._reconnect_s)
