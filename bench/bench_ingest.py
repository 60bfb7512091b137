"""Benchmark: sustained ingest rate and publish→commit latency, against the machine's own limits.

Starts a private Mosquitto (deploy/mosquitto/test.conf) and a fresh database, then for 1 and 10 samples per
message:
  1. broker limit: the same publisher → Mosquitto → a bare paho QoS 1 subscriber (no decoding, no DB);
  2. COPY limit: a bare binary COPY of the same rows into the indexed ``samples`` table, 10k-row batches;
  3. vitalab: the same publisher (another process, as devices are) → Mosquitto → the ingester (QoS 1,
     ack after commit, dedup) → PostgreSQL; committed samples/s and publish→commit latency p50/p99.
``--soak SECONDS`` then runs the ingester at a steady rate for that long and prints its RSS over time.

Run: ``python bench/bench_ingest.py [--messages 60000] [--soak 600]``. Database: VITALAB_BENCH_DATABASE_URL
(a server URL) or 127.0.0.1:5432. Not a test; numbers vary ±20 % between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil
import psycopg
from broker import start_mosquitto
from common import bare_mqtt_drain, bench_ingester, create_database, drop_database, timed_drain
from paho.mqtt.enums import CallbackAPIVersion

from ingest.batch import SAMPLE_COLUMNS, Batch
from ingest.mqtt import MqttSource
from ingest.service import subscriptions
from ingest.writer import WriteResult
from simulators.loadgen import LoadPublisher
from vitalab.db import migrate
from vitalab.settings import MqttTarget, load_settings
from vitalab.wire import Sample, TelemetryMessage, encode, telemetry_topic

DEVICES = 500


def payloads(n_messages: int, k: int, start: int = 0) -> list[tuple[str, bytes]]:
    """Message i is device i % DEVICES, seq i // DEVICES; its k samples have unique timestamps."""
    base = datetime.now(UTC).timestamp() - 86_400
    out = []
    for i in range(start, start + n_messages):
        dev, seq = f"bench-{i % DEVICES:04d}", i // DEVICES
        samples = [
            Sample(t=datetime.fromtimestamp(base + seq * k + j, UTC), hr_bpm=120, power_w=200)
            for j in range(k)
        ]
        out.append(
            (
                telemetry_topic("bench", dev),
                encode(TelemetryMessage(v=1, device=dev, seq=seq, samples=samples)),
            )
        )
    return out


def publisher_process(target: MqttTarget, n_messages: int, k: int, rate: float, go: Any, times: Any) -> None:
    """Publish at full speed (rate 0: encoded before the clock starts, as a gateway has its frames ready)
    or at ``rate`` msg/s (encoded as it goes, for long soaks); send back each message's publish time."""
    chunk = n_messages if not rate else 10_000
    stamps = [0.0] * n_messages
    with LoadPublisher(target, f"bench-pub-{uuid.uuid4().hex[:6]}", max_inflight=2000) as pub:
        messages = payloads(min(chunk, n_messages), k)
        go.wait()
        t0 = time.monotonic()
        for i in range(n_messages):
            if i and i % chunk == 0:
                messages = payloads(min(chunk, n_messages - i), k, start=i)
            topic, payload = messages[i % chunk]
            stamps[i] = time.time()
            pub.publish(topic, payload)
            if rate:
                ahead = t0 + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            elif pub.published - pub.acked > 20_000:  # keep paho's queue from growing without bound
                time.sleep(0.001)
        pub.wait_acked(600)
    times.send(stamps)


def start_publisher(target: MqttTarget, n: int, k: int, rate: float) -> tuple[mp.Process, Any, Any]:
    go = mp.Event()
    recv, send = mp.Pipe(duplex=False)
    proc = mp.Process(target=publisher_process, args=(target, n, k, rate, go, send))
    proc.start()
    return proc, go, recv


def broker_limit(target: MqttTarget, n: int, k: int) -> float:
    got = 0
    done = threading.Event()
    first: list[float] = []

    def on_message(c: paho.Client, u: object, m: paho.MQTTMessage) -> None:
        nonlocal got
        if not first:
            first.append(time.perf_counter())
        got += 1
        if got >= n:
            done.set()

    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=paho.MQTTv5)
    sub.on_message = on_message
    sub.connect(target.host, target.port)
    sub.subscribe("vitalab/v1/+/dev/+/telemetry", qos=1)
    sub.loop_start()
    time.sleep(0.3)
    proc, go, times = start_publisher(target, n, k, 0.0)
    time.sleep(2 + n / 50_000)  # let it encode its messages
    t0 = time.perf_counter()
    go.set()
    done.wait(300)
    elapsed = time.perf_counter() - t0
    times.recv()
    proc.join()
    sub.loop_stop()
    sub.disconnect()
    return got / elapsed


def copy_limit(url: str, n_rows: int) -> float:
    rows = []
    base = datetime.now(UTC).timestamp()
    for i in range(n_rows):
        rows.append(
            (
                f"copy-{i % DEVICES:04d}",
                datetime.fromtimestamp(base + i // DEVICES, UTC),
                "bench",
                i,
                datetime.now(UTC),
                *([None] * 8),
                120.0,
                None,
                None,
                None,
            )
        )
    cols = ", ".join(SAMPLE_COLUMNS)
    from ingest.writer import _SAMPLE_TYPES

    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        for start in range(0, n_rows, 10_000):
            with conn.cursor() as cur, cur.copy(f"COPY samples ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_SAMPLE_TYPES)
                for row in rows[start : start + 10_000]:
                    copy.write_row(row)
            conn.commit()
        elapsed = time.perf_counter() - t0
        conn.execute("DELETE FROM samples WHERE site_id = 'bench'")
        conn.commit()
    return n_rows / elapsed


async def run_ingester(
    target: MqttTarget, url: str, n: int, k: int, rate: float, soak_s: float = 0
) -> tuple[float, list[float], list[tuple[float, float]]]:
    settings = load_settings(
        database_url=url,
        ingest_client_id=f"bench-ingest-{uuid.uuid4().hex[:6]}",
        ingest_batch_rows=10_000,
        ingest_batch_age_ms=100,
        ingest_receive_maximum=20_000,
    )
    committed = 0
    last_commit = 0.0
    total = n * k
    commit_at: dict[tuple[str, int], float] = {}
    sample_every = 50 if soak_s else 1

    def on_commit(batch: Batch, result: WriteResult) -> None:
        nonlocal committed, last_commit
        now = time.time()
        last_commit = time.perf_counter()
        committed += result.samples_inserted
        for row in batch.samples[::k]:
            if row[3] % sample_every == 0:  # a soak keeps only a sample of its latencies: flat memory
                commit_at.setdefault((row[0], row[3]), now)

    rss: list[tuple[float, float]] = []
    async with MqttSource(
        target,
        client_id=settings.ingest_client_id,
        filters=subscriptions(None),
        receive_maximum=settings.ingest_receive_maximum,
    ) as source:
        ingester = bench_ingester(source, url, settings, on_commit)
        task = asyncio.create_task(ingester.run())
        proc, go, times = start_publisher(target, n, k, rate)
        await asyncio.sleep(2 + n / 50_000)  # the publisher encodes its messages first
        me = psutil.Process()
        t0 = time.perf_counter()
        go.set()
        next_rss = 0.0
        while committed < total and time.perf_counter() - t0 < max(600, soak_s * 2):
            await asyncio.sleep(0.05)
            if soak_s and time.perf_counter() - t0 >= next_rss:
                rss.append((time.perf_counter() - t0, me.memory_info().rss / 2**20))
                next_rss += 10
        elapsed = last_commit - t0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        stamps = await asyncio.to_thread(times.recv)
        proc.join()
    latencies = [
        commit_at[(f"bench-{i % DEVICES:04d}", i // DEVICES)] - t
        for i, t in enumerate(stamps)
        if (f"bench-{i % DEVICES:04d}", i // DEVICES) in commit_at
    ]
    return committed / elapsed, latencies, rss


def _truncate(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE samples, rr_intervals, devices CASCADE")


def prefill(target: MqttTarget, n: int, k: int) -> None:
    """Publish n messages and wait for the broker to take them all (queued for a persistent session)."""
    proc, go, times = start_publisher(target, n, k, 0.0)
    go.set()
    times.recv()
    proc.join()


def bare_drain(target: MqttTarget, n: int, k: int) -> float:
    """Broker limit without the publisher: a bare paho QoS 1 subscriber empties a queue of n messages."""
    rate, _ = bare_mqtt_drain(target, n, "bench-drain", lambda: prefill(target, n, k), settle_s=0.3)
    return rate


async def ingest_drain(target: MqttTarget, url: str, n: int, k: int) -> float:
    """The ingester empties a queue of n messages into PostgreSQL: its own ceiling, no publisher running."""
    settings = load_settings(
        database_url=url,
        ingest_client_id=f"bench-drain-{uuid.uuid4().hex[:6]}",
        ingest_batch_rows=10_000,
        ingest_batch_age_ms=100,
        ingest_receive_maximum=20_000,
    )

    def source() -> MqttSource:
        return MqttSource(
            target,
            client_id=settings.ingest_client_id,
            filters=subscriptions(None),
            receive_maximum=settings.ingest_receive_maximum,
        )

    async with source():
        await asyncio.sleep(0.3)  # the persistent session now holds the subscription
    await asyncio.to_thread(prefill, target, n, k)
    async with source() as src:
        rate, _ = await timed_drain(src, url, settings, n * k)
    return rate


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1] if len(values) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=60_000, help="messages per run")
    ap.add_argument("--soak", type=float, default=0, help="seconds of steady load to watch memory")
    args = ap.parse_args()
    server = os.environ.get("VITALAB_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name, url = create_database(server)
    work = Path(tempfile.mkdtemp(prefix="vitalab-bench-"))
    broker, target = start_mosquitto(work)
    try:
        migrate(url, timescale="off")
        print(f"machine: {os.cpu_count()} cores; broker, publisher, database and ingester all on it")
        print(
            "\nA. draining a backlog queued in the broker (no publisher running): the ingester's own ceiling"
        )
        print(
            f"{'samples/msg':>11} {'bare paho QoS1 msg/s':>21} {'ingest msg/s':>13} {'ingest samples/s':>17}"
            "  vs bare subscriber"
        )
        for k in (1, 10):
            n = args.messages if k == 1 else args.messages // 2
            bare = bare_drain(target, n, k)
            drained = asyncio.run(ingest_drain(target, url, n, k))
            _truncate(url)
            print(
                f"{k:>11} {bare:>21,.0f} {drained / k:>13,.0f} {drained:>17,.0f}  {drained / k / bare:6.0%}"
            )
        print("\nB. live: a publisher process sends while the ingester commits")
        print(
            f"{'samples/msg':>11} {'broker QoS1 msg/s':>18} {'COPY rows/s':>12} {'ingest msg/s':>13} "
            f"{'ingest samples/s':>17} {'p50 ms':>7} {'p99 ms':>7}  vs broker / vs COPY"
        )
        for k in (1, 10):
            n = args.messages if k == 1 else args.messages // 2
            b = broker_limit(target, n, k)
            c = copy_limit(url, min(n * k, 300_000))
            rate, lat_sat, _ = asyncio.run(run_ingester(target, url, n, k, 0.0))
            _truncate(url)
            offered = 0.7 * rate / k  # latency is measured below saturation, where a service runs
            _, lat, _ = asyncio.run(run_ingester(target, url, min(n, int(offered * 8)), k, offered))
            _truncate(url)
            print(
                f"{k:>11} {b:>18,.0f} {c:>12,.0f} {rate / k:>13,.0f} {rate:>17,.0f} "
                f"{pct(lat, 50) * 1e3:>7.0f} {pct(lat, 99) * 1e3:>7.0f}  "
                f"{rate / k / b:6.0%} / {rate / c:6.0%}"
            )
            print(
                f"{'':>11} latency at {offered:,.0f} msg/s offered (70 % of the sustained rate); "
                "at saturation "
                f"p50 {pct(lat_sat, 50) * 1e3:.0f} ms, p99 {pct(lat_sat, 99) * 1e3:.0f} ms (queueing)"
            )
        if args.soak:
            # steady load below saturation (70 % of the sustained rate with 10 samples per message, as
            # measured above): a fixed rate could exceed what this machine's publisher sends at all
            k, rate_msgs = 10, offered
            n = int(args.soak * rate_msgs)
            got, lat, rss = asyncio.run(run_ingester(target, url, n, k, rate_msgs, soak_s=args.soak))
            print(
                f"soak: {args.soak:.0f} s at {rate_msgs * k:,.0f} samples/s offered: {got:,.0f} committed/s, "
                f"p50 {pct(lat, 50) * 1e3:.0f} ms, p99 {pct(lat, 99) * 1e3:.0f} ms"
            )
            print("  RSS MiB over time: " + ", ".join(f"{t:.0f}s={m:.0f}" for t, m in rss))
    finally:
        broker.terminate()
        broker.wait()
        drop_database(server, name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
