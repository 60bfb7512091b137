"""In-flight memory is bounded in bytes: with the database down and large messages arriving, the payload bytes
an ingester holds (received, not yet acknowledged) never exceed ``VITALAB_INGEST_MAX_INFLIGHT_BYTES`` plus
one message; the broker keeps the rest. When the database returns, everything is stored. A message larger
than the bound is still taken, alone. Real Mosquitto, real PostgreSQL behind a TCP relay the test can cut."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from ingest.mqtt import MqttSource
from ingest.service import IngestConfig, Ingester, router_from_settings, subscriptions
from simulators.loadgen import LoadPublisher
from tests.conftest import Mosquitto
from tests.support.helpers import count, make_settings, metric, wait_until, watched_ingester
from tests.support.relay import relay_to
from tests.support.workload import Workload, stored


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "bound",
    [1024 * 1024, 64 * 1024],  # about 7 messages; smaller than any one message
    ids=["about-7-messages", "smaller-than-a-message"],
)
async def test_held_bytes_stay_within_the_bound_while_the_database_is_down(
    mosquitto: Mosquitto, database_url: str, bound: int
) -> None:
    # 40 messages of about 150 KB (2,500 samples each), 100,000 samples: 6 MB, far more than the bound
    work = Workload.build("bytes", devices=4, seconds=25_000, per_message=2_500)
    sizes = [len(p) for _, p in work.messages]
    largest = max(sizes)
    assert min(sizes) > 64 * 1024
    assert sum(sizes) > 5 * bound
    settings = make_settings(ingest_client_id="ingest-bytes")
    async with (
        relay_to(database_url) as db,
        MqttSource(
            mosquitto.target, client_id="ingest-bytes", filters=subscriptions(None), max_inflight_bytes=bound
        ) as source,
        watched_ingester(source, db.url, settings) as (ingester, peaks),
    ):
        await source.wait_subscribed()
        with LoadPublisher(mosquitto.target, "pub-bytes") as pub:
            for topic, payload in work.messages:
                pub.publish(topic, payload)
            await asyncio.to_thread(pub.wait_acked, 60)  # the broker has all of it
        await wait_until(lambda: _is(not ingester.db_ok), what="the database found down")
        # the bound is reached: the ingester takes no more until acknowledgements free bytes
        await wait_until(lambda: _is(source.inflight_bytes + largest > bound), what="the bound reached")
        held_while_down = ingester.holding
        await db.up()
        await wait_until(
            lambda: _stored(database_url, len(work.expected)), timeout_s=120, what="every sample"
        )
    assert held_while_down < len(work.messages)  # the broker kept the rest
    assert source.inflight_bytes_peak <= max(bound, largest)  # never more than the bound, or one message
    assert peaks["gauge"] <= max(bound, largest)
    assert peaks["holding"] * min(sizes) <= max(bound, largest)  # counted in messages, independently
    if bound < min(sizes):
        assert peaks["holding"] == 1  # a message larger than the bound is taken alone
    assert source.inflight_bytes == 0
    assert metric(ingester, "vitalab_ingest_db_errors_total") > 0
    assert stored(database_url) == work.expected


async def _is(value: bool) -> bool:
    return value


async def _stored(url: str, n: int) -> bool:
    return await count(url, "samples") >= n


@pytest.mark.asyncio
async def test_a_long_outage_at_the_bound_loses_the_connection_and_nothing_else(
    mosquitto: Mosquitto, database_url: str
) -> None:
    """At the bound, paho's network thread waits, so no keepalive goes out: a database outage longer than
    1.5 x the keepalive makes the broker close the connection. Once the database is back the ingester
    reconnects, the broker sends again what was not acknowledged, and everything is stored once."""
    work = Workload.build("long", devices=4, seconds=10_000, per_message=2_500)  # 16 messages of ~150 KB
    largest = max(len(p) for _, p in work.messages)
    bound = 2 * largest
    settings = make_settings(ingest_client_id="ingest-long")
    log = mosquitto.workdir / "mosquitto.log"
    async with (
        relay_to(database_url) as db,
        MqttSource(
            mosquitto.target,
            client_id="ingest-long",
            filters=subscriptions(None),
            max_inflight_bytes=bound,
            keepalive_s=2,
        ) as source,
    ):
        ingester = Ingester(
            source, db.url, router=router_from_settings(settings), config=IngestConfig(retry_max_s=0.5)
        )
        task = asyncio.create_task(ingester.run())
        try:
            await source.wait_subscribed()
            with LoadPublisher(mosquitto.target, "pub-long") as pub:
                for topic, payload in work.messages:
                    pub.publish(topic, payload)
                await asyncio.to_thread(pub.wait_acked, 60)
            await wait_until(
                lambda: _is("ingest-long has exceeded timeout" in log.read_text(errors="replace")),
                what="the broker closing the silent connection",
            )
            await db.up()
            await wait_until(
                lambda: _stored(database_url, len(work.expected)), timeout_s=120, what="every sample"
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert source.inflight_bytes_peak <= bound
    assert metric(ingester, "vitalab_ingest_redelivered_total") > 0  # sent again after the reconnect
    assert await count(database_url, "samples") == len(work.expected)
    assert stored(database_url) == work.expected


@pytest.mark.asyncio
async def test_commit_acks_do_not_stall_ingestion_at_the_bound(
    mosquitto: Mosquitto, database_url: str
) -> None:
    """The PUBACKs of the ingester's commit acks come on the connection that brings the telemetry, behind
    what the broker has sent already; at the byte bound paho's network thread waits for a commit to free
    bytes and reads nothing. The commit path must therefore never wait for those PUBACKs: here, one message
    per batch and far more telemetry sent than the bound lets in, every ack is confirmed (none waits until
    the publish timeout) and every message is stored."""
    work = Workload.build("stall", devices=4, seconds=100, per_message=1, ack=True)  # 400 small messages
    largest = max(len(p) for _, p in work.messages)
    settings = make_settings(ingest_client_id="ingest-stall")
    async with MqttSource(
        mosquitto.target,
        client_id="ingest-stall",
        filters=subscriptions(None),
        max_inflight_bytes=2 * largest,
        publish_timeout_s=20.0,  # a stall waits this long; 400 commits take far less
    ) as source:
        ingester = Ingester(
            source, database_url, router=router_from_settings(settings), config=IngestConfig(batch_rows=1)
        )
        task = asyncio.create_task(ingester.run())
        try:
            await source.wait_subscribed()
            with LoadPublisher(mosquitto.target, "pub-stall", commit_acks=True, ack_timeout_s=600) as pub:
                for topic, payload in work.messages:
                    pub.publish(topic, payload)
                await asyncio.to_thread(pub.wait_acked, 120)  # a commit ack for every message
                assert pub.resent_unacked == 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert metric(ingester, "vitalab_ingest_commit_ack_failures_total") == 0  # none waited until the timeout
    assert ingester.committed_batches >= len(work.messages) - 1
    assert stored(database_url) == work.expected
