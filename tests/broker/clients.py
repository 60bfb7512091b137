"""Synchronous MQTT test clients (paho, threaded loop) that record CONNACK, PUBACK reason codes, SUBACKs,
deliveries and disconnects, so tests wait on events instead of sleeping."""

from __future__ import annotations

import queue
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

TIMEOUT_S = 10.0
NOT_AUTHORIZED = 0x87


class NoMessage(AssertionError):
    pass


@dataclass
class Session:
    client: mqtt.Client
    username: str | None
    connack: ReasonCode | None = None
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    messages: queue.Queue[mqtt.MQTTMessage] = field(default_factory=queue.Queue)
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    subacks: dict[int, list[ReasonCode]] = field(default_factory=dict)
    subscribed: threading.Event = field(default_factory=threading.Event)

    @property
    def refused(self) -> bool:
        assert self.connack is not None, "no CONNACK yet"
        return bool(self.connack.is_failure)

    def subscribe(self, topic: str, qos: int = 1) -> list[ReasonCode]:
        self.subscribed.clear()
        _, mid = self.client.subscribe(topic, qos=qos)
        assert mid is not None
        assert self.subscribed.wait(TIMEOUT_S), f"no SUBACK for {topic}"
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published(), f"no PUBACK for {topic}"
        return self.pubacks[info.mid]

    def next_message(self) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=TIMEOUT_S)
        except queue.Empty:
            raise NoMessage("no message delivered within the timeout") from None

    def wait_for(self, topic: str, payload: bytes) -> list[mqtt.MQTTMessage]:
        """Everything delivered up to and including (topic, payload), in order."""
        seen: list[mqtt.MQTTMessage] = []
        while True:
            message = self.next_message()
            seen.append(message)
            if (message.topic, message.payload) == (topic, payload):
                return seen


@dataclass
class Connector:
    host: str
    port: int
    protocol: MQTTProtocolVersion = mqtt.MQTTv5
    sessions: list[Session] = field(default_factory=list)

    def __call__(
        self,
        username: str | None,
        password: str | None = None,
        *,
        client_id: str | None = None,
        will: tuple[str, bytes] | None = None,
        protocol: MQTTProtocolVersion | None = None,
        tls_ca: str | None = None,
    ) -> Session:
        version = protocol or self.protocol
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"t-{uuid.uuid4().hex[:12]}",
            protocol=version,
        )
        client.reconnect_delay_set(min_delay=60, max_delay=60)  # a dropped client must not come back here
        session = Session(client, username)
        if username is not None:
            client.username_pw_set(username, password)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=False)
        if tls_ca is not None:
            client.tls_set(ca_certs=tls_ca)

        def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
            session.connack = reason
            if reason.is_failure:
                client.disconnect()  # ends the network loop instead of retrying
            session.connected.set()

        def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, _reason: ReasonCode, _p: Any) -> None:
            session.disconnected.set()

        def on_publish(_c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
            session.pubacks[mid] = reason

        def on_subscribe(_c: mqtt.Client, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
            session.subacks[mid] = reasons
            session.subscribed.set()

        def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
            session.messages.put(message)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        self.sessions.append(session)
        client.connect(self.host, self.port, keepalive=30)
        client.loop_start()
        assert session.connected.wait(TIMEOUT_S), "no CONNACK"
        return session

    def login(self, username: str, password: str, **kwargs: Any) -> Session:
        session = self(username, password, **kwargs)
        assert not session.refused, f"{username}: {session.connack}"
        return session

    def close(self) -> None:
        for session in self.sessions:
            if not session.disconnected.is_set():
                session.client.disconnect()
                if session.connack is not None and not session.connack.is_failure:
                    session.disconnected.wait(TIMEOUT_S)
            session.client.loop_stop()


def assert_not_authorized(session: Session) -> None:
    """Refused at CONNACK with "Not authorized" (MQTT 3.1.1 return code 5 / MQTT 5 reason 0x87)."""
    assert session.connack is not None, "no CONNACK"
    assert session.connack.is_failure, f"{session.username} was let in"
    assert session.connack.getName() == "Not authorized", session.connack


def token() -> bytes:
    return uuid.uuid4().hex.encode()


__all__ = [
    "NOT_AUTHORIZED",
    "TIMEOUT_S",
    "Connector",
    "NoMessage",
    "Session",
    "assert_not_authorized",
    "token",
]
