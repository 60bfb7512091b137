"""The gateway's publishing side: store-and-forward over MQTT 5 so that neither a broker outage nor a
gateway restart loses telemetry.

Every outgoing message (telemetry, device meta and state) is first committed to a :class:`Buffer` (one
SQLite file) and deleted from it only after the broker confirmed it with a PUBACK whose reason is below
0x80 and, for telemetry, not 0x10 "No matching subscribers": Mosquitto 2.0 does not persist shared
subscriptions across a restart, so until the ingesters are back a restarted broker would drop telemetry
and say so only with 0x10 (see ``simulators/loadgen.py``). A retained message is stored by the broker even
when nobody subscribes (Mosquitto 2.0.11 still answers 0x10), so 0x10 counts as delivered for meta and
state.

Sending: paho-mqtt on its network thread with a persistent session. One task sends the oldest buffered
entries with at most ``max_in_flight`` (capped by the broker's Receive Maximum) awaiting their PUBACK.
While the connection is down paho keeps the in-flight ones and resends them first on reconnect; the birth
is published on every connect, and nothing new is sent before the birth is acknowledged, so replay keeps
insertion order. After a PUBACK that is not a delivery (0x10, or a refusal >= 0x80) no new entry is sent:
once every in-flight entry is answered and ``retry_s`` has passed, sending starts again from the oldest
entry still in the buffer (go-back-N). Order is therefore kept, except that entries of the same in-flight
window that were delivered while earlier ones were not (a subscriber came back mid-window) arrive before
them. Receivers get every message at least once; duplicates come from resends after a lost PUBACK.

Entering the context does not wait for the broker: a gateway starts, and buffers, while it is down. A
clean exit writes the batches in progress to the buffer, publishes the retained offline status (when
connected; the LWT says the same after an unclean end) and disconnects; entries still in flight stay
buffered and the next run sends them again.

**Commit acknowledgements** (``commit_acks=True``; what ``vitalab gateway`` does by default): a PUBACK only
says the broker took a message, and a broker crash (kill -9 with a queued backlog), a dead member of the
ingest group whose session still takes its share, or any other persistent subscriber on telemetry (which
makes the broker answer success) can still lose it. So telemetry names this gateway (``gw``), the gateway
subscribes to its ack topic ``vitalab/v1/{site}/gw/{gateway}/ack``, and an entry stays in the buffer after
its PUBACK until an ingester's :class:`~vitalab.wire.acks.CommitAck` names its ``(device, seq)``. An entry
with no commit ack ``ack_timeout_s`` after its PUBACK is sent again (the row identity absorbs duplicates).
Retained meta and state are still delivered by their PUBACK (the broker keeps them).

With ``protocol="3.1.1"`` (brokers without MQTT 5, such as the in-process broker of ``vitalab up``) a
PUBACK carries no reason code: every PUBACK counts as delivered, so the shared-subscription restart window
above is not covered there.

:meth:`GatewayPublisher.drop_connection` cuts the TCP connection without a DISCONNECT (fault injection:
the broker publishes the LWT, paho reconnects and resends what was in flight).

Telemetry is batched per device (``batch_samples`` samples, or the batch is ``batch_age_s`` old) into a
``TelemetryMessage`` whose per-device ``seq`` is reserved in the same SQLite file (it keeps growing
across restarts; a crash can leave gaps). Samples still batching in memory are what a crash can lose.

Usage::

    async with GatewayPublisher(target, "gym-1", "gw-1", data_dir / "outbox.sqlite") as gw:
        await gw.announce(metas)
        gw.add_sample("bike-07", sample)        # never blocks
        await gw.set_state(state)
        await gw.wait_delivered(30)             # tests and orderly shutdown
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.buffer import Buffer, DeadFrame, Entry, Outgoing
from gateway.errors import DeliveryTimeout
from vitalab.settings import MqttTarget
from vitalab.wire import (
    CommitAck,
    DeviceMeta,
    DeviceState,
    GatewayStatus,
    Sample,
    TelemetryMessage,
    TopicKind,
    decode_ack,
    device_topic,
    encode,
    gateway_ack_topic,
    gateway_status_topic,
    telemetry_topic,
)
from vitalab.wire.payload import MAX_SAMPLES_PER_MESSAGE

logger = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS: Final = 0x10
SESSION_EXPIRY_S: Final = 3600
CLOSE_TIMEOUT_S: Final = 5.0
"""How long a clean exit waits for the broker to acknowledge the offline status."""


@dataclass(frozen=True, slots=True)
class PublisherStats:
    published: int
    """Messages (telemetry, meta, state) written to the buffer by this publisher."""
    delivered: int
    """Entries confirmed by a PUBACK that counts as delivered (and so deleted from the buffer, unless they
    wait for their commit acknowledgement)."""
    retried: int
    """Entries sent again after a PUBACK that did not count as delivered."""
    unrouted: int
    """Telemetry PUBACKs with 0x10 "No matching subscribers" (each is retried)."""
    refused: int
    """PUBACKs with a failure reason (>= 0x80; each is retried)."""
    dropped_when_full: int
    """Oldest entries dropped because the buffer was full (see :mod:`gateway.buffer`)."""
    buffered: int
    """Entries in the buffer now, in flight included (entries of earlier runs included)."""
    in_flight: int
    """Entries sent and awaiting their PUBACK."""
    committed: int = 0
    """Telemetry entries deleted because an ingester acknowledged their commit."""
    awaiting_commit: int = 0
    """Telemetry entries the broker took whose commit acknowledgement has not come yet."""
    resent_unacked: int = 0
    """Entries sent again because no commit acknowledgement came within ``ack_timeout_s``."""


@dataclass(frozen=True, slots=True)
class _Options:
    """The publisher's tunables (see :class:`GatewayPublisher`), checked once."""

    max_buffer_entries: int
    max_buffer_bytes: int | None
    batch_samples: int
    batch_age_s: float
    max_in_flight: int
    retry_s: float
    keepalive_s: int
    v5: bool
    commit_acks: bool = False
    ack_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.batch_samples <= MAX_SAMPLES_PER_MESSAGE:
            raise ValueError(f"batch_samples must be within 1..{MAX_SAMPLES_PER_MESSAGE}")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if self.ack_timeout_s <= 0:
            raise ValueError("ack_timeout_s must be positive")


@dataclass(slots=True)
class _Batching:
    """Samples still in memory (event loop only): per device the batch being filled and when it began,
    and the batches sealed but not yet written to the buffer."""

    topics: dict[str, str] = field(default_factory=dict)  # device -> telemetry topic
    batches: dict[str, list[Sample]] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    sealed: list[tuple[str, str, list[Sample]]] = field(default_factory=list)  # (device, topic, samples)


@dataclass(slots=True)
class _Counts:
    """The counters behind :class:`PublisherStats`."""

    published: int = 0
    delivered: int = 0
    retried: int = 0
    unrouted: int = 0
    refused: int = 0
    committed: int = 0
    resent_unacked: int = 0


def _new_client(
    target: MqttTarget, client_id: str, v5: bool, ca_file: Path | None, *, will: tuple[str, bytes]
) -> paho.Client:
    """A paho client for one gateway: a persistent session, credentials and TLS as the target says, no
    limits of paho's own on what it holds (the publisher's window bounds it), the retained offline will."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else False,  # 3.1.1: a persistent session, like MQTT 5's (see __aenter__)
    )
    _authenticate(client, target, ca_file)
    client.max_inflight_messages_set(0)  # unlimited in paho: the window bounds it
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(min_delay=1, max_delay=5)
    topic, payload = will
    client.will_set(topic, payload, qos=1, retain=True)
    return client


def _authenticate(client: paho.Client, target: MqttTarget, ca_file: Path | None) -> None:
    """Username / password and TLS, when the target has them."""
    if target.username:
        client.username_pw_set(target.username, target.password)
    ctx = target.ssl_context(ca_file)
    if ctx is not None:
        client.tls_set_context(ctx)


def _now_ms() -> datetime:
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


class GatewayPublisher:
    """One gateway's MQTT connection and its store-and-forward buffer; an async context manager."""

    def __init__(
        self,
        target: MqttTarget,
        site: str,
        gateway_id: str,
        buffer_path: Path,
        *,
        max_buffer_entries: int = 1_000_000,
        max_buffer_bytes: int | None = None,
        batch_samples: int = 10,
        batch_age_s: float = 1.0,
        max_in_flight: int = 100,
        retry_s: float = 0.5,
        client_id: str | None = None,
        keepalive_s: int = 30,
        ca_file: Path | None = None,
        protocol: Literal["5", "3.1.1"] = "5",
        commit_acks: bool = False,
        ack_timeout_s: float = 30.0,
    ) -> None:
        self._options = _Options(
            max_buffer_entries=max_buffer_entries,
            max_buffer_bytes=max_buffer_bytes,
            batch_samples=batch_samples,
            batch_age_s=batch_age_s,
            max_in_flight=max_in_flight,
            retry_s=retry_s,
            keepalive_s=keepalive_s,
            v5=protocol == "5",
            commit_acks=commit_acks,
            ack_timeout_s=ack_timeout_s,
        )
        self.site = site
        self.gateway_id = gateway_id
        self._status_topic = gateway_status_topic(site, gateway_id)  # validates both ids
        self._ack_topic = gateway_ack_topic(site, gateway_id)
        self._target = target
        self._buffer_path = buffer_path
        self._devices: list[str] = []
        self._client = _new_client(
            target,
            client_id or f"vitalab-gw-{site}-{gateway_id}",
            self._options.v5,
            ca_file,
            will=(self._status_topic, encode(GatewayStatus(v=1, gateway=gateway_id, online=False))),
        )
        self._bind_callbacks()
        self._init_lifecycle()
        self._init_sending()
        self._batching = _Batching()
        self._counts = _Counts()

    def _bind_callbacks(self) -> None:
        """paho calls these on its network thread (see the section below)."""
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._birth_mid: int | None = None  # paho's thread only

    def _init_lifecycle(self) -> None:
        """What ``async with`` opens and closes: the loop, the buffer file, the two tasks."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer: Buffer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._failure: BaseException | None = None
        self._closed = False

    def _init_sending(self) -> None:
        """The state of the connection and of the in-flight window (event loop only)."""
        self._connected = False
        self._gate = False  # connected and the birth acknowledged: entries may be sent
        self._window = self._options.max_in_flight
        self._kick = asyncio.Event()  # wakes the sender
        self._idle = asyncio.Event()  # set when nothing is buffered or in flight
        self._flush_wake = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._in_flight: dict[int, Entry] = {}  # mid -> entry
        self._waiters: dict[int, asyncio.Future[int]] = {}  # mid -> PUBACK reason, direct publishes
        self._acked: list[int] = []  # entry ids delivered, to delete
        self._cursor = 0  # id of the last entry handed to paho
        self._max_sent = 0
        self._retry_at: float | None = None  # not-delivered PUBACK seen: hold, then go back
        self._retry_timer: asyncio.TimerHandle | None = None
        self._failing = False  # a PUBACK said "not delivered" and none has said "delivered" since
        self._awaiting: dict[int, float] = {}  # entry id -> when to resend it: PUBACKed, no commit ack yet
        self._commit_acks: list[CommitAck] = []  # received, to apply to the buffer
        self._ack_timer: asyncio.TimerHandle | None = None

    # --- public API -------------------------------------------------------------------------------------
    @property
    def stats(self) -> PublisherStats:
        buf = self._buffer
        return PublisherStats(
            published=self._counts.published,
            delivered=self._counts.delivered,
            retried=self._counts.retried,
            unrouted=self._counts.unrouted,
            refused=self._counts.refused,
            dropped_when_full=0 if buf is None else buf.dropped,
            buffered=0 if buf is None else len(buf),
            in_flight=len(self._in_flight),
            committed=self._counts.committed,
            awaiting_commit=len(self._awaiting),
            resent_unacked=self._counts.resent_unacked,
        )

    @property
    def connected(self) -> bool:
        """Connected, and the birth acknowledged."""
        return self._gate

    def add_sample(self, device_id: str, sample: Sample) -> None:
        """Batch one sample of a device; never blocks. Raises :class:`TopicError` for an invalid id."""
        self._check()
        batch = self._batching.batches.get(device_id)
        if batch is None:
            if device_id not in self._batching.topics:
                self._batching.topics[device_id] = telemetry_topic(self.site, device_id)
            batch = self._batching.batches[device_id] = []
            self._batching.started[device_id] = self._running_loop().time()
            self._flush_wake.set()
        batch.append(sample)
        if len(batch) >= self._options.batch_samples:
            self._seal(device_id)
            self._flush_wake.set()

    async def flush(self) -> None:
        """Write every batch in progress to the buffer now; durable when this returns."""
        self._check()
        for device in list(self._batching.batches):
            self._seal(device)
        await self._write_sealed()

    async def announce(self, metas: Sequence[DeviceMeta]) -> None:
        """Buffer retained meta for these devices and add them to the birth's device list."""
        self._check()
        items = [
            Outgoing(device_topic(self.site, m.device, TopicKind.META), encode(m), retain=True) for m in metas
        ]
        self._devices = sorted({*self._devices, *(m.device for m in metas)})
        await self._append(items)
        if self._gate:
            self._client.publish(self._status_topic, self._birth(), qos=1, retain=True)

    async def set_state(self, state: DeviceState) -> None:
        """Buffer a retained device state."""
        self._check()
        topic = device_topic(self.site, state.device, TopicKind.STATE)
        await self._append([Outgoing(topic, encode(state), retain=True)])

    async def set_states(self, states: Sequence[DeviceState]) -> None:
        """Buffer several retained device states in one transaction."""
        self._check()
        if states:
            await self._append(
                [
                    Outgoing(device_topic(self.site, s.device, TopicKind.STATE), encode(s), retain=True)
                    for s in states
                ]
            )

    async def record_dead_frames(self, frames: Sequence[DeadFrame]) -> None:
        """Keep frames the gateway could not decode in the buffer file's local dead-letter table."""
        self._check()
        if frames:
            await asyncio.to_thread(self._buf().add_dead_frames, frames)

    def drop_connection(self) -> None:
        """Fault injection: cut the TCP connection as a network failure would (no DISCONNECT, so the broker
        publishes the LWT); paho reconnects by itself and resends what was in flight."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def wait_delivered(self, timeout_s: float = 30.0) -> None:
        """Flush, then wait until the buffer is empty and nothing is in flight.

        Raises :class:`DeliveryTimeout` after ``timeout_s`` (nothing is lost: it stays buffered)."""
        await self.flush()
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            raise DeliveryTimeout(self.stats.buffered, len(self._in_flight), timeout_s) from None
        self._check()

    # --- context --------------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._buffer = await asyncio.to_thread(
            Buffer,
            self._buffer_path,
            max_entries=self._options.max_buffer_entries,
            max_bytes=self._options.max_buffer_bytes,
        )
        try:
            self._connect()
        except (OSError, ValueError):
            await asyncio.to_thread(self._buffer.close)
            raise
        if len(self._buffer):
            logger.info("%d messages left in the buffer by an earlier run are sent first", len(self._buffer))
        self._start_tasks()
        return self

    def _connect(self) -> None:
        """Start paho connecting in the background, with a session that outlives the connection. Does not
        wait for the broker: a gateway starts, and buffers, while the broker is down."""
        props: Properties | None = None
        if self._options.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(
            self._target.host,
            self._target.port,
            keepalive=self._options.keepalive_s,
            clean_start=False if self._options.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self._client.loop_start()

    def _start_tasks(self) -> None:
        self._tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._flush_loop())]
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        self._update_idle()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        sender, flusher = self._tasks
        await self._stop_batching(flusher)
        await _cancelled(sender)  # what is in flight stays buffered and is sent again by the next run
        if self._connected:
            await self._say_offline()
        await self._close()
        if self._failure is not None and et is None:
            raise self._failure

    async def _stop_batching(self, flusher: asyncio.Task[None]) -> None:
        """No more samples: the flusher finishes the write it is in and stops, then the batches still in
        memory are written to the buffer (durable: the next run sends them)."""
        self._closed = True
        self._flush_wake.set()
        with contextlib.suppress(Exception):  # a failure was taken by _task_done
            await flusher
        if self._failure is not None:
            return
        for device in list(self._batching.batches):
            self._seal(device)
        try:
            await self._write_sealed()
        except Exception:
            logger.exception("could not buffer the last %d batches", len(self._batching.sealed))

    async def _say_offline(self) -> None:
        """Publish the retained offline status and wait (a little) for its PUBACK."""
        status = GatewayStatus(v=1, gateway=self.gateway_id, online=False, t=_now_ms())
        info = self._client.publish(self._status_topic, encode(status), qos=1, retain=True)
        done = self._running_loop().create_future()
        self._waiters[info.mid] = done
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await done
        except TimeoutError:
            logger.warning("no PUBACK for the offline status within %.0f s", CLOSE_TIMEOUT_S)

    async def _close(self) -> None:
        """Delete what was acknowledged meanwhile (fewer duplicates next time), disconnect, close the file."""
        buf = self._buf()
        if self._acked:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(buf.ack, self._acked)
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        await asyncio.to_thread(buf.close)
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        if self._ack_timer is not None:
            self._ack_timer.cancel()

    # --- paho's network thread ------------------------------------------------------------------------
    def _to_loop(self, fn: Callable[[], object]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(fn)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            logger.warning("broker %s refused the connection: %s", self._target.url(), reason)
            return
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        if self._options.commit_acks:  # again on every connect: a crashed broker may have lost the session
            client.subscribe(self._ack_topic, qos=1)
        # the birth goes out before paho resends what was in flight; nothing new is sent before its PUBACK
        self._birth_mid = client.publish(self._status_topic, self._birth(), qos=1, retain=True).mid
        logger.info("connected to %s (session present: %s)", self._target.url(), flags.session_present)
        self._to_loop(functools.partial(self._connected_cb, receive_maximum))

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            logger.warning("disconnected from %s: %s; reconnecting", self._target.url(), reason)
        self._to_loop(self._disconnected_cb)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if mid == self._birth_mid:
            self._birth_mid = None
            if reason.is_failure:
                logger.warning("the broker refused the birth on %s: %s", self._status_topic, reason)
            self._to_loop(self._birth_acked)
        else:
            self._to_loop(functools.partial(self._on_puback, mid, int(reason.value)))

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if msg.topic == self._ack_topic:
            self._to_loop(functools.partial(self._on_commit_ack, bytes(msg.payload)))

    def _birth(self) -> bytes:
        return encode(
            GatewayStatus(v=1, gateway=self.gateway_id, online=True, t=_now_ms(), devices=list(self._devices))
        )

    # --- event loop: connection and PUBACKs -------------------------------------------------------------
    def _connected_cb(self, receive_maximum: object) -> None:
        self._connected = True
        if isinstance(receive_maximum, int) and receive_maximum > 0:
            self._window = min(self._options.max_in_flight, receive_maximum)

    def _disconnected_cb(self) -> None:
        self._connected = False
        self._gate = False

    def _birth_acked(self) -> None:
        if self._connected:
            self._gate = True
            self._kick.set()

    def _on_puback(self, mid: int, reason: int) -> None:
        waiter = self._waiters.pop(mid, None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(reason)
            return
        entry = self._in_flight.pop(mid, None)
        if entry is None:  # a direct publish (birth), or a duplicate PUBACK
            return
        if reason < 0x80 and (reason != NO_MATCHING_SUBSCRIBERS or entry.retain):
            if self._options.commit_acks and entry.seq is not None:
                self._awaiting[entry.id] = self._running_loop().time() + self._options.ack_timeout_s
                self._arm_ack_timer()
            else:
                self._acked.append(entry.id)
            self._counts.delivered += 1
            self._failing = False
        else:
            if reason == NO_MATCHING_SUBSCRIBERS:
                self._counts.unrouted += 1
            else:
                self._counts.refused += 1
            if not self._failing:  # once until something is delivered again, not once per retry
                self._failing = True
                logger.log(
                    logging.WARNING if reason >= 0x80 else logging.INFO,
                    "PUBACK 0x%02x for %s: not delivered; holding new messages and retrying every %.1f s",
                    reason,
                    entry.topic,
                    self._options.retry_s,
                )
            if self._retry_at is None:
                self._retry_at = self._running_loop().time() + self._options.retry_s
        self._kick.set()

    def _retry_due(self) -> None:
        self._retry_timer = None
        self._kick.set()

    def _on_commit_ack(self, payload: bytes) -> None:
        try:
            ack = decode_ack(payload)
        except msgspec.DecodeError as exc:  # resent after the timeout: nothing is lost
            logger.warning("unreadable commit acknowledgement on %s: %s", self._ack_topic, exc)
            return
        self._commit_acks.append(ack)
        self._kick.set()

    def _arm_ack_timer(self) -> None:
        """Wake the sender when the oldest entry awaiting its commit ack is due to be sent again."""
        if self._ack_timer is not None or not self._awaiting:
            return
        due = next(iter(self._awaiting.values()))  # the oldest: see _resend_unacked
        self._ack_timer = self._running_loop().call_at(due, self._ack_due)

    def _ack_due(self) -> None:
        self._ack_timer = None
        self._kick.set()

    # --- event loop: sending ----------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        loop = self._running_loop()
        while True:
            await self._kick.wait()
            self._kick.clear()
            buf = self._buf()
            if self._acked:
                ids, self._acked = self._acked, []
                await asyncio.to_thread(buf.ack, ids)
            if self._commit_acks:
                await self._apply_commit_acks(buf)
            if self._awaiting and self._gate:
                await self._resend_unacked(buf)
            if self._retry_at is not None and not self._in_flight:
                delay = self._retry_at - loop.time()
                if delay <= 0:
                    self._retry_at = None
                    self._cursor = 0  # go back to the oldest entry still buffered
                elif self._retry_timer is None:
                    self._retry_timer = loop.call_later(delay, self._retry_due)
            if self._gate and self._retry_at is None:
                await self._fill(buf)
            self._update_idle()

    async def _apply_commit_acks(self, buf: Buffer) -> None:
        acks, self._commit_acks = self._commit_acks, []
        committed = [(a.device, a.seqs) for ack in acks for a in ack.acks]
        deleted = await asyncio.to_thread(buf.ack_committed, committed)
        for i in deleted:
            self._awaiting.pop(i, None)
        self._counts.committed += len(deleted)

    async def _resend_unacked(self, buf: Buffer) -> None:
        """Send again the entries whose commit ack is overdue (they may have been lost after the PUBACK).
        Deadlines grow in insertion order (PUBACK time + the timeout), so the due ones come first."""
        now = self._running_loop().time()
        due: list[int] = []
        for i, at in self._awaiting.items():
            if at > now:
                break
            due.append(i)
        if not due:
            self._arm_ack_timer()
            return
        for i in due:
            del self._awaiting[i]
        entries = await asyncio.to_thread(buf.get, due)
        if entries:
            logger.info(
                "no commit ack for %d entries within %.0f s of their PUBACK: sending them again",
                len(entries),
                self._options.ack_timeout_s,
            )
        for e in entries:
            info = self._client.publish(e.topic, e.payload, qos=1, retain=e.retain)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):  # once more after the timeout
                self._awaiting[e.id] = now + self._options.ack_timeout_s
                continue
            self._in_flight[info.mid] = e
            self._counts.resent_unacked += 1
        self._arm_ack_timer()

    async def _fill(self, buf: Buffer) -> None:
        while self._gate and self._retry_at is None:
            room = self._window - len(self._in_flight)
            if room <= 0:
                return
            entries = await asyncio.to_thread(buf.peek, room, after=self._cursor)
            for e in entries:  # if the connection dropped meanwhile, paho holds them until it is back
                if e.id in self._awaiting:  # the broker has it; its commit ack is not overdue yet
                    self._cursor = e.id
                    continue
                info = self._client.publish(e.topic, e.payload, qos=1, retain=e.retain)
                if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                    logger.warning("paho did not take %s (%s); retrying", e.topic, paho.error_string(info.rc))
                    self._retry_at = self._running_loop().time() + self._options.retry_s
                    return
                self._in_flight[info.mid] = e
                self._cursor = e.id
                if e.id <= self._max_sent:
                    self._counts.retried += 1
                else:
                    self._max_sent = e.id
            if len(entries) < room:
                return

    def _update_idle(self) -> None:
        if not self._in_flight and not self._acked and not self._batching.sealed and len(self._buf()) == 0:
            self._idle.set()
        else:
            self._idle.clear()

    # --- event loop: batching ---------------------------------------------------------------------------
    def _seal(self, device: str) -> None:
        self._batching.sealed.append(
            (device, self._batching.topics[device], self._batching.batches.pop(device))
        )
        del self._batching.started[device]

    async def _flush_loop(self) -> None:
        loop = self._running_loop()
        while not self._closed:
            oldest = min(self._batching.started.values(), default=None)
            timeout = None if oldest is None else max(0.0, oldest + self._options.batch_age_s - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._flush_wake.wait()
            self._flush_wake.clear()
            now = loop.time()
            for device, started in list(self._batching.started.items()):
                if now - started >= self._options.batch_age_s:
                    self._seal(device)
            await self._write_sealed()

    async def _write_sealed(self) -> None:
        async with self._write_lock:  # one writer: seq and buffer order follow the order of sealing
            batches, self._batching.sealed = self._batching.sealed, []
            if batches:
                await asyncio.to_thread(self._write_telemetry, self._buf(), batches)
                self._appended(len(batches))

    def _write_telemetry(self, buf: Buffer, batches: list[tuple[str, str, list[Sample]]]) -> None:
        seqs = buf.reserve_seqs(Counter(device for device, _, _ in batches))
        gw = self.gateway_id if self._options.commit_acks else None
        items: list[Outgoing] = []
        for device, topic, samples in batches:
            seq = seqs[device]
            msg = TelemetryMessage(v=1, device=device, seq=seq, samples=samples, gw=gw)
            seqs[device] += 1
            items.append(Outgoing(topic, encode(msg), device=device, seq=seq))
        buf.append_many(items)

    async def _append(self, items: list[Outgoing]) -> None:
        async with self._write_lock:
            await asyncio.to_thread(self._buf().append_many, items)
            self._appended(len(items))

    def _appended(self, n: int) -> None:
        self._counts.published += n
        self._idle.clear()
        self._kick.set()

    # --- helpers ----------------------------------------------------------------------------------------
    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("use GatewayPublisher as `async with GatewayPublisher(...) as gw:`")
        return self._loop

    def _buf(self) -> Buffer:
        if self._buffer is None:
            raise RuntimeError("use GatewayPublisher as `async with GatewayPublisher(...) as gw:`")
        return self._buffer

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed or self._loop is None:
            raise RuntimeError("the publisher is not open")

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("gateway publisher task failed", exc_info=exc)
            self._failure = exc
            self._idle.set()  # wake wait_delivered(), which raises the failure


async def _cancelled(task: asyncio.Task[None]) -> None:
    if task.done():  # a failure was taken by _task_done
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
