"""Helpers the benchmarks share (beyond the private broker in broker.py)."""

from __future__ import annotations

import asyncio
import resource
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from psycopg import conninfo

from ingest.batch import Batch
from ingest.service import IngestConfig, Ingester, router_from_settings
from ingest.source import Source
from ingest.writer import WriteResult
from vitalab.settings import MqttTarget, Settings

T = TypeVar("T")


def bench_ingester(
    src: Source, url: str, settings: Settings, on_commit: Callable[[Batch, WriteResult], None]
) -> Ingester:
    """An ingester configured from ``settings`` (as ``vitalab ingest`` is) that tells ``on_commit`` of each
    commit."""
    return Ingester(
        src,
        url,
        router=router_from_settings(settings),
        config=IngestConfig.from_settings(settings),
        on_commit=on_commit,
    )


async def timed_drain(src: Source, url: str, settings: Settings, total: int) -> tuple[float, Ingester]:
    """Run an ingester on ``src`` until it has committed ``total`` samples (600 s at the most); its committed
    samples/s from its start to its last commit, and the ingester (for its metrics)."""
    committed, last = 0, 0.0

    def on_commit(batch: Batch, result: WriteResult) -> None:
        nonlocal committed, last
        committed += result.samples_inserted
        last = time.perf_counter()

    t0 = time.perf_counter()
    ingester = bench_ingester(src, url, settings, on_commit)
    task = asyncio.create_task(ingester.run())
    while committed < total and time.perf_counter() - t0 < 600:  # noqa: ASYNC110  (polls a counter)
        await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return committed / (last - t0), ingester


def bare_mqtt_drain(
    target: MqttTarget, n: int, client_id: str, fill: Callable[[], T], *, settle_s: float
) -> tuple[float, T]:
    """Broker limit without a publisher running: a bare paho QoS 1 subscriber (persistent session, no
    decoding, no database) first subscribes and leaves (``settle_s`` connected), then ``fill`` puts the
    backlog of ``n`` messages in its session; the msg/s it takes them at, and what ``fill`` returned."""
    got = 0
    done = threading.Event()

    def on_message(c: paho.Client, u: object, m: paho.MQTTMessage) -> None:
        nonlocal got
        got += 1
        if got >= n:
            done.set()

    def client() -> paho.Client:
        c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=False
        )
        c.on_message = on_message
        return c

    sub = client()
    sub.connect(target.host, target.port)
    sub.subscribe("vitalab/v1/+/dev/+/telemetry", qos=1)
    sub.loop_start()
    time.sleep(settle_s)
    sub.disconnect()
    sub.loop_stop()
    filled = fill()
    got = 0
    done.clear()
    sub = client()
    t0 = time.perf_counter()
    sub.connect(target.host, target.port)
    sub.loop_start()
    done.wait(300)
    elapsed = time.perf_counter() - t0
    sub.disconnect()
    sub.loop_stop()
    return got / elapsed, filled


def child_figures(rows: int, started: float) -> dict[str, Any]:
    """What one measurement in a child process reports: its rows, the seconds since ``started`` (a
    ``time.perf_counter()``), and the process's peak RSS in MB."""
    seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "seconds": seconds,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def create_database(server: str) -> tuple[str, str]:
    """A new, empty database on ``server`` (a server URL): its name and its URL."""
    name = f"vitalab_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo.conninfo_to_dict(server)
    params["dbname"] = name
    return name, conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def drop_database(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
