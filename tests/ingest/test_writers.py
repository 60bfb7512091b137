"""Several writers: batches are written at once on their own connections, and acknowledged in order.

Batch 1 (device A) is held in its transaction by a row lock a test connection takes on A's registry row;
batch 2 (device B) comes after it. With two writers, batch 2 commits while batch 1 waits, but none of its
messages is acknowledged before batch 1's are (MQTT wants PUBACKs in the order the messages came). With one
writer, batch 2 waits for batch 1. A real Mosquitto and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from ingest.mqtt import MqttSource
from ingest.service import IngestConfig, Ingester, router_from_settings, subscriptions
from ingest.source import Inbound
from simulators.loadgen import LoadPublisher
from tests.conftest import Mosquitto
from tests.support.helpers import count, make_settings, wait_until
from vitalab.wire import Sample, TelemetryMessage, TopicKind, device_topic, encode

pytestmark = pytest.mark.asyncio

SITE = "gym-writers"


class RecordingAcks(MqttSource):
    """An MQTT source that remembers the order of its acknowledgements (and still sends them)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.acked: list[str] = []

    def ack(self, msg: Inbound) -> bool:
        self.acked.append(msg.topic.split("/")[4])  # vitalab/v1/{site}/dev/{device}/telemetry
        return super().ack(msg)


def _messages(device: str, n: int) -> list[tuple[str, bytes]]:
    """``n`` messages of 5 samples, an hour old (the contract takes samples within 400 days of receipt)."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    topic = device_topic(SITE, device, TopicKind.TELEMETRY)
    return [
        (
            topic,
            encode(
                TelemetryMessage(
                    v=1,
                    device=device,
                    seq=seq,
                    samples=[Sample(t=start + timedelta(seconds=seq * 5 + i), hr_bpm=120) for i in range(5)],
                )
            ),
        )
        for seq in range(n)
    ]


async def _stored(url: str, device: str) -> int:
    return await count(url, "samples", f"device_id = '{device}'")


@pytest.mark.parametrize("writers", [2, 1])
async def test_a_held_batch_does_not_hold_the_next_writer_and_acks_stay_in_order(
    mosquitto: Mosquitto, database_url: str, writers: int
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO sites (site_id) VALUES (%s)", (SITE,))
        conn.execute(
            "INSERT INTO devices (device_id, site_id) VALUES ('dev-a', %(s)s), ('dev-b', %(s)s)", {"s": SITE}
        )
    settings = make_settings(ingest_client_id=f"ingest-writers-{writers}", ingest_share_group=None)
    config = IngestConfig(batch_rows=10_000, batch_age_s=0.05, writers=writers)
    a, b = _messages("dev-a", 20), _messages("dev-b", 20)
    with psycopg.connect(database_url) as lock:
        lock.execute("SELECT 1 FROM devices WHERE device_id = 'dev-a' FOR UPDATE")  # held until the commit
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
                    await wait_until(
                        lambda: _is(_stored(database_url, "dev-b"), 100), what="batch 2 committed"
                    )
                    assert ingester.holding == len(a) + len(b)  # nothing acknowledged: batch 1 comes first
                else:
                    await asyncio.sleep(1.0)
                    assert await _stored(database_url, "dev-b") == 0  # one writer: batch 2 waits
                assert source.acked == []
                assert await _stored(database_url, "dev-a") == 0
                lock.commit()  # batch 1 goes on
                await wait_until(lambda: _is(_stored(database_url, "dev-a"), 100), what="batch 1 committed")
                await wait_until(lambda: _is(_stored(database_url, "dev-b"), 100), what="batch 2 committed")
                await wait_until(lambda: _is(_len(source.acked), 40), what="40 acknowledgements")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    assert source.acked == ["dev-a"] * len(a) + ["dev-b"] * len(b)
    assert ingester.holding == 0


async def _is(value: object, expected: int) -> bool:
    got = await value  # type: ignore[misc]
    return bool(got == expected)


async def _len(items: list[str]) -> int:
    return len(items)
