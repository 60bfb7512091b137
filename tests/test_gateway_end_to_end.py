"""Simulated raw-frame devices -> gateway -> Mosquitto -> ingester -> PostgreSQL, with faults, a broker
restart mid-run and machines that break the specification (identified by their Device Information Service,
nobody names them): every valid sample exactly once, and the simulator's fault log and the database
agree."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import pytest

from gateway.buffer import Buffer
from gateway.publisher import GatewayPublisher
from gateway.service import GatewayService
from simulators.faults import FaultInjector, FaultRates
from simulators.fleet import MIX_ALL, Fleet
from simulators.publisher import history_start
from simulators.rawfleet import RawFleet, SimTransport
from tests.conftest import Mosquitto
from tests.support.helpers import count, make_settings, running_ingester, wait_until
from tests.support.workload import stored

pytestmark = pytest.mark.asyncio

SITE = "raw-gym"
RATES = FaultRates(
    drop=0.03,
    malformed=0.03,
    dropout=0.05,
    device_error=0.003,
    storm=0.02,
    storm_share=0.3,
    storm_ticks=4,
    uplink_storm=0.02,
)


async def test_raw_fleet_through_gateway_exactly_once_with_faults_and_broker_restart(
    mosquitto: Mosquitto, database_url: str, tmp_path: Path
) -> None:
    seconds = 240
    injector = FaultInjector(RATES, seed=9)
    fleet = RawFleet(
        Fleet.build(SITE, 12, seed=21, mix=MIX_ALL, class_share=0.5), 0.5, injector, quirky_share=0.5
    )
    assert any(d.quirk for d in fleet.devices)  # machines that break the spec, identified by their DIS
    settings = make_settings(site=SITE, ingest_client_id="ingest-gw-e2e")  # shared subscription (0x10)
    async with running_ingester(settings, mosquitto.target, database_url):
        async with GatewayPublisher(
            mosquitto.target, SITE, "gw-e2e", tmp_path / "gw.sqlite", batch_samples=5, batch_age_s=0.3
        ) as pub:
            transport = SimTransport(
                fleet, history_start(seconds), seconds, speed=60.0, on_uplink_storm=pub.drop_connection
            )
            service = GatewayService(pub, [transport])
            run = asyncio.create_task(service.run())
            await wait_until(_past(transport, seconds // 3), what="a third of the run")
            await asyncio.to_thread(mosquitto.stop)
            written = pub.stats.published
            await wait_until(  # the gateway goes on, buffering on disk while the broker is down
                _async(lambda: not pub.connected and pub.stats.published >= written + 5),
                what="messages buffered while the broker is down",
            )
            await asyncio.to_thread(mosquitto.start)
            await run
            await pub.wait_delivered(60)
        expected = fleet.expected_rows()
        # No row can come later than this check: the gateway published exactly one sample per expected
        # (device, t), every one was acknowledged by the broker (wait_delivered), and the rows below are
        # all of them, so nothing is left in flight that could add one.
        assert service.stats.samples == len(expected)
        assert service.stats.late_frames == 0
        await wait_until(
            lambda: _rows_at_least(database_url, len(expected)), timeout_s=60, what="every expected row"
        )

    counts = injector.log.counts
    for fault in ("frame_drop", "malformed_frame", "dropout", "storm", "uplink_storm", "device_error"):
        assert counts[fault] > 0, (fault, counts)
    assert transport.ticks == seconds
    # the database holds exactly the expected (device, t), each once; the simulator's losses are not there
    rows = stored(database_url)
    assert rows == expected
    assert not rows & injector.log.lost
    assert len(rows) + len(injector.log.lost) == 12 * seconds  # every tick either stored or logged lost
    per_device = Counter(d for d, _ in rows)
    assert per_device == Counter({d: len(ts) for d, ts in fleet.expected.items()})
    # every corrupted frame was dead-lettered by the gateway (locally), none reached the ingester
    assert service.stats.dead_frames == Counter(fleet.malformed_sent)
    with Buffer(tmp_path / "gw.sqlite") as buffer:  # the gateway's local dead-letter table
        assert service.stats.dead_total == counts["malformed_frame"] == buffer.count_dead_frames()
        assert len(buffer) == 0  # everything delivered
    assert await count(database_url, "dead_letters") == 0
    # the values of complete ticks are the simulated ones
    await _values_match(database_url, fleet)
    # meta from the gateway, with the radio each device speaks and what it said it is (BLE: its DIS)
    with psycopg.connect(database_url) as conn:
        devices = {
            d: (transport, (vendor, model, firmware))
            for d, transport, vendor, model, firmware in conn.execute(
                "SELECT device_id, transport, vendor, model, firmware FROM devices WHERE site_id = %s",
                (SITE,),
            )
        }
        kinds = {k for (k,) in conn.execute("SELECT DISTINCT kind FROM devices WHERE site_id = %s", (SITE,))}
    assert devices == {
        d.device_id: (d.radio, (d.identity().manufacturer, d.identity().model, d.identity().firmware))
        for d in fleet.devices
    }
    assert kinds == set(MIX_ALL)


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return check()

    return run


def _past(transport: SimTransport, ticks: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return transport.ticks >= ticks

    return check


async def _rows_at_least(url: str, n: int) -> bool:
    return await count(url, "samples") >= n


async def _values_match(url: str, fleet: RawFleet) -> None:
    with psycopg.connect(url) as conn:
        got = {
            (d, t): (hr, p)
            for d, t, hr, p in conn.execute("SELECT device_id, t, hr_bpm, power_w FROM samples")
        }
    checked = 0
    for device, samples in fleet.expected.items():
        for t, s in samples.items():
            if (device, t) in fleet.partial:
                continue
            assert got[(device, t)] == (s.hr_bpm, s.power_w), (device, t)
            checked += 1
    assert checked > 0.8 * len(got)
