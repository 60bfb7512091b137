"""`vitalab simulate` as a user runs it, against a private Mosquitto."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from simulators.gymfleet import GymPlan
from simulators.run import gym_config
from tests.conftest import Mosquitto
from vitalab.cli import app
from vitalab.settings import load_settings
from vitalab.wire import DeviceState, WireError, decode_telemetry, parse_topic


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


HISTORY = timedelta(days=0.03)
START = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
"""The simulated clock (VITALAB_SIM_START): a Tuesday's evening peak, whatever the wall clock says."""


def _busy_seed() -> int:
    """A seed whose gym has enough visits in the ``HISTORY`` before ``START`` to test what it sends: 1,000
    machine-seconds, a visit that starts and ends inside the window and a visit by a strap owner (computed
    like the simulator does; the same seed on every run, since the moment is pinned)."""
    settings = load_settings(site_timezone="UTC", sim_members=12)
    config = gym_config(settings, demo=False, open_hours="0-24", visit_minutes="5-10")
    lo, hi = START - HISTORY + timedelta(seconds=30), START - timedelta(seconds=5)
    for seed in range(200):
        plan = GymPlan("cli-gym", 3, seed=seed, config=config)
        visits = plan.visits(lo, hi)
        busy_s = sum((min(v.end, hi) - max(v.start, lo)).total_seconds() for v in visits)
        whole = any(lo < v.start and v.end < hi for v in visits)
        strapped = any(v.member_id in plan.strap_of for v in visits)
        if busy_s >= 1000 and whole and strapped:
            return seed
    raise AssertionError(f"no seed in 0..199 has a busy gym before {START}")


def test_simulate_gym_history(mosquitto: Mosquitto) -> None:
    """`vitalab simulate --gym --days`: machines and members' straps send only during the visits of the gym
    plan of that seed, and report the start and end of every use."""
    seed = _busy_seed()
    received: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="cli-gym-sub", protocol=paho.MQTTv5)
    sub.on_message = lambda c, u, m: received.append((m.topic, bytes(m.payload)))
    sub.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe([("vitalab/v1/+/dev/+/telemetry", 1), ("vitalab/v1/+/dev/+/state", 1)])
    sub.loop_start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALAB_")}
    env.update(VITALAB_MQTT_URL=mosquitto.url, VITALAB_SITE="cli-gym", VITALAB_SITE_TIMEZONE="UTC")
    env.update(VITALAB_SIM_START=START.isoformat())
    gym = ["--gym", "--days", str(HISTORY / timedelta(days=1)), "--duration", "0", "--devices", "3"]
    gym += ["--members", "12", "--open-hours", "0-24", "--visit-minutes", "5-10"]
    gym += ["--samples-per-message", "10", "--seed", str(seed)]
    try:
        assert subscribed.wait(5)
        done = subprocess.run(
            [sys.executable, "-m", "vitalab", "simulate", *gym],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        runner = CliRunner()
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level  # the CLI configures logging on its (captured) stderr
        for bad, message in (
            (["--days", "1"], "need --gym"),
            (["--gym", "--open-hours", "22-6"], "opening hours"),
            (["--gym", "--mix", "hr_strap"], "a gym needs machines"),
        ):
            refused = runner.invoke(app, ["simulate", *bad], env={"VITALAB_MQTT_URL": mosquitto.url})
            root.handlers[:], root.level = handlers, level
            assert refused.exit_code == 2, (bad, refused.output)
            assert message in refused.output
    finally:
        sub.loop_stop()
        sub.disconnect()
    settings = load_settings(site_timezone="UTC", sim_members=12)
    config = gym_config(settings, demo=False, open_hours="0-24", visit_minutes="5-10")
    plan = GymPlan("cli-gym", 3, seed=seed, config=config)
    visits = plan.visits(START - HISTORY, START)
    samples: set[tuple[str, datetime]] = set()
    states: list[DeviceState] = []
    for topic, payload in received:
        parsed = parse_topic(topic)
        if topic.endswith("/telemetry"):
            msg = decode_telemetry(payload, topic_device=parsed.source, now=START)
            samples |= {(parsed.source, s.t) for s in msg.samples}
        else:
            states.append(msgspec.json.decode(payload, type=DeviceState))
    assert len(samples) > 3 * 300
    # the history ends at the pinned moment, not at the wall clock's
    assert START - HISTORY <= min(t for _, t in samples) < max(t for _, t in samples) < START
    in_use = {(d, v.start, v.end) for v in visits for d in plan.devices_of(v)}
    for device, t in samples:
        assert any(d == device and s <= t < e for d, s, e in in_use), (device, t)
    assert {d for d, _ in samples} & set(plan.strap_of.values())  # members' straps
    # machines report each workout's start and end, straps go online and offline
    assert {s.training for s in states if s.device.startswith(("bike", "treadmill", "rower"))} >= {
        "warm_up",
        "post_workout",
    }
    assert any(not s.online for s in states if s.device.startswith("strap-"))
