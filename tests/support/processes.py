"""Real `vitalab ingest` processes for fault tests: started with their own settings, ended with SIGTERM (a
clean stop) or SIGKILL (a crash), never mocked."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class IngestProcess:
    """One `vitalab ingest` process; its log goes to ``log`` (read it when a test fails)."""

    database_url: str
    mqtt_url: str
    client_id: str
    log: Path
    settings: dict[str, str] = field(default_factory=dict)
    """More ``VITALAB_*`` variables (without the prefix, upper case)."""
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> IngestProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VITALAB_")}
        env.update(
            VITALAB_DATABASE_URL=self.database_url,
            VITALAB_MQTT_URL=self.mqtt_url,
            VITALAB_INGEST_CLIENT_ID=self.client_id,
            VITALAB_INGEST_BATCH_ROWS="500",
            VITALAB_INGEST_BATCH_AGE_MS="50",
            VITALAB_TIMESCALE="off",
        )
        env.update({f"VITALAB_{k}": v for k, v in self.settings.items()})
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vitalab", "ingest", "--log-level", "info"],
                env=env,
                stdout=log,
                stderr=log,
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: what it held uncommitted stays with the broker; its session stays until it expires."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM: it commits and acknowledges what it holds, then exits."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def quiet_ingest_process(
    database_url: str, mqtt_url: str, client_id: str, metrics_port: int, *, share_group: str | None = None
) -> subprocess.Popen[bytes]:
    """A `vitalab ingest` process with small batches (300 rows or 50 ms), its metrics on ``metrics_port``, in
    ``share_group`` if given, and its output discarded: for tests that read it through its metrics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALAB_")}
    env.update(
        VITALAB_DATABASE_URL=database_url,
        VITALAB_MQTT_URL=mqtt_url,
        VITALAB_INGEST_CLIENT_ID=client_id,
        VITALAB_INGEST_BATCH_ROWS="300",
        VITALAB_INGEST_BATCH_AGE_MS="50",
        VITALAB_INGEST_METRICS_PORT=str(metrics_port),
        VITALAB_TIMESCALE="off",
    )
    if share_group is not None:
        env["VITALAB_INGEST_SHARE_GROUP"] = share_group
    return subprocess.Popen(
        [sys.executable, "-m", "vitalab", "ingest", "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def reaped_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to put started processes in; on the way out each one still running is killed, and all are
    waited for."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
