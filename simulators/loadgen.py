"""A fast QoS 1 publisher for load tests and failure tests (paho-mqtt on its network thread).

It keeps a persistent session and paho's outgoing queue, so messages published while the broker is down
are sent when it returns and un-acked ones are resent: what a well-behaved gateway does.

It also treats an MQTT 5 PUBACK "No matching subscribers" (0x10) as *not delivered* and publishes the
message again after ``retry_unrouted_s``. Mosquitto 2.0 does not persist shared subscriptions across a
restart (checked on 2.0.11): until the ingesters have reconnected, telemetry sent to a restarted broker
matches no subscription and would be dropped. A publisher that retries on 0x10 loses nothing.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from types import TracebackType
from typing import Literal, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from vitalab.settings import MqttTarget

NO_MATCHING_SUBSCRIBERS = 0x10


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
        self._target = target
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

    def _on_connect(
        self, client: paho.Client, userdata: object, flags: object, reason: ReasonCode, props: object
    ) -> None:
        if not reason.is_failure:
            self._connected.set()

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
        self._send(topic, payload, retain)
        if len(self._acks) > 256 or self._retry:
            self._reconcile()

    def _reconcile(self) -> None:
        now = time.monotonic()
        with self._lock:
            while self._acks:  # every publish() has registered its mid: this runs on the same thread
                mid, reason = self._acks.popleft()
                msg = self._pending.pop(mid, None)
                if msg is None:  # a duplicate PUBACK
                    continue
                if reason == NO_MATCHING_SUBSCRIBERS and self._retry_s is not None:
                    self.unrouted += 1
                    self._retry.append((now + self._retry_s, *msg))
                else:
                    self.acked += 1
                    if reason >= 0x80:
                        self.refused += 1
            due = []
            while self._retry and self._retry[0][0] <= now:
                due.append(self._retry.popleft())
        for _, topic, payload, retain in due:
            self._send(topic, payload, retain)

    def wait_acked(self, timeout_s: float = 60.0) -> None:
        """Block until the broker acknowledged (and, with retries, routed) every message published."""
        t0 = time.monotonic()
        while True:
            self._reconcile()
            if self.acked >= self.published:
                return
            if time.monotonic() - t0 > timeout_s:
                raise PublisherTimeout(f"{self.published} PUBACKs (have {self.acked})", timeout_s)
            time.sleep(0.01)
