"""The MQTT source of the ingester: QoS 1, a persistent session, and acknowledgement after commit.

aiomqtt acknowledges a message as soon as it is handed over, which would lose it if the ingester died
before the commit. paho-mqtt can delay the PUBACK (``manual_ack=True``); this module is the one place that
uses that. paho's network thread hands messages to the event loop; the caller acks each
:class:`Inbound` once its rows are committed. Memory stays bounded twice: the broker has no more than
``receive_maximum`` (MQTT 5; ``max_inflight_messages`` in Mosquitto for 3.1.1) un-acked messages out to us,
and once the payloads received and not yet acked reach ``max_inflight_bytes``, paho's network thread stops
reading until acks free bytes again (TCP then holds the broker back: flow control, nothing is refused).

A subscriber leaving for good (a scale-down) drains its session and ends it (:meth:`MqttSource.drain`,
:meth:`MqttSource.end_session`), so that the broker routes nothing more to a client id that will not return.

The same connection publishes the ingester's commit acknowledgements (:meth:`MqttSource.publish`). Its
session expires ``session_expiry_s`` after a disconnect (MQTT 5): a dead ingester's session, and the share
of telemetry the broker queued into it, are then dropped, and senders resend what was never acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ingest.errors import BrokerUnavailable, PublishFailed
from ingest.source import Inbound
from vitalab.settings import MqttTarget

logger = logging.getLogger(__name__)

SESSION_NEVER_EXPIRES = 0xFFFFFFFF
_SETTLE_FILTER = "vitalab/settle/never-subscribed"
_U16 = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class Publish:
    """What the ingester reads of a received PUBLISH packet."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    dup: bool


def decode_publish_v5(header: int, data: bytes | bytearray) -> Publish | None:
    """A QoS 0/1 MQTT 5 PUBLISH (``header``: its first byte; ``data``: what follows the remaining length),
    its properties skipped by their length; None for anything this does not take (QoS 2, a topic alias, a
    topic that is not UTF-8, a packet that does not parse), which paho's own decoding then handles (and
    raises on, if malformed)."""
    qos = (header & 0x06) >> 1
    if qos == 2 or len(data) < 2:
        return None
    (size,) = _U16.unpack_from(data, 0)
    pos = 2 + size
    if size == 0 or pos > len(data):  # a topic alias (an empty topic), or a topic cut short
        return None
    topic = bytes(data[2:pos])
    mid = 0
    if qos:
        if pos + 2 > len(data):
            return None
        (mid,) = _U16.unpack_from(data, pos)
        pos += 2
    length = 0
    for shift in (0, 7, 14, 21):  # the properties' length: a variable byte integer of at most 4 bytes
        if pos >= len(data):
            return None
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    else:
        return None
    pos += length
    if pos > len(data):
        return None
    try:
        name = topic.decode()
    except UnicodeDecodeError:
        return None
    return Publish(
        name,
        bytes(data[pos:]),
        qos,
        bool(header & 0x01),
        mid,
        bool(header & 0x08),
    )


class _Client(paho.Client):
    """paho's client with a lean path for the QoS 0/1 PUBLISH packets an MQTT 5 subscriber receives.

    Profiled under load, paho spent about 40 % of its network thread in decoding each PUBLISH: it builds a
    :class:`~paho.mqtt.properties.Properties` object (two dicts of the whole property table) and clears it
    attribute by attribute, per message, and then matches the topic against per-topic callbacks. The
    ingester uses neither the properties of a PUBLISH nor per-topic callbacks, so this path decodes the
    packet with :func:`decode_publish_v5` and hands it to ``deliver``. Anything else (MQTT 3.1.1, or what
    that function does not take) goes to paho's own ``_handle_publish``. Pinned against paho's own decoding
    in tests/ingest/test_mqtt_source.py."""

    deliver: Callable[[Publish], None] | None = None

    def _handle_publish(self) -> MQTTErrorCode:
        deliver = self.deliver
        if deliver is None or self._protocol != paho.MQTTv5:
            return super()._handle_publish()
        publish = decode_publish_v5(self._in_packet["command"], self._in_packet["packet"])
        if publish is None:
            return super()._handle_publish()
        deliver(publish)
        if publish.qos == 1 and not self._manual_ack:
            return self._send_puback(publish.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class MqttSource:
    """One subscriber connection. ``async with MqttSource(...) as src: msg = await src.get()``."""

    def __init__(
        self,
        target: MqttTarget,
        *,
        client_id: str,
        filters: Sequence[str],
        protocol: Literal["5", "3.1.1"] = "5",
        receive_maximum: int = 5000,
        keepalive_s: int = 30,
        connect_timeout_s: float = 10.0,
        ca_file: str | None = None,
        session_expiry_s: int = SESSION_NEVER_EXPIRES,
        publish_timeout_s: float = 10.0,
        max_inflight_bytes: int | None = None,
    ) -> None:
        self._target = target
        self._filters = list(filters)
        self._v5 = protocol == "5"
        self._receive_maximum = receive_maximum
        self._keepalive = keepalive_s
        self._connect_timeout = connect_timeout_s
        self._session_expiry = min(session_expiry_s, SESSION_NEVER_EXPIRES)
        self._publish_timeout = publish_timeout_s
        self._ca_file = ca_file
        self._client_id = client_id
        # paho's thread appends; the event loop pops. The loop is woken (a syscall) only when it waits.
        self._buf: deque[Inbound] = deque()
        self._ready = asyncio.Event()
        self._waiting = False
        self._wake_pending = False
        self._wake_lock = threading.Lock()
        self._generation = 0
        self._intake_lock = threading.Lock()
        self._intake_open = True
        self.refused_at_stop = 0
        """Messages that arrived after :meth:`stop_intake`: not taken, not acked (the broker keeps them)."""
        # the byte bound: paho's thread waits on the gate while the held payloads would exceed it
        self._max_bytes = max_inflight_bytes
        self._gate = threading.Condition()
        self._gate_open = True
        """False once closing: paho's thread never waits again."""
        self._held_bytes = 0
        self._held = 0
        self.inflight_bytes_peak = 0
        """The most payload bytes held (received, not yet acked) at any moment."""
        self._draining = False
        self._ended = False
        self._connected = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._unsubacked: set[int] = set()  # paho's thread adds, the event loop takes
        self._unsuback = asyncio.Event()
        self._pub_lock = threading.Lock()  # never held while calling into paho
        self._pub_waiting: dict[int, asyncio.Future[None]] = {}  # mid -> PUBACK awaited
        self._pub_acked: set[int] = set()  # PUBACKs that came before their mid was registered
        self._pub_abandoned: set[int] = set()  # mids given up on (timed out)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            clean_session=None if self._v5 else False,
            manual_ack=True,
        )
        self._client.deliver = self._deliver
        self._client.max_inflight_messages_set(0)  # our own publishes (acks): few per commit, no cap needed
        self._client.max_queued_messages_set(0)
        if target.username:
            self._client.username_pw_set(target.username, target.password)
        ctx = target.ssl_context()
        if ctx is not None:
            if ca_file:
                ctx.load_verify_locations(ca_file)
            self._client.tls_set_context(ctx)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_unsubscribe = self._on_unsubscribe
        self._client.on_publish = self._on_publish

    # --- paho network thread --------------------------------------------------------------------------
    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            logger.warning("broker refused connection: %s", reason)
            return
        self._generation += 1
        if self._draining:  # the session may still hold our subscriptions: drop them again
            client.unsubscribe(self._filters)
        else:
            client.subscribe([(f, 1) for f in self._filters])
        logger.info(
            "connected to %s (session present: %s, generation %d)",
            self._target.url(),
            flags.session_present,
            self._generation,
        )
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connected.set)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._connected.clear)
            self._loop.call_soon_threadsafe(self._subscribed.clear)
            self._loop.call_soon_threadsafe(self._disconnected.set)
        if reason.is_failure:
            logger.warning("disconnected from %s: %s; paho reconnects", self._target.url(), reason)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(r.is_failure for r in reasons):
            logger.warning("broker refused a subscription: %s", [str(r) for r in reasons])
            return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._subscribed.set)

    def _on_unsubscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._unsubacked.add(mid)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._unsuback.set)

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        """What paho's own PUBLISH handling delivers (see :class:`_Client` for the usual path)."""
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        self._deliver(Publish(msg.topic, payload, msg.qos, msg.retain, msg.mid, bool(msg.dup)))

    def _deliver(self, p: Publish) -> None:
        payload = p.payload
        inbound = Inbound(p.topic, payload, p.qos, p.retain, p.mid, self._generation, time.time(), p.dup)
        size = len(payload)
        with self._gate:
            while self._gate_open and self._over_bound(size):
                self._gate.wait()
            with self._intake_lock:
                if not self._intake_open:
                    self.refused_at_stop += 1
                    return
                self._buf.append(inbound)
            self._held += 1
            self._held_bytes += size
            self.inflight_bytes_peak = max(self.inflight_bytes_peak, self._held_bytes)
        if self._waiting:  # read after the append: see get()
            with self._wake_lock:
                if self._wake_pending:
                    return
                self._wake_pending = True
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._wake)

    def _over_bound(self, size: int) -> bool:
        """Whether a message of ``size`` bytes must wait (called holding the gate). A message larger than the
        bound is taken alone, once nothing else is held; the intake being stopped never waits."""
        if self._max_bytes is None or self._held_bytes == 0 or not self._intake_open:
            return False
        return self._held_bytes + size > self._max_bytes

    def _release(self, msg: Inbound) -> None:
        with self._gate:
            self._held -= 1
            self._held_bytes -= len(msg.payload)
            self._gate.notify_all()

    def _open_gate(self) -> None:
        with self._gate:
            self._gate_open = False
            self._gate.notify_all()

    def _wake(self) -> None:
        with self._wake_lock:
            self._wake_pending = False
        self._ready.set()

    # --- event loop -----------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self._session_expiry
            props.ReceiveMaximum = self._receive_maximum
        try:
            self._client.connect_async(
                self._target.host,
                self._target.port,
                keepalive=self._keepalive,
                clean_start=False if self._v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
                properties=props,
            )
        except (OSError, ValueError) as exc:
            raise BrokerUnavailable(self._target.url(), str(exc)) from exc
        self._client.loop_start()
        try:
            await asyncio.wait_for(self._connected.wait(), self._connect_timeout)
        except TimeoutError:
            self._client.loop_stop()
            raise BrokerUnavailable(
                self._target.url(), f"no CONNACK within {self._connect_timeout} s"
            ) from None
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Make sure the broker has processed our PUBACKs (:meth:`settle`), then disconnect cleanly (unless
        :meth:`end_session` did). The session stays on the broker."""
        self.stop_intake()  # nothing more is taken: the gate lets paho's thread go on
        if not self._ended:
            if self.connected:
                await self.settle()
            await self._disconnect(None)
        self._open_gate()
        await asyncio.to_thread(self._client.loop_stop)

    async def _disconnect(self, properties: Properties | None) -> None:
        self._disconnected.clear()
        if self._client.disconnect(properties=properties) == paho.MQTT_ERR_SUCCESS:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._disconnected.wait(), self._connect_timeout)

    async def drain(self, timeout_s: float = 5.0) -> bool:
        """Leave for good, in steps. The first call unsubscribes from every filter, so the broker routes
        nothing new to this session; every call then makes one round trip to the broker. True once, after
        that round trip, nothing is waiting to be taken: everything the broker had sent or queued for this
        session has arrived (the messages our PUBACKs released come before its answer) and, if the caller
        acked all it took before calling, nothing is left. False when messages are waiting (take, commit
        and ack them, then call again), on a reconnect, or if the broker did not answer within
        ``timeout_s``."""
        if not self.connected:  # paho reconnects (and unsubscribes again): wait for it, then look again
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), timeout_s)
            return False
        generation = self._generation
        if not self._draining:
            self._draining = True
            rc, mid = self._client.unsubscribe(self._filters)
        else:
            rc, mid = self._client.unsubscribe(_SETTLE_FILTER)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            return False
        answered = await self._answer(mid, timeout_s, until_message=True)
        return answered and not self._buf and self._held == 0 and generation == self._generation

    async def end_session(self) -> bool:
        """Disconnect and end this client id's session on the broker (MQTT 5: session expiry 0 on the
        DISCONNECT; 3.1.1: a clean-session connect of the same client id), once the broker has processed
        our PUBACKs. Only when nothing received is left unacknowledged: otherwise the session is kept (False)
        and the broker sends its messages again when this client id returns."""
        if self._held or self._buf or not self.connected or not await self.settle():
            logger.warning("session kept: %d messages received and not acknowledged", self._held)
            return False
        props = None
        if self._v5:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        await self._disconnect(props)
        self._ended = True
        if not self._v5:
            await asyncio.to_thread(self._clean_session_311)
        logger.info("session of %r ended", self._client_id)
        return True

    def _clean_session_311(self) -> None:
        """MQTT 3.1.1 has no session expiry: connecting once with a clean session discards the old one."""
        done = threading.Event()
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=paho.MQTTv311, clean_session=True
        )
        if self._target.username:
            client.username_pw_set(self._target.username, self._target.password)
        ctx = self._target.ssl_context()
        if ctx is not None:
            if self._ca_file:
                ctx.load_verify_locations(self._ca_file)
            client.tls_set_context(ctx)
        client.on_connect = lambda *_: done.set()
        try:
            client.connect_async(self._target.host, self._target.port, keepalive=self._keepalive)
        except (OSError, ValueError) as exc:
            logger.warning("could not end the 3.1.1 session of %r: %s", self._client_id, exc)
            return
        client.loop_start()
        try:
            if not done.wait(self._connect_timeout):
                logger.warning("could not end the 3.1.1 session of %r: no CONNACK", self._client_id)
        finally:
            client.disconnect()
            client.loop_stop()

    async def settle(self, timeout_s: float = 5.0) -> bool:
        """One round trip to the broker (an UNSUBSCRIBE of a filter never subscribed, and its UNSUBACK).
        A broker handles the packets of a connection in order, so once it answers, it has processed every
        PUBACK sent before: closing the connection then cannot lose them (a close with unread data in the
        socket resets the connection, and the broker may drop what it had not read yet). False if the broker
        did not answer in time."""
        rc, mid = self._client.unsubscribe(_SETTLE_FILTER)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            return False
        if not await self._answer(mid, timeout_s):
            logger.warning("the broker did not answer within %.1f s", timeout_s)
            return False
        return True

    async def _answer(self, mid: int, timeout_s: float, *, until_message: bool = False) -> bool:
        """Until the UNSUBACK of ``mid`` (True), the timeout (False), or with ``until_message`` a message
        waiting to be taken (False: the broker may be held back by the byte bound until it is taken)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while mid not in self._unsubacked:
            if until_message and self._buf:
                return False
            self._unsuback.clear()
            self._ready.clear()
            self._waiting = True  # then look again: see get()
            if mid in self._unsubacked or (until_message and self._buf):
                self._waiting = False
                continue
            waits = [asyncio.ensure_future(self._unsuback.wait())]
            if until_message:
                waits.append(asyncio.ensure_future(self._ready.wait()))
            try:
                await asyncio.wait(
                    waits, timeout=max(deadline - loop.time(), 0), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                self._waiting = False
                for w in waits:
                    w.cancel()
            if loop.time() >= deadline and mid not in self._unsubacked:
                return False
        self._unsubacked.discard(mid)
        return True

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_subscribed(self, timeout_s: float = 10.0) -> None:
        """Until the broker has acknowledged our subscriptions (SUBACK) on the current connection."""
        await asyncio.wait_for(self._subscribed.wait(), timeout_s)

    def stop_intake(self) -> None:
        """Take no more messages: what arrives from now on is neither buffered nor acked, so the broker
        keeps it for this session. What is buffered already stays to be taken (see :meth:`get_nowait`)."""
        with self._gate, self._intake_lock:
            self._intake_open = False
            self._gate.notify_all()

    @property
    def inflight_bytes(self) -> int:
        """Payload bytes received and not yet acknowledged (buffered or taken)."""
        return self._held_bytes

    @property
    def backlog(self) -> int:
        """Messages received and not yet taken by the caller."""
        return len(self._buf)

    async def get(self) -> Inbound:
        while True:
            if self._buf:
                return self._buf.popleft()
            # announce the wait first, then look again: a message appended before the announcement is
            # seen by the second look, one appended after it makes paho's thread wake us
            self._ready.clear()
            self._waiting = True
            try:
                if not self._buf:
                    await self._ready.wait()
            finally:
                self._waiting = False

    async def get_within(self, timeout_s: float) -> Inbound | None:
        """The next message, or None after ``timeout_s``. A cancellation is never lost or delayed, and never
        loses a message: one is only taken from the buffer synchronously, after the wait. (Not
        ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives as its awaitable
        completes, and an ingester told to stop would go on.)"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self._buf:
                return self._buf.popleft()
            if loop.time() >= deadline:
                return None
            self._ready.clear()
            self._waiting = True  # then look again: see get()
            timer = loop.call_at(deadline, self._ready.set)
            try:
                if not self._buf:
                    await self._ready.wait()
            finally:
                timer.cancel()
                self._waiting = False

    def get_nowait(self) -> Inbound | None:
        return self._buf.popleft() if self._buf else None

    def ack(self, msg: Inbound) -> bool:
        """Acknowledge a message whose effects are committed. False if it can no longer be acked (it came
        on an earlier connection; the broker redelivers it and the write is idempotent)."""
        self._release(msg)
        if msg.qos == 0:
            return True
        if msg.generation != self._generation:
            return False
        return self._client.ack(msg.mid, msg.qos) == paho.MQTT_ERR_SUCCESS

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish QoS 1 messages and wait for their PUBACKs (``publish_timeout_s`` in all); raises
        :class:`PublishFailed` if paho refuses one or a PUBACK does not come in time (paho still holds it
        and sends it again after a reconnect). Several calls may wait at once: a PUBACK can queue behind
        the messages the broker is sending us on the same connection, and while the byte bound holds paho's
        network thread it is not read until acks of those messages free bytes: never make acking (the commit
        path) wait for a publish."""
        if not self.connected:
            raise PublishFailed("not connected to the broker")
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[None]] = []
        try:
            for topic, payload in messages:
                info = self._client.publish(topic, payload, qos=1)
                if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                    raise PublishFailed(f"{topic}: {paho.error_string(info.rc)}")
                done = loop.create_future()
                with self._pub_lock:  # the PUBACK may have come already (see _on_publish)
                    if info.mid in self._pub_acked:
                        self._pub_acked.discard(info.mid)
                        done.set_result(None)
                    else:
                        self._pub_waiting[info.mid] = done
                waiting.append(done)
            async with asyncio.timeout(self._publish_timeout):
                await asyncio.gather(*waiting)
        except TimeoutError:
            unconfirmed = sum(f.cancelled() or not f.done() for f in waiting)  # the timeout cancels them
            raise PublishFailed(
                f"{unconfirmed} of {len(messages)} not confirmed within {self._publish_timeout} s"
            ) from None
        finally:
            with self._pub_lock:
                for mid in [m for m, f in self._pub_waiting.items() if f in waiting]:
                    del self._pub_waiting[mid]
                    self._pub_abandoned.add(mid)  # its PUBACK, should it still come, is not kept

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        """paho's thread: the PUBACK of one of our publishes (0x10 "no matching subscribers" included: the
        broker has it)."""
        with self._pub_lock:
            done = self._pub_waiting.pop(mid, None)
            if done is None:
                if mid in self._pub_abandoned:
                    self._pub_abandoned.discard(mid)
                else:
                    self._pub_acked.add(mid)
                return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve, done)


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
