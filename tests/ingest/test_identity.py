"""The identity rule in the ingester (real Mosquitto, real PostgreSQL): a device belongs to one site, and a
message of it under another site's topics is dead-lettered as ``site_mismatch``; under the quarantine policy
only devices in the registry that are not retired are taken.

The test broker is anonymous on purpose: it stands for a broker that does not enforce the identity rule
itself (or an account, like the demo simulator's, that may publish for any device of a site)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

import aiomqtt
import psycopg
import pytest

from tests.conftest import Mosquitto
from tests.support.helpers import count, make_settings, running_ingester, scalar, wait_until
from vitalab.wire import DeviceMeta, DeviceState, Sample, TelemetryMessage, TopicKind, device_topic, encode

pytestmark = pytest.mark.asyncio


def telemetry(device: str, seq: int, t: datetime, power_w: float = 100.0) -> bytes:
    return encode(TelemetryMessage(v=1, device=device, seq=seq, samples=[Sample(t=t, power_w=power_w)]))


def start_time() -> datetime:
    """A minute ago: the ingester judges device clocks against its receive time."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


async def equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def register(url: str, *rows: tuple[str, str]) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for device, site in rows:
            await conn.execute("INSERT INTO sites (site_id) VALUES (%s) ON CONFLICT DO NOTHING", (site,))
            await conn.execute(
                "INSERT INTO devices (device_id, site_id, kind, registered_at) "
                "VALUES (%s, %s, 'bike', now())",
                (device, site),
            )
        await conn.commit()


async def test_a_registered_devices_messages_from_another_site_are_dead_letters(
    mosquitto: Mosquitto, database_url: str
) -> None:
    await register(database_url, ("bike-a", "gym-a"))
    t0 = start_time()
    async with running_ingester(make_settings(ingest_client_id="ingest-id1"), mosquitto.target, database_url):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            wrong = "gym-b"
            await pub.publish(
                device_topic(wrong, "bike-a", TopicKind.TELEMETRY), telemetry("bike-a", 0, t0), qos=1
            )
            meta = DeviceMeta(v=1, device="bike-a", kind="rower", vendor="Spoof")
            await pub.publish(device_topic(wrong, "bike-a", TopicKind.META), encode(meta), qos=1)
            state = DeviceState(v=1, device="bike-a", t=t0, online=False)
            await pub.publish(device_topic(wrong, "bike-a", TopicKind.STATE), encode(state), qos=1)
            await pub.publish(
                device_topic("gym-a", "bike-a", TopicKind.TELEMETRY),
                telemetry("bike-a", 1, t0 + timedelta(seconds=1), 222.0),
                qos=1,
            )
        await wait_until(lambda: count(database_url, "dead_letters"), what="dead letters")
        await wait_until(lambda: equals(count(database_url, "dead_letters"), 3), what="three dead letters")
        await wait_until(lambda: count(database_url, "samples"), what="the sample of its own site")

    assert await scalar(database_url, "SELECT array_agg(DISTINCT reason) FROM dead_letters") == [
        "site_mismatch"
    ]
    details = await scalar(database_url, "SELECT string_agg(detail, ' | ') FROM dead_letters")
    assert isinstance(details, str)
    assert "gym-b" in details
    assert "gym-a" not in details  # the device's own site is not told to gym-b
    assert await scalar(database_url, "SELECT array_agg(site_id || ':' || power_w) FROM samples") == [
        "gym-a:222"
    ]
    # neither its meta nor its state was taken from the other site
    assert await scalar(database_url, "SELECT kind || '/' || coalesce(vendor, '-') FROM devices") == "bike/-"
    assert await scalar(database_url, "SELECT online FROM devices") is None
    assert await count(database_url, "sites", "site_id = 'gym-b'") == 0


async def test_an_unregistered_device_is_bound_to_the_site_it_is_first_heard_at(
    mosquitto: Mosquitto, database_url: str
) -> None:
    """The default ``register`` policy: unknown devices (and sites) appear when first heard of, as before,
    and are bound to that site from then on, within one batch and across batches."""
    t0 = start_time()
    settings = make_settings(ingest_client_id="ingest-id2")
    async with (
        running_ingester(settings, mosquitto.target, database_url),
        aiomqtt.Client("127.0.0.1", mosquitto.port) as pub,
    ):
        for i, site in enumerate(("gym-c", "gym-d")):  # back to back: usually one batch
            topic = device_topic(site, "new-1", TopicKind.TELEMETRY)
            await pub.publish(topic, telemetry("new-1", i, t0 + timedelta(seconds=i)), qos=1)
        await wait_until(lambda: count(database_url, "samples"), what="new-1's first sample")
        await wait_until(lambda: count(database_url, "dead_letters"), what="new-1's second message refused")
        later = device_topic("gym-e", "new-1", TopicKind.TELEMETRY)
        await pub.publish(later, telemetry("new-1", 9, t0 + timedelta(seconds=9)), qos=1)
        await wait_until(lambda: equals(count(database_url, "dead_letters"), 2), what="a later batch refused")
    assert await scalar(database_url, "SELECT site_id FROM devices WHERE device_id = 'new-1'") == "gym-c"
    assert await scalar(database_url, "SELECT array_agg(site_id) FROM samples") == ["gym-c"]
    refused = "SELECT array_agg(split_part(topic, '/', 3) ORDER BY id) FROM dead_letters"
    assert await scalar(database_url, refused) == ["gym-d", "gym-e"]
    assert await scalar(database_url, "SELECT array_agg(site_id ORDER BY site_id) FROM sites") == ["gym-c"]


async def test_a_device_bound_elsewhere_since_the_ingester_last_looked_is_caught_in_the_transaction(
    mosquitto: Mosquitto, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The ingester rereads the devices every 30 s; a device registered (or bound by another ingester) at
    another site meanwhile is not in its memory, so the batch binds it to the topic's site, and the write
    finds the stored site in the same transaction: the batch is rolled back and routed again."""
    caplog.set_level(logging.INFO, logger="ingest.service")
    t0 = start_time()
    settings = make_settings(ingest_client_id="ingest-id3")
    async with (
        running_ingester(settings, mosquitto.target, database_url),
        aiomqtt.Client("127.0.0.1", mosquitto.port) as pub,
    ):
        # once a probe is stored the ingester has read the devices (before its first batch)
        await pub.publish(
            device_topic("gym-a", "probe", TopicKind.TELEMETRY), telemetry("probe", 0, t0), qos=1
        )
        await wait_until(lambda: count(database_url, "samples"), what="the probe")
        await register(database_url, ("late-1", "gym-a"))
        await pub.publish(
            device_topic("gym-b", "late-1", TopicKind.TELEMETRY), telemetry("late-1", 0, t0), qos=1
        )
        await wait_until(lambda: count(database_url, "dead_letters"), what="late-1 refused")
        await pub.publish(
            device_topic("gym-a", "late-1", TopicKind.TELEMETRY), telemetry("late-1", 1, t0, 150.0), qos=1
        )
        await wait_until(
            lambda: count(database_url, "samples", "device_id = 'late-1'"), what="late-1 at home"
        )
    assert await scalar(database_url, "SELECT reason FROM dead_letters") == "site_mismatch"
    assert await scalar(
        database_url, "SELECT array_agg(site_id) FROM samples WHERE device_id = 'late-1'"
    ) == ["gym-a"]
    assert await count(database_url, "sites", "site_id = 'gym-b'") == 0  # the rolled-back batch left nothing
    assert any("routing the batch again" in r.getMessage() for r in caplog.records)


async def test_quarantine_takes_only_registered_devices_that_are_not_retired(
    mosquitto: Mosquitto, database_url: str
) -> None:
    await register(database_url, ("bike-on", "gym-a"), ("bike-gone", "gym-a"))
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute("UPDATE devices SET retired_at = now() WHERE device_id = 'bike-gone'")
        await conn.commit()
    settings = make_settings(ingest_client_id="ingest-id4", ingest_unknown_devices="quarantine")
    t0 = start_time()
    async with running_ingester(settings, mosquitto.target, database_url):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            for device in ("bike-gone", "bike-on"):
                topic = device_topic("gym-a", device, TopicKind.TELEMETRY)
                await pub.publish(topic, telemetry(device, 0, t0), qos=1)
            # nothing makes an unregistered device appear, its meta included
            meta = DeviceMeta(v=1, device="stranger", kind="bike")
            await pub.publish(device_topic("gym-z", "stranger", TopicKind.META), encode(meta), qos=1)
        await wait_until(lambda: equals(count(database_url, "dead_letters"), 2), what="two refusals")
        await wait_until(lambda: count(database_url, "samples"), what="bike-on's sample")
    refused = "SELECT array_agg(device_id || ':' || reason ORDER BY device_id) FROM dead_letters"
    assert await scalar(database_url, refused) == ["bike-gone:unknown_device", "stranger:unknown_device"]
    assert await scalar(database_url, "SELECT array_agg(device_id) FROM samples") == ["bike-on"]
    assert await count(database_url, "devices", "device_id = 'stranger'") == 0
    assert await count(database_url, "sites", "site_id = 'gym-z'") == 0
