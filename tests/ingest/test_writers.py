"""Several writers: batches are written at once on their own connections, and acknowledged in order.

Batch 1 (device A) is held in its transaction by a row lock a test connection takes on A's registry row;
batch 2 (device B) comes after it. With two writers, batch 2 commits while batch 1 waits, but none of its
messages is acknowledged before batch 1's are (MQTT wants PUBACKs in the order the messages came). With one
writer, batch 2 waits for batch 1. A real Mosquitto and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
import pytest

from ingest.mqtt import MqttSource
from ingest.service import IngestConfig, Ingester, router_from_settings, subscriptions
from ingest.source import Inbound
from simulators.loadgen import LoadPublisher
from tests.conftest import Mosquitto
from tests.support.helpers import count, make_settings, wait_until
from tests.support.workload import Workload
from vitalab.wire import parse_topic

pytestmark = pytest.mark.asyncio

SITE = "gym-writers"
A, B = "a-000", "b-000"
"""The devices of batch 1 and of batch 2 (Workload's names for prefixes a and b)."""


class RecordingAcks(MqttSource):
    """An MQTT source that remembers the order of its acknowledgements (and still sends them)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.acked: list[str] = []

    def ack(self, msg: Inbound) -> bool:
        self.acked.append(parse_topic(msg.topic).source)
        return super().ack(msg)


async def _stored(url: str, device: str) -> int:
    return await count(url, "samples", f"device_id = '{device}'")


@pytest.mark.parametrize("writers", [2, 1])
async def test_a_held_batch_does_not_hold_the_next_writer_and_acks_stay_in_order(
    mosquitto: Mosquitto, database_url: str, writers: int
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO sites (site_id) VALUES (%s)", (SITE,))
        conn.execute(
            "INSERT INTO devices (device_id, site_id) VALUES (%(a)s, %(s)s), (%(b)s, %(s)s)",
            {"a": A, "b": B, "s": SITE},
        )
    settings = make_settings(ingest_client_id=f"ingest-writers-{writers}", ingest_share_group=None)
    config = IngestConfig(batch_rows=10_000, batch_age_s=0.05, writers=writers)
    # 20 messages of 5 samples each
    a = Workload.build(SITE, devices=1, seconds=100, per_message=5, prefix="a").messages
    b = Workload.build(SITE, devices=1, seconds=100, per_message=5, prefix="b").messages
    with psycopg.connect(database_url) as lock:
        lock.execute("SELECT 1 FROM devices WHERE device_id = %s FOR UPDATE", (A,))  # held until the commit
        async with RecordingAcks(
            mosquitto.target, client_id=settings.ingest_client_id, filters=subscriptions(None)
        ) as source:
            ingester = Ingester(source, database_url, router=router_from_settings(settings), config=config)
            task = asyncio.create_task(ingester.run())
            try:
                await source.wait_subscribed()
                with LoadPublisher(mosquitto.target, f"pub-writers-{writers}") as pub:
                    for t, p in a:
                        pub.publish(t, p)
                    await asyncio.to_thread(pub.wait_acked)
                    await asyncio.sleep(0.5)  # batch 1 is cut (its age) and waits on the lock
                    for t, p in b:
                        pub.publish(t, p)
                    await asyncio.to_thread(pub.wait_acked)
                if writers == 2:
                    await wait_until(lambda: _is(_stored(database_url, B), 100), what="batch 2 committed")
                    assert ingester.holding == len(a) + len(b)  # nothing acknowledged: batch 1 comes first
                else:
                    await asyncio.sleep(1.0)
                    assert await _stored(database_url, B) == 0  # one writer: batch 2 waits
                assert source.acked == []
                assert await _stored(database_url, A) == 0
                lock.commit()  # batch 1 goes on
                await wait_until(lambda: _is(_stored(database_url, A), 100), what="batch 1 committed")
                await wait_until(lambda: _is(_stored(database_url, B), 100), what="batch 2 committed")
                await wait_until(lambda: _is(_len(source.acked), 40), what="40 acknowledgements")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    assert source.acked == [A] * len(a) + [B] * len(b)
    assert ingester.holding == 0


async def _is(value: object, expected: int) -> bool:
    got = await value  # type: ignore[misc]
    return bool(got == expected)


async def _len(items: list[str]) -> int:
    return len(items)
