"""Long work shows its progress (a bar on a terminal, log lines otherwise); `vitalab simulate --duration`
ends at its duration; a kiosk that fails fails the run. Real child processes against a private Mosquitto and
PostgreSQL; the progress display and the error wording are also checked in-process."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import pty
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from api.security import Scope
from tests.analytics import dbdata as d
from tests.conftest import Mosquitto, free_port
from tests.support.helpers import make_key
from tests.vitalab.cli_support import env, one_line_failure, vitalab
from vitalab.failures import FAILED, USAGE, explain
from vitalab.progress import Meter

# --- the display ------------------------------------------------------------------------------------------


def test_without_a_terminal_progress_is_a_log_line_at_start_every_interval_and_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    caplog.set_level(logging.INFO, logger="vitalab.progress")
    with Meter("analytics run", unit="windows", decimals=0, interactive=False, clock=lambda: now[0]) as m:
        for done, t in ((1, 100.0), (2, 105.0), (3, 109.9), (4, 110.0), (5, 115.0), (8, 121.0), (8, 122.0)):
            now[0] = t
            m.update(done, 8)
    assert [r.getMessage() for r in caplog.records] == [
        "analytics run: 12 % (1/8 windows)",  # the first update
        "analytics run: 50 % (4/8 windows)",  # 10 s after the previous line
        "analytics run: 100 % (8/8 windows)",  # complete, once
    ]


def test_on_a_terminal_progress_is_a_bar() -> None:
    assert [Meter.history(s).unit for s in (2 * 86400, 600, 60)] == ["h", "min", "s"]
    out = io.StringIO()
    with Meter("history", unit="h", scale=1 / 3600, stream=out, interactive=True) as bar:
        for done_s in range(0, 7201, 1800):
            bar.update(done_s, 7200)
    drawn = out.getvalue()
    assert "history" in drawn
    assert "━" in drawn
    assert "100%" in drawn
    assert "2.0/2.0 h" in drawn


def test_errors_inside_task_groups_are_worded_and_bugs_are_not() -> None:
    refused = psycopg.OperationalError("connection failed: port 1 failed:\n\tConnection refused")
    group = ExceptionGroup("tasks", [ExceptionGroup("inner", [RuntimeError("a bug"), refused])])
    failure = explain(group)
    assert failure is not None
    assert (failure.message, failure.exit_code) == (
        "database: connection failed: port 1 failed: Connection refused",
        FAILED,
    )
    assert explain(ExceptionGroup("tasks", [RuntimeError("a bug")])) is None
    assert explain(KeyError("x")) is None


def test_a_wrong_setting_is_usage() -> None:
    from vitalab.errors import ConfigError

    failure = explain(ConfigError("mqtt_url", "no host in URL"))
    assert failure is not None
    assert (failure.message, failure.exit_code) == ("configuration: mqtt_url: no host in URL", USAGE)


# --- history publishing -----------------------------------------------------------------------------------


def history_args(mosquitto: Mosquitto) -> list[str]:
    return [
        "simulate",
        "--devices",
        "2",
        "--backfill",
        "600",
        "--duration",
        "0",
        "--samples-per-message",
        "10",
        "--mqtt-url",
        mosquitto.url,
    ]


def test_history_progress_is_logged_without_a_terminal(tmp_path: Path, mosquitto: Mosquitto) -> None:
    proc = vitalab(*history_args(mosquitto), data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    logged = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    progress = [e["msg"] for e in logged if e["logger"] == "vitalab.progress"]
    assert progress[-1] == "history: 100 % (10/10 min)", progress
    assert "━" not in proc.stderr


def run_on_a_terminal(
    args: list[str], data_dir: Path, timeout_s: float = 120, **settings: str
) -> tuple[int, str]:
    """Run vitalab with stderr on a pseudo-terminal; (exit status, what the terminal showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitalab", *args],
        env=env(data_dir, TERM="xterm-256color", COLUMNS="100", **settings),
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    shown = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        code = proc.wait(timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
        reader.join(10)
        os.close(master)
    return code, shown.decode(errors="replace")


def test_history_progress_is_a_bar_on_a_terminal(tmp_path: Path, mosquitto: Mosquitto) -> None:
    code, shown = run_on_a_terminal(history_args(mosquitto), tmp_path)
    assert code == 0, shown
    assert "history" in shown
    assert "━" in shown
    assert "10/10 min" in shown


# --- analytics run ----------------------------------------------------------------------------------------


def test_analytics_run_full_reports_its_windows(tmp_path: Path, database_url: str) -> None:
    d.setup_site(database_url, [("bike-1", "bike"), ("bike-2", "bike")])
    d.write(database_url, d.bike("bike-1", d.T0, 900) + d.bike("bike-2", d.T0 + timedelta(days=2), 900))
    proc = vitalab("analytics", "run", "--full", data_dir=tmp_path, VITALAB_DATABASE_URL=database_url)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    logged = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    progress = [e for e in logged if e["logger"] == "vitalab.progress"]
    assert report["windows"] >= 2
    assert progress[-1]["msg"] == f"analytics run: 100 % ({report['windows']}/{report['windows']} windows)"
    assert progress[-1]["done"] == progress[-1]["total"] == report["windows"]

    code, shown = run_on_a_terminal(
        ["analytics", "run", "--full"], tmp_path, VITALAB_DATABASE_URL=database_url
    )
    assert code == 0, shown
    assert "analytics run" in shown
    assert "━" in shown


# --- simulate --duration ----------------------------------------------------------------------------------


def night_zone(now: datetime) -> str:
    """A fixed-offset zone in which ``now`` is between 02:00 and 03:00: a gym open 6-22 is closed for the next
    three hours, whatever the time of day the test runs at."""
    offset = (2 - now.hour) % 24
    if offset > 14:
        offset -= 24
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"  # Etc/GMT-3 is UTC+3


@pytest.mark.parametrize("raw_share", ["0", "1"])
def test_simulate_stops_at_its_duration_while_the_gym_is_closed(
    tmp_path: Path, mosquitto: Mosquitto, raw_share: str
) -> None:
    """Nobody arrives before the end: the run still ends at its duration (it used to sleep until the next
    member arrived, here three hours later)."""
    zone = night_zone(datetime.now(UTC))
    args = ["simulate", "--gym", "--duration", "3", "--raw-share", raw_share, "--mqtt-url", mosquitto.url]
    started = time.monotonic()
    proc = vitalab(*args, data_dir=tmp_path, timeout_s=120, VITALAB_SITE_TIMEZONE=zone)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert 2 <= elapsed < 30, elapsed  # device time starts on the whole second: up to 1 s less than asked


# --- the kiosk --------------------------------------------------------------------------------------------


def test_simulate_fails_when_the_kiosk_cannot_register_members(
    tmp_path: Path, mosquitto: Mosquitto, database_url: str
) -> None:
    """The API answers and the kiosk's key is good, but the site is unknown (no ingester ever registered it):
    every registration is refused with 404 until the kiosk's 60 s of retries are over, and the run exits 1."""
    kiosk_key = asyncio.run(make_key(database_url, "kiosk", Scope.parse(["site:demo"]), name="kiosk"))
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "vitalab", "api", "--log-level", "warning"],
        env=env(tmp_path, VITALAB_DATABASE_URL=database_url, VITALAB_API_PORT=str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert api.poll() is None, "vitalab api exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code in (200, 503):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "vitalab api did not answer"
            time.sleep(0.2)
        args = ["simulate", "--gym", "--duration", "1", "--mqtt-url", mosquitto.url]
        api_args = ["--api-url", f"http://127.0.0.1:{port}", "--api-key", kiosk_key]
        proc = vitalab(*args, *api_args, data_dir=tmp_path, timeout_s=200)
    finally:
        api.terminate()
        api.wait(30)
    line = one_line_failure(proc, "simulate", FAILED)
    assert "kiosk register m0000: HTTP 404" in line
