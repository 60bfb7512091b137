"""A private Mosquitto for the benchmarks: the test suite's config (deploy/mosquitto/test.conf) on a free
loopback port, without persistence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from vitalab.settings import MqttTarget

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], MqttTarget]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        (REPO / "deploy/mosquitto/test.conf").read_text()
        + f"\nlistener {port} 127.0.0.1\npersistence false\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, MqttTarget("127.0.0.1", port)
        time.sleep(0.02)
    raise RuntimeError("mosquitto did not start")
