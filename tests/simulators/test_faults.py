"""Fault injection: deterministic, logged, and the platform keeps every valid sample exactly once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from simulators.faults import FaultInjector, FaultRates
from simulators.fleet import Fleet
from simulators.publisher import FleetPublisher, gateway_client, history_start
from tests.conftest import Mosquitto
from tests.support.helpers import count, make_settings, running_ingester, wait_until
from tests.support.workload import stored

START = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)  # the simulated clock: pinned, never the wall clock
CENTURY_S = 100 * 365 * 86400  # accepted sample age: the pinned morning stays acceptable to the ingester
RATES = FaultRates(
    drop=0.05, duplicate=0.05, reorder=0.05, delay=0.05, malformed=0.05, clock_skew=0.3, dropout=0.1
)


def test_rates_are_checked() -> None:
    with pytest.raises(ValueError, match="drop"):
        FaultRates(drop=1.5)


def test_injection_is_deterministic_per_seed() -> None:
    def run(seed: int) -> dict[str, int]:
        inj = FaultInjector(RATES, seed=seed)
        from simulators.faults import Outgoing

        for i in range(500):
            inj.device_skew(f"d{i % 7}")
            inj.route(Outgoing(f"d{i % 7}", b"x", []), i)
        return dict(inj.log.counts)

    assert run(1) == run(1)
    assert run(1) != run(2)
    counts = run(1)
    for fault in ("drop", "duplicate", "reorder", "delay", "malformed"):
        assert 5 <= counts[fault] <= 60, (fault, counts)  # ≈ 5 % of 500, give or take


@pytest.mark.asyncio
async def test_platform_keeps_every_valid_sample_once_under_faults(
    mosquitto: Mosquitto, database_url: str
) -> None:
    fleet = Fleet.build("faulty-gym", 8, seed=11)
    injector = FaultInjector(RATES, seed=5)
    settings = make_settings(ingest_client_id="ingest-faults", ingest_share_group=None, max_past_s=CENTURY_S)
    async with running_ingester(settings, mosquitto.target, database_url) as ingester:
        async with gateway_client(mosquitto.target, "gw-faults", "faulty-gym") as client:
            publisher = FleetPublisher(client, fleet, "gw-faults", faults=injector, clock=lambda: START)
            await publisher.announce()
            await publisher.backfill(history_start(300, clock=lambda: START), 300, samples_per_message=5)
        log = publisher.log
        metrics = ingester.metrics.registry

        async def all_taken() -> bool:
            announced = 2 * len(fleet.devices) + 1  # meta and state per device, the gateway's birth
            taken = metrics.get_sample_value("vitalab_ingest_messages_total", {"kind": "all"})
            return taken == log.messages + announced

        await wait_until(all_taken, what="every message taken")
    counts = injector.log.counts
    for fault in ("drop", "duplicate", "reorder", "delay", "malformed"):
        assert counts[fault] > 0, fault
    expected = {(d, t) for d, stamps in log.samples.items() for t in stamps}
    assert not expected & injector.log.lost  # what the source lost was never logged as sent
    assert stored(database_url) == expected  # every valid sample, once; nothing else
    assert await count(database_url, "dead_letters") == counts["malformed"]
    skewed = [d for d, s in injector.log.skew_s.items() if s]
    assert skewed  # some clocks were off, and their samples were still kept at their device time
    assert (
        await count(database_url, "samples", "hr_bpm IS NULL AND device_id LIKE 'hr-strap%'") > 0
    )  # dropouts
