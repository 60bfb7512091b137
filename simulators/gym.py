"""A gym day: opening hours, arrival peaks, members choosing free machines, idle machines.

Members arrive as a Poisson process whose rate follows the local time of day (weekday peaks before work and
after work, a lunch bump; a flatter weekend; ``min_demand`` raises the quiet hours to a floor), pick a
machine kind, take a free machine of that kind (or any free machine, or leave when none is free), train for
``visit_minutes`` (20–60 by default) and leave; a member comes back at the earliest ``rest`` later.
Classes (``classes``: start minute of the day and workout) take up to ``class_size`` free members and free
machines of the class's kinds at the same minute; they all start the class workout together and finish
together. A machine sends
samples only while someone is on it. Opening hours, classes and the demand curve are in the site's local
time (``timezone``, IANA name); visits are UTC instants. Deterministic from the seed, so downstream
utilisation, occupancy and session metrics have a known truth: :attr:`GymDay.visits`.
:class:`simulators.gymfleet.GymFleet` runs consecutive days of it with one member population.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from simulators.fleet import SimDevice
from simulators.people import Member
from simulators.workouts import workout
from vitalab.wire import Sample

# relative arrival demand per hour of the day (0–23); 1.0 is the peak hour
WEEKDAY = (
    0,
    0,
    0,
    0,
    0,
    0,
    0.55,
    1.0,
    0.7,
    0.4,
    0.35,
    0.4,
    0.6,
    0.5,
    0.3,
    0.3,
    0.5,
    0.9,
    1.0,
    0.85,
    0.6,
    0.35,
    0.1,
    0,
)
WEEKEND = (0, 0, 0, 0, 0, 0, 0, 0.2, 0.5, 0.8, 1.0, 0.9, 0.7, 0.5, 0.5, 0.6, 0.6, 0.5, 0.4, 0.2, 0.1, 0, 0, 0)
WIPE = timedelta(minutes=2)
"""A machine is wiped down between members."""
CLASS_KINDS: dict[str, tuple[str, ...]] = {"spin45": ("bike",), "hiit30": ("rower", "cross_trainer")}
DEFAULT_CLASSES: tuple[tuple[int, str], ...] = (
    (7 * 60, "spin45"),
    (12 * 60 + 15, "hiit30"),
    (18 * 60, "spin45"),
)


@dataclass(frozen=True, slots=True)
class Visit:
    member_id: str
    device_id: str
    start: datetime
    end: datetime
    plan: str


@dataclass(slots=True)
class GymDay:
    day: date
    devices: list[SimDevice]
    members: list[Member]
    seed: int = 0
    open_h: int = 6
    close_h: int = 22
    peak_arrivals_per_h: float = 30.0
    classes: tuple[tuple[int, str], ...] = DEFAULT_CLASSES
    """(start minute of the day, class workout); a class outside the opening hours is not held."""
    class_size: int = 8
    timezone: str = "UTC"
    """IANA name of the site's timezone: opening hours, classes and the demand curve are local times."""
    visit_minutes: tuple[int, int] = (20, 60)
    """Shortest and longest visit (whole minutes, uniform); a visit never outlasts the opening hours."""
    rest: timedelta = timedelta(hours=3)
    """A member comes back at the earliest this long after leaving."""
    min_demand: float = 0.0
    """Floor of the relative demand (0..1) during the opening hours (a 24-hour demo gym is never empty)."""
    visits: list[Visit] = field(default_factory=list)
    turned_away: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.open_h < self.close_h <= 24:
            raise ValueError(f"opening hours {self.open_h}–{self.close_h} are not within a day")
        lo, hi = self.visit_minutes
        if not 1 <= lo <= hi or hi > (self.close_h - self.open_h) * 60:
            raise ValueError(f"visit_minutes {lo}–{hi} must be 1 <= shortest <= longest <= opening hours")
        if not 0.0 <= self.min_demand <= 1.0:
            raise ValueError(f"min_demand={self.min_demand} is not within [0, 1]")
        self._plan()

    def local_time(self) -> Callable[[int], datetime]:
        """Minute of the local day -> UTC instant (wall-clock minutes: a DST day has 23 or 25 hours)."""
        midnight = datetime.combine(self.day, time(), tzinfo=ZoneInfo(self.timezone))
        return lambda minute: (midnight + timedelta(minutes=minute)).astimezone(UTC)

    def _plan(self) -> None:
        rng = np.random.default_rng(self.seed)
        demand = WEEKEND if self.day.weekday() >= 5 else WEEKDAY
        at = self.local_time()
        midnight = at(0)
        close = at(self.close_h * 60)
        lo, hi = self.visit_minutes
        busy_until = {d.device_id: midnight for d in self.devices}
        member_free = {m.member_id: midnight for m in self.members}
        kinds = sorted({d.kind for d in self.devices if d.kind != "hr_strap"})
        machines = [d for d in self.devices if d.kind != "hr_strap"]
        classes = dict(self.classes)
        studio = self._reserve(classes, at, close)  # machine -> class slots (start, end)
        for minute in range(self.open_h * 60, self.close_h * 60 - lo):
            now = at(minute)
            if minute in classes:
                self._hold_class(classes[minute], now, close, rng, machines, busy_until, member_free)
            rate = self.peak_arrivals_per_h * max(demand[minute // 60], self.min_demand) / 60
            for _ in range(int(rng.poisson(rate))):
                free_members = [m for m in self.members if member_free[m.member_id] <= now]
                if not free_members or not machines:
                    self.turned_away += 1
                    continue
                member = free_members[int(rng.integers(len(free_members)))]
                wanted = kinds[int(rng.integers(len(kinds)))]
                end = min(now + timedelta(minutes=int(rng.integers(lo, hi + 1))), close)
                free = [
                    d
                    for d in machines
                    if busy_until[d.device_id] <= now
                    and not any(s < end + WIPE and now < e for s, e in studio.get(d.device_id, ()))
                ]
                choice = [d for d in free if d.kind == wanted] or free
                if not choice:
                    self.turned_away += 1
                    continue
                machine = choice[int(rng.integers(len(choice)))]
                plan = "intervals" if rng.random() < 0.4 else "steady"
                self.visits.append(Visit(member.member_id, machine.device_id, now, end, plan))
                busy_until[machine.device_id] = end + WIPE
                member_free[member.member_id] = end + self.rest
        self.visits.sort(key=lambda v: (v.start, v.device_id))

    def _reserve(
        self, classes: dict[int, str], at: Callable[[int], datetime], close: datetime
    ) -> dict[str, list[tuple[datetime, datetime]]]:
        """The studio: the first ``class_size`` machines of a class's kinds are kept free for it."""
        out: dict[str, list[tuple[datetime, datetime]]] = {}
        for minute, name in classes.items():
            duration = workout(name).duration_s
            start = at(minute)
            if duration is None or start + timedelta(seconds=duration) > close:
                continue
            kinds = CLASS_KINDS.get(name, ("bike",))
            for d in [d for d in self.devices if d.kind in kinds][: self.class_size]:
                out.setdefault(d.device_id, []).append((start, start + timedelta(seconds=duration)))
        return out

    def _hold_class(
        self,
        name: str,
        now: datetime,
        close: datetime,
        rng: np.random.Generator,
        machines: list[SimDevice],
        busy_until: dict[str, datetime],
        member_free: dict[str, datetime],
    ) -> None:
        duration = workout(name).duration_s
        if duration is None or now + timedelta(seconds=duration) > close:
            return
        end = now + timedelta(seconds=duration)
        kinds = CLASS_KINDS.get(name, ("bike",))
        free = [d for d in machines if d.kind in kinds and busy_until[d.device_id] <= now]
        members = [m for m in self.members if member_free[m.member_id] <= now]
        n = min(self.class_size, len(free), len(members))
        for i in rng.permutation(len(members))[:n]:
            machine = free.pop(int(rng.integers(len(free))))
            member = members[int(i)]
            self.visits.append(Visit(member.member_id, machine.device_id, now, end, name))
            busy_until[machine.device_id] = end + WIPE
            member_free[member.member_id] = end + self.rest

    def ticks(self, rate_hz: float = 1.0) -> list[tuple[datetime, list[tuple[SimDevice, Sample]]]]:
        """Every tick of the day in which at least one machine is in use, with its samples."""
        by_id = {d.device_id: d for d in self.devices}
        members = {m.member_id: m for m in self.members}
        dt = 1.0 / rate_hz
        starts = sorted(self.visits, key=lambda v: v.start)
        active: list[Visit] = []
        out: list[tuple[datetime, list[tuple[SimDevice, Sample]]]] = []
        if not starts:
            return out
        t = starts[0].start
        end = max(v.end for v in starts)
        i = 0
        while t < end:
            while i < len(starts) and starts[i].start <= t:
                v = starts[i]
                by_id[v.device_id].start_session(members[v.member_id], v.plan)
                active.append(v)
                i += 1
            active = [v for v in active if v.end > t]
            if active:
                out.append((t, [(by_id[v.device_id], by_id[v.device_id].step(t, dt)) for v in active]))
                t += timedelta(seconds=dt)
            elif i < len(starts):
                t = starts[i].start  # nobody in: jump to the next arrival
            else:
                break
        return out
