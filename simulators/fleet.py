"""A simulated gym: machines, the members on them, and the samples they produce.

Deterministic from a seed: the same seed, start time and duration give the same samples.
Each device speaks the wire contract directly (a connected machine); :mod:`simulators.rawdev` wraps the
same devices into raw-frame ones (BLE/ANT+ notifications for the gateway). Workouts come from
:mod:`simulators.workouts`: steady, intervals, and classes that a group starts together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar

import numpy as np

from simulators.people import Heart, Member
from simulators.workouts import workout
from vitalab.wire import DeviceKind, DeviceMeta, Sample, registry

MIX: tuple[DeviceKind, ...] = ("bike", "treadmill", "rower", "hr_strap")
MIX_ALL: tuple[DeviceKind, ...] = ("bike", "treadmill", "rower", "cross_trainer", "hr_strap", "power_meter")
"""Every kind of device (the registry's, checked by tests/vitalab/test_registry.py), in the order a fleet
cycles through them (the simulated device ids depend on it)."""
MACHINES: frozenset[DeviceKind] = frozenset(registry.MACHINE_KINDS)
VENDORS: dict[DeviceKind, tuple[str, str]] = {
    "bike": ("vitalab-sim", "SimBike 1"),
    "treadmill": ("vitalab-sim", "SimRun 2"),
    "rower": ("vitalab-sim", "SimRow 1"),
    "cross_trainer": ("vitalab-sim", "SimCross 1"),
    "hr_strap": ("vitalab-sim", "SimStrap HRM"),
    "power_meter": ("vitalab-sim", "SimPower"),
}


def intensity_at(elapsed_s: float, plan: str) -> float:
    """Fraction of heart-rate reserve the workout ``plan`` asks for at ``elapsed_s`` (see
    :mod:`simulators.workouts`)."""
    return workout(plan).at(elapsed_s)[1]


@dataclass(slots=True)
class SimDevice:
    device_id: str
    kind: DeviceKind
    member: Member
    plan: str
    rng: np.random.Generator
    heart: Heart = field(init=False)
    elapsed_s: float = 0.0
    distance_m: float = 0.0
    energy_kcal: float = 0.0
    seq: int = 0

    def __post_init__(self) -> None:
        self.heart = Heart(self.member, self.rng)

    def start_session(self, member: Member, plan: str) -> None:
        """A new member steps on: the workout counters restart and a new heart is followed."""
        self.member = member
        self.plan = plan
        self.heart = Heart(member, self.rng)
        self.elapsed_s = self.distance_m = self.energy_kcal = 0.0

    def meta(self) -> DeviceMeta:
        vendor, model = VENDORS[self.kind]
        return DeviceMeta(
            v=1,
            device=self.device_id,
            kind=self.kind,
            vendor=vendor,
            model=model,
            firmware="1.0.0",
            transport="sim",
        )

    def step(self, t: datetime, dt_s: float = 1.0) -> Sample:
        m, rng = self.member, self.rng
        x = intensity_at(self.elapsed_s, self.plan)
        hr, rr = self.heart.step(x, dt_s)
        self.elapsed_s += dt_s
        power = max(0.0, m.ftp_w * (0.35 + 0.75 * x) + float(rng.normal(0, 6)))
        self.energy_kcal += power * dt_s / 4184 / 0.24  # mechanical work at ~24 % gross efficiency
        elapsed, kcal = round(self.elapsed_s, 1), round(self.energy_kcal, 1)
        if self.kind == "bike":
            speed = 3.6 * (power / 4.5) ** (1 / 3) * 2.2  # crude virtual road speed
            self.distance_m += speed / 3.6 * dt_s
            return Sample(
                t=t,
                elapsed_s=elapsed,
                energy_kcal=kcal,
                power_w=round(power),
                cadence_rpm=round(85 + 10 * x + rng.normal(0, 2), 1),
                speed_kmh=round(speed, 2),
                distance_m=round(self.distance_m),
                hr_bpm=hr,
                resistance_level=round(10 + 20 * x),
            )
        if self.kind == "treadmill":
            speed = round(6.0 + 8.0 * x, 1)
            self.distance_m += speed / 3.6 * dt_s
            return Sample(
                t=t,
                elapsed_s=elapsed,
                energy_kcal=kcal,
                speed_kmh=speed,
                incline_pct=1.0,
                distance_m=round(self.distance_m),
                hr_bpm=hr,
                met=round(speed * 1.0 + 1.0, 1),
            )
        if self.kind == "rower":
            pace = 500 * (2.8 / max(power, 20.0)) ** (1 / 3)  # Concept2: P = 2.8 / (pace/500)^3
            self.distance_m += 500 / pace * dt_s
            return Sample(
                t=t,
                elapsed_s=elapsed,
                energy_kcal=kcal,
                power_w=round(power),
                stroke_rate_spm=round(20 + 12 * x),
                pace_s_per_500m=round(pace, 1),
                distance_m=round(self.distance_m),
                hr_bpm=hr,
            )
        if self.kind == "cross_trainer":
            return Sample(
                t=t,
                elapsed_s=elapsed,
                energy_kcal=kcal,
                power_w=round(power),
                cadence_rpm=round(55 + 20 * x, 1),
                hr_bpm=hr,
            )
        if self.kind == "power_meter":
            return Sample(t=t, power_w=round(power), cadence_rpm=round(88 + rng.normal(0, 2), 1))
        return Sample(t=t, hr_bpm=round(hr), rr_ms=rr or None)


@dataclass(frozen=True, slots=True)
class UseChange:
    """A device starts or stops being used at ``t``: a member steps on or off a machine, puts a strap on or
    takes it off (:class:`simulators.gymfleet.GymFleet`; a plain :class:`Fleet` is always in use)."""

    device: SimDevice
    t: datetime
    in_use: bool


@dataclass(slots=True)
class Fleet:
    site: str
    devices: list[SimDevice]
    always_in_use: ClassVar[bool] = True
    """Every device sends every tick (a gym whose members never leave); see GymFleet for one that empties."""

    @classmethod
    def build(
        cls,
        site: str,
        n_devices: int,
        *,
        seed: int = 7,
        mix: tuple[DeviceKind, ...] = MIX,
        class_share: float = 0.0,
        class_workout: str = "spin45",
    ) -> Fleet:
        """``n_devices`` devices cycling through ``mix``. A ``class_share`` of the machines (every
        1/share-th one) follow the class ``class_workout`` together from the first tick; the others ride
        steady (60 %) or intervals (40 %)."""
        if not 0.0 <= class_share <= 1.0:
            raise ValueError(f"class_share={class_share} is not within [0, 1]")
        workout(class_workout)  # known?
        rng = np.random.default_rng(seed)
        devices = []
        machines = 0
        for i in range(n_devices):
            kind = mix[i % len(mix)]
            member = Member.random(f"m{i:04d}", rng)
            plan = "intervals" if rng.random() < 0.4 else "steady"
            if kind in MACHINES:
                machines += 1
                if int(machines * class_share) > int((machines - 1) * class_share):
                    plan = class_workout
            child = np.random.default_rng(rng.integers(2**63))
            devices.append(SimDevice(f"{kind.replace('_', '-')}-{i + 1:03d}", kind, member, plan, child))
        return cls(site, devices)

    def advance(self, t: datetime, dt_s: float = 1.0) -> list[SimDevice]:
        """The devices in use at ``t`` (every one: this fleet's members never leave), before they step."""
        return self.devices

    def use_changes(self) -> list[UseChange]:
        """Devices that started or stopped being used at the last :meth:`advance` or :meth:`stop` (none
        here)."""
        return []

    def stop(self, t: datetime) -> list[UseChange]:
        """The run ends at ``t``: members still training leave (their devices stop being used)."""
        return []

    def next_start(self, after: datetime) -> datetime | None:
        """When a device is next in use at or after ``after`` (``after`` itself here; ``None``: not soon)."""
        return after

    def tick(self, t: datetime, dt_s: float = 1.0) -> list[tuple[SimDevice, Sample]]:
        return [(d, d.step(t, dt_s)) for d in self.advance(t, dt_s)]

    def iter_history(
        self, start: datetime, seconds: float, rate_hz: float = 1.0
    ) -> Iterator[list[tuple[SimDevice, Sample]]]:
        """Backfill: the ticks of ``seconds`` of device time from ``start``, made one by one."""
        dt = 1.0 / rate_hz
        for i in range(math.ceil(seconds * rate_hz)):
            yield self.tick(start + timedelta(seconds=i * dt), dt)

    def history(
        self, start: datetime, seconds: int, rate_hz: float = 1.0
    ) -> list[list[tuple[SimDevice, Sample]]]:
        """Backfill: the ticks of ``seconds`` of device time from ``start``, as fast as they can be made."""
        return list(self.iter_history(start, seconds, rate_hz))
