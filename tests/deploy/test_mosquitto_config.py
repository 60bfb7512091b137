"""The compose stack's Mosquitto configuration (deploy/mosquitto/) against a real mosquitto 2 broker.

The broker is started from a temporary copy of ``deploy/mosquitto/mosquitto.conf`` whose listener and
file paths are rewritten (free loopback port, the repository's ``passwd``/``acl``, a temporary
persistence directory); the committed file is never modified. Everything else (anonymous access,
throughput limits, ...) is exactly what compose runs.

Observed with mosquitto 2.0.11: SUBSCRIBE is granted for any filter, ``read`` is enforced per delivered
message against its concrete topic (so ``topic read vitalab/v1/#`` covers ``$share/ingest/...``); a
denied PUBLISH is dropped, answered with PUBACK reason code 0x87 under MQTT 5 and a plain PUBACK under
MQTT 3.1.1.
"""

from __future__ import annotations

import os
import pwd
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "mosquitto"
COMPOSE_FILE = REPO / "docker-compose.yml"

# Demo-only credentials, documented in deploy/mosquitto/README.md.
DEMO_PASSWORDS = {
    user: f"demo-{user}"
    for user in ("ingest", "api", "simulator", "monitor", "gw-01", "bike-01", "treadmill-01")
}
SHARED_TELEMETRY = "$share/ingest/vitalab/v1/+/dev/+/telemetry"
NOT_AUTHORIZED = 0x87
TIMEOUT = 5.0
PROTOCOLS = [pytest.param(mqtt.MQTTv5, id="mqtt5"), pytest.param(mqtt.MQTTv311, id="mqtt311")]


# --- the broker ------------------------------------------------------------------------------------------


def _find_binary(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return shutil.which(name, path=path)


def _require_binary(name: str) -> str:
    found = _find_binary(name)
    if found is None:
        reason = (
            f"{name} binary not found (install Debian's `mosquitto` package); cannot test deploy/mosquitto"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _directives(conf: Path) -> dict[str, list[str]]:
    """``{option: [value, ...]}`` of a mosquitto config file (comments and blank lines skipped)."""
    found: dict[str, list[str]] = {}
    for line in conf.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            key, _, value = stripped.partition(" ")
            found.setdefault(key, []).append(value.strip())
    return found


def test_config_rewrite_targets_present() -> None:
    """The directives the test rewrites exist exactly once, so the broker below really runs this file."""
    found = _directives(DEPLOY / "mosquitto.conf")
    for key in ("listener", "password_file", "acl_file", "persistence_location"):
        assert len(found.get(key, [])) == 1, key


def _test_config(tmp: Path, port: int) -> Path:
    rewrites = {
        "listener": f"listener {port} 127.0.0.1",
        "password_file": f"password_file {DEPLOY / 'passwd'}",
        "acl_file": f"acl_file {DEPLOY / 'acl'}",
        "persistence_location": f"persistence_location {tmp / 'data'}/",
    }
    lines = []
    for line in (DEPLOY / "mosquitto.conf").read_text().splitlines():
        key = line.strip().split(" ", 1)[0]
        lines.append(rewrites.get(key, line))
    # As root, mosquitto would switch to the `mosquitto` user, which cannot write the temp directory.
    lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    (tmp / "data").mkdir()
    conf = tmp / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


@dataclass
class Broker:
    port: int
    log: Path
    host: str = "127.0.0.1"

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def _wait_listening(proc: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    binary = _require_binary("mosquitto")
    for attempt in range(3):  # another process may grab the free port before mosquitto binds it
        tmp = tmp_path_factory.mktemp(f"mosquitto{attempt}")
        port = _free_port()
        conf = _test_config(tmp, port)
        log = tmp / "mosquitto.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        try:
            if _wait_listening(proc, port):
                yield Broker(port=port, log=log)
                return
        finally:
            _stop(proc)
    pytest.fail(f"mosquitto did not start with deploy/mosquitto/mosquitto.conf:\n{log.read_text()}")


# --- an MQTT client with synchronous helpers -------------------------------------------------------------


@dataclass
class Session:
    client: mqtt.Client
    connack: ReasonCode | None = None
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    messages: queue.Queue[mqtt.MQTTMessage] = field(default_factory=queue.Queue)
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    subacks: dict[int, list[ReasonCode]] = field(default_factory=dict)
    subscribed: threading.Event = field(default_factory=threading.Event)

    def subscribe(self, topic: str, qos: int = 1) -> list[ReasonCode]:
        self.subscribed.clear()
        _, mid = self.client.subscribe(topic, qos=qos)
        assert mid is not None
        assert self.subscribed.wait(TIMEOUT), f"no SUBACK for {topic}"
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> ReasonCode:
        """Publish and return the PUBACK reason code (QoS 1)."""
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"no PUBACK for {topic}"
        return self.pubacks[info.mid]

    def next_message(self) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail("no message delivered within the timeout")


@dataclass
class Connector:
    broker: Broker
    sessions: list[Session] = field(default_factory=list)

    def __call__(
        self,
        username: str | None,
        password: str | None = None,
        *,
        protocol: MQTTProtocolVersion = mqtt.MQTTv5,
    ) -> Session:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:12]}", protocol=protocol
        )
        client.reconnect_delay_set(min_delay=30, max_delay=30)  # a refused client must not retry here
        session = Session(client)
        if username is not None:
            client.username_pw_set(username, password)

        def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
            session.connack = reason
            if reason.is_failure:
                client.disconnect()  # ends the network loop now instead of after its reconnect wait
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
        client.connect(self.broker.host, self.broker.port, keepalive=30)
        client.loop_start()
        assert session.connected.wait(TIMEOUT), f"no CONNACK\n{self.broker.log_tail()}"
        return session

    def login(self, username: str, *, protocol: MQTTProtocolVersion = mqtt.MQTTv5) -> Session:
        """Connect with the demo password and insist on success."""
        session = self(username, DEMO_PASSWORDS[username], protocol=protocol)
        assert session.connack is not None
        assert not session.connack.is_failure, f"{username}: {session.connack}\n{self.broker.log_tail()}"
        return session

    def close(self) -> None:
        for session in self.sessions:
            session.client.disconnect()
            if session.connack is not None and not session.connack.is_failure:
                session.disconnected.wait(TIMEOUT)
            session.client.loop_stop()


@pytest.fixture
def connect(broker: Broker) -> Iterator[Connector]:
    connector = Connector(broker)
    try:
        yield connector
    finally:
        connector.close()


def _token() -> bytes:
    return uuid.uuid4().hex.encode()


def _assert_refused(session: Session) -> None:
    assert session.connack is not None
    assert session.connack.is_failure
    assert session.connack.getName() == "Not authorized"


# --- the committed config --------------------------------------------------------------------------------


def test_production_conf_requires_authentication() -> None:
    found = _directives(DEPLOY / "mosquitto.conf")
    assert found["listener"] == ["1883"]
    assert found["allow_anonymous"] == ["false"]
    assert found["password_file"] == ["/mosquitto/config/passwd"]
    assert found["acl_file"] == ["/mosquitto/config/acl"]
    assert found["persistence"] == ["true"]
    assert found["persistence_location"] == ["/mosquitto/data/"]


def test_throughput_settings_match_test_conf() -> None:
    expected = {
        "max_inflight_messages": ["5000"],
        "max_queued_messages": ["1000000"],
        "max_queued_bytes": ["0"],
        "max_packet_size": ["1048576"],
    }
    production = _directives(DEPLOY / "mosquitto.conf")
    suite = _directives(DEPLOY / "test.conf")
    for key, value in expected.items():
        assert production.get(key) == value, key
        assert suite.get(key) == value, key


def test_passwd_holds_hashed_demo_users() -> None:
    entries = dict(line.split(":", 1) for line in (DEPLOY / "passwd").read_text().splitlines() if line)
    assert set(entries) == set(DEMO_PASSWORDS)
    for user, hashed in entries.items():
        assert hashed.startswith("$7$"), f"{user}: not a mosquitto_passwd PBKDF2 hash"


# --- authentication --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_anonymous_connect_refused(connect: Connector, protocol: MQTTProtocolVersion) -> None:
    _assert_refused(connect(None, protocol=protocol))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_password_refused(connect: Connector, protocol: MQTTProtocolVersion) -> None:
    _assert_refused(connect("bike-01", "demo-treadmill-01", protocol=protocol))


@pytest.mark.parametrize("user", sorted(DEMO_PASSWORDS))
def test_every_demo_user_logs_in(connect: Connector, user: str) -> None:
    connect.login(user)


# --- authorization (acl) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_device_telemetry_reaches_shared_ingest_subscription(
    connect: Connector, protocol: MQTTProtocolVersion
) -> None:
    ingest = connect.login("ingest")
    assert not ingest.subscribe(SHARED_TELEMETRY)[0].is_failure
    device = connect.login("bike-01", protocol=protocol)

    payload = _token()
    assert not device.publish("vitalab/v1/demo/dev/bike-01/telemetry", payload).is_failure

    message = ingest.next_message()
    assert (message.topic, message.payload) == ("vitalab/v1/demo/dev/bike-01/telemetry", payload)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_device_cannot_publish_as_another_device(connect: Connector, protocol: MQTTProtocolVersion) -> None:
    ingest = connect.login("ingest")
    ingest.subscribe(SHARED_TELEMETRY)
    device = connect.login("bike-01", protocol=protocol)

    reason = device.publish("vitalab/v1/demo/dev/treadmill-01/telemetry", b"spoofed")
    if protocol == mqtt.MQTTv5:
        assert reason.value == NOT_AUTHORIZED
    else:  # MQTT 3.1.1 has no PUBACK reason codes: mosquitto acknowledges and drops the message
        assert not reason.is_failure

    # The broker handles one connection's packets in order: once this later, allowed message arrives, the
    # spoofed one would have been delivered before it.
    sentinel = _token()
    device.publish("vitalab/v1/demo/dev/bike-01/telemetry", sentinel)
    message = ingest.next_message()
    assert (message.topic, message.payload) == ("vitalab/v1/demo/dev/bike-01/telemetry", sentinel)
    assert ingest.messages.empty()


def test_device_can_publish_all_its_own_kinds(connect: Connector) -> None:
    device = connect.login("treadmill-01")
    for kind in ("telemetry", "state", "meta", "raw"):
        assert not device.publish(f"vitalab/v1/gym-2/dev/treadmill-01/{kind}", b"{}").is_failure, kind
    assert device.publish("vitalab/v1/demo/gw/treadmill-01/status", b"{}").value == NOT_AUTHORIZED


def test_gateway_publishes_own_status_and_device_topics(connect: Connector) -> None:
    ingest = connect.login("ingest")
    ingest.subscribe("vitalab/v1/+/gw/+/status")
    ingest.subscribe(SHARED_TELEMETRY)
    gateway = connect.login("gw-01")

    assert gateway.publish("vitalab/v1/demo/gw/gw-02/status", b"spoofed").value == NOT_AUTHORIZED
    status = _token()
    assert not gateway.publish("vitalab/v1/demo/gw/gw-01/status", status).is_failure
    telemetry = _token()
    assert not gateway.publish("vitalab/v1/demo/dev/bike-01/telemetry", telemetry).is_failure

    received = [ingest.next_message(), ingest.next_message()]
    assert [(m.topic, m.payload) for m in received] == [
        ("vitalab/v1/demo/gw/gw-01/status", status),
        ("vitalab/v1/demo/dev/bike-01/telemetry", telemetry),
    ]


def test_simulator_writes_any_device_but_cannot_read(connect: Connector) -> None:
    ingest = connect.login("ingest")
    ingest.subscribe(SHARED_TELEMETRY)
    simulator = connect.login("simulator")
    assert not simulator.publish("vitalab/v1/demo/dev/sim-0007/telemetry", b"x").is_failure
    assert ingest.next_message().topic == "vitalab/v1/demo/dev/sim-0007/telemetry"
    assert simulator.publish("other/topic", b"x").value == NOT_AUTHORIZED


@pytest.mark.parametrize("user", ["ingest", "api", "monitor"])
def test_readers_cannot_publish(connect: Connector, user: str) -> None:
    session = connect.login(user)
    assert session.publish("vitalab/v1/demo/dev/bike-01/telemetry", b"x").value == NOT_AUTHORIZED


def test_subscribe_is_granted_but_delivery_is_filtered(connect: Connector) -> None:
    """mosquitto 2.0 checks `read` per delivered message, not at SUBSCRIBE (hence $share works)."""
    device = connect.login("bike-01")
    assert not device.subscribe("vitalab/v1/#")[0].is_failure  # granted, although bike-01 may read nothing
    ingest = connect.login("ingest")
    ingest.subscribe("vitalab/v1/#")

    payload = _token()
    device.publish("vitalab/v1/demo/dev/bike-01/state", payload)
    assert ingest.next_message().payload == payload
    # mosquitto queues a message for every permitted subscriber before it sends the PUBACK, on one
    # connection in order: a copy for bike-01 would have arrived before the PUBACK publish() waited for.
    assert device.messages.empty()


def test_monitor_reads_sys_tree(connect: Connector) -> None:
    monitor = connect.login("monitor")
    monitor.subscribe("$SYS/broker/uptime")
    message = monitor.next_message()
    assert message.topic == "$SYS/broker/uptime"
    assert message.payload.endswith(b"seconds")


# --- docker-compose.yml against the broker ---------------------------------------------------------------


def _compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as fh:
        data: dict[str, Any] = yaml.safe_load(fh)
    return data


def _compose_mqtt_urls() -> dict[str, str]:
    urls = {}
    for name, service in _compose()["services"].items():
        url = (service.get("environment") or {}).get("VITALAB_MQTT_URL")
        if url is not None:
            urls[name] = url
    return urls


def _local_url(url: str, broker: Broker, password: str | None = None) -> str:
    parts = urlsplit(url)
    userinfo = f"{parts.username}:{password if password is not None else parts.password}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{broker.host}:{broker.port}"))


def test_compose_mqtt_credentials_are_accepted(connect: Connector) -> None:
    urls = _compose_mqtt_urls()
    assert {"ingest-1", "ingest-2", "api", "simulator"} <= set(urls)
    for service, url in urls.items():
        parts = urlsplit(url)
        assert (parts.scheme, parts.hostname, parts.port) == ("mqtt", "mosquitto", 1883), service
        session = connect(parts.username, parts.password)
        assert session.connack is not None
        assert not session.connack.is_failure, (
            f"{service}: {parts.username} refused by deploy/mosquitto/passwd"
        )


def _mosquitto_healthcheck() -> list[str]:
    test = _compose()["services"]["mosquitto"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return [arg.replace("$$", "$") for arg in test[1:]]  # compose turns `$$` into a literal `$`


def test_compose_mosquitto_healthcheck_passes(broker: Broker) -> None:
    command = _mosquitto_healthcheck()
    binary = _find_binary(command[0])
    if binary is None:
        reason = f"{command[0]} not found (Debian package mosquitto-clients); healthcheck not exercised"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    assert command[command.index("-t") + 1] == "$SYS/broker/uptime"
    command[0] = binary
    command[command.index("-h") + 1] = broker.host
    command[command.index("-p") + 1] = str(broker.port)
    result = subprocess.run(command, capture_output=True, timeout=10, check=False)
    assert result.returncode == 0, result.stderr.decode() + broker.log_tail()
    assert result.stdout.strip().endswith(b"seconds")

    command[command.index("-P") + 1] = "wrong"
    assert subprocess.run(command, capture_output=True, timeout=10, check=False).returncode != 0


def test_compose_simulator_healthcheck_script(broker: Broker) -> None:
    simulator = _compose()["services"]["simulator"]
    test = simulator["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    url = simulator["environment"]["VITALAB_MQTT_URL"]

    def run(mqtt_url: str) -> int:
        env = {**os.environ, "VITALAB_MQTT_URL": mqtt_url}
        return subprocess.run([sys.executable, "-c", test[3]], env=env, timeout=15, check=False).returncode

    assert run(_local_url(url, broker)) == 0
    assert run(_local_url(url, broker, password="wrong")) == 1
