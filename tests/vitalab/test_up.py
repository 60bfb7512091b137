"""`vitalab up` on the embedded default: no external services, data kept between runs, clean Ctrl-C; its
in-process broker refuses anonymous clients and lets a device registered through the API publish until it is
retired."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import psycopg

from simulators.gymfleet import GymPlan
from simulators.run import gym_config
from tests.broker.clients import Connector, assert_not_authorized
from tests.conftest import Mosquitto, free_port
from vitalab.settings import Settings
from vitalab.wire import Sample, TelemetryMessage, encode, telemetry_topic

MACHINES = ("bike-001", "treadmill-002", "rower-003", "cross-trainer-004")
START = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
"""The simulated gym's clock when `vitalab up` starts (VITALAB_SIM_START), a Tuesday evening; the broker,
ingester and API run in real time, the gym's plan is the one of this moment whatever the wall clock says.
The second run of a data directory starts an hour later in gym time."""
RESTART = START + timedelta(hours=1)
CENTURY_S = 100 * 365 * 86400
"""Accepted sample age (VITALAB_MAX_PAST_S): the pinned moment stays acceptable to the ingester."""


def _busy_seed(window: timedelta = timedelta(minutes=8)) -> int:
    """A simulator seed whose gym has one of its machines in use during the whole ``window`` after ``START``
    and after ``RESTART``.

    The demo gym is deterministic per seed and day and, like a real one, has quiet moments (with four
    machines, up to half an hour with all of them free); the test expects live samples soon after it starts
    the gym at a pinned moment, so it takes a seed that has a member on a machine then, computed with the
    simulator's own plan (the same seed on every run).
    """
    config = gym_config(Settings.model_construct(), demo=True)  # the defaults, as in the child's environment
    for seed in range(1000):
        plan = GymPlan("demo", len(MACHINES), seed=seed, config=config)
        busy = True
        for start in (START, RESTART):
            covered = start
            for visit in sorted(plan.visits(start, start + window), key=lambda v: v.start):
                if visit.start <= covered:
                    covered = max(covered, visit.end)
            busy = busy and covered >= start + window
        if busy:
            return seed
    raise AssertionError(f"no seed in 0..999 has a machine in use at {START} and {RESTART}")


def _start(
    data_dir: Path, port: int, seed: int, sim_start: datetime = START, **extra: str
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALAB_")}
    env.update(
        VITALAB_DATA_DIR=str(data_dir),
        VITALAB_API_PORT=str(port),
        VITALAB_EMBEDDED_MQTT_PORT="0",
        VITALAB_SIM_DEVICES=str(len(MACHINES)),
        VITALAB_SIM_SEED=str(seed),
        VITALAB_SIM_START=sim_start.isoformat(),
        VITALAB_MAX_PAST_S=str(CENTURY_S),
    )
    env.update(extra)
    return subprocess.Popen(
        [sys.executable, "-m", "vitalab", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _admin(data_dir: Path) -> dict[str, str]:
    """The admin key `vitalab up` wrote at its first start (readable by its owner only), as headers."""
    path = data_dir / "admin.key"
    if not path.exists():
        return {}
    assert path.stat().st_mode & 0o777 == 0o600
    return {"Authorization": f"Bearer {path.read_text().strip()}"}


def _wait_for_samples(
    base: str, proc: subprocess.Popen[str], since: datetime, data_dir: Path, timeout_s: float = 90
) -> list[dict[str, object]]:
    """The newest samples once a machine of the gym has sent one of the live part, which starts at ``since``
    in gym time (the history published beside it ends there)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"vitalab up exited with {proc.returncode}:\n{out}")
        try:
            r = httpx.get(f"{base}/v1/samples/latest", timeout=2, headers=_admin(data_dir))
            rows: list[dict[str, object]] = r.json() if r.status_code == 200 else []
            live = [
                row
                for row in rows
                if row["device_id"] in MACHINES and datetime.fromisoformat(str(row["t"])) >= since
            ]
            if live:
                return rows
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError("no live samples through the API in time")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"vitalab up did not stop on SIGINT:\n{out}") from None
    assert proc.returncode == 0, out
    return out


def _a_registered_device_publishes_until_retired(base: str, data_dir: Path, mqtt_port: int) -> None:
    """The in-process broker: anonymous clients are refused; a device registered through the API (sharing the
    broker's account store) publishes into the database; retired, it is disconnected and refused."""
    admin = _admin(data_dir)
    connect = Connector("127.0.0.1", mqtt_port, mqtt.MQTTv311)
    try:
        assert_not_authorized(connect(None))
        r = httpx.post(
            f"{base}/v1/sites/demo/devices", json={"id": "bike-own", "kind": "bike"}, headers=admin
        )
        assert r.status_code == 201, r.text
        login = r.json()["mqtt"]
        device = connect.login(login["username"], login["password"])
        # a minute before the ingester's receive time, whatever the simulated gym's clock says
        t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        message = TelemetryMessage(v=1, device="bike-own", seq=0, samples=[Sample(t=t, power_w=123.0)])
        device.publish(telemetry_topic("demo", "bike-own"), encode(message))
        deadline = time.monotonic() + 30
        while not httpx.get(f"{base}/v1/devices/bike-own/samples", headers=admin, timeout=5).json():
            assert time.monotonic() < deadline, "the registered device's sample did not arrive"
            time.sleep(0.2)
        r = httpx.post(f"{base}/v1/sites/demo/devices/bike-own/retire", headers=admin)
        assert (r.status_code, r.json()["broker"]) == (200, "revoked")
        assert device.disconnected.wait(10), "the retired device is still connected"
        assert_not_authorized(connect(login["username"], login["password"]))
    finally:
        connect.close()


def test_up_runs_the_platform_and_keeps_data(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    seed = _busy_seed()
    mqtt_port = free_port()
    proc = _start(tmp_path, port, seed, VITALAB_EMBEDDED_MQTT_PORT=str(mqtt_port))
    try:
        first = _wait_for_samples(base, proc, START, tmp_path)
        assert httpx.get(f"{base}/v1/devices").status_code == 401  # protected like any deployment
        _a_registered_device_publishes_until_retired(base, tmp_path, mqtt_port)
        devices = httpx.get(f"{base}/v1/devices", headers=_admin(tmp_path)).json()
        # the gym's machines, and the straps its members wear
        assert {d["kind"] for d in devices} == {"bike", "treadmill", "rower", "cross_trainer", "hr_strap"}
        assert {d["device_id"] for d in devices if d["kind"] != "hr_strap"} == {*MACHINES, "bike-own"}
        assert all(d["device_id"].startswith("strap-m") for d in devices if d["kind"] == "hr_strap")
        assert httpx.get(f"{base}/health").json()["database"] is True
    finally:
        out = _stop(proc)
    assert "vitalab is up" in out
    assert f"mqtt://127.0.0.1:{mqtt_port} (in-process broker; no anonymous clients" in out
    assert "vitalab stopped" in out
    assert (tmp_path / "postgres" / "PG_VERSION").exists()
    key = (tmp_path / "admin.key").read_text().strip()
    assert f"admin key  {key}  (shown once" in out  # printed at the first start

    # second run on the same data directory: what the first run committed is still there
    proc = _start(tmp_path, port, seed, RESTART)
    try:
        _wait_for_samples(base, proc, RESTART, tmp_path)
        machine = next(r for r in first if r["device_id"] in MACHINES)
        r = httpx.get(
            f"{base}/v1/devices/{machine['device_id']}/samples",
            params={"since": str(machine["t"]), "limit": 10},
            headers=_admin(tmp_path),
        )
        stamps = [s["t"] for s in r.json()]
        assert machine["t"] in stamps
    finally:
        out = _stop(proc)
    assert key not in out  # never shown again
    assert (tmp_path / "admin.key").read_text().strip() == key


def test_up_uses_external_services_when_configured(
    tmp_path: Path, mosquitto: Mosquitto, empty_database: str
) -> None:
    """With VITALAB_DATABASE_URL and VITALAB_MQTT_URL set, nothing is embedded: Mosquitto (MQTT 5, shared
    subscription) and the given database carry the data."""
    port = free_port()
    proc = _start(
        tmp_path, port, _busy_seed(), VITALAB_DATABASE_URL=empty_database, VITALAB_MQTT_URL=mosquitto.url
    )
    try:
        _wait_for_samples(f"http://127.0.0.1:{port}", proc, START, tmp_path)
        # the kiosk registers the gym's members through the API, and pairs the straps with their owners
        deadline = time.monotonic() + 60
        paired = (
            "SELECT count(*) FROM device_assignments WHERE device_id LIKE 'strap-m%' AND ended_at IS NULL"
        )
        while _scalar(empty_database, paired) < 36:
            assert time.monotonic() < deadline, "members and straps not registered in time"
            time.sleep(0.5)
    finally:
        out = _stop(proc)
    assert f"mqtt://127.0.0.1:{mosquitto.port} (external)" in out
    assert not (tmp_path / "postgres").exists()  # no embedded database was made
    assert _scalar(empty_database, "SELECT count(*) FROM samples") >= 4
    assert _scalar(empty_database, "SELECT count(*) FROM participants") == 60


def _scalar(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        (n,) = conn.execute(query).fetchone() or (0,)
    assert isinstance(n, int)
    return n
