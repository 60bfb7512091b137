"""What happens to a message outside the topic tree: the ingester subscribes only to the topics it stores, so
it never receives one and dead-letters none; the broker tells an MQTT 5 publisher that nobody took it (PUBACK
0x10 "No matching subscribers"). With the deployment's ACL a device cannot publish there at all (its account
may publish its own four topics only: tests/broker/test_accounts.py). A message on a subscribed topic whose
ids break the contract is dead-lettered (``bad_topic``). Real Mosquitto, real PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from tests.broker.clients import Connector
from tests.conftest import Mosquitto
from tests.support.helpers import count, make_settings, running_ingester, scalar, wait_until
from tests.support.workload import Workload

NO_MATCHING_SUBSCRIBERS = 0x10


@pytest.mark.asyncio
@pytest.mark.parametrize("share_group", ["ingest", None], ids=["shared", "plain"])
async def test_topics_outside_the_tree_reach_no_ingester_and_the_publisher_is_told(
    mosquitto: Mosquitto, database_url: str, share_group: str | None
) -> None:
    good = Workload.build("gym-a", devices=1, seconds=5, per_message=5, prefix="bike")
    topic, payload = good.messages[0]  # vitalab/v1/gym-a/dev/bike-000/telemetry
    outside = [
        topic.replace("/telemetry", "/telemetri"),  # a misspelt kind
        topic.replace("vitalab/v1/", "vitalab/v2/"),  # another version of the tree
        topic + "/extra",  # deeper than the tree
        topic.replace("/dev/", "/device/"),
        "vitalab/v1/gym-a/dev/bike-000/ack",  # the contract's acknowledgements: published, never ingested
        "gyms/gym-a/bike-000/telemetry",
    ]
    bad_id = topic.replace(
        "/gym-a/", "/gym a/"
    )  # the shape of a subscribed topic, a site id the tree refuses
    settings = make_settings(ingest_client_id="ingest-topics", ingest_share_group=share_group)
    async with running_ingester(settings, mosquitto.target, database_url) as ingester:
        connector = Connector("127.0.0.1", mosquitto.port)  # MQTT 5, keeps each PUBACK's reason code
        try:
            pub = await asyncio.to_thread(connector, None)
            told = [(await asyncio.to_thread(pub.publish, t, payload)).value for t in outside]
            refused = (await asyncio.to_thread(pub.publish, bad_id, payload)).value
            stored = (await asyncio.to_thread(pub.publish, topic, payload)).value  # last: arrives last
        finally:
            await asyncio.to_thread(connector.close)
        await wait_until(lambda: _samples(database_url, 5), what="the good message's samples")
        await wait_until(lambda: _dead(database_url, 1), what="the bad id's dead letter")
        taken = ingester.metrics.registry.get_sample_value("vitalab_ingest_messages_total", {"kind": "all"})
    assert told == [NO_MATCHING_SUBSCRIBERS] * len(outside)  # the broker said nobody took them
    assert refused == 0
    assert stored == 0
    assert taken == 2  # the ingester received the bad id and the good message, nothing else
    assert await count(database_url, "dead_letters") == 1
    assert await scalar(database_url, "SELECT reason FROM dead_letters") == "bad_topic"
    assert await scalar(database_url, "SELECT topic FROM dead_letters") == bad_id


async def _samples(url: str, n: int) -> bool:
    return await count(url, "samples") >= n


async def _dead(url: str, n: int) -> bool:
    return await count(url, "dead_letters") >= n
