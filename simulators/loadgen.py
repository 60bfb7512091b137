"""A fast QoS 1 publisher for load tests and failure tests (paho-mqtt on its network thread).

It keeps a persistent session and paho's outgoing queue, so messages published while the broker is down
are sent when it returns and un-acked ones are resent: what a well-behaved gateway does. ``acked`` counts
PUBACKs, so a caller can wait until the broker has taken every message.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Literal, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from vitalab.settings import MqttTarget


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
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.published = 0
        self.acked = 0

    def _on_connect(
        self, client: paho.Client, userdata: object, flags: object, reason: ReasonCode, props: object
    ) -> None:
        if not reason.is_failure:
            self._connected.set()

    def _on_publish(
        self, client: paho.Client, userdata: object, mid: int, reason: ReasonCode, props: object
    ) -> None:
        with self._lock:
            self.acked += 1

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

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue a QoS 1 message; paho sends it now or after the next reconnect."""
        self._client.publish(topic, payload, qos=1, retain=retain)
        self.published += 1

    def wait_acked(self, timeout_s: float = 60.0) -> None:
        """Block until the broker acknowledged every message published so far."""
        t0 = time.monotonic()
        while self.acked < self.published:
            if time.monotonic() - t0 > timeout_s:
                raise PublisherTimeout(f"{self.published} PUBACKs (have {self.acked})", timeout_s)
            time.sleep(0.01)
