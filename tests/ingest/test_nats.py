"""The ingester on NATS JetStream (VITALAB_BUS=nats): a real 3-node cluster on loopback ports (Debian's
nats-server with deploy/nats/nats.conf), devices publishing MQTT 3.1.1 QoS 1 to its MQTT listener, and a real
PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.nats import MQTT_STREAM, subject_to_topic, topic_to_subject
from simulators.loadgen import LoadPublisher
from tests.support.helpers import count, make_settings, metric, running_ingester, scalar, wait_until
from tests.support.nats_cluster import NatsCluster, nats_cluster
from tests.support.workload import Workload, stored
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
