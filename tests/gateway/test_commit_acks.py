"""End-to-end commit acknowledgements from the gateway's side, under the faults that a broker's PUBACK does
not cover. Real processes: Mosquitto (killed with SIGKILL, restarted), `vitalab ingest` (killed for good),
a persistent `mosquitto_sub` session; real PostgreSQL. Each test counts rows == samples sent, each exactly
once (and shows that the fault happened: entries had to be sent again after their ack timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from gateway.publisher import GatewayPublisher
from tests.conftest import Mosquitto, missing
from tests.support.processes import IngestProcess
from vitalab.db import migrate
from vitalab.wire import Sample

SITE = "gym"
ACK_TIMEOUT_S = 2.0
SESSION_EXPIRY_S = 3
NO_AUTOSAVE = "autosave_interval 3600\n"
"""What the broker holds lives only in its memory until a clean shutdown: a SIGKILL loses all of it."""


def _rows(url: str) -> tuple[int, int]:
    """(sample rows, distinct (device, t))."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT (device_id, t)) FROM samples").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _stored(url: str) -> set[tuple[str, datetime]]:
    with psycopg.connect(url) as conn:
        return {(d, t) for d, t in conn.execute("SELECT device_id, t FROM samples")}


async def _until(check: Callable[[], object], what: str, timeout_s: float = 60.0) -> float:
    """Poll ``check`` (sync, run in a thread) until truthy; returns the seconds it took."""
    t0 = time.monotonic()
    last: object = None
    while time.monotonic() - t0 < timeout_s:
        last = await asyncio.to_thread(check)
        if last:
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


class Sent:
    """Samples handed to the gateway: ``n`` per device, one second apart, starting where the last call
    stopped."""

    def __init__(self, devices: int) -> None:
        self.devices = [f"bike-{d:02d}" for d in range(devices)]
        self.start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        self.next = 0
        self.samples: set[tuple[str, datetime]] = set()

    def add(self, gw: GatewayPublisher, n: int) -> None:
        for i in range(self.next, self.next + n):
            t = self.start + timedelta(seconds=i)
            for device in self.devices:
                gw.add_sample(device, Sample(t=t, power_w=float(i % 400), cadence_rpm=80))
                self.samples.add((device, t))
        self.next += n


def _ingester(
    tmp_path: Path, database_url: str, mosquitto: Mosquitto, name: str, **settings: str
) -> IngestProcess:
    return IngestProcess(
        database_url,
        mosquitto.url,
        name,
        tmp_path / f"{name}.log",
        # a stop keeps the session (a restart, not a scale-down: no drain), so the broker queues for it
        {"INGEST_SESSION_EXPIRY_S": str(SESSION_EXPIRY_S), "INGEST_DRAIN_TIMEOUT_S": "0", **settings},
    )


def _gateway(mosquitto: Mosquitto, path: Path, name: str = "gw-1") -> GatewayPublisher:
    return GatewayPublisher(
        mosquitto.target,
        SITE,
        name,
        path,
        batch_samples=10,
        batch_age_s=0.05,
        commit_acks=True,
        ack_timeout_s=ACK_TIMEOUT_S,
    )


@pytest.fixture
def db(database_url: str) -> str:
    migrate(database_url)
    return database_url


@pytest.fixture
def processes() -> Iterator[list[IngestProcess]]:
    started: list[IngestProcess] = []
    yield started
    for p in started:
        p.kill()


async def _probe(gw: GatewayPublisher, sent: Sent, url: str) -> None:
    """Send a little and wait until it is stored and acknowledged: an ingester is subscribed."""
    sent.add(gw, 1)
    await gw.wait_delivered(60)
    assert _rows(url)[0] == len(sent.samples)


# --- a broker crash with a queued backlog ------------------------------------------------------------


@pytest.mark.asyncio
async def test_broker_kill_with_a_queued_backlog_loses_nothing(
    mosquitto: Mosquitto, db: str, tmp_path: Path, processes: list[IngestProcess]
) -> None:
    """The ingester is away (its persistent session queues its telemetry in the broker's memory), the broker
    takes 2,000 samples and answers PUBACK to every message, then dies with SIGKILL: the broker lost them
    all. The gateway still holds them (no commit ack came) and sends them again: every row is stored."""
    mosquitto.stop()
    mosquitto.extra_config = NO_AUTOSAVE
    mosquitto.start()
    ingester = _ingester(tmp_path, db, mosquitto, "ingest-a").start()
    processes.append(ingester)
    sent = Sent(devices=4)
    async with _gateway(mosquitto, tmp_path / "gw.sqlite") as gw:
        await _probe(gw, sent, db)
        ingester.stop()  # cleanly: its session (and subscription) stays and queues what comes
        sent.add(gw, 500)  # 2,000 samples, 200 messages
        await gw.flush()
        await _until(
            lambda: gw.stats.in_flight == 0 and gw.stats.awaiting_commit == 200,
            "PUBACKs for the backlog",
        )
        assert _rows(db)[0] == 4  # the probe only: the backlog sits in the broker
        mosquitto.kill()
        mosquitto.start()
        ingester.start()
        await gw.wait_delivered(120)
        stats = gw.stats
    assert _rows(db) == (len(sent.samples), len(sent.samples))
    assert _stored(db) == sent.samples
    assert stats.resent_unacked >= 200  # the whole backlog was sent again: the broker had lost it
    assert stats.buffered == 0


# --- one of two ingesters killed for good ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_one_of_two_ingesters_killed_for_good_strands_nothing(
    mosquitto: Mosquitto, db: str, tmp_path: Path, processes: list[IngestProcess]
) -> None:
    """Two ingesters share the telemetry; one is killed with SIGKILL mid-stream and never comes back. Its
    session goes on taking its share until it expires (``VITALAB_INGEST_SESSION_EXPIRY_S``); the gateway
    resends what no commit ack covered after ``ack_timeout_s``, and once the session is gone the survivor
    gets it all. Every row is stored within the documented bound: session expiry + ack timeout (+ the
    commit latency; the test allows a generous margin for a busy machine)."""
    a = _ingester(tmp_path, db, mosquitto, "ingest-a").start()
    b = _ingester(tmp_path, db, mosquitto, "ingest-b").start()
    processes += [a, b]
    log = tmp_path / "mosquitto.log"
    await _until(lambda: "as ingest-a" in log.read_text() and "as ingest-b" in log.read_text(), "both")
    sent = Sent(devices=4)
    async with _gateway(mosquitto, tmp_path / "gw.sqlite") as gw:
        await _probe(gw, sent, db)
        for _ in range(5):
            sent.add(gw, 1)
            await gw.wait_delivered(60)  # both are in the group: nothing waits for a dead one yet
        for _ in range(10):
            sent.add(gw, 20)
            await asyncio.sleep(0.05)
        a.kill()
        killed_at = time.monotonic()
        for _ in range(20):
            sent.add(gw, 20)  # after the kill: half of these go to the dead session for a while
            await asyncio.sleep(0.05)
        await gw.flush()
        await gw.wait_delivered(120)
        took = time.monotonic() - killed_at
        stats = gw.stats
    assert b.running
    assert _rows(db) == (len(sent.samples), len(sent.samples))
    assert _stored(db) == sent.samples
    assert stats.resent_unacked > 0  # some were stranded in the dead session and sent again
    bound = SESSION_EXPIRY_S + ACK_TIMEOUT_S
    print(f"one of two ingesters killed: every row stored {took:.1f} s after the kill (bound {bound} s)")
    assert took < bound + 15, f"everything stored {took:.1f} s after the kill; bound {bound} s (+ margin)"


# --- another persistent subscriber during a broker outage ----------------------------------------------


@pytest.mark.asyncio
async def test_an_extra_persistent_subscriber_during_a_broker_outage_hides_nothing(
    mosquitto: Mosquitto, db: str, tmp_path: Path, processes: list[IngestProcess]
) -> None:
    """Mosquitto 2.0 does not restore shared subscriptions after a restart, so until the ingester is back a
    restarted broker would answer "no matching subscribers", which the gateway used to rely on. A persistent
    session of any other client subscribed to telemetry (here ``mosquitto_sub -c``) makes the broker answer
    success instead: without commit acks the gateway deleted what no ingester ever saw."""
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        missing("mosquitto_sub is not installed (apt-get install mosquitto-clients)")
    assert binary is not None
    ingester = _ingester(tmp_path, db, mosquitto, "ingest-a").start()
    processes.append(ingester)
    extra = [binary, "-p", str(mosquitto.port), "-i", "audit", "-c", "-q", "1", "-V", "5"]
    extra += ["-x", "3600", "-t", f"vitalab/v1/{SITE}/dev/+/telemetry", "-C", "1"]
    sent = Sent(devices=4)
    async with _gateway(mosquitto, tmp_path / "gw.sqlite") as gw:
        await _probe(gw, sent, db)
        # the persistent subscriber: subscribes, takes one message, exits; its session stays
        sub = await asyncio.create_subprocess_exec(
            *extra, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            async with asyncio.timeout(60):
                while sub.returncode is None:  # until it has taken a message: it is subscribed
                    sent.add(gw, 1)
                    await gw.flush()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            await sub.wait()
        finally:
            if sub.returncode is None:
                sub.kill()
                await sub.wait()
        await gw.wait_delivered(60)
        unrouted = gw.stats.unrouted  # while the ingester was starting
        ingester.kill()
        mosquitto.stop()  # a clean restart: sessions and plain subscriptions are restored, shared ones not
        sent.add(gw, 300)  # buffered during the outage: 1,200 samples
        await gw.flush()
        mosquitto.start()
        await _until(
            lambda: gw.stats.in_flight == 0 and gw.stats.awaiting_commit >= 120,
            "the broker's PUBACKs for the outage's messages",
        )
        assert gw.stats.unrouted == unrouted  # the extra session matched: the broker said "success"
        ingester.start()
        await gw.wait_delivered(120)
        stats = gw.stats
    assert _rows(db) == (len(sent.samples), len(sent.samples))
    assert _stored(db) == sent.samples
    assert stats.resent_unacked >= 120
