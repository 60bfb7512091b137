"""A fast QoS 1 publisher for load tests and failure tests (paho-mqtt on its network thread).

It keeps a persistent session and paho's outgoing queue, so messages published while the broker is down
are sent when it returns and un-acked ones are resent: what a well-behaved gateway does.

It also treats an MQTT 5 PUBACK "No matching subscribers" (0x10) as *not delivered* and publishes the
message again after ``retry_unrouted_s``. Mosquitto 2.0 does not persist shared subscriptions across a
restart (checked on 2.0.11): until the ingesters have reconnected, telemetry sent to a restarted broker
matches no subscription and would be dropped. A publisher that retries on 0x10 loses nothing.

With ``commit_acks=True`` it is a device speaking the contract's commit acknowledgements
(:mod:`vitalab.wire.acks`) itself (its telemetry says ``"ack": true``): it subscribes to the ack topic of
every device it publishes for, keeps each telemetry message after its PUBACK until an ingester's ack names
its ``(device, seq)``, and publishes it again when none came within ``ack_timeout_s`` (a broker crash, a
dead ingester's session, a subscriber that is not an ingester: the broker's PUBACK covers none of them).
:attr:`LoadPublisher.acked` then counts committed messages, and :meth:`LoadPublisher.wait_acked` waits for
every commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from types import TracebackType
from typing import Literal, Self

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from vitalab.settings import MqttTarget
from vitalab.wire import decode_ack, device_ack_topic, message_key

NO_MATCHING_SUBSCRIBERS = 0x10
logger = logging.getLogger(__name__)
Message = tuple[str, bytes, bool]  # topic, payload, retain


class PublisherTimeout(TimeoutError):
    def __init__(self, what: str, waited_s: float) -> None:
        super().__init__(f"{what} not reached after {waited_s:.1f} s")
        self.what = what
        self.waited_s = waited_s


class LoadPublisher:
    def __init__(
        self,
        target: MqttTarget,
        client_id: str,
        *,
        protocol: Literal["5", "3.1.1"] = "5",
        max_inflight: int = 1000,
        retry_unrouted_s: float | None = 0.5,
        commit_acks: bool = False,
        ack_timeout_s: float = 30.0,
    ) -> None:
        self._v5 = protocol == "5"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            clean_session=None if self._v5 else False,
        )
        if target.username:
            self._client.username_pw_set(target.username, target.password)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)  # unbounded: the caller bounds what it publishes
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_connect = self._on_connect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._target = target
        self._commit_acks = commit_acks
        self._ack_timeout_s = ack_timeout_s
        self._ack_topics: set[str] = set()  # subscribed, again on every connect
        self._commits: deque[bytes] = deque()  # ack payloads from the network thread
        # (device, seq) -> (resend at, message): PUBACKed, not yet acknowledged as committed
        self._unacked: dict[tuple[str, int], tuple[float, Message]] = {}
        self._unacked_of: dict[str, set[int]] = defaultdict(set)
        self._retry_s = retry_unrouted_s
        self._connected = threading.Event()
        self._lock = threading.Lock()  # never held while calling into paho (paho holds its own locks)
        self._acks: deque[tuple[int, int]] = deque()  # (mid, reason) from the network thread
        self._pending: dict[int, tuple[str, bytes, bool]] = {}  # mid -> message, until its PUBACK
        self._retry: deque[tuple[float, str, bytes, bool]] = deque()
        self.published = 0
        """Messages handed to :meth:`publish`."""
        self.acked = 0
        """Messages the broker took and routed (or, without retries, took at all)."""
        self.unrouted = 0
        """PUBACKs saying no subscriber matched (each one is retried when retries are on)."""
        self.refused = 0
        """PUBACKs with a failure reason (not authorised, quota exceeded, ...): not retried."""
        self.resent_unacked = 0
        """Messages published again because no commit ack came within ``ack_timeout_s``."""

    def _on_connect(
        self, client: paho.Client, userdata: object, flags: object, reason: ReasonCode, props: object
    ) -> None:
        if not reason.is_failure:
            with self._lock:
                topics = sorted(self._ack_topics)
            if topics:  # a crashed broker may have lost the session and its subscriptions
                client.subscribe([(t, 1) for t in topics])
            self._connected.set()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self._commits.append(bytes(msg.payload))

    def _on_publish(
        self, client: paho.Client, userdata: object, mid: int, reason: ReasonCode, props: object
    ) -> None:
        self._acks.append((mid, reason.value))  # deque.append is atomic; reconciled by the caller's thread

    def __enter__(self) -> Self:
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
        self._client.connect_async(
            self._target.host,
            self._target.port,
            clean_start=False if self._v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self._client.loop_start()
        if not self._connected.wait(10):
            self._client.loop_stop()
            raise PublisherTimeout("connection", 10)
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _send(self, topic: str, payload: bytes, retain: bool) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        with self._lock:
            self._pending[info.mid] = (topic, payload, retain)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue a QoS 1 message; paho sends it now or after the next reconnect."""
        self.published += 1
        if self._commit_acks and not retain:
            self._listen_for_acks(topic)
        self._send(topic, payload, retain)
        if len(self._acks) > 256 or self._retry or len(self._commits) > 16:
            self._reconcile()

    def _listen_for_acks(self, topic: str) -> None:
        parts = topic.split("/")
        if len(parts) != 6 or parts[5] != "telemetry":
            return
        ack_topic = device_ack_topic(parts[2], parts[4])
        with self._lock:
            if ack_topic in self._ack_topics:
                return
            self._ack_topics.add(ack_topic)
        self._client.subscribe(ack_topic, qos=1)

    def _key(self, msg: Message) -> tuple[str, int] | None:
        """The (device, seq) a commit ack names, for a telemetry message when acks are on."""
        topic, payload, retain = msg
        if not self._commit_acks or retain or not topic.endswith("/telemetry"):
            return None
        key = message_key(payload)
        return None if key is None else (key.device, key.seq)

    def _committed(self) -> None:
        """Apply the commit acks received (lock held)."""
        while self._commits:
            payload = self._commits.popleft()
            try:
                ack = decode_ack(payload)
            except msgspec.DecodeError:  # resent after the timeout: nothing is lost
                logger.warning("unreadable commit ack ignored")
                continue
            for device_ack in ack.acks:
                pending = self._unacked_of.get(device_ack.device)
                if not pending:
                    continue
                for lo, hi in device_ack.seqs:
                    hits = [s for s in pending if lo <= s <= hi]
                    for s in hits:
                        pending.discard(s)
                        del self._unacked[(device_ack.device, s)]
                    self.acked += len(hits)

    def _overdue(self, now: float) -> list[Message]:
        """Messages whose commit ack is overdue, taken out of the waiting set (lock held). Deadlines grow in
        insertion order: the due ones come first."""
        if not self._connected.is_set():
            return []
        due: list[tuple[str, int]] = []
        for key, (at, _) in self._unacked.items():
            if at > now:
                break
            due.append(key)
        out = []
        for key in due:
            out.append(self._unacked.pop(key)[1])
            self._unacked_of[key[0]].discard(key[1])
        self.resent_unacked += len(out)
        return out

    def _reconcile(self) -> None:
        now = time.monotonic()
        with self._lock:
            while self._acks:  # every publish() has registered its mid: this runs on the same thread
                mid, reason = self._acks.popleft()
                msg = self._pending.pop(mid, None)
                if msg is None:  # a duplicate PUBACK
                    continue
                key = self._key(msg)
                if reason == NO_MATCHING_SUBSCRIBERS and self._retry_s is not None:
                    self.unrouted += 1
                    self._retry.append((now + self._retry_s, *msg))
                elif key is not None and reason < 0x80:
                    if key not in self._unacked:
                        self._unacked[key] = (now + self._ack_timeout_s, msg)
                        self._unacked_of[key[0]].add(key[1])
                else:
                    self.acked += 1
                    if reason >= 0x80:
                        self.refused += 1
            self._committed()
            due = []
            while self._retry and self._retry[0][0] <= now:
                due.append(self._retry.popleft()[1:])
            due.extend(self._overdue(now))
        for topic, payload, retain in due:
            self._send(topic, payload, retain)

    @property
    def awaiting_commit(self) -> int:
        """Telemetry messages the broker took whose commit ack has not come yet (as of the last look)."""
        self._reconcile()
        return len(self._unacked)

    @property
    def in_flight(self) -> int:
        """Messages handed to paho that the broker has not acknowledged yet (as of the last look)."""
        self._reconcile()
        return len(self._pending)

    def wait_acked(self, timeout_s: float = 60.0) -> None:
        """Block until the broker acknowledged (and, with retries, routed) every message published; with
        commit acks, until an ingester acknowledged the commit of every telemetry message."""
        t0 = time.monotonic()
        while True:
            self._reconcile()
            if self.acked >= self.published:
                return
            if time.monotonic() - t0 > timeout_s:
                raise PublisherTimeout(f"{self.published} PUBACKs (have {self.acked})", timeout_s)
            time.sleep(0.01)
