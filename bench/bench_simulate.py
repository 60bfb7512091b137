"""Benchmark: how many simulated devices at 1 Hz the simulator sustains on this machine, against the limit.

Starts a private Mosquitto (deploy/mosquitto/test.conf) with a bare QoS 1 subscriber counting what arrives,
then measures, in one run:

1. **Physical limit**: a bare paho QoS 1 publisher (``simulators.loadgen.LoadPublisher``) sending 1-sample
   telemetry messages as fast as the broker acknowledges them (msg/s = devices at 1 Hz, 1 sample/message).
2. **CPU ceiling without I/O**, per device-second: wire-contract devices (``Fleet.tick`` + JSON encoding)
   and raw-frame devices (``RawFleet.tick`` = member, heart, frames via the gateway's encoders, plus the
   gateway's ``Pipeline`` = decode, reassemble, normalise, merge).
3. **Live, sustained**: N devices at 1 Hz in real time for ``--seconds``: wire-contract devices through
   ``FleetPublisher`` (aiomqtt, 1 sample/message), and raw-frame devices through ``SimTransport`` ->
   ``GatewayService`` -> ``GatewayPublisher`` (SQLite store-and-forward, 10 samples/message). A fleet size
   is *sustained* when the run took at most 5 % longer than its device time and every sample reached the
   subscriber within 5 s after the end. The largest sustained N of ``--sizes`` is the measured ceiling.

Run: ``python bench/bench_simulate.py [--seconds 10] [--sizes 1000,2000,3000]``. Not a test; figures vary
±20 % between runs (two cores shared by broker, simulator, gateway and subscriber).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import paho.mqtt.client as paho
from broker import start_mosquitto
from paho.mqtt.enums import CallbackAPIVersion

from gateway.publisher import GatewayPublisher
from gateway.service import GatewayService, Pipeline
from simulators.fleet import MIX_ALL, Fleet
from simulators.loadgen import LoadPublisher
from simulators.publisher import FleetPublisher, gateway_client, now_ms
from simulators.rawfleet import RawFleet, SimTransport
from vitalab.settings import MqttTarget
from vitalab.wire import Sample, TelemetryMessage, encode, telemetry_topic

START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


class Counter:
    """A bare QoS 1 subscriber counting telemetry messages and samples."""

    _decoder = msgspec.json.Decoder(TelemetryMessage)

    def __init__(self, target: MqttTarget) -> None:
        self.messages = 0
        self.samples = 0
        self._lock = threading.Lock()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-count", protocol=paho.MQTTv5)
        self._client.on_message = self._on_message
        self._client.connect(target.host, target.port)
        self._client.subscribe("vitalab/v1/+/dev/+/telemetry", qos=1)
        self._client.loop_start()
        time.sleep(0.3)

    def _on_message(self, c: paho.Client, u: object, m: paho.MQTTMessage) -> None:
        n = len(self._decoder.decode(m.payload).samples)
        with self._lock:
            self.messages += 1
            self.samples += n

    def reset(self) -> None:
        with self._lock:
            self.messages = self.samples = 0

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def broker_limit(target: MqttTarget, n: int) -> float:
    """Bare paho QoS 1 publisher, 1-sample messages, as fast as acknowledged: msg/s."""
    t = datetime.now(UTC) - timedelta(hours=1)
    msgs = [
        (
            telemetry_topic("bench", f"dev-{i % 2000:04d}"),
            encode(
                TelemetryMessage(v=1, device=f"dev-{i % 2000:04d}", seq=i, samples=[Sample(t=t, hr_bpm=120)])
            ),
        )
        for i in range(n)
    ]
    with LoadPublisher(target, "bench-bare-pub", retry_unrouted_s=None) as pub:
        t0 = time.perf_counter()
        for topic, payload in msgs:
            pub.publish(topic, payload)
        pub.wait_acked(120)
        return n / (time.perf_counter() - t0)


def cpu_wire(n: int, seconds: int) -> float:
    fleet = Fleet.build("bench", n, seed=1, mix=MIX_ALL)
    t0 = time.perf_counter()
    for i in range(seconds):
        for dev, s in fleet.tick(START + timedelta(seconds=i)):
            encode(TelemetryMessage(v=1, device=dev.device_id, seq=i, samples=[s]))
    return n * seconds / (time.perf_counter() - t0)


def cpu_raw(n: int, seconds: int) -> tuple[float, float]:
    """(device-seconds/s of the raw devices alone, of devices + gateway pipeline)."""
    fleet = RawFleet(Fleet.build("bench", n, seed=1, mix=MIX_ALL), record=False)
    pipeline = Pipeline()
    pipeline.handle(fleet.infos(), "sim", 0.0)
    sim = 0.0
    t0 = time.perf_counter()
    for i in range(seconds):
        a = time.perf_counter()
        events = fleet.tick(START + timedelta(seconds=i))
        sim += time.perf_counter() - a
        pipeline.handle(events, "sim", float(i), live=False)
    total = time.perf_counter() - t0
    return n * seconds / sim, n * seconds / total


async def live_wire(
    target: MqttTarget, counter: Counter, n: int, seconds: int, per_message: int
) -> tuple[float, bool]:
    counter.reset()
    fleet = Fleet.build("bench", n, seed=2, mix=MIX_ALL)
    async with gateway_client(target, f"bench-wire-{n}", "bench") as client:
        publisher = FleetPublisher(client, fleet, f"bench-wire-{n}")
        t0 = time.perf_counter()
        await publisher.run_realtime(duration_s=seconds, samples_per_message=per_message)
        took = time.perf_counter() - t0
    return took, await _arrived(counter, n * (seconds // per_message) * per_message)


async def live_raw(
    target: MqttTarget, counter: Counter, n: int, seconds: int, workdir: Path
) -> tuple[float, bool]:
    counter.reset()
    fleet = RawFleet(Fleet.build("bench", n, seed=3, mix=MIX_ALL), record=False)
    buffer = workdir / f"gw-{n}.sqlite"
    async with GatewayPublisher(target, "bench", f"bench-raw-{n}", buffer, max_in_flight=1000) as pub:
        transport = SimTransport(fleet, now_ms(), seconds, speed=1.0)
        service = GatewayService(pub, [transport])
        t0 = time.perf_counter()
        await service.run()
        took = time.perf_counter() - t0
        await pub.wait_delivered(60)
    return took, await _arrived(counter, service.stats.samples)


async def _arrived(counter: Counter, samples: int) -> bool:
    for _ in range(100):
        if counter.samples >= samples:
            return True
        await asyncio.sleep(0.05)
    return False


def report(label: str, n: int, took: float, seconds: int, ok: bool) -> bool:
    sustained = ok and took <= seconds * 1.05 + 0.5
    verdict = "OK" if sustained else "NOT SUSTAINED"
    print(f"  {label:<34} {n:>5} devices: {took:5.1f} s for {seconds} s, all delivered: {ok}  {verdict}")
    return sustained


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--sizes", default="1000,2000,3000,4000")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before the run: {load} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory() as tmp:
        proc, target = start_mosquitto(Path(tmp))
        counter = Counter(target)
        try:
            limit = broker_limit(target, 30_000)
            print(f"physical limit: bare paho QoS 1 publisher -> Mosquitto -> subscriber: {limit:,.0f} msg/s")
            print(f"  = {limit:,.0f} devices at 1 Hz with 1 sample/message, x10 with 10 samples/message")
            w = cpu_wire(1000, 20)
            r_sim, r_all = cpu_raw(1000, 20)
            print("CPU ceiling without I/O (device-seconds per second, one core):")
            print(f"  wire-contract devices (step + JSON)                       {w:>8,.0f}")
            print(f"  raw-frame devices (step + frames via gateway encoders)    {r_sim:>8,.0f}")
            print(f"  raw-frame devices + gateway pipeline (decode ... merge)   {r_all:>8,.0f}")
            print(f"live, {args.seconds} s at 1 Hz (sustained: <= 5 % late and every sample delivered):")
            best = {"wire 1": 0, "wire 10": 0, "raw": 0}
            for n in sizes:
                for k in (1, 10):
                    took, ok = asyncio.run(live_wire(target, counter, n, args.seconds, k))
                    if report(f"wire contract, {k} sample(s)/message", n, took, args.seconds, ok):
                        best[f"wire {k}"] = max(best[f"wire {k}"], n)
                took, ok = asyncio.run(live_raw(target, counter, n, args.seconds, Path(tmp)))
                if report("raw frames via gateway, 10/message", n, took, args.seconds, ok):
                    best["raw"] = max(best["raw"], n)
            print(f"measured ceiling (largest sustained of {sizes}):")
            print(f"  wire contract, 1 sample/message    {best['wire 1']}")
            print(f"  wire contract, 10 samples/message  {best['wire 10']}")
            print(f"  raw frames through the gateway     {best['raw']}")
        finally:
            counter.stop()
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
