"""The compose stack's broker (deploy/mosquitto/ + docker-compose.yml) against a real mosquitto 2 broker.

The test does what `docker compose up` does, on this host: it runs the broker-init job's command
(``python -m vitalab.broker init ...`` from docker-compose.yml, container paths mapped to a temp dir), then
starts mosquitto through ``deploy/mosquitto/run.sh`` with a temporary copy of
``deploy/mosquitto/mosquitto.conf`` whose listeners and file paths are rewritten (free loopback ports, the
temp dir); the committed file is never modified. Everything else (anonymous access, TLS, throughput
limits, ...) is exactly what compose runs. The account rules themselves are tested in tests/broker.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import MQTTProtocolVersion

from tests.broker.clients import Connector, Session, assert_not_authorized, token
from vitalab.broker import GenerationReload, MosquittoAuth
from vitalab.broker.reload import read_counter

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "mosquitto"
COMPOSE_FILE = REPO / "docker-compose.yml"
SHARED_TELEMETRY = "$share/ingest/vitalab/v1/+/dev/+/telemetry"
TIMEOUT_S = 10.0
IN_CI = os.environ.get("CI", "").lower() == "true"


def _find_binary(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return shutil.which(name, path=path)


def _require_binary(name: str, package: str) -> str:
    found = _find_binary(name)
    if found is None:
        reason = f"{name} not found (Debian package {package}); cannot test deploy/mosquitto"
        if IN_CI:
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


def _compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as fh:
        data: dict[str, Any] = yaml.safe_load(fh)
    return data


def _mounts(service: str) -> dict[str, str]:
    """``{container path: volume or host path}`` of a compose service."""
    found = {}
    for volume in _compose()["services"][service].get("volumes", []):
        source, target, *_mode = volume.split(":")
        found[target] = source
    return found


# --- the committed files ---------------------------------------------------------------------------------


def test_production_conf_requires_authentication_and_offers_tls() -> None:
    found = _directives(DEPLOY / "mosquitto.conf")
    assert found["listener"] == ["1883", "8883"]
    assert found["allow_anonymous"] == ["false"]
    assert found["password_file"] == ["/mosquitto/auth/passwd"]
    assert found["acl_file"] == ["/mosquitto/auth/acl"]
    assert found["certfile"] == ["/mosquitto/tls/server.crt"]
    assert found["keyfile"] == ["/mosquitto/tls/server.key"]
    assert found["persistence"] == ["true"]
    assert found["persistence_location"] == ["/mosquitto/data/"]
    assert "pattern" not in found  # a pattern would apply to every account


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


def test_no_secret_in_the_repository() -> None:
    """No password file, no ACL with write-anywhere rules, no hash, no demo password (all generated at
    first start)."""
    assert not (DEPLOY / "passwd").exists()
    assert not (DEPLOY / "acl").exists()
    for path in [*DEPLOY.iterdir(), COMPOSE_FILE]:
        text = path.read_text()
        assert "$7$" not in text, path
        assert "$6$" not in text, path
        assert "demo-" not in text, path
    for name, service in _compose()["services"].items():
        env = service.get("environment") or {}
        assert "VITALAB_MQTT_URL" not in env, f"{name}: MQTT credentials come from broker-init's client files"


def test_broker_reads_what_broker_init_writes() -> None:
    """Same volumes behind the paths: the init job's state dir is the broker's /mosquitto/auth, its TLS dir
    the broker's /mosquitto/tls, its clients dir what the MQTT services mount."""
    init, broker = _mounts("broker-init"), _mounts("mosquitto")
    assert init["/broker/auth"] == broker["/mosquitto/auth"]
    assert init["/broker/tls"] == broker["/mosquitto/tls"]
    assert init["/broker/data"] == broker["/mosquitto/data"]
    assert broker["/mosquitto/config/run.sh"] == "./deploy/mosquitto/run.sh"
    services = _compose()["services"]
    assert services["mosquitto"]["command"] == ["sh", "/mosquitto/config/run.sh"]
    assert services["mosquitto"]["depends_on"]["broker-init"]["condition"] == "service_completed_successfully"
    # the broker runs as the uid broker-init gives the volumes to (the account files are mode 0600)
    owner = [a for a in services["broker-init"]["command"] if a.startswith("--owner=")]
    assert owner == [f"--owner={services['mosquitto']['user']}"]
    for name, service in services.items():
        url_file = (service.get("environment") or {}).get("VITALAB_MQTT_URL_FILE")
        if url_file is not None:
            assert _mounts(name)[str(Path(url_file).parent)] == init["/broker/clients"], name
            assert service["entrypoint"] == services["ingest-1"]["entrypoint"], name


# --- the broker as compose starts it -------------------------------------------------------------------


@dataclass
class Stack:
    port: int
    tls_port: int
    root: Path
    log: Path
    proc: subprocess.Popen[bytes]
    host: str = "127.0.0.1"

    @property
    def auth_dir(self) -> Path:
        return self.root / "auth"

    @property
    def clients_dir(self) -> Path:
        return self.root / "clients"

    @property
    def ca_file(self) -> Path:
        return self.root / "tls" / "server.crt"

    def password(self, account: str) -> str:
        return (self.clients_dir / f"{account}.password").read_text().strip()

    def local_url(self, container_url_file: str, password: str | None = None) -> str:
        """The URL in a client file, pointed at this broker."""
        url = urlsplit((self.clients_dir / Path(container_url_file).name).read_text().strip())
        userinfo = f"{url.username}:{url.password if password is None else password}"
        return urlunsplit(url._replace(netloc=f"{userinfo}@{self.host}:{self.port}"))

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def _container_to_local(root: Path, value: str) -> str:
    for container in ("/broker/auth", "/broker/clients", "/broker/tls", "/broker/data"):
        if value.startswith(container):
            return str(root / container.rsplit("/", 1)[1]) + value[len(container) :]
    return value


def _run_broker_init(root: Path) -> list[str]:
    """docker-compose.yml's broker-init command on this host (without the chown to the container uid)."""
    service = _compose()["services"]["broker-init"]
    assert service["entrypoint"] == ["python", "-m", "vitalab.broker"]
    args = []
    for arg in service["command"]:
        if arg.startswith(("--owner=", "--own=")):
            continue
        key, sep, value = arg.partition("=")
        args.append(f"{key}={_container_to_local(root, value)}" if sep else arg)
    result = subprocess.run(
        [sys.executable, "-m", "vitalab.broker", *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return args


def _broker_conf(root: Path, port: int, tls_port: int) -> Path:
    rewrites = {
        "listener 1883": f"listener {port} 127.0.0.1",
        "listener 8883": f"listener {tls_port} 127.0.0.1",
        "password_file": f"password_file {root / 'auth' / 'passwd'}",
        "acl_file": f"acl_file {root / 'auth' / 'acl'}",
        "certfile": f"certfile {root / 'tls' / 'server.crt'}",
        "keyfile": f"keyfile {root / 'tls' / 'server.key'}",
        "persistence_location": f"persistence_location {root / 'data'}/",
    }
    lines = []
    for line in (DEPLOY / "mosquitto.conf").read_text().splitlines():
        stripped = line.strip()
        key = next((k for k in rewrites if stripped == k or stripped.startswith(k + " ")), None)
        lines.append(rewrites.pop(key) if key else line)
    assert not rewrites, f"not found in mosquitto.conf: {sorted(rewrites)}"
    # as root, mosquitto would switch to the `mosquitto` user, which cannot read the 0600 account files
    lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
    conf = root / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _wait_listening(proc: subprocess.Popen[bytes], *ports: int) -> bool:
    deadline = time.monotonic() + TIMEOUT_S
    pending = set(ports)
    while pending and time.monotonic() < deadline and proc.poll() is None:
        for port in list(pending):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                pending.discard(port)
            except OSError:
                time.sleep(0.02)
    return not pending


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # run.sh forwards it to mosquitto
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = _require_binary("mosquitto", "mosquitto")
    _require_binary("openssl", "openssl")
    root = tmp_path_factory.mktemp("compose")
    (root / "data").mkdir()
    _run_broker_init(root)
    for attempt in range(3):  # another process may grab a free port before mosquitto binds it
        port, tls_port = _free_port(), _free_port()
        conf = _broker_conf(root, port, tls_port)
        log = root / f"mosquitto{attempt}.log"
        env = {
            **os.environ,
            "MOSQUITTO_CONF": str(conf),
            "MOSQUITTO_BIN": binary,
            "VITALAB_BROKER_STATE": str(root / "auth"),
            "VITALAB_BROKER_POLL_S": "0.1",
        }
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["sh", str(DEPLOY / "run.sh")], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        try:
            if _wait_listening(proc, port, tls_port):
                yield Stack(port, tls_port, root, log, proc)
                return
        finally:
            _stop(proc)
    pytest.fail(f"mosquitto did not start with deploy/mosquitto/mosquitto.conf:\n{log.read_text()}")


@pytest.fixture
def connect(stack: Stack) -> Iterator[Connector]:
    connector = Connector(stack.host, stack.port, mqtt.MQTTv5)
    try:
        yield connector
    finally:
        connector.close()


def test_broker_init_files(stack: Stack) -> None:
    for name in ("accounts.json", "passwd", "acl"):
        assert stat.S_IMODE((stack.auth_dir / name).stat().st_mode) == 0o600, name
    for path in stack.clients_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((stack.root / "tls" / "server.key").stat().st_mode) == 0o600
    # a second start changes nothing: the services keep their passwords
    before = {p.name: p.read_text() for p in stack.clients_dir.iterdir()}
    _run_broker_init(stack.root)
    assert {p.name: p.read_text() for p in stack.clients_dir.iterdir()} == before


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_anonymous_is_refused(connect: Connector, protocol: MQTTProtocolVersion) -> None:
    assert_not_authorized(connect(None, protocol=protocol))


def test_compose_services_log_in_with_their_client_files(stack: Stack, connect: Connector) -> None:
    found = {}
    for name, service in _compose()["services"].items():
        url_file = (service.get("environment") or {}).get("VITALAB_MQTT_URL_FILE")
        if url_file is None:
            continue
        url = urlsplit(stack.local_url(url_file))
        found[name] = url.username
        session = connect(url.username, url.password)
        assert not session.refused, f"{name}: {url.username} refused\n{stack.log_tail()}"
    assert found == {"ingest-1": "ingest", "ingest-2": "ingest", "api": "api", "simulator": "simulator"}


def test_telemetry_reaches_the_ingesters_shared_subscription(stack: Stack, connect: Connector) -> None:
    ingest = connect.login("ingest", stack.password("ingest"))
    assert not ingest.subscribe(SHARED_TELEMETRY)[0].is_failure
    simulator = connect.login("simulator", stack.password("simulator"))
    topic, payload = "vitalab/v1/demo/dev/bike-001/telemetry", token()
    assert not simulator.publish(topic, payload).is_failure
    message = ingest.next_message()
    assert (message.topic, message.payload) == (topic, payload)
    # the simulator is confined to its site
    assert simulator.publish("vitalab/v1/other/dev/bike-001/telemetry", b"x").value == 0x87


def test_tls_listener(stack: Stack) -> None:
    connector = Connector(stack.host, stack.tls_port, mqtt.MQTTv5)
    try:
        session = connector.login("monitor", stack.password("monitor"), tls_ca=str(stack.ca_file))
        assert session.subscribe("$SYS/broker/uptime")[0].value == 1
        assert session.next_message().payload.endswith(b"seconds")
        assert_not_authorized(connector(None, tls_ca=str(stack.ca_file)))
    finally:
        connector.close()
    # the certificate names 127.0.0.1; a client that does not trust it refuses the broker
    context = ssl.create_default_context()
    with (
        socket.create_connection((stack.host, stack.tls_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname=stack.host)
    trusting = ssl.create_default_context(cafile=str(stack.ca_file))
    with (
        socket.create_connection((stack.host, stack.tls_port), timeout=5) as raw,
        trusting.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_account_changes_reach_the_running_broker(stack: Stack, connect: Connector) -> None:
    """run.sh turns the store's generation counter into a SIGHUP: a new device can log in once the
    reload is confirmed, and revoking it drops its connection and refuses it."""
    auth = MosquittoAuth(stack.auth_dir, GenerationReload(stack.auth_dir, wait_s=TIMEOUT_S))
    device = auth.add_device("bike-777", "demo")
    assert read_counter(stack.auth_dir / "applied") == read_counter(stack.auth_dir / "generation")
    session: Session = connect.login("bike-777", device.password)

    auth.revoke("bike-777")
    assert session.disconnected.wait(TIMEOUT_S), stack.log_tail()
    assert_not_authorized(connect("bike-777", device.password))


# --- the health checks and the entrypoint in docker-compose.yml -------------------------------------------


def test_compose_mosquitto_healthcheck_passes(stack: Stack, tmp_path: Path) -> None:
    _require_binary("mosquitto_sub", "mosquitto-clients")
    service = _compose()["services"]["mosquitto"]
    kind, script = service["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    script = script.replace("$$", "$")  # compose's escape for a literal `$`
    assert "-p 1883" in script
    script = script.replace("-p 1883", f"-p {stack.port}")
    env_name = "VITALAB_MONITOR_PASSWORD_FILE"
    assert service["environment"][env_name] == "/run/vitalab/mqtt/monitor.password"
    assert _mounts("mosquitto")["/run/vitalab/mqtt"] == _mounts("broker-init")["/broker/clients"]

    def run(password_file: Path) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, env_name: str(password_file)}
        return subprocess.run(["sh", "-c", script], capture_output=True, timeout=15, env=env, check=False)

    result = run(stack.clients_dir / "monitor.password")
    assert result.returncode == 0, result.stderr.decode() + stack.log_tail()
    assert result.stdout.strip().endswith(b"seconds")
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong\n")
    assert run(wrong).returncode != 0


def test_compose_simulator_healthcheck_script(stack: Stack, tmp_path: Path) -> None:
    simulator = _compose()["services"]["simulator"]
    test = simulator["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    url_file = simulator["environment"]["VITALAB_MQTT_URL_FILE"]

    def run(url: str) -> int:
        local = tmp_path / "simulator.url"
        local.write_text(url + "\n")
        env = {**os.environ, "VITALAB_MQTT_URL_FILE": str(local)}
        return subprocess.run([sys.executable, "-c", test[3]], env=env, timeout=15, check=False).returncode

    assert run(stack.local_url(url_file)) == 0
    assert run(stack.local_url(url_file, password="wrong")) == 1


def test_compose_entrypoint_reads_the_url_file(stack: Stack, tmp_path: Path) -> None:
    """The MQTT services' entrypoint exports VITALAB_MQTT_URL from the client file, then runs `vitalab`."""
    entrypoint = _compose()["services"]["ingest-1"]["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"]
    script = entrypoint[2].replace("$$", "$")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "vitalab"
    fake.write_text('#!/bin/sh\nprintf "%s|%s\\n" "$VITALAB_MQTT_URL" "$*"\n')
    fake.chmod(0o755)
    url_file = stack.clients_dir / "ingest.url"
    env = {
        **os.environ,
        "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
        "VITALAB_MQTT_URL_FILE": str(url_file),
    }
    result = subprocess.run(
        ["sh", "-c", script, *entrypoint[3:], "ingest"], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == f"{url_file.read_text().strip()}|ingest"
    # no client file, no start (rather than a broker URL without credentials)
    env["VITALAB_MQTT_URL_FILE"] = str(tmp_path / "missing.url")
    failed = subprocess.run(
        ["sh", "-c", script, *entrypoint[3:], "ingest"], capture_output=True, env=env, check=False
    )
    assert failed.returncode != 0
    assert failed.stdout == b""
