"""`vitalab simulate` as a user runs it, against a private Mosquitto."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import Mosquitto
from vitalab.wire import WireError, decode_telemetry, parse_topic


def test_simulate_backfill_with_faults(mosquitto: Mosquitto) -> None:
    received: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="cli-sub", protocol=paho.MQTTv5)
    sub.on_message = lambda c, u, m: received.append((m.topic, bytes(m.payload)))
    sub.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("vitalab/v1/+/dev/+/telemetry", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(5)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VITALAB_")}
        env.update(VITALAB_MQTT_URL=mosquitto.url, VITALAB_SITE="cli-gym")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "vitalab",
                "simulate",
                "--devices",
                "4",
                "--backfill",
                "60",
                "--duration",
                "0",
                "--samples-per-message",
                "10",
                "--faults",
                "drop=0.25,malformed=0.2",
                "--seed",
                "3",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "faults injected" in done.stderr
        bad = [
            subprocess.run(
                [sys.executable, "-m", "vitalab", "simulate", "--faults", "drop=2"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        ]
        assert bad[0].returncode == 2
        assert "drop" in bad[0].stderr
    finally:
        sub.loop_stop()
        sub.disconnect()
    samples = 0
    malformed = 0
    for topic, payload in received:
        device = parse_topic(topic).source
        try:
            samples += len(decode_telemetry(payload, topic_device=device, now=datetime.now(UTC)).samples)
        except WireError:  # the injected malformed payloads
            malformed += 1
    assert 0 < samples < 4 * 60  # some messages were dropped at the source
    assert samples % 10 == 0
    assert malformed > 0
