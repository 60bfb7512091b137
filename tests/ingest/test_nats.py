"""The ingester on NATS JetStream (VITALAB_BUS=nats): a real 3-node cluster on loopback ports (Debian's
nats-server with deploy/nats/nats.conf), devices publishing MQTT 3.1.1 QoS 1 to its MQTT listener, and a real
PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats.errors
import pytest

from ingest.nats import MQTT_STREAM, subject_to_topic, topic_to_subject
from simulators.loadgen import LoadPublisher
from tests.support.helpers import count, make_settings, metric, running_ingester, scalar, wait_until
from tests.support.nats_cluster import NatsCluster, nats_cluster
from tests.support.workload import Workload, publish_paced, stored
from vitalab.settings import Settings
from vitalab.wire import TopicKind, device_topic

SITE = "gym-nats"
CONSUMER = "vitalab-ingest"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path / "nats") as c:
        yield c


def nats_settings(cluster: NatsCluster, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "bus": "nats",
        "nats_urls": ",".join(cluster.urls),
        "nats_ack_wait_s": 5.0,
        "nats_startup_timeout_s": 60.0,
    }
    base.update(overrides)
    return make_settings(**base)


def test_topics_map_to_subjects_as_the_listener_maps_them() -> None:
    topic = device_topic(SITE, "bike-01", TopicKind.TELEMETRY)
    assert topic_to_subject(topic) == "vitalab.v1.gym-nats.dev.bike-01.telemetry"
    for t in (topic, "a//b", "/a", "a/", "a"):
        assert subject_to_topic(topic_to_subject(t)) == t
    assert topic_to_subject("a//b") == "a./.b"
    for bad in ("dev.1/telemetry", "a b", "a/+", "a/#"):
        with pytest.raises(ValueError, match="cannot be a NATS subject"):
            topic_to_subject(bad)


@pytest.mark.asyncio
async def test_every_message_through_the_mqtt_listener_is_stored_once_and_bad_ones_dead_lettered(
    cluster: NatsCluster, database_url: str
) -> None:
    await cluster.wait_ready()
    work = Workload.build(SITE, devices=5, seconds=400, per_message=10)  # 200 messages, 2000 samples
    bad_topic = device_topic(SITE, "bike-bad", TopicKind.TELEMETRY)
    settings = nats_settings(cluster)
    async with running_ingester(settings, None, database_url) as ingester:
        with LoadPublisher(
            cluster.mqtt_target(cluster.nodes[0]), "nats-pub-1", protocol="3.1.1", retry_unrouted_s=None
        ) as pub:
            for topic, payload in work.messages:
                pub.publish(topic, payload)
            pub.publish(bad_topic, b"not json")
            pub.publish(bad_topic, b"not json")  # twice: two dead letters, as on MQTT
            await asyncio.to_thread(pub.wait_acked, 60.0)
        await wait_until(
            lambda: _at_least(database_url, "samples", len(work.expected)),
            timeout_s=60,
            what=f"{len(work.expected)} samples",
        )
        await wait_until(
            lambda: _at_least(database_url, "dead_letters", 2), timeout_s=30, what="2 dead letters"
        )
        assert metric(ingester, "vitalab_ingest_samples_inserted_total") == len(work.expected)
    assert await asyncio.to_thread(stored, database_url) == work.expected
    assert await count(database_url, "samples") == len(work.expected)
    assert await count(database_url, "dead_letters", f"topic = '{bad_topic}'") == 2
    assert await scalar(database_url, "SELECT DISTINCT reason FROM dead_letters") == "malformed"
    # everything was acknowledged: nothing is left for the consumer
    nc = await cluster.connect()
    try:
        info = await nc.jetstream().consumer_info(MQTT_STREAM, CONSUMER)
        assert (info.num_pending, info.num_ack_pending) == (0, 0)
    finally:
        await nc.close()


async def _at_least(url: str, table: str, n: int) -> bool:
    return await count(url, table) >= n


# --- failures: kill -9 of a NATS node and of an ingester, mid-stream --------------------------------------


class IngesterProcess:
    """`vitalab ingest` on the NATS bus in a process of its own (so that it can be killed with -9)."""

    def __init__(self, name: str, cluster: NatsCluster, database_url: str, workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        env = {
            **os.environ,
            "VITALAB_BUS": "nats",
            "VITALAB_NATS_URLS": ",".join(cluster.urls),
            "VITALAB_NATS_ACK_WAIT_S": "5",
            "VITALAB_DATABASE_URL": database_url,
            "VITALAB_TIMESCALE": "off",
            "VITALAB_DATA_DIR": str(workdir / name),
            "VITALAB_INGEST_CLIENT_ID": name,
            "VITALAB_INGEST_BATCH_AGE_MS": "50",
            "VITALAB_INGEST_BATCH_ROWS": "2000",
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vitalab", "ingest"], stdout=log, stderr=log, env=env
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def pulling(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
        return "pulling from consumer" in self.log()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _consumer_done(cluster: NatsCluster) -> bool:
    """Nothing waiting for the ingesters and nothing delivered unacknowledged."""
    nc = await cluster.connect()
    try:
        info = await nc.jetstream().consumer_info(MQTT_STREAM, CONSUMER, timeout=2)
    except (nats.errors.Error, TimeoutError):
        return False
    finally:
        await nc.close()
    return (info.num_pending, info.num_ack_pending) == (0, 0)


@pytest.mark.asyncio
async def test_a_node_and_an_ingester_killed_mid_stream_lose_nothing(
    cluster: NatsCluster, database_url: str, tmp_path: Path
) -> None:
    await cluster.wait_ready()
    ingesters = [IngesterProcess(f"ingest-{i}", cluster, database_url, tmp_path) for i in (1, 2)]
    try:
        for ing in ingesters:
            await wait_until(ing.pulling, timeout_s=60, what=f"{ing.name} pulling")
        # the victim: the node leading the stream (a leader election on the data path), never the node the
        # publisher speaks MQTT to (that one's failure is the device's reconnect, not the cluster's)
        nc = await cluster.connect()
        try:
            victim = cluster.node(await cluster.wait_stream_current(nc, MQTT_STREAM, time.monotonic() + 30))
        finally:
            await nc.close()
        entry = next(n for n in cluster.nodes if n is not victim)
        work = Workload.build(SITE, devices=10, seconds=3000, per_message=10)  # 3000 messages, 30,000 samples
        total = len(work.messages)
        with LoadPublisher(
            cluster.mqtt_target(entry), "nats-pub-kill", protocol="3.1.1", retry_unrouted_s=None
        ) as pub:
            sender = publish_paced(pub, work.messages, rate_per_s=600)
            await wait_until(_sent(pub, total // 3), timeout_s=30, what="a third sent")
            cluster.kill(victim)
            await wait_until(_sent(pub, 2 * total // 3), timeout_s=60, what="two thirds sent")
            await wait_until(
                lambda: _at_least(database_url, "samples", 1), timeout_s=30, what="rows committed"
            )
            ingesters[0].kill()
            await asyncio.to_thread(sender.join, 120)
            assert not sender.is_alive()
            await asyncio.to_thread(pub.wait_acked, 120.0)
        await wait_until(
            lambda: _at_least(database_url, "samples", len(work.expected)),
            timeout_s=120,
            what=f"{len(work.expected)} samples",
        )
        await wait_until(lambda: _consumer_done(cluster), timeout_s=60, what="every message acked")
        assert await count(database_url, "samples") == len(work.expected)
        assert await asyncio.to_thread(stored, database_url) == work.expected
        assert await count(database_url, "dead_letters") == 0
        assert ingesters[1].proc.poll() is None, ingesters[1].log()
    finally:
        for ing in ingesters:
            ing.stop()


def _sent(pub: LoadPublisher, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return pub.published >= n

    return check
