"""Running a simulated gym: wire-contract devices on their own MQTT connection (``FleetPublisher``), raw-frame
devices through an in-process gateway (``SimTransport`` -> ``GatewayService`` -> ``GatewayPublisher``).

Speeds: ``speed=1`` follows the wall clock (open-ended without a duration); ``speed=N`` plays ``duration``
seconds of device time N times faster, ending now; a backfill plays history as fast as the broker (wire
devices) or the gateway's backlog (raw devices) allows, before the live part.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from gateway.publisher import GatewayPublisher
from gateway.service import GatewayService, ServiceStats
from simulators.faults import FaultInjector, FaultRates
from simulators.fleet import Fleet, SimDevice
from simulators.publisher import FleetPublisher, gateway_client, history_start, now_ms
from simulators.rawfleet import RawFleet, SimTransport
from vitalab.settings import MqttTarget
from vitalab.wire import DeviceKind

logger = logging.getLogger(__name__)


def split_fleet(fleet: Fleet, raw_share: float) -> tuple[Fleet, Fleet]:
    """(wire-contract devices, raw-frame devices): every 1/raw_share-th device of each kind is raw."""
    if not 0.0 <= raw_share <= 1.0:
        raise ValueError(f"raw_share={raw_share} is not within [0, 1]")
    wire: list[SimDevice] = []
    raw: list[SimDevice] = []
    per_kind: dict[DeviceKind, int] = {}
    for d in fleet.devices:
        k = per_kind[d.kind] = per_kind.get(d.kind, 0) + 1
        (raw if int(k * raw_share) > int((k - 1) * raw_share) else wire).append(d)
    return Fleet(fleet.site, wire), Fleet(fleet.site, raw)


async def run_raw_gateway(
    target: MqttTarget,
    fleet: RawFleet,
    start: datetime,
    seconds: float | None,
    *,
    speed: float | None,
    gateway_id: str,
    buffer_path: Path,
    protocol: str = "5",
) -> ServiceStats:
    """Raw-frame devices through an in-process gateway; returns once everything was delivered (a finite
    run) or when cancelled (what is batching is then kept in the buffer file for the next run)."""
    async with GatewayPublisher(
        target, fleet.site, gateway_id, buffer_path, protocol="5" if protocol == "5" else "3.1.1"
    ) as publisher:
        transport = SimTransport(
            fleet, start, seconds, speed=speed, on_uplink_storm=publisher.drop_connection
        )
        service = GatewayService(publisher, [transport])
        await service.run()
        await publisher.wait_delivered(300)
    return service.stats


@dataclass(frozen=True, slots=True)
class SimulationPlan:
    devices: int
    seed: int
    duration_s: float | None = None
    backfill_s: int = 0
    samples_per_message: int = 1
    faults: FaultRates | None = None
    raw_share: float = 0.0
    ant_share: float = 0.25
    speed: float = 1.0
    mix: tuple[DeviceKind, ...] = ("bike", "treadmill", "rower", "hr_strap")
    class_share: float = 0.0


async def simulate(
    target: MqttTarget, site: str, plan: SimulationPlan, *, protocol: str = "5", data_dir: Path
) -> None:
    """`vitalab simulate`: both kinds of devices, concurrently."""
    if plan.speed != 1.0 and plan.duration_s is None:
        raise ValueError("an accelerated run needs a duration")
    fleet = Fleet.build(site, plan.devices, seed=plan.seed, mix=plan.mix, class_share=plan.class_share)
    wire, raw = split_fleet(fleet, plan.raw_share)
    faulty = plan.faults is not None and plan.faults != FaultRates()
    async with asyncio.TaskGroup() as tg:
        if wire.devices:
            injector = FaultInjector(plan.faults, seed=plan.seed) if faulty and plan.faults else None
            tg.create_task(_wire(target, wire, plan, protocol, injector))
        if raw.devices:
            injector = FaultInjector(plan.faults, seed=plan.seed + 1) if faulty and plan.faults else None
            raw_fleet = RawFleet(raw, plan.ant_share, injector, record=False)
            tg.create_task(_raw(target, raw_fleet, plan, protocol, data_dir))


def _live_start(plan: SimulationPlan) -> datetime:
    if plan.speed == 1.0 or plan.duration_s is None:
        return now_ms()
    return now_ms() - timedelta(seconds=plan.duration_s)


async def _wire(
    target: MqttTarget, fleet: Fleet, plan: SimulationPlan, protocol: str, faults: FaultInjector | None
) -> None:
    async with gateway_client(target, "sim-gw", fleet.site, protocol=protocol) as client:
        publisher = FleetPublisher(client, fleet, "sim-gw", faults=faults)
        await publisher.announce()
        if plan.backfill_s:
            await publisher.backfill(
                history_start(plan.backfill_s), plan.backfill_s, plan.samples_per_message
            )
        if plan.duration_s is None or plan.duration_s > 0:
            await publisher.run_paced(
                _live_start(plan),
                plan.duration_s,
                speed=plan.speed,
                samples_per_message=plan.samples_per_message,
            )
        await publisher.finish()
    logger.info(
        "wire devices: %d samples in %d messages", publisher.log.total_samples, publisher.log.messages
    )
    if faults is not None:
        logger.info("faults injected: %s", dict(faults.log.counts))


async def _raw(
    target: MqttTarget, fleet: RawFleet, plan: SimulationPlan, protocol: str, data_dir: Path
) -> None:
    buffer = data_dir / "gateway" / "sim-raw-gw.sqlite"
    if plan.backfill_s:
        start = history_start(plan.backfill_s)
        stats = await run_raw_gateway(
            target,
            fleet,
            start,
            plan.backfill_s,
            speed=None,
            gateway_id="sim-raw-gw",
            buffer_path=buffer,
            protocol=protocol,
        )
        logger.info("raw devices, backfill: %s", stats)
    if plan.duration_s is None or plan.duration_s > 0:
        stats = await run_raw_gateway(
            target,
            fleet,
            _live_start(plan),
            plan.duration_s,
            speed=plan.speed,
            gateway_id="sim-raw-gw",
            buffer_path=buffer,
            protocol=protocol,
        )
        logger.info("raw devices: %s", stats)
    if fleet.faults is not None:
        logger.info("faults injected (raw devices): %s", dict(fleet.faults.log.counts))
