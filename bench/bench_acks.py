"""Benchmark: what commit acknowledgements cost the ingester, against the same drain without them.

Starts a private Mosquitto and a fresh database; a persistent ingester session is filled with N telemetry
messages (10 samples each, 500 devices), then the ingester empties it into PostgreSQL. Three runs, same
process, same data shape:
  1. no acks asked (``gw`` and ``ack`` absent): the limit the others are held against;
  2. gateway traffic (every message names gateway ``bench-gw``): one ack message per commit;
  3. devices that speak MQTT themselves (``"ack": true``): one ack message per device per commit;
  (``gw-off``, with ``--modes``: gateway traffic with ``VITALAB_INGEST_COMMIT_ACKS=false``, to tell the
  payload from the acks).
Prints committed samples/s of each (the best of ``--rounds`` interleaved rounds) and the overhead against
run 1 (held against: at most 10 %), and the time the ingester spends planning the acks per message against
the drain's time per message (the same limit; unlike the drains, it does not vary with the machine's load).

Run: ``python bench/bench_acks.py [--messages 20000]``. Database: VITALAB_BENCH_DATABASE_URL (a server URL)
or 127.0.0.1:5432. Not a test; numbers vary ±20 % between runs on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
from broker import start_mosquitto
from common import timed_drain
from paho.mqtt.enums import CallbackAPIVersion
from psycopg import conninfo

from ingest.mqtt import MqttSource
from ingest.service import subscriptions
from simulators.loadgen import LoadPublisher
from vitalab.db import migrate
from vitalab.settings import MqttTarget, load_settings
from vitalab.wire import Sample, TelemetryMessage, encode, plan_acks, telemetry_topic

DEVICES = 500
K = 10
LIMIT_OVERHEAD = 0.10


def payloads(n: int, mode: str) -> list[tuple[str, bytes]]:
    base = datetime.now(UTC).timestamp() - 86_400
    out = []
    for i in range(n):
        dev, seq = f"bench-{i % DEVICES:04d}", i // DEVICES
        samples = [Sample(t=datetime.fromtimestamp(base + seq * K + j, UTC), hr_bpm=120) for j in range(K)]
        msg = TelemetryMessage(
            v=1,
            device=dev,
            seq=seq,
            samples=samples,
            gw="bench-gw" if mode.startswith("gw") else None,
            ack=mode == "ack",
        )
        out.append((telemetry_topic("bench", dev), encode(msg)))
    return out


async def drain(target: MqttTarget, url: str, n: int, mode: str, run: int) -> float:
    with psycopg.connect(url) as conn:  # every run starts from empty tables
        conn.execute("TRUNCATE samples, rr_intervals, devices, ingest_batches CASCADE")
    settings = load_settings(
        database_url=url,
        ingest_client_id=f"bench-acks-{uuid.uuid4().hex[:6]}",
        ingest_batch_rows=10_000,
        ingest_batch_age_ms=100,
        ingest_receive_maximum=20_000,
        ingest_commit_acks=mode != "gw-off",
    )

    def source() -> MqttSource:
        return MqttSource(
            target, client_id=settings.ingest_client_id, filters=subscriptions(None), receive_maximum=20_000
        )

    async with source() as src:
        await src.wait_subscribed()  # the persistent session now holds the subscription
    messages = payloads(n, mode)

    def fill() -> None:
        with LoadPublisher(target, f"bench-acks-pub-{run}", max_inflight=2000, retry_unrouted_s=None) as pub:
            for topic, payload in messages:
                pub.publish(topic, payload)
            pub.wait_acked(600)

    await asyncio.to_thread(fill)
    async with source() as src:
        rate, ingester = await timed_drain(src, url, settings, n * K)
        acks = ingester.metrics.registry.get_sample_value("vitalab_ingest_commit_acks_total") or 0.0
    await asyncio.to_thread(forget_session, target, settings.ingest_client_id)
    print(f"  {mode:5s}: {rate:>9,.0f} samples/s  ({acks:,.0f} ack messages published)")
    return rate


def forget_session(target: MqttTarget, client_id: str) -> None:
    """End a run's persistent session, or the broker would go on queueing the next runs' telemetry into it."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.connect(target.host, target.port, clean_start=True)
    client.loop_start()
    client.disconnect()
    client.loop_stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20_000, help="messages per run")
    ap.add_argument("--modes", default="none,gw,ack", help="runs of each round, in order")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each counts")
    args = ap.parse_args()
    server = os.environ.get("VITALAB_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    dbname = f"bench_acks_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    url = conninfo.make_conninfo(server, dbname=dbname)
    workdir = Path(tempfile.mkdtemp(prefix="bench-acks-"))
    broker, target = start_mosquitto(workdir)
    try:
        migrate(url)
        print(f"ingester drain, {args.messages:,} messages x {K} samples, {DEVICES} devices:")
        rates: dict[str, float] = {}
        modes = (
            tuple(args.modes.split(",")) * args.rounds
        )  # interleaved, best of each: a shared machine is noisy
        for run, mode in enumerate(modes):
            rates[mode] = max(rates.get(mode, 0.0), asyncio.run(drain(target, url, args.messages, mode, run)))
        compared = [m for m in rates if m != "none"]
        for mode in compared:  # the ingester's own work for acks, without the machine's noise
            messages = payloads(args.messages, mode)
            t0 = time.perf_counter()
            plan_acks(messages)
            per_message = (time.perf_counter() - t0) / args.messages
            budget = K / rates["none"]  # seconds per message of the drain without acks
            share = per_message / budget
            print(
                f"  planning the acks ({mode}): {per_message * 1e6:.1f} us/message = {share:.1%} of the "
                f"drain's {budget * 1e6:.0f} us/message (limit {LIMIT_OVERHEAD:.0%})"
            )
        for mode in compared:
            overhead = 1 - rates[mode] / rates["none"]
            verdict = "ok" if overhead <= LIMIT_OVERHEAD else "OVER"
            print(f"  overhead with acks ({mode}): {overhead:+.1%} (limit {LIMIT_OVERHEAD:.0%}) {verdict}")
    finally:
        broker.terminate()
        broker.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')


if __name__ == "__main__":
    main()
