"""vitalab.embedded.embedded_broker_with_accounts: the in-process broker of `vitalab up` with accounts,
wired as the platform would wire it (a persistent store in the data directory, fresh passwords for the
in-process clients at every start)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.broker.clients import Connector, assert_not_authorized, token
from vitalab.broker import MosquittoAuth, Role
from vitalab.broker.amqtt_auth import LiveAccounts
from vitalab.embedded import embedded_broker_with_accounts

pytestmark = pytest.mark.asyncio


async def test_platform_wiring(tmp_path: Path) -> None:
    auth = MosquittoAuth(tmp_path / "broker")
    device = auth.add_device("bike-01", "demo")  # registered through the API in an earlier run
    live = LiveAccounts(auth.accounts())
    auth.reloader = live
    ingest = auth.issue_service(Role.INGESTER, "ingest")
    simulated = auth.issue_gateway("sim-gw", "demo", ["bike-002", "strap-003"])

    async with embedded_broker_with_accounts(live, port=0) as target:
        assert (target.username, target.password) == (None, None)
        ingest_target = dataclasses.replace(target, username=ingest.username, password=ingest.password)
        connector = Connector(ingest_target.host, ingest_target.port, mqtt.MQTTv311)
        try:
            assert_not_authorized(await asyncio.to_thread(connector, None))
            reader = await asyncio.to_thread(connector.login, "ingest", ingest.password)
            await asyncio.to_thread(reader.subscribe, "vitalab/v1/+/dev/+/telemetry")
            gateway = await asyncio.to_thread(connector.login, "sim-gw", simulated.password)
            topic, payload = "vitalab/v1/demo/dev/strap-003/telemetry", token()
            await asyncio.to_thread(gateway.publish, topic, payload)
            message = await asyncio.to_thread(reader.next_message)
            assert (message.topic, message.payload) == (topic, payload)

            own = await asyncio.to_thread(connector.login, "bike-01", device.password)
            auth.revoke("bike-01")  # what the API does when a device is retired
            assert await asyncio.to_thread(own.disconnected.wait, 10)
            assert_not_authorized(await asyncio.to_thread(connector, "bike-01", device.password))

            # the next start issues new passwords: the old ones stop working at once
            fresh = auth.issue_service(Role.INGESTER, "ingest")
            assert await asyncio.to_thread(reader.disconnected.wait, 10)
            assert_not_authorized(await asyncio.to_thread(connector, "ingest", ingest.password))
            await asyncio.to_thread(connector.login, "ingest", fresh.password)
        finally:
            await asyncio.to_thread(connector.close)
    # the broker is gone: a later change must not try to reach it
    auth.revoke("sim-gw")
