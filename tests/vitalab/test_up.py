"""`vitalab up` on the embedded default: no external services, data kept between runs, clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

from tests.conftest import Mosquitto, free_port


def _start(data_dir: Path, port: int, **extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALAB_")}
    env.update(extra)
    env.update(
        VITALAB_DATA_DIR=str(data_dir),
        VITALAB_API_PORT=str(port),
        VITALAB_EMBEDDED_MQTT_PORT="0",
        VITALAB_SIM_DEVICES="4",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "vitalab", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_samples(
    base: str, proc: subprocess.Popen[str], timeout_s: float = 90
) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"vitalab up exited with {proc.returncode}:\n{out}")
        try:
            r = httpx.get(f"{base}/v1/samples/latest", timeout=2)
            if r.status_code == 200 and len(r.json()) == 4:
                rows: list[dict[str, object]] = r.json()
                return rows
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError("no samples through the API in time")


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


def test_up_runs_the_platform_and_keeps_data(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(tmp_path, port)
    try:
        first = _wait_for_samples(base, proc)
        devices = httpx.get(f"{base}/v1/devices").json()
        assert {d["kind"] for d in devices} == {"bike", "treadmill", "rower", "hr_strap"}
        assert httpx.get(f"{base}/health").json()["database"] is True
    finally:
        out = _stop(proc)
    assert "vitalab is up" in out
    assert "vitalab stopped" in out
    assert (tmp_path / "postgres" / "PG_VERSION").exists()

    # second run on the same data directory: what the first run committed is still there
    proc = _start(tmp_path, port)
    try:
        _wait_for_samples(base, proc)
        bike = next(r for r in first if str(r["device_id"]).startswith("bike"))
        r = httpx.get(
            f"{base}/v1/devices/{bike['device_id']}/samples",
            params={"since": "2000-01-01T00:00:00Z", "limit": 10_000},
        )
        stamps = [s["t"] for s in r.json()]
        assert bike["t"] in stamps
    finally:
        _stop(proc)


def test_up_uses_external_services_when_configured(
    tmp_path: Path, mosquitto: Mosquitto, empty_database: str
) -> None:
    """With VITALAB_DATABASE_URL and VITALAB_MQTT_URL set, nothing is embedded: Mosquitto (MQTT 5, shared
    subscription) and the given database carry the data."""
    port = free_port()
    proc = _start(tmp_path, port, VITALAB_DATABASE_URL=empty_database, VITALAB_MQTT_URL=mosquitto.url)
    try:
        _wait_for_samples(f"http://127.0.0.1:{port}", proc)
    finally:
        out = _stop(proc)
    assert f"mqtt://127.0.0.1:{mosquitto.port} (external)" in out
    assert not (tmp_path / "postgres").exists()  # no embedded database was made
    with psycopg.connect(empty_database) as conn:
        (n,) = conn.execute("SELECT count(*) FROM samples").fetchone() or (0,)
    assert n >= 4
