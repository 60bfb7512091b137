"""The ingester on NATS JetStream (VITALAB_BUS=nats): a real 3-node cluster on loopback ports (Debian's
nats-server with deploy/nats/nats.conf), devices publishing MQTT 3.1.1 QoS 1 to its MQTT listener, and a real
PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats.errors
import nats.js.errors
import paho.mqtt.client as paho
import pytest
from nats.js.api import RetentionPolicy
from paho.mqtt.enums import CallbackAPIVersion

from ingest.errors import PublishFailed
from ingest.nats import MQTT_STREAM, NatsSource, subject_to_topic, topic_to_subject
from ingest.service import Ingester, open_source
from simulators.loadgen import LoadPublisher
from tests.support.helpers import (
    count,
    make_settings,
    metric,
    running_ingester,
    scalar,
    wait_until,
    watched_ingester,
)
from tests.support.nats_cluster import NatsCluster, NatsNode, nats_cluster, nats_server_binary
from tests.support.relay import relay_to
from tests.support.workload import Workload, publish_paced, stored
from vitalab.settings import Settings
from vitalab.wire import TopicKind, device_topic

SITE = "gym-nats"
CONSUMER = "vitalab-ingest"


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """One cluster, ready, for the tests that kill nothing (start-up is the slow part)."""
    with nats_cluster(tmp_path_factory.mktemp("nats")) as c:
        asyncio.run(_ingester_first(c))
        asyncio.run(c.wait_ready())
        yield c


async def _ingester_first(cluster: NatsCluster) -> None:
    """An ingester's source opened before any device connects: it makes the stream and its consumer."""
    async with NatsSource(cluster.urls, startup_timeout_s=60):
        pass


@pytest.fixture
def cluster(shared_cluster: NatsCluster) -> Iterator[NatsCluster]:
    """The shared cluster; the ingest consumer a test made is deleted after it (with interest retention, a
    consumer left behind would keep every later message)."""
    yield shared_cluster

    async def forget() -> None:
        nc = await shared_cluster.connect()
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await nc.jetstream().delete_consumer(MQTT_STREAM, CONSUMER)
        finally:
            await nc.close()

    asyncio.run(forget())


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A cluster of the test's own, to kill nodes of."""
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
async def test_the_ingester_makes_the_stream_with_3_replicas_before_any_device_connects(
    cluster: NatsCluster,
) -> None:
    """The shared cluster's first client was an ingester (:func:`_ingester_first`): the listener, set up on
    the first MQTT connection after it, found the stream and kept it."""
    nc = await cluster.connect()
    try:
        js = nc.jetstream()
        msgs, sessions = await js.stream_info(MQTT_STREAM), await js.stream_info("$MQTT_sess")
    finally:
        await nc.close()
    assert msgs.config.num_replicas == 3
    assert msgs.config.retention == RetentionPolicy.INTEREST
    assert msgs.created is not None
    assert sessions.created is not None
    assert msgs.created < sessions.created  # the listener makes $MQTT_sess first when it makes them


@pytest.mark.asyncio
async def test_every_message_through_the_mqtt_listener_is_stored_once_and_bad_ones_dead_lettered(
    cluster: NatsCluster, database_url: str
) -> None:
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
async def test_a_node_down_as_the_cluster_first_starts_holds_ingest_back_until_it_returns(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One of the three nodes is down as the cluster first starts, before anything has made the streams: a
    3-replica stream cannot be placed. The ingester waits for the node (within its start-up time) instead of
    stopping; once the node is up it makes the stream, devices connect, and every message is stored once."""
    binary = nats_server_binary()
    assert binary is not None, "nats-server is not installed (apt-get install nats-server)"
    cluster = NatsCluster(binary, tmp_path / "nats")
    victim = cluster.nodes[2]
    for node in cluster.nodes[:2]:
        cluster.start(node)
    try:
        await _first_start_without(cluster, victim, database_url, caplog)
    finally:
        cluster.stop_all()


async def _first_start_without(
    cluster: NatsCluster, victim: NatsNode, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ingest.nats")
    work = Workload.build(SITE, devices=3, seconds=200, per_message=10)  # 60 messages, 600 samples
    stop = asyncio.Event()
    started: list[Ingester] = []

    async def ingest() -> None:
        async with running_ingester(nats_settings(cluster), None, database_url) as ingester:
            started.append(ingester)
            await stop.wait()

    async def waiting_for_peers() -> bool:
        return "needs 3 nodes for its replicas" in caplog.text

    async def pulling() -> bool:
        if task.done():
            task.result()  # it stopped: say why
        return bool(started)

    task = asyncio.create_task(ingest())
    try:
        await wait_until(waiting_for_peers, timeout_s=30, what="the ingester waiting for the third node")
        assert not started
        assert not task.done()  # waiting, not stopped
        cluster.start(victim)
        await wait_until(pulling, timeout_s=60, what="the ingester pulling")
        await cluster.wait_ready()
        with LoadPublisher(
            cluster.mqtt_target(cluster.nodes[0]), "nats-pub-startup", protocol="3.1.1", retry_unrouted_s=None
        ) as pub:
            for topic, payload in work.messages:
                pub.publish(topic, payload)
            await asyncio.to_thread(pub.wait_acked, 60.0)
        await wait_until(
            lambda: _at_least(database_url, "samples", len(work.expected)), timeout_s=60, what="every sample"
        )
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    task.result()
    assert await asyncio.to_thread(stored, database_url) == work.expected
    assert await count(database_url, "samples") == len(work.expected)
    nc = await cluster.connect()
    try:
        info = await nc.jetstream().stream_info(MQTT_STREAM)
    finally:
        await nc.close()
    assert info.config.num_replicas == 3


@pytest.mark.asyncio
async def test_a_node_and_an_ingester_killed_mid_stream_lose_nothing(
    own_cluster: NatsCluster, database_url: str, tmp_path: Path
) -> None:
    """Every wait is on a condition, with bounds far above what it takes. What can make such a test fail
    now and then, and what it waits for instead:
    - a node killed while the MQTT listeners were still setting up (each node creates or looks up the
      account's streams and a consumer on its first MQTT connection) stalled the publisher: the cluster is
      ready only once every node accepted an MQTT connection and the three $MQTT_ streams have a leader and
      all replicas current (:meth:`NatsCluster.wait_ready`);
    - messages published before the ingest consumer existed were dropped by the stream (interest
      retention): the ingesters create it at start, and publishing begins once both say they pull;
    - the victim is the stream's leader (a leader election on the data path), never the node the publisher
      speaks MQTT to: a device on a dead node has to reconnect elsewhere, which is the device's job;
    - the killed ingester's messages come back after ack_wait (5 s here): the test waits for every sample,
      then for the consumer to have nothing pending or unacknowledged, instead of sleeping."""
    cluster = own_cluster
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


# --- the rest of the Source protocol: publishing commit acks to MQTT subscribers, leaving ------------------


def _subscriber(
    cluster: NatsCluster, client_id: str, received: list[bytes], got: threading.Event
) -> paho.Client:
    """A gateway's MQTT 3.1.1 persistent session on node 2, subscribed (QoS 1) to its ack topic."""
    target = cluster.mqtt_target(cluster.nodes[1])
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=False
    )
    client.username_pw_set(target.username, target.password)
    subscribed = threading.Event()

    def on_message(c: paho.Client, u: object, m: paho.MQTTMessage) -> None:
        received.append(bytes(m.payload))
        got.set()

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(target.host, target.port)
    client.loop_start()
    client.subscribe(ACK_TOPIC, qos=1)
    assert subscribed.wait(30)
    return client


ACK_TOPIC = f"vitalab/v1/{SITE}/gw/gw-1/ack"


@pytest.mark.asyncio
async def test_published_acks_reach_mqtt_subscribers_also_after_they_reconnect(cluster: NatsCluster) -> None:
    received: list[bytes] = []
    got = threading.Event()
    async with NatsSource(cluster.urls, startup_timeout_s=60) as source:
        client = await asyncio.to_thread(_subscriber, cluster, "gw-1", received, got)
        try:
            await source.publish([(ACK_TOPIC, b"first")])
            assert await asyncio.to_thread(got.wait, 30)
        finally:
            client.disconnect()
            client.loop_stop()
        assert received == [b"first"]
        got.clear()
        await source.publish([(ACK_TOPIC, b"while away")])  # QoS 1: kept for the persistent session
        client = await asyncio.to_thread(_subscriber, cluster, "gw-1", received, got)
        try:
            assert await asyncio.to_thread(got.wait, 30)
        finally:
            client.disconnect()
            client.loop_stop()
        assert received == [b"first", b"while away"]
        with pytest.raises(PublishFailed):
            await source.publish([("vitalab/v1/site.with.dots/gw/gw-1/ack", b"x")])
        # stored in the stream under the consumer's filter, the acks come to the ingester too, which
        # acknowledges them unread (it ingests telemetry, meta, state and status only)
        await wait_until(lambda: _passed(source, 2), timeout_s=30, what="the acks passed over")
        assert source.backlog == 0


async def _passed(source: NatsSource, n: int) -> bool:
    return source.passed_over >= n


@pytest.mark.asyncio
async def test_a_leaving_ingester_drains_what_it_holds_then_ends(cluster: NatsCluster) -> None:
    work = Workload.build(SITE, devices=2, seconds=100, per_message=10)  # 20 messages
    async with NatsSource(cluster.urls, startup_timeout_s=60) as source:
        with LoadPublisher(cluster.mqtt_target(cluster.nodes[0]), "nats-pub-drain", protocol="3.1.1") as pub:
            for topic, payload in work.messages:
                pub.publish(topic, payload)
            await asyncio.to_thread(pub.wait_acked, 60.0)
        taken = [await source.get()]
        await wait_until(
            lambda: _backlog(source, len(work.messages) - 1), timeout_s=30, what="every message fetched"
        )
        # the first call stops fetching (what is not fetched yet stays for the other ingesters)
        assert not await source.drain(timeout_s=10)  # held and not acked
        assert not await source.end_session()
        while (msg := source.get_nowait()) is not None or len(taken) < len(work.messages):
            taken.append(msg if msg is not None else await source.get())
        for msg in taken:
            assert source.ack(msg)
            assert not source.ack(msg)  # once
        assert source.inflight_bytes == 0
        assert await source.drain(timeout_s=10)
        assert await source.end_session()
    assert {m.topic for m in taken} == {t for t, _ in work.messages}
    assert await _consumer_done(cluster)


async def _backlog(source: NatsSource, n: int) -> bool:
    return source.backlog >= n


@pytest.mark.asyncio
async def test_held_bytes_stay_within_the_bound_plus_one_message_while_the_database_is_down(
    cluster: NatsCluster, database_url: str
) -> None:
    """As on MQTT (tests/ingest/test_inflight_bytes.py): with the database unreachable and large messages in
    the stream, the payloads the source holds never exceed VITALAB_INGEST_MAX_INFLIGHT_BYTES by more than one
    message; the stream keeps the rest, and once the database is back every sample is stored once."""
    bound = 1024 * 1024
    work = Workload.build("gym-nats-bytes", devices=4, seconds=25_000, per_message=2_500)  # 40 of ~150 KB
    sizes = [len(p) for _, p in work.messages]
    largest = max(sizes)
    assert sum(sizes) > 5 * bound
    settings = nats_settings(cluster, ingest_max_inflight_bytes=bound)
    async with relay_to(database_url) as db, open_source(settings, None) as source:
        assert isinstance(source, NatsSource)
        async with watched_ingester(source, db.url, settings) as (ingester, peaks):
            with LoadPublisher(
                cluster.mqtt_target(cluster.nodes[0]), "nats-pub-bytes", protocol="3.1.1"
            ) as pub:
                for topic, payload in work.messages:
                    pub.publish(topic, payload)
                await asyncio.to_thread(pub.wait_acked, 60.0)  # the stream has all of it
            await wait_until(lambda: _true(not ingester.db_ok), timeout_s=30, what="the database found down")
            # the bound is reached: the source fetches no more until acknowledgements free bytes
            await wait_until(lambda: _true(source.inflight_bytes >= bound), timeout_s=30, what="the bound")
            held_while_down = ingester.holding
            await db.up()
            await wait_until(
                lambda: _at_least(database_url, "samples", len(work.expected)), timeout_s=120, what="samples"
            )
    assert held_while_down < len(work.messages)  # the stream kept the rest
    assert source.inflight_bytes_peak < bound + largest  # below the bound, then one message more at most
    assert 0 < peaks["gauge"] < bound + largest
    assert peaks["holding"] * min(sizes) < bound + largest  # counted in messages, independently
    assert source.inflight_bytes == 0
    assert metric(ingester, "vitalab_ingest_db_errors_total") > 0
    assert await count(database_url, "samples") == len(work.expected)
    assert await asyncio.to_thread(stored, database_url) == work.expected


async def _true(value: bool) -> bool:
    return value
