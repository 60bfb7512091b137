"""Simulated devices → Mosquitto → ingester → PostgreSQL → API: every sample exactly once."""

from __future__ import annotations

import httpx
import pytest

from ingest.service import Ingester
from simulators.fleet import Fleet
from simulators.publisher import FleetPublisher, gateway_client, history_start
from tests.conftest import Mosquitto
from tests.support.helpers import count, make_settings, running_api, running_ingester, wait_until

pytestmark = pytest.mark.asyncio


async def test_fleet_to_api_every_sample_exactly_once(mosquitto: Mosquitto, database_url: str) -> None:
    settings = make_settings(site="e2e-gym", ingest_client_id="ingest-e2e", ingest_batch_rows=500)
    fleet = Fleet.build("e2e-gym", 12, seed=42)
    seconds = 120
    async with running_ingester(settings, mosquitto.target, database_url) as ingester:
        async with gateway_client(mosquitto.target, "gw-e2e", "e2e-gym") as client:
            publisher = FleetPublisher(client, fleet, "gw-e2e")
            await publisher.announce()
            start = history_start(seconds)
            await publisher.backfill(start, seconds, samples_per_message=10)
            # the first 30 s again, as a gateway replaying its buffer after a reconnect would:
            # the same seed and start give the same samples with the same timestamps
            replay = FleetPublisher(client, Fleet.build("e2e-gym", 12, seed=42), "gw-e2e")
            await replay.backfill(start, 30, samples_per_message=10)
        log = publisher.log
        for device, stamps in replay.log.samples.items():
            assert stamps == log.samples[device][:30]
        assert log.total_samples == 12 * seconds
        sent = log.total_samples + replay.log.total_samples
        await wait_until(lambda: _received(ingester, sent), what="every published sample taken and committed")
        assert await count(database_url, "samples") == log.total_samples
        assert ingester.metrics.registry.get_sample_value("vitalab_ingest_samples_duplicate_total") == 12 * 30
        async with (
            running_api(settings, database_url) as api,
            httpx.AsyncClient(base_url=api.url, headers=api.headers) as http,
        ):
            devices = (await http.get("/v1/devices", params={"site": "e2e-gym"})).json()
            assert sorted(d["device_id"] for d in devices) == sorted(d.device_id for d in fleet.devices)
            assert {d["kind"] for d in devices} == {"bike", "treadmill", "rower", "hr_strap"}
            assert all(d["online"] for d in devices)
            for dev in fleet.devices:
                r = await http.get(f"/v1/devices/{dev.device_id}/samples", params={"limit": 10_000})
                assert r.status_code == 200
                got = [s["t"] for s in r.json()]
                want = [t.isoformat().replace("+00:00", "Z") for t in log.samples[dev.device_id]]
                assert got == want, dev.device_id  # all of them, once, in time order
            latest = (await http.get("/v1/samples/latest", params={"site": "e2e-gym"})).json()
            assert len(latest) == 12
            for row in latest:
                assert row["t"] == log.samples[row["device_id"]][-1].isoformat().replace("+00:00", "Z")
            strap = next(d for d in fleet.devices if d.kind == "hr_strap")
            rr = await http.get(
                f"/v1/devices/{strap.device_id}/rr",
                params={"since": log.samples[strap.device_id][0].isoformat()},
            )
            assert rr.status_code == 200
            beats = rr.json()
            assert len(beats) > seconds  # > 1 beat per second
            assert all(250 <= b["rr_ms"] <= 2000 for b in beats)
            health = (await http.get("/health")).json()
            assert health["database"] is True
    # the replayed 30 s made no extra rows
    assert await count(database_url, "samples") == 12 * seconds
    assert await count(database_url, "dead_letters") == 0


async def _received(ingester: Ingester, expected: int) -> bool:
    return ingester.metrics.registry.get_sample_value("vitalab_ingest_samples_total") == expected
