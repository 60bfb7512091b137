"""The ingester's commit acknowledgements (vitalab.wire.acks), against a real broker and database: after a
commit, and never before it, each sender is told which of its telemetry messages are stored or
dead-lettered, on its own ack topic."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiomqtt
import psycopg
import pytest

from tests.conftest import Mosquitto
from tests.support.helpers import count, make_settings, metric, running_ingester, wait_until
from vitalab.db import migrate
from vitalab.wire import (
    CommitAck,
    Sample,
    TelemetryMessage,
    ack_subscription,
    decode_ack,
    encode,
    telemetry_topic,
)

SITE = "acks"
STORED_AT_ACK: set[tuple[str, int]] = set()


def _telemetry(device: str, seq: int, t: datetime, gw: str | None, ack: bool = True) -> tuple[str, bytes]:
    msg = TelemetryMessage(v=1, device=device, seq=seq, samples=[Sample(t=t, hr_bpm=100)], gw=gw, ack=ack)
    return telemetry_topic(SITE, device), encode(msg)


@contextlib.asynccontextmanager
async def _ack_reader(
    mosquitto: Mosquitto, database_url: str | None = None
) -> AsyncIterator[list[tuple[str, CommitAck]]]:
    """Every ack published on the site's ack topics, as it arrives. With ``database_url``, each acked
    (device, seq) whose rows are in the database at the moment its ack arrives goes to ``STORED_AT_ACK``."""
    got: list[tuple[str, CommitAck]] = []
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="ack-reader") as client:
        await client.subscribe(ack_subscription("gw", site=SITE), qos=1)
        await client.subscribe(ack_subscription("dev", site=SITE), qos=1)

        async def read() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                ack = decode_ack(message.payload)
                got.append((str(message.topic), ack))
                if database_url is not None:
                    async with await psycopg.AsyncConnection.connect(database_url) as conn:
                        cur = await conn.execute(
                            "SELECT DISTINCT device_id, seq FROM samples WHERE device_id = ANY(%s)",
                            ([a.device for a in ack.acks],),
                        )
                        STORED_AT_ACK.update((d, int(s)) for d, s in await cur.fetchall())

        task = asyncio.create_task(read())
        try:
            yield got
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _acked(got: list[tuple[str, CommitAck]]) -> dict[str, set[tuple[str, int]]]:
    """ack topic -> {(device, seq)} acknowledged on it."""
    out: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for topic, ack in got:
        for device_ack in ack.acks:
            for lo, hi in device_ack.seqs:
                out[topic].update((device_ack.device, s) for s in range(lo, hi + 1))
    return out


async def _blocked_writers(url: str) -> int:
    value = await count(url, "pg_stat_activity", "wait_event_type = 'Lock' AND datname = current_database()")
    return value


@pytest.mark.asyncio
async def test_acks_name_each_senders_committed_messages_and_only_after_the_commit(
    mosquitto: Mosquitto, database_url: str
) -> None:
    await asyncio.to_thread(migrate, database_url)
    STORED_AT_ACK.clear()
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    messages = [_telemetry("bike-1", s, t0 + timedelta(seconds=s), "gw-1") for s in range(20)]
    messages += [_telemetry("hr-2", s, t0 + timedelta(seconds=s), "gw-1") for s in (3, 4, 7)]
    messages += [_telemetry("row-3", s, t0 + timedelta(seconds=s), None) for s in range(5)]
    # dead-lettered, but readable: acknowledged too (the ingester is done with it)
    stale = TelemetryMessage(
        v=1, device="row-3", seq=5, samples=[Sample(t=t0 - timedelta(days=900))], ack=True
    )
    messages.append((telemetry_topic(SITE, "row-3"), encode(stale)))
    # unreadable: dead-lettered, acknowledged to nobody
    messages.append((telemetry_topic(SITE, "row-3"), b"{not json"))
    # a device that asks for no acks gets none (it would not listen)
    messages += [_telemetry("quiet-4", s, t0 + timedelta(seconds=s), None, ack=False) for s in range(2)]

    settings = make_settings(ingest_client_id="ingest-acks", ingest_share_group="")
    async with (
        _ack_reader(mosquitto, database_url) as got,
        running_ingester(settings, mosquitto.target, database_url) as ingester,
        await psycopg.AsyncConnection.connect(database_url) as blocker,
    ):
        # hold the samples table: the ingester takes the messages and its write waits for the lock
        await blocker.execute("LOCK TABLE samples IN EXCLUSIVE MODE")
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="acks-pub") as pub:
            for topic, payload in messages:
                await pub.publish(topic, payload, qos=1)
            await wait_until(
                lambda: _blocked_writers(database_url), what="the ingester's write waiting for the lock"
            )
            # a round trip through the broker after the write began: an ack sent before the commit is here
            await pub.publish(telemetry_topic(SITE, "marker"), b"", qos=1)
        assert got == []
        await blocker.commit()  # the write goes on and commits

        async def all_acked() -> bool:
            return sum(len(v) for v in _acked(got).values()) == 29

        await wait_until(all_acked, what="acks of every readable message")
        assert await count(database_url, "samples") == 30

        async def dead_letters() -> bool:  # stale, unreadable, marker
            return await count(database_url, "dead_letters") == 3

        await wait_until(dead_letters, what="3 dead letters")

    acked = _acked(got)
    assert set(acked) == {f"vitalab/v1/{SITE}/gw/gw-1/ack", f"vitalab/v1/{SITE}/dev/row-3/ack"}
    assert acked[f"vitalab/v1/{SITE}/gw/gw-1/ack"] == {("bike-1", s) for s in range(20)} | {
        ("hr-2", s) for s in (3, 4, 7)
    }
    assert acked[f"vitalab/v1/{SITE}/dev/row-3/ack"] == {("row-3", s) for s in range(6)}
    # every acked message that has rows had them committed when its ack arrived
    with_rows = {(d, s) for v in acked.values() for d, s in v} - {("row-3", 5)}
    assert with_rows <= STORED_AT_ACK
    # ranges, not lists: ascending, merged
    for _, ack in got:
        for a in ack.acks:
            assert all(hi + 1 < lo for (_, hi), (lo, _) in zip(a.seqs, a.seqs[1:], strict=False))
    assert metric(ingester, "vitalab_ingest_commit_acks_total") == len(got)


@pytest.mark.asyncio
async def test_no_acks_when_switched_off(mosquitto: Mosquitto, database_url: str) -> None:
    await asyncio.to_thread(migrate, database_url)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    settings = make_settings(
        ingest_client_id="ingest-noacks", ingest_share_group="", ingest_commit_acks=False
    )
    async with (
        _ack_reader(mosquitto) as got,
        running_ingester(settings, mosquitto.target, database_url) as ingester,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="noacks-pub") as pub,
    ):
        for s in range(5):
            await pub.publish(*_telemetry("bike-1", s, t0 + timedelta(seconds=s), "gw-1"), qos=1)

        async def stored() -> bool:
            return await count(database_url, "samples") == 5

        await wait_until(stored, what="5 rows")
        # the reader is subscribed before the ingester's commit: a round trip through the broker shows it
        # would have had an ack by now
        await pub.publish(f"vitalab/v1/{SITE}/gw/gw-1/ack", encode_marker(), qos=1)
        await wait_until(lambda: _has(got, 1), what="the marker")
    assert len(got) == 1
    assert metric(ingester, "vitalab_ingest_commit_acks_total") == 0


def encode_marker() -> bytes:
    return b'{"v":1,"acks":[{"device":"marker","seqs":[[0,0]]}]}'


async def _has(got: list[tuple[str, CommitAck]], n: int) -> bool:
    return len(got) >= n
