"""Benchmark: an ingester's memory while the database is down and large messages arrive (issue: 1,500 messages
of 250 KB took an ingester from 112 to 483 MB).

Starts a private Mosquitto and a fresh database behind a TCP relay, then a ``vitalab ingest`` process. The
relay is cut (the database unreachable), ``--messages`` telemetry messages of about ``--kb`` KB are published,
and the ingester's RSS and its ``vitalab_ingest_inflight_bytes`` gauge are sampled until the broker has
them all and the ingester holds still; then the relay is restored and the time to store everything is
taken. Once with ``VITALAB_INGEST_MAX_INFLIGHT_BYTES`` at ``--bound-mib`` (64 MiB, the default), once with the
bound out of the way (16 GiB: only the MQTT receive maximum bounds it), for comparison.

Run: ``python bench/bench_inflight_bytes.py [--messages 1500] [--kb 250]``. Database:
VITALAB_BENCH_DATABASE_URL (a server URL) or 127.0.0.1:5432. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import psycopg
from broker import free_port, start_mosquitto
from common import create_database, drop_database
from prometheus_client.parser import text_string_to_metric_families

from simulators.loadgen import LoadPublisher
from tests.support.relay import Relay
from vitalab.db import migrate
from vitalab.settings import MqttTarget
from vitalab.wire import Sample, TelemetryMessage, encode, telemetry_topic

MIB = 1024 * 1024
MAX_SAMPLES = 3600
"""Samples per message the wire contract allows."""


def _sample(t: datetime, j: int) -> Sample:
    return Sample(
        t=t,
        hr_bpm=120 + j % 40,
        power_w=200.0 + j % 50,
        cadence_rpm=85.5,
        speed_kmh=31.25,
        distance_m=1000.0 + j,
        energy_kcal=12.5 + j / 100,
        elapsed_s=float(j),
    )


def messages(n: int, kb: int) -> tuple[list[tuple[str, bytes]], int]:
    """``n`` telemetry messages of about ``kb`` KB (10 devices, consecutive seconds), and their samples."""
    t0 = datetime.now(UTC).replace(microsecond=0)
    probe = len(
        encode(TelemetryMessage(v=1, device="mem-00", seq=0, samples=[_sample(t0, j) for j in range(100)]))
    )
    per = min(MAX_SAMPLES, kb * 1000 * 100 // probe)
    start = t0 - timedelta(seconds=n * per // 10 + 3600)
    out = []
    for i in range(n):
        dev, seq = f"mem-{i % 10:02d}", i // 10
        first = start + timedelta(seconds=seq * per)
        samples = [_sample(first + timedelta(seconds=j), j) for j in range(per)]
        out.append(
            (
                telemetry_topic("bench", dev),
                encode(TelemetryMessage(v=1, device=dev, seq=seq, samples=samples)),
            )
        )
    return out, n * per


async def gauge(port: int) -> float | None:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    except httpx.HTTPError:
        return None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "vitalab_ingest_inflight_bytes":
                return s.value
    return None


def rows(url: str) -> int:
    """Samples stored; fails if anything was dead-lettered (the workload would never complete)."""
    with psycopg.connect(url) as conn:
        dead = conn.execute("SELECT reason, detail FROM dead_letters LIMIT 1").fetchone()
        if dead is not None:
            raise RuntimeError(f"the workload was dead-lettered: {dead}")
        row = conn.execute("SELECT count(*) FROM samples").fetchone()
        return int(row[0]) if row else 0


async def run(target: MqttTarget, url: str, work: list[tuple[str, bytes]], samples: int, bound: int) -> None:
    relay = Relay(url)
    await relay.up()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALAB_")}
    env.update(
        VITALAB_DATABASE_URL=relay.url,
        VITALAB_MQTT_URL=f"mqtt://{target.host}:{target.port}",
        VITALAB_INGEST_CLIENT_ID=f"mem-{uuid.uuid4().hex[:6]}",
        VITALAB_INGEST_SHARE_GROUP="",
        VITALAB_INGEST_MAX_INFLIGHT_BYTES=str(bound),
        VITALAB_INGEST_METRICS_PORT=str(port),
        VITALAB_TIMESCALE="off",
    )
    proc = await asyncio.to_thread(
        subprocess.Popen, [sys.executable, "-m", "vitalab", "ingest", "--log-level", "error"], env=env
    )
    try:
        while await gauge(port) is None:  # noqa: ASYNC110 (another process: nothing to wait on but polling)
            await asyncio.sleep(0.1)
        me = psutil.Process(proc.pid)
        before = me.memory_info().rss
        await relay.down()
        peak_rss, peak_bytes = before, 0.0

        async def sample() -> tuple[int, float]:
            nonlocal peak_rss, peak_bytes
            rss, held = me.memory_info().rss, await gauge(port) or 0.0
            peak_rss, peak_bytes = max(peak_rss, rss), max(peak_bytes, held)
            return rss, held

        with LoadPublisher(target, f"pub-{uuid.uuid4().hex[:6]}") as pub:
            for topic, payload in work:
                pub.publish(topic, payload)
                if pub.published % 50 == 0:
                    await sample()
            done = asyncio.create_task(asyncio.to_thread(pub.wait_acked, 600))
            while not done.done():
                await sample()
                await asyncio.sleep(0.05)
            await done
        # the broker has everything: watch the ingester until what it holds stops changing for 3 s
        last, still_since = await sample(), time.monotonic()
        while time.monotonic() - still_since < 3:
            await asyncio.sleep(0.1)
            now = await sample()
            if now[1] != last[1]:
                last, still_since = now, time.monotonic()
        down_rss = peak_rss
        t0 = time.monotonic()
        await relay.up()
        while rows(url) < samples:
            await sample()
            await asyncio.sleep(1.0)  # counting millions of rows is work for the database too
        catch_up = time.monotonic() - t0
        bound_s = f"{bound / MIB:,.0f} MiB" if bound < 1024 * MIB else "none (16 GiB)"
        print(
            f"{bound_s:>14} {before / MIB:>10,.0f} {down_rss / MIB:>16,.0f}"
            f" {(down_rss - before) / MIB:>9,.0f}"
            f" {peak_bytes / MIB:>14,.1f} {peak_rss / MIB:>13,.0f} {catch_up:>10,.1f}"
        )
    finally:
        proc.terminate()
        proc.wait(60)
        await relay.down()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1500)
    ap.add_argument("--kb", type=int, default=250, help="payload size of each message, about")
    ap.add_argument("--bound-mib", type=int, default=64)
    args = ap.parse_args()
    server = os.environ.get("VITALAB_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    work, samples = messages(args.messages, args.kb)
    size = sum(len(p) for _, p in work)
    workdir = Path(tempfile.mkdtemp(prefix="vitalab-bench-"))
    broker, target = start_mosquitto(workdir)
    print(
        f"{args.messages:,} messages of {size / len(work) / 1000:,.0f} KB ({size / MIB:,.0f} MiB, "
        f"{samples:,} samples) published while the database is unreachable; RSS of `vitalab ingest`"
    )
    print(
        f"{'bound':>14} {'RSS MiB':>10} {'RSS while down':>16} {'growth':>9} {'held MiB peak':>14}"
        f" {'RSS peak':>13} {'catch-up s':>10}"
    )
    try:
        for bound in (args.bound_mib * MIB, 16 * 1024 * MIB):
            name, url = create_database(server)
            try:
                migrate(url, timescale="off")
                asyncio.run(run(target, url, work, samples, bound))
            finally:
                drop_database(server, name)
    finally:
        broker.terminate()
        broker.wait()
    print(
        f"limit: the payload bytes held stay within the bound ({args.bound_mib} MiB) plus one message; RSS"
        " while down grows by about that (plus the batch in hand, decoded), not by the whole backlog"
    )


if __name__ == "__main__":
    main()
