"""Benchmark: the same load through Mosquitto and through NATS JetStream (3 replicas, and 1), in one run.

For each bus, on this machine, with a backlog of N messages of 10 samples that publisher processes put in it
(QoS 1; their msg/s is printed too):
  1. bare consumer: a paho QoS 1 subscriber (Mosquitto) or a nats-py pull consumer acking each message
     (NATS) takes the backlog: no decoding, no database;
  2. the ingester, 1 and then 2 processes (`vitalab ingest`, VITALAB_BUS=mqtt|nats), takes the same backlog
     into PostgreSQL: committed samples/s from the first commit to the last (counted in the database);
  3. publish→commit latency p50/p99 of one ingester while a publisher sends at a steady rate.
Devices speak MQTT in every case (3.1.1 on NATS: its listener has no MQTT 5); on NATS the publishers spread
over the three nodes' MQTT listeners. Targets: the ingester ≥ 50 % of its bus's bare consumer (msg/s); 2
ingesters ≥ 1.6× one where the bus is not the limit.

Run: ``python bench/bench_bus.py [--messages 20000] [--publishers 3]``. Needs mosquitto and nats-server
(Debian) and PostgreSQL (VITALAB_BENCH_DATABASE_URL, a server URL, or 127.0.0.1:5432). Not a test; numbers
vary ±20 % between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nats
import psutil
import psycopg
from bench_ingest import DEVICES, payloads, pct
from broker import start_mosquitto
from common import bare_mqtt_drain, bench_ingester, create_database, drop_database
from nats.js.api import ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from ingest.batch import Batch
from ingest.nats import DEFAULT_FILTER, MQTT_STREAM, MQTT_SUBJECT_PREFIX
from ingest.service import open_source
from ingest.writer import WriteResult
from simulators.loadgen import LoadPublisher
from tests.support.nats_cluster import NatsCluster
from vitalab.db import migrate
from vitalab.settings import MqttTarget, load_settings

REPO = Path(__file__).resolve().parent.parent
K = 10
"""Samples per message."""


@dataclass
class Bus:
    name: str
    kind: Literal["mqtt", "nats"]
    targets: list[MqttTarget]
    """Where the publishers connect (one per publisher, round robin)."""
    env: dict[str, str]
    """The ingester's settings for this bus."""
    protocol: Literal["5", "3.1.1"]
    cluster: NatsCluster | None = None


# --- load ------------------------------------------------------------------------------------------------


def publisher_process(
    target: MqttTarget, protocol: Literal["5", "3.1.1"], start: int, n: int, rate: float, go: Any, out: Any
) -> None:
    """Messages ``start .. start+n`` at full speed (rate 0) or ``rate`` msg/s; sends back their send times."""
    messages = payloads(n, K, start=start)
    stamps = [0.0] * n
    with LoadPublisher(
        target,
        f"bench-pub-{uuid.uuid4().hex[:6]}",
        protocol=protocol,
        max_inflight=1000,
        retry_unrouted_s=None,
    ) as pub:
        go.wait()
        t0 = time.monotonic()
        for i, (topic, payload) in enumerate(messages):
            stamps[i] = time.time()
            pub.publish(topic, payload)
            if rate:
                ahead = t0 + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            elif pub.published - pub.acked > 5_000:
                time.sleep(0.001)
        pub.wait_acked(600)
        out.send((stamps, time.monotonic() - t0))


@contextmanager
def publishers(bus: Bus, n: int, count: int, rate: float = 0.0) -> Iterator[tuple[Any, list[Any]]]:
    """``count`` publisher processes sharing ``n`` messages; yields (go, pipes). Messages are encoded before
    ``go`` is set."""
    go = mp.Event()
    procs, pipes = [], []
    share = n // count
    for p in range(count):
        recv, send = mp.Pipe(duplex=False)
        size = share if p < count - 1 else n - share * (count - 1)
        target = bus.targets[p % len(bus.targets)]
        proc = mp.Process(
            target=publisher_process, args=(target, bus.protocol, p * share, size, rate / count, go, send)
        )
        proc.start()
        procs.append(proc)
        pipes.append(recv)
    time.sleep(1.5 + n / 40_000)  # they encode their messages first
    try:
        yield go, pipes
    finally:
        for proc in procs:
            proc.join(600)


def collect(pipes: list[Any]) -> tuple[list[float], float]:
    """Every message's publish time (in message order) and the slowest publisher's duration."""
    stamps: list[float] = []
    longest = 0.0
    for pipe in pipes:
        s, took = pipe.recv()
        stamps.extend(s)
        longest = max(longest, took)
    return stamps, longest


def prefill(bus: Bus, n: int, count: int) -> float:
    """Publish ``n`` messages (``count`` publishers) and wait for every PUBACK; the publishers' msg/s."""
    with publishers(bus, n, count) as (go, pipes):
        go.set()
        _, took = collect(pipes)
    return n / took


# --- bare consumers: a backlog of n messages in the bus, taken without decoding or a database ---------------


def bare_mqtt(bus: Bus, n: int, count: int) -> tuple[float, float]:
    """msg/s a bare paho QoS 1 subscriber (persistent session) takes from a backlog of ``n`` messages; and
    the publishers' msg/s making it."""
    return bare_mqtt_drain(bus.targets[0], n, "bench-bare", lambda: prefill(bus, n, count), settle_s=0.5)


async def bare_nats(bus: Bus, n: int, count: int) -> tuple[float, float]:
    """msg/s a bare pull consumer (fetch 1000, ack each) takes from a backlog of ``n`` messages; and the
    publishers' msg/s making it."""
    assert bus.cluster is not None
    nc = await bus.cluster.connect()
    js = nc.jetstream()
    name = "bench-bare"
    await js.add_consumer(MQTT_STREAM, ConsumerConfig(durable_name=name, filter_subject=DEFAULT_FILTER))
    psub = await js.pull_subscribe_bind(durable=name, stream=MQTT_STREAM)
    pub_rate = await asyncio.to_thread(prefill, bus, n, count)
    got = 0
    t0 = time.perf_counter()
    deadline = t0 + 300
    while got < n and time.perf_counter() < deadline:
        try:
            msgs = await psub.fetch(1000, timeout=1)
        except nats.errors.TimeoutError:
            continue
        for m in msgs:
            await nc.publish(m.reply, b"+ACK")
        got += len(msgs)
    elapsed = time.perf_counter() - t0
    await nc.flush()
    await js.delete_consumer(MQTT_STREAM, name)  # interest retention: it would keep later runs' messages
    await js.purge_stream(MQTT_STREAM)  # what it took twice and left unacked must not reach the next run
    await nc.close()
    return got / elapsed, pub_rate


# --- ingesters: the same backlog, taken by 1 or 2 `vitalab ingest` processes into PostgreSQL --------------


def ingester_env(bus: Bus, url: str, name: str, workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        **bus.env,
        "VITALAB_DATABASE_URL": url,
        "VITALAB_TIMESCALE": "off",
        "VITALAB_DATA_DIR": str(workdir / name),
        "VITALAB_INGEST_CLIENT_ID": name,
        "VITALAB_INGEST_BATCH_ROWS": "10000",
        "VITALAB_INGEST_BATCH_AGE_MS": "100",
        "VITALAB_INGEST_RECEIVE_MAXIMUM": "20000",
        "VITALAB_NATS_MAX_ACK_PENDING": "40000",
        # stopped as a restart, not a scale-down: the session stays (with its subscription) and queues the
        # backlog made while the ingesters are away
        "VITALAB_INGEST_DRAIN_TIMEOUT_S": "0",
    }


def _count(url: str) -> int:
    """Sample rows stored (a scan of the table: called once at the end, not while measuring)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM samples").fetchone()
        return int(row[0]) if row else 0


def _committed(conn: psycopg.Connection[Any]) -> int:
    """Samples in committed batches, from the batches' receipts (one short row per batch): cheap enough to
    poll every 50 ms on one connection, where a count(*) of the growing table (or a new connection each
    time) would take a good part of a core from what is measured."""
    row = conn.execute("SELECT coalesce(sum(n), 0) FROM ingest_batches, unnest(received) AS n").fetchone()
    return int(row[0]) if row else 0


def _truncate(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE samples, rr_intervals, ingest_batches, devices CASCADE")


def _start_ingesters(bus: Bus, url: str, ingesters: int, workdir: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(ingesters):
        name = f"bench-ingest-{i + 1}"
        log = workdir / f"{bus.name}-{name}.log"
        log.write_bytes(b"")
        with log.open("ab") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "vitalab", "ingest"],
                    env=ingester_env(bus, url, name, workdir),
                    stdout=out,
                    stderr=out,
                )
            )
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(60)


def _busy(before: Any, after: Any) -> float:
    """The share of the machine's CPU time (all cores) that was not idle between two psutil.cpu_times()."""
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    total = sum(after) - sum(before)
    return 1 - idle / total if total > 0 else 0.0


def ingest_rate(bus: Bus, url: str, n: int, count: int, ingesters: int, workdir: Path) -> tuple[float, float]:
    """Committed samples/s of ``ingesters`` processes draining a backlog of ``n`` messages, from the first
    commit to the last (their start-up is not counted), and how busy the machine's cores were meanwhile.
    They subscribe once before the backlog is made (their sessions, or the durable consumer, then keep it
    for them). Every sample must be stored once."""
    _truncate(url)
    procs = _start_ingesters(bus, url, ingesters, workdir)
    try:
        _wait_ingesters(bus, workdir, ingesters)
    finally:
        _stop(procs)
    prefill(bus, n, count)
    procs = _start_ingesters(bus, url, ingesters, workdir)
    try:
        with psycopg.connect(url, autocommit=True) as poll:
            total = n * K
            first_at, first_rows, rows, last_at = 0.0, 0, 0, 0.0
            cpu_first = cpu_last = psutil.cpu_times()
            started = time.perf_counter()
            while rows < total:
                time.sleep(0.05)
                now_rows = _committed(poll)
                if now_rows != rows:
                    rows, last_at, cpu_last = now_rows, time.perf_counter(), psutil.cpu_times()
                    if not first_at:
                        first_at, first_rows, cpu_first = last_at, rows, cpu_last
                elif time.perf_counter() - (last_at or started) > (30 if last_at else 120):
                    raise RuntimeError(f"{bus.name}: {rows} of {total} samples committed, none for a while")
            if (stored := _count(url)) != total:
                raise RuntimeError(f"{bus.name}: {stored} sample rows stored, {total} sent ({rows} received)")
            return (rows - first_rows) / (last_at - first_at), _busy(cpu_first, cpu_last)
    finally:
        _stop(procs)


def _wait_ingesters(bus: Bus, workdir: Path, ingesters: int) -> None:
    """Until every ingester has subscribed (its log says so)."""
    mark = "pulling from consumer" if bus.kind == "nats" else "connected to"
    deadline = time.monotonic() + 60
    for i in range(ingesters):
        log = workdir / f"{bus.name}-bench-ingest-{i + 1}.log"
        while mark not in log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingester {i + 1} did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
    time.sleep(1.0)  # the subscriptions (MQTT SUBACK) follow the connection


async def latency(bus: Bus, url: str, n: int, rate: float) -> list[float]:
    """publish→commit seconds of each message, one ingester in this process, at ``rate`` msg/s."""
    _truncate(url)
    settings = load_settings(
        database_url=url,
        ingest_client_id=f"bench-lat-{uuid.uuid4().hex[:6]}",
        ingest_batch_rows=10_000,
        ingest_batch_age_ms=100,
        ingest_receive_maximum=20_000,
        ingest_share_group=None,
        mqtt_protocol="5",
        **{k.removeprefix("VITALAB_").lower(): v for k, v in bus.env.items()},
    )
    commit_at: dict[tuple[str, int], float] = {}

    def on_commit(batch: Batch, result: WriteResult) -> None:
        now = time.time()
        for row in batch.samples[::K]:
            commit_at.setdefault((row[0], row[3]), now)

    async with open_source(settings, bus.targets[0] if bus.kind == "mqtt" else None) as source:
        ingester = bench_ingester(source, url, settings, on_commit)
        task = asyncio.create_task(ingester.run())
        await source.wait_subscribed()
        await asyncio.sleep(0.5)
        with publishers(bus, n, 1, rate) as (go, pipes):
            go.set()
            stamps, _ = await asyncio.to_thread(collect, pipes)
        deadline = time.monotonic() + 120
        while len(commit_at) < n and time.monotonic() < deadline:  # noqa: ASYNC110  (polls a counter)
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    keys = [(f"bench-{i % DEVICES:04d}", i // DEVICES) for i in range(n)]
    return [commit_at[key] - t for key, t in zip(keys, stamps, strict=True) if key in commit_at]


# --- buses -----------------------------------------------------------------------------------------------


@contextmanager
def mosquitto(workdir: Path) -> Iterator[Bus]:
    proc, target = start_mosquitto(workdir)
    try:
        yield Bus(
            "mosquitto",
            "mqtt",
            [target],
            {"VITALAB_BUS": "mqtt", "VITALAB_MQTT_URL": f"mqtt://127.0.0.1:{target.port}"},
            "5",
        )
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def nats_bus(workdir: Path, replicas: int) -> Iterator[Bus]:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    cluster = NatsCluster(binary, workdir / f"nats-r{replicas}")
    cluster.start_all()
    try:
        asyncio.run(_prepare_nats(cluster, replicas))
        yield Bus(
            f"nats R{replicas}",
            "nats",
            [cluster.mqtt_target(node) for node in cluster.nodes],
            {
                "VITALAB_BUS": "nats",
                "VITALAB_NATS_URLS": ",".join(cluster.urls),
                "VITALAB_NATS_REPLICAS": str(replicas),
            },
            "3.1.1",
            cluster,
        )
    finally:
        cluster.stop_all()


async def _prepare_nats(cluster: NatsCluster, replicas: int) -> None:
    """The message stream with ``replicas`` before the MQTT listener makes it (with its 3), then readiness."""
    deadline = time.monotonic() + 60
    while True:
        try:
            nc = await cluster.connect()
            break
        except (OSError, nats.errors.Error):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    js = nc.jetstream()
    while True:
        try:
            await js.add_stream(
                StreamConfig(
                    name=MQTT_STREAM,
                    subjects=[MQTT_SUBJECT_PREFIX + ">"],
                    storage=StorageType.FILE,
                    retention=RetentionPolicy.INTEREST,
                    num_replicas=replicas,
                )
            )
            break
        except (nats.errors.Error, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    await nc.close()
    await cluster.wait_ready()


# --- main ------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20_000, help="messages per run (10 samples each)")
    ap.add_argument("--publishers", type=int, default=3, help="publisher processes (devices' connections)")
    ap.add_argument("--latency-rate", type=float, default=500, help="msg/s offered for the latency run")
    args = ap.parse_args()
    server = os.environ.get("VITALAB_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name, url = create_database(server)
    work = Path(tempfile.mkdtemp(prefix="vitalab-bench-bus-"))
    n, pubs = args.messages, args.publishers
    try:
        migrate(url, timescale="off")
        print(
            f"machine: {os.cpu_count()} cores, running the broker(s), {pubs} publishers, PostgreSQL and the "
            f"ingesters; {n:,} messages of {K} samples per run"
        )
        print(
            f"{'bus':<10} {'publish msg/s':>13} {'bare msg/s':>10} {'1 ingest samples/s':>19} "
            f"{'vs bare':>7} {'busy':>5} {'2 ingest samples/s':>19} {'2 vs 1':>6} {'busy':>5} {'p50 ms':>7} "
            f"{'p99 ms':>7}"
        )
        rows: dict[str, tuple[float, float, float, float]] = {}
        for replicas in (0, 3, 1):
            with mosquitto(work) if not replicas else nats_bus(work, replicas) as bus:
                if bus.kind == "mqtt":
                    bare, pub_rate = bare_mqtt(bus, n, pubs)
                else:
                    bare, pub_rate = asyncio.run(bare_nats(bus, n, pubs))
                one, busy1 = ingest_rate(bus, url, n, pubs, 1, work)
                two, busy2 = ingest_rate(bus, url, n, pubs, 2, work)
                lat = asyncio.run(latency(bus, url, int(args.latency_rate * 10), args.latency_rate))
                rows[bus.name] = (pub_rate, bare, one, two)
                print(
                    f"{bus.name:<10} {pub_rate:>13,.0f} {bare:>10,.0f} {one:>19,.0f} {one / K / bare:>7.0%} "
                    f"{busy1:>5.0%} {two:>19,.0f} {two / one:>5.2f}× {busy2:>5.0%} "
                    f"{pct(lat, 50) * 1e3:>7.0f} {pct(lat, 99) * 1e3:>7.0f}",
                    flush=True,
                )
        print(
            f"\ntargets: the ingester ≥ 50 % of its bus's bare consumer (msg/s: samples/s ÷ {K}); "
            "2 ingesters ≥ 1.6× one where the bus is not the limit (where 2 ingesters reach the bare "
            "consumer's msg/s, the bus is the limit)"
        )
        print(
            "busy: the share of the machine's cores in use from the first commit to the last (broker, "
            "PostgreSQL and ingesters all run here); where one ingester keeps them busy already, a second "
            "one has no core to run on, and 2 vs 1 measures the machine, not the ingesters"
        )
        print(f"latency: one ingester, {args.latency_rate:,.0f} msg/s offered, publish (device) → commit")
        r3, r1 = rows.get("nats R3"), rows.get("nats R1")
        if r3 and r1:
            print(
                f"3 replicas against 1: publish {r3[0] / r1[0]:.0%} of R1's rate, bare consumer "
                f"{r3[1] / r1[1]:.0%}, 1 ingester {r3[2] / r1[2]:.0%}, 2 ingesters {r3[3] / r1[3]:.0%}"
            )
    finally:
        drop_database(server, name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
