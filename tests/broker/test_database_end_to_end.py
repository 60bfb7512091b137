"""The issue's proof: a device's message to another device's topic never reaches the database.

The real ingester logs in with its own (read-only) account and writes to PostgreSQL; Mosquitto runs with
MQTT 5 and the shared subscription as in compose, the embedded amqtt broker with MQTT 3.1.1 and a plain
subscription as in ``vitalab up``. Samples carry times a minute before now because the ingester itself
rejects implausible device clocks.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from tests.broker.clients import Connector, Session
from tests.broker.conftest import BrokerUnderTest
from tests.support.helpers import count, make_settings, running_ingester
from vitalab.broker import Role
from vitalab.settings import MqttTarget
from vitalab.wire import Sample, TelemetryMessage, encode, telemetry_topic

pytestmark = pytest.mark.asyncio

SITE = "gym-a"


def telemetry(device: str, seq: int, t: datetime, power_w: float) -> bytes:
    return encode(TelemetryMessage(v=1, device=device, seq=seq, samples=[Sample(t=t, power_w=power_w)]))


async def wait_for_rows(database_url: str, where: str, *, timeout_s: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if await count(database_url, "samples", where) > 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def publish(session: Session, topic: str, payload: bytes) -> int:
    reason = await asyncio.to_thread(session.publish, topic, payload)
    return int(reason.value)


async def test_spoofed_telemetry_never_reaches_the_database(
    broker: BrokerUnderTest, connect: Connector, database_url: str
) -> None:
    auth = broker.auth
    device = broker.keep(auth.add_device("dev-a", SITE))
    broker.keep(auth.add_device("dev-b", SITE))
    ingest = broker.keep(auth.add_service(Role.INGESTER, "ingest"))
    mosquitto = broker.kind == "mosquitto"
    settings = make_settings(
        ingest_client_id="ingest-e2e",
        mqtt_protocol="5" if mosquitto else "3.1.1",
        ingest_share_group="ingest" if mosquitto else "",
    )
    target = MqttTarget(host=broker.host, port=broker.port, username="ingest", password=ingest.password)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    session = await asyncio.to_thread(connect.login, "dev-a", device.password)

    async with running_ingester(settings, target, database_url):
        # until the ingester has subscribed, messages have nowhere to go: probe until one is stored
        for seq in range(200):
            await publish(session, telemetry_topic(SITE, "dev-a"), telemetry("dev-a", seq, start, 100.0))
            if await wait_for_rows(database_url, "device_id = 'dev-a'", timeout_s=0.5):
                break
        else:
            pytest.fail("the ingester never stored dev-a's telemetry")

        spoof = await publish(
            session,
            telemetry_topic(SITE, "dev-b"),
            telemetry("dev-b", 1, start + timedelta(seconds=1), 999.0),
        )
        if mosquitto:
            assert spoof == 0x87
        await publish(
            session,
            telemetry_topic(SITE, "dev-a"),
            telemetry("dev-a", 1000, start + timedelta(seconds=2), 222.0),
        )
        # one publisher connection, one subscriber, in order: the spoof would be stored with or before this
        assert await wait_for_rows(database_url, "device_id = 'dev-a' AND power_w = 222", timeout_s=20)

    assert await count(database_url, "samples", "device_id = 'dev-b'") == 0
    assert await count(database_url, "devices", "device_id = 'dev-b'") == 0
