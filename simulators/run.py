"""Running a simulated gym: wire-contract devices on their own MQTT connection (``FleetPublisher``), raw-frame
devices through an in-process gateway (``SimTransport`` -> ``GatewayService`` -> ``GatewayPublisher``).

Speeds: ``speed=1`` follows the clock (open-ended without a duration); ``speed=N`` plays ``duration``
seconds of device time N times faster, ending now; a backfill plays history as fast as the broker (wire
devices) or the gateway's backlog (raw devices) allows, before the live part.

Clocks. What "now" is comes from the caller: ``clock`` (default the wall clock, read where a run starts)
or, for a gym, ``SimulationPlan.start``. A gym run keeps one :class:`~simulators.kiosk.GymClock` from its
start (gym time ``start`` at that moment, then ``speed`` gym seconds per second) for everything that asks
for the current time afterwards (the live part after a backfill, the devices' announcements, the kiosk), so
a run pinned to a chosen moment behaves the same whatever the wall clock says.

With ``SimulationPlan.gym`` the devices are those of a gym day (:mod:`simulators.gymfleet`): machines used
by members who come and go, and members' own straps; the backfill (``--days``) is history ending where the
live part starts, and a real-time live part that begins late because the backfill took time starts at the
current second and keeps its planned end (members in the middle of a visit catch up silently). With
``api_url`` a kiosk (:mod:`simulators.kiosk`) registers the members, pairs their straps and checks the
checked-in visits in and out on the gym's clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.publisher import GatewayPublisher
from gateway.service import GatewayService, ServiceStats
from simulators.errors import SimulatorError
from simulators.faults import FaultInjector, FaultRates
from simulators.fleet import Fleet, SimDevice
from simulators.gymfleet import (
    DEMO_MIN_DEMAND,
    DEMO_OPEN_HOURS,
    DEMO_VISIT_MINUTES,
    GymConfig,
    GymFleet,
    GymPlan,
    parse_range,
)
from simulators.kiosk import GymClock, Kiosk, stays
from simulators.publisher import Clock, FleetPublisher, gateway_client, history_start, now_ms
from simulators.rawfleet import RawFleet, SimTransport, now_s
from vitalab.settings import MqttTarget, Settings
from vitalab.wire import DeviceKind

logger = logging.getLogger(__name__)

GYM_ACK_TIMEOUT_S = 120.0


def gym_config(
    settings: Settings,
    *,
    demo: bool,
    open_hours: str | None = None,
    visit_minutes: str | None = None,
    members: int | None = None,
    strap_share: float | None = None,
    check_in_share: float | None = None,
) -> GymConfig:
    """The gym of the settings (``VITALAB_SITE_TIMEZONE``, ``VITALAB_SIM_*``), options overriding them. Unset
    hours and visit lengths are the demo's (``demo``: `vitalab up`) or a real gym's (6-22, 20-60 min); a
    member comes back at the earliest three longest visits later (at most 3 h). Raises ``ValueError``."""
    hours_text = open_hours or settings.sim_open_hours
    visits_text = visit_minutes or settings.sim_visit_minutes
    hours = parse_range(hours_text, "opening hours") if hours_text else DEMO_OPEN_HOURS if demo else (6, 22)
    visits = (
        parse_range(visits_text, "visit minutes") if visits_text else DEMO_VISIT_MINUTES if demo else (20, 60)
    )
    return GymConfig(
        open_h=hours[0],
        close_h=hours[1],
        timezone=settings.site_timezone,
        visit_minutes=visits,
        rest_min=min(180, 3 * visits[1]),
        min_demand=DEMO_MIN_DEMAND if demo and not hours_text else 0.0,
        members=settings.sim_members if members is None else members,
        strap_share=settings.sim_strap_share if strap_share is None else strap_share,
        check_in_share=settings.sim_check_in_share if check_in_share is None else check_in_share,
    )


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
    if isinstance(fleet, GymFleet):
        return fleet.subset(wire), fleet.subset(raw)
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
    backfill_s: float = 0.0,
    finish: bool = True,
    clock: Clock | None = None,
) -> ServiceStats:
    """Raw-frame devices through an in-process gateway; returns once everything was delivered (a finite
    run) or when cancelled (what is batching is then kept in the buffer file for the next run). With
    ``backfill_s``, the history before ``start`` first; ``finish=False`` leaves the machines as they are at
    the end (see :class:`SimTransport`). ``clock``: the current device time of a real-time run after a
    backfill (default: the wall clock)."""
    async with GatewayPublisher(
        target, fleet.site, gateway_id, buffer_path, protocol="5" if protocol == "5" else "3.1.1"
    ) as publisher:
        transport = SimTransport(
            fleet,
            start,
            seconds,
            speed=speed,
            on_uplink_storm=publisher.drop_connection,
            backfill_s=backfill_s,
            finish=finish,
            clock=clock,
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
    gym: GymConfig | None = None
    """A gym day instead of an always-busy fleet: ``devices`` machines of the machine kinds of ``mix``, the
    members and their straps of :class:`~simulators.gymfleet.GymPlan`; ``backfill_s`` is then history
    ending where the live part starts."""
    api_url: str | None = None
    """With a gym: the platform's HTTP API, for the kiosk (members, strap pairing, check-ins)."""
    api_key: str | None = None
    """The kiosk's API key (a kiosk key of the site)."""
    start: datetime | None = None
    """With a gym: where history ends and the live part starts (default: now; accelerated: now - duration);
    the gym's clock reads this at the start of the run, whatever the wall clock says."""
    close_at_end: bool = True
    """With a gym and a finite run: members still training at the end leave then (machines stop, straps
    disconnect, the kiosk checks them out). ``False``: a history run whose visits a live run continues."""
    registered_from: datetime | None = None
    """With a kiosk: members' consent and strap pairing date from here (default: a minute before the
    history starts; runs that share a site should share it, or the later pairing conflicts)."""
    max_in_flight: int = 1000
    """With a gym: telemetry messages awaiting their PUBACK at once (a history run beside a live one keeps
    this small, so that the broker's queue, which live messages wait in too, stays short)."""
    gateway_id: str = "sim-gw"
    """MQTT identity of the wire-contract devices' connection (the raw-frame gateway: ``<id>-raw``; the
    always-busy fleet keeps ``sim-raw-gw``)."""
    on_history: Callable[[float], None] | None = None
    """Told the seconds of history (``backfill_s``) the wire-contract devices have published so far."""


async def simulate(
    target: MqttTarget,
    site: str,
    plan: SimulationPlan,
    *,
    protocol: str = "5",
    data_dir: Path,
    clock: Clock = now_ms,
) -> None:
    """`vitalab simulate`: both kinds of devices, concurrently; ``clock`` says what time it is."""
    if plan.speed != 1.0 and plan.duration_s is None:
        raise ValueError("an accelerated run needs a duration")
    if plan.gym is not None:
        await simulate_gym(target, site, plan, protocol=protocol, data_dir=data_dir, clock=clock)
        return
    fleet = Fleet.build(site, plan.devices, seed=plan.seed, mix=plan.mix, class_share=plan.class_share)
    wire, raw = split_fleet(fleet, plan.raw_share)
    faulty = plan.faults is not None and plan.faults != FaultRates()
    async with asyncio.TaskGroup() as tg:
        if wire.devices:
            injector = FaultInjector(plan.faults, seed=plan.seed) if faulty and plan.faults else None
            tg.create_task(_wire(target, wire, plan, protocol, injector, clock))
        if raw.devices:
            injector = FaultInjector(plan.faults, seed=plan.seed + 1) if faulty and plan.faults else None
            raw_fleet = RawFleet(raw, plan.ant_share, injector, record=False)
            tg.create_task(_raw(target, raw_fleet, plan, protocol, data_dir, clock))


def _live_start(plan: SimulationPlan, clock: Clock) -> datetime:
    if plan.speed == 1.0 or plan.duration_s is None:
        return clock()
    return clock() - timedelta(seconds=plan.duration_s)


async def _wire(
    target: MqttTarget,
    fleet: Fleet,
    plan: SimulationPlan,
    protocol: str,
    faults: FaultInjector | None,
    clock: Clock,
) -> None:
    async with gateway_client(target, "sim-gw", fleet.site, protocol=protocol) as client:
        publisher = FleetPublisher(client, fleet, "sim-gw", faults=faults, clock=clock)
        await publisher.announce()
        if plan.backfill_s:
            await publisher.backfill(
                history_start(plan.backfill_s, clock),
                plan.backfill_s,
                plan.samples_per_message,
                progress=plan.on_history,
            )
        if plan.duration_s is None or plan.duration_s > 0:
            await publisher.run_paced(
                _live_start(plan, clock),
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
    target: MqttTarget, fleet: RawFleet, plan: SimulationPlan, protocol: str, data_dir: Path, clock: Clock
) -> None:
    buffer = data_dir / "gateway" / "sim-raw-gw.sqlite"
    if plan.backfill_s:
        start = history_start(plan.backfill_s, clock)
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
            _live_start(plan, clock),
            plan.duration_s,
            speed=plan.speed,
            gateway_id="sim-raw-gw",
            buffer_path=buffer,
            protocol=protocol,
        )
        logger.info("raw devices: %s", stats)
    if fleet.faults is not None:
        logger.info("faults injected (raw devices): %s", dict(fleet.faults.log.counts))


def _ms(t: datetime) -> datetime:
    """Device clocks tick in milliseconds."""
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


# --- a gym day ----------------------------------------------------------------------------------------------


def gym_gateways(site: str, plan: SimulationPlan) -> dict[str, list[str]]:
    """The MQTT connections :func:`simulate_gym` opens for ``plan``: gateway id -> the devices it publishes
    for (broker logins can be made for exactly these)."""
    if plan.gym is None:
        raise ValueError("gym_gateways needs plan.gym")
    gym = GymPlan(site, plan.devices, seed=plan.seed, config=plan.gym, kinds=plan.mix)
    wire, raw = split_fleet(gym.fleet(), plan.raw_share)
    found = {plan.gateway_id: wire.devices, f"{plan.gateway_id}-raw": raw.devices}
    return {gw: [d.device_id for d in devices] for gw, devices in found.items() if devices}


async def simulate_gym(
    target: MqttTarget,
    site: str,
    plan: SimulationPlan,
    *,
    protocol: str = "5",
    data_dir: Path,
    clock: Clock = now_s,
    logins: Mapping[str, MqttTarget] | None = None,
) -> GymPlan:
    """A gym (``plan.gym``): wire-contract and raw-frame devices and the kiosk, concurrently; returns the
    :class:`GymPlan` (the truth: visits, check-ins, straps). ``clock`` is read once, when ``plan.start``
    is not set; from then on the run's :class:`GymClock` tells the time (module docstring). ``logins``: the
    broker login of each connection (:func:`gym_gateways`), where it is not ``target``'s."""
    if plan.gym is None:
        raise ValueError("simulate_gym needs plan.gym")
    if plan.speed != 1.0 and plan.duration_s is None:
        raise ValueError("an accelerated run needs a duration")
    logins = logins or {}
    gym = GymPlan(site, plan.devices, seed=plan.seed, config=plan.gym, kinds=plan.mix)
    wire, raw = split_fleet(gym.fleet(), plan.raw_share)
    duration = plan.duration_s
    if plan.start is not None:
        live = plan.start
    else:
        now = clock()
        live = now if plan.speed == 1.0 or not duration else now - timedelta(seconds=duration)
    live = live.astimezone(UTC).replace(microsecond=0)
    gym_clock = GymClock.starting_at(live, plan.speed)
    history = live - timedelta(seconds=plan.backfill_s)
    end = None if duration is None else live + timedelta(seconds=duration)
    faults = plan.faults if plan.faults is not None and plan.faults != FaultRates() else None
    async with asyncio.TaskGroup() as tg:
        if wire.devices:
            injector = FaultInjector(faults, seed=plan.seed) if faults else None
            login = logins.get(plan.gateway_id, target)
            tg.create_task(_gym_wire(login, wire, plan, protocol, injector, live, end, gym_clock))
        if raw.devices:
            injector = FaultInjector(faults, seed=plan.seed + 1) if faults else None
            raw_fleet = RawFleet(raw, plan.ant_share, injector, record=False)
            buffer = data_dir / "gateway" / f"{plan.gateway_id}-raw.sqlite"
            login = logins.get(f"{plan.gateway_id}-raw", target)
            tg.create_task(_gym_raw(login, raw_fleet, plan, protocol, buffer, live, gym_clock))
        if plan.api_url:
            tg.create_task(_gym_kiosk(gym, plan, plan.api_url, history, end, gym_clock))
    return gym


async def _gym_wire(
    target: MqttTarget,
    fleet: Fleet,
    plan: SimulationPlan,
    protocol: str,
    faults: FaultInjector | None,
    live: datetime,
    end: datetime | None,
    clock: GymClock,
) -> None:
    gw = plan.gateway_id
    async with gateway_client(target, gw, fleet.site, protocol=protocol) as client:
        # a loaded broker (the in-process one of `vitalab up` during a backfill) may take its time to ack
        publisher = FleetPublisher(
            client,
            fleet,
            gw,
            faults=faults,
            max_in_flight=plan.max_in_flight,
            ack_timeout_s=GYM_ACK_TIMEOUT_S,
            clock=lambda: _ms(clock.now()),
        )
        await publisher.announce()
        if plan.backfill_s:
            await publisher.backfill(
                live - timedelta(seconds=plan.backfill_s),
                plan.backfill_s,
                plan.samples_per_message,
                progress=plan.on_history,
            )
        if end is None or end > live:
            # real time: from the current second (the backfill took time) to the planned end
            start = max(live, clock.now().replace(microsecond=0)) if plan.speed == 1.0 else live
            seconds = None if end is None else max(0.0, (end - start).total_seconds())
            await publisher.run_paced(
                start, seconds, speed=plan.speed, samples_per_message=plan.samples_per_message
            )
        elif plan.close_at_end:
            await publisher.stop_uses(live)
        await publisher.finish()
    logger.info(
        "gym, wire devices: %d samples in %d messages", publisher.log.total_samples, publisher.log.messages
    )


async def _gym_raw(
    target: MqttTarget,
    fleet: RawFleet,
    plan: SimulationPlan,
    protocol: str,
    buffer: Path,
    live: datetime,
    clock: GymClock,
) -> None:
    stats = await run_raw_gateway(
        target,
        fleet,
        live,
        plan.duration_s,
        speed=None if plan.duration_s == 0 else plan.speed,
        gateway_id=f"{plan.gateway_id}-raw",
        buffer_path=buffer,
        protocol=protocol,
        backfill_s=plan.backfill_s,
        finish=plan.close_at_end,
        clock=lambda: clock.now().replace(microsecond=0),
    )
    logger.info("gym, raw devices: %s", stats)


async def _gym_kiosk(
    gym: GymPlan, plan: SimulationPlan, api_url: str, history: datetime, end: datetime | None, clock: GymClock
) -> None:
    async with Kiosk(api_url, gym, api_key=plan.api_key) as kiosk:
        # members not registered (KioskError): the run fails
        await kiosk.register(plan.registered_from or history - timedelta(minutes=1))
        await kiosk.run(stays(gym, history, end, close_at_end=plan.close_at_end), clock)
    if kiosk.counts["failed"]:
        raise SimulatorError(f"kiosk: {kiosk.counts['failed']} check-in calls failed (see the log)")
