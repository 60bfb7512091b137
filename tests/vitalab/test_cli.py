"""The ``vitalab`` command as a user meets it: a refused broker or database, a wrong URL or setting is one
line on stderr and a non-zero exit status, for every command; ``--version``. Real child processes, a real
PostgreSQL and Mosquitto; the refused services are free ports on which nothing listens."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import Mosquitto, free_port
from tests.vitalab.cli_support import env, one_line_failure, private_dir, said, vitalab
from vitalab.embedded import running_url

USAGE, FAILED = 2, 1


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with private_dir() as path:
        yield path


def closed_port() -> int:
    """A port on which nothing listens (free a moment ago)."""
    return free_port()


def test_version_is_the_installed_packages(tmp_path: Path) -> None:
    proc = vitalab("--version", data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"vitalab {version('vitalab')}"


# --- a broker that refuses the connection -------------------------------------------------------------------


def test_simulate_with_a_refused_broker(tmp_path: Path) -> None:
    port = closed_port()
    proc = vitalab("simulate", "--duration", "2", "--mqtt-url", f"mqtt://127.0.0.1:{port}", data_dir=tmp_path)
    line = one_line_failure(proc, "simulate", FAILED)
    assert f"mqtt://127.0.0.1:{port}" in line
    assert "Connection refused" in line


def test_ingest_with_a_refused_broker(tmp_path: Path, database_url: str) -> None:
    port = closed_port()
    proc = vitalab(
        "ingest",
        data_dir=tmp_path,
        VITALAB_MQTT_URL=f"mqtt://127.0.0.1:{port}",
        VITALAB_DATABASE_URL=database_url,
    )
    assert f"mqtt://127.0.0.1:{port}" in one_line_failure(proc, "ingest", FAILED)


def test_up_with_a_refused_external_broker(tmp_path: Path, database_url: str) -> None:
    port = closed_port()
    proc = vitalab(
        "up",
        data_dir=tmp_path,
        VITALAB_MQTT_URL=f"mqtt://127.0.0.1:{port}",
        VITALAB_DATABASE_URL=database_url,
        VITALAB_API_PORT="0",
        VITALAB_SIM_BACKFILL_DAYS="0",
    )
    assert f"mqtt://127.0.0.1:{port}" in one_line_failure(proc, "up", FAILED)


def test_gateway_with_a_broker_url_that_is_not_mqtt(tmp_path: Path) -> None:
    """The gateway buffers through broker outages (it does not exit on a refused connection), but a URL
    that cannot be a broker's is refused at once."""
    proc = vitalab("gateway", data_dir=tmp_path, VITALAB_MQTT_URL="http://127.0.0.1:1883")
    assert "scheme must be mqtt:// or mqtts://" in one_line_failure(proc, "gateway", USAGE)


# --- a database that refuses, a wrong database URL ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (("db", "migrate"), "db migrate"),
        (("analytics", "run"), "analytics run"),
        (("analytics", "run", "--full"), "analytics run"),
        (("api",), "api"),
        (("ingest",), "ingest"),
        (("up",), "up"),
    ],
)
def test_a_refused_database(tmp_path: Path, args: tuple[str, ...], command: str) -> None:
    port = closed_port()
    proc = vitalab(
        *args,
        data_dir=tmp_path,
        VITALAB_DATABASE_URL=f"postgresql://vitalab@127.0.0.1:{port}/vitalab",
        VITALAB_MQTT_URL=f"mqtt://127.0.0.1:{closed_port()}",
        VITALAB_API_PORT="0",
    )
    line = one_line_failure(proc, command, FAILED)
    assert line.startswith(f"vitalab {command}: database: ")
    assert f"port {port} failed" in line


@pytest.mark.parametrize("command", ["db migrate", "analytics run", "api", "ingest", "up"])
def test_a_database_url_that_does_not_parse(tmp_path: Path, command: str) -> None:
    proc = vitalab(*command.split(), data_dir=tmp_path, VITALAB_DATABASE_URL="nonsense")
    assert "database_url" in one_line_failure(proc, command, USAGE)


def test_commands_that_need_an_external_service_say_which(tmp_path: Path) -> None:
    cases: list[tuple[str, str, dict[str, str]]] = [
        ("analytics run", "VITALAB_DATABASE_URL", {}),
        ("db migrate", "VITALAB_DATABASE_URL", {}),
        ("api", "VITALAB_DATABASE_URL", {}),
        ("ingest", "VITALAB_MQTT_URL", {}),
        ("ingest", "VITALAB_DATABASE_URL", {"VITALAB_MQTT_URL": f"mqtt://127.0.0.1:{closed_port()}"}),
        ("simulate", "VITALAB_MQTT_URL", {}),
        ("gateway", "VITALAB_MQTT_URL", {}),
    ]
    for command, setting, settings in cases:
        proc = vitalab(*command.split(), data_dir=tmp_path, settings=settings)
        assert setting in one_line_failure(proc, command, USAGE)


def test_a_setting_the_schema_refuses_is_named(tmp_path: Path) -> None:
    proc = vitalab("up", data_dir=tmp_path, VITALAB_SITE="gym/north")
    assert "VITALAB_SITE" in one_line_failure(proc, "up", USAGE)


def test_simulate_with_an_api_url_nothing_answers(tmp_path: Path, mosquitto_url: str) -> None:
    port = closed_port()
    args = ("simulate", "--gym", "--duration", "2", "--mqtt-url", mosquitto_url)
    proc = vitalab(*args, "--api-url", f"http://127.0.0.1:{port}", data_dir=tmp_path)
    assert f"cannot reach the API at http://127.0.0.1:{port}" in one_line_failure(proc, "simulate", FAILED)
    proc = vitalab(*args, "--api-url", "ftp://127.0.0.1/", data_dir=tmp_path)
    assert "--api-url" in one_line_failure(proc, "simulate", USAGE)


@pytest.fixture
def mosquitto_url(mosquitto: Mosquitto) -> str:
    return mosquitto.url


# --- vitalab up: a port in use ---------------------------------------------------------------------------


@pytest.fixture
def port_in_use() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_up_with_its_api_port_in_use_stops_cleanly(tmp_path: Path, port_in_use: int) -> None:
    """The embedded database it started is stopped again (nothing left running on the data dir)."""
    proc = vitalab("up", data_dir=tmp_path, VITALAB_API_PORT=str(port_in_use), VITALAB_EMBEDDED_MQTT_PORT="0")
    line = one_line_failure(proc, "up", USAGE)
    assert f"cannot listen on 127.0.0.1:{port_in_use}" in line
    assert (tmp_path / "postgres" / "PG_VERSION").exists()  # it did start the embedded database
    assert running_url(tmp_path) is None


# --- Ctrl-C -----------------------------------------------------------------------------------------------


def test_simulate_interrupted_says_so_without_a_traceback(tmp_path: Path, mosquitto_url: str) -> None:
    host, port = mosquitto_url.removeprefix("mqtt://").split(":")
    first = threading.Event()
    subscribed = threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="cli-interrupt", protocol=paho.MQTTv5)
    sub.on_message = lambda c, u, m: first.set()
    sub.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
    sub.connect(host, int(port))
    sub.subscribe("vitalab/v1/+/dev/+/telemetry", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        proc = subprocess.Popen(
            [sys.executable, "-m", "vitalab", "simulate", "--devices", "2", "--mqtt-url", mosquitto_url],
            env=env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert first.wait(60), "the simulator published nothing"
            proc.send_signal(signal.SIGINT)  # as Ctrl-C
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        sub.loop_stop()
        sub.disconnect()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    assert said(done) == ["vitalab simulate: interrupted"], stderr
    assert "Traceback" not in stderr
    assert proc.returncode == 130
