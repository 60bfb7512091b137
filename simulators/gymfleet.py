"""A simulated gym over consecutive days: machines used by the members of :class:`simulators.gym.GymDay`
visits, the same members every day, members' own heart-rate straps, and the visits members check in for.

:class:`GymPlan` is the truth: one member population (``m0000``, ``m0001``, ... from the seed), the
machines, the straps of the members who own one (``strap-m0007``: a share ``strap_share`` of the members),
and per local day of the site (``timezone``) a :class:`~simulators.gym.GymDay` seeded from (seed, day), so a
day's visits are the same whichever run, backfill or live, produces them. A share ``check_in_share`` of the
visits (drawn per day, also from (seed, day)) is checked in at the kiosk (:mod:`simulators.kiosk`): the member
checks in on the machine :data:`CHECK_IN_LEAD` before stepping on and out :data:`CHECK_OUT_LAG` after
leaving; the other visits are anonymous and only found from activity. A member's strap belongs to them
(paired once at registration), and sends heart rate and RR intervals only during their visits.

:class:`GymFleet` is a :class:`~simulators.fleet.Fleet` whose devices send only while in use: a machine
during its visits, a strap during its owner's visits. Each visit starts from a generator seeded by (seed,
device, visit start), so its samples do not depend on what the run did before; a device that joins a visit
late (a live run starting mid-visit) steps silently through the seconds it missed first. Every tick records
its :class:`~simulators.fleet.UseChange` s (a member stepping on or off, a strap put on or taken off), from
which the publishers make machine status (training ``warm_up`` ... ``post_workout``) and strap connections.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from simulators.fleet import MACHINES, Fleet, SimDevice, UseChange
from simulators.gym import DEFAULT_CLASSES, WIPE, GymDay, Visit
from simulators.people import Member
from vitalab.wire import DeviceKind, Sample

MACHINE_MIX: tuple[DeviceKind, ...] = ("bike", "treadmill", "rower", "cross_trainer")
CHECK_IN_LEAD = timedelta(seconds=30)
"""A checked-in member scans in at the kiosk this long before stepping on the machine."""
CHECK_OUT_LAG = timedelta(seconds=15)
"""... and out this long after leaving it."""
DEMO_OPEN_HOURS = (0, 24)
DEMO_VISIT_MINUTES = (4, 10)
DEMO_MIN_DEMAND = 0.6
"""The gym of ``vitalab up`` (unless configured): open 24 h with quiet hours at 60 % of the peak demand and
4-10 minute visits, so that data and finished sessions show within minutes whenever it is started."""
_DAYS_CACHED = 16
_LOOKAHEAD_DAYS = 8


def parse_range(text: str, what: str) -> tuple[int, int]:
    """``"6-22"`` -> ``(6, 22)``; a clear ``ValueError`` otherwise."""
    parts = text.replace("–", "-").split("-")
    try:
        lo, hi = (int(p.strip()) for p in parts)
    except ValueError:
        raise ValueError(f"{what} must look like 6-22 (two whole numbers), got {text!r}") from None
    if lo > hi:
        raise ValueError(f"{what}: {lo} is after {hi}")
    return lo, hi


@dataclass(frozen=True, slots=True)
class GymConfig:
    open_h: int = 6
    close_h: int = 22
    timezone: str = "UTC"
    """IANA timezone of the site: opening hours, classes and the day's demand curve are local."""
    visit_minutes: tuple[int, int] = (20, 60)
    rest_min: int = 180
    """A member comes back at the earliest this many minutes after leaving."""
    min_demand: float = 0.0
    """Floor of the relative arrival demand while open (0..1)."""
    peak_arrivals_per_h: float | None = None
    """Arrivals per hour at the peak; ``None``: enough to keep every machine busy at the peak
    (machines · 60 / (mean visit + wipe-down minutes))."""
    members: int = 60
    strap_share: float = 0.6
    check_in_share: float = 0.7
    classes: tuple[tuple[int, str], ...] = DEFAULT_CLASSES
    class_size: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.open_h < self.close_h <= 24:
            raise ValueError(f"opening hours {self.open_h}-{self.close_h} are not within a day (0-24)")
        lo, hi = self.visit_minutes
        if not 1 <= lo <= hi <= (self.close_h - self.open_h) * 60:
            raise ValueError(f"visit minutes {lo}-{hi}: need 1 <= shortest <= longest <= opening hours")
        if lo < 3:
            raise ValueError("visits shorter than 3 minutes would not be sessions (the minimum is 2 min)")
        for name in ("min_demand", "strap_share", "check_in_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} is not within [0, 1]")
        if self.members < 1:
            raise ValueError("a gym needs at least one member")
        if self.rest_min < 0 or (self.peak_arrivals_per_h is not None and self.peak_arrivals_per_h < 0):
            raise ValueError("rest_min and peak_arrivals_per_h must not be negative")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {self.timezone!r} (an IANA name: Europe/Brussels)") from None

    def arrivals_per_h(self, machines: int) -> float:
        if self.peak_arrivals_per_h is not None:
            return self.peak_arrivals_per_h
        mean_min = sum(self.visit_minutes) / 2 + WIPE.total_seconds() / 60
        return machines * 60.0 / mean_min


@dataclass(frozen=True, slots=True)
class _Day:
    gym: GymDay
    checked_in: frozenset[Visit]


class GymPlan:
    """Members, machines, straps and the visits of every local day (see the module docstring)."""

    def __init__(
        self,
        site: str,
        machines: int,
        *,
        seed: int,
        config: GymConfig = GymConfig(),
        kinds: tuple[DeviceKind, ...] = MACHINE_MIX,
    ) -> None:
        kinds = tuple(k for k in kinds if k in MACHINES)
        if not kinds:
            raise ValueError(f"a gym needs machine kinds ({', '.join(sorted(MACHINES))})")
        if machines < 1:
            raise ValueError("a gym needs at least one machine")
        self.site = site
        self.seed = seed
        self.config = config
        self.tz = ZoneInfo(config.timezone)
        rng = self._rng(0)
        self.members = [Member.random(f"m{i:04d}", rng) for i in range(config.members)]
        self.member_by_id = {m.member_id: m for m in self.members}
        n_straps = round(config.strap_share * len(self.members))
        owners = sorted(int(i) for i in self._rng(1).choice(len(self.members), n_straps, replace=False))
        self.strap_of: dict[str, str] = {
            self.members[i].member_id: f"strap-{self.members[i].member_id}" for i in owners
        }
        self.machines = Fleet.build(site, machines, seed=seed, mix=kinds).devices
        self.straps = [
            SimDevice(strap_id, "hr_strap", self.member_by_id[member_id], "steady", self._rng(3))
            for member_id, strap_id in self.strap_of.items()
        ]
        self.devices: list[SimDevice] = [*self.machines, *self.straps]
        self._days: OrderedDict[date, _Day] = OrderedDict()

    def _rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([k % 2**63 for k in (self.seed, *keys)])

    def fleet(self) -> GymFleet:
        return GymFleet(self.site, list(self.devices), self)

    def local_date(self, t: datetime) -> date:
        return t.astimezone(self.tz).date()

    def _day(self, day: date) -> _Day:
        cached = self._days.get(day)
        if cached is not None:
            self._days.move_to_end(day)
            return cached
        c = self.config
        gym = GymDay(
            day,
            self.machines,
            self.members,
            seed=int(np.random.SeedSequence([self.seed % 2**63, day.toordinal()]).generate_state(1)[0]),
            open_h=c.open_h,
            close_h=c.close_h,
            peak_arrivals_per_h=c.arrivals_per_h(len(self.machines)),
            classes=c.classes,
            class_size=c.class_size,
            timezone=c.timezone,
            visit_minutes=c.visit_minutes,
            rest=timedelta(minutes=c.rest_min),
            min_demand=c.min_demand,
        )
        draws = self._rng(2, day.toordinal()).random(len(gym.visits))
        share = c.check_in_share
        checked = frozenset(v for v, x in zip(gym.visits, draws.tolist(), strict=True) if x < share)
        out = self._days[day] = _Day(gym, checked)
        if len(self._days) > _DAYS_CACHED:
            self._days.popitem(last=False)
        return out

    def day(self, day: date) -> GymDay:
        """The gym on one local day (visits sorted by start, then machine)."""
        return self._day(day).gym

    def checked_in(self, visit: Visit) -> bool:
        return visit in self._day(self.local_date(visit.start)).checked_in

    def visits(self, start: datetime, end: datetime) -> list[Visit]:
        """Visits overlapping ``[start, end)``, by start then machine."""
        out: list[Visit] = []
        day, last = self.local_date(start), self.local_date(end)
        while day <= last:
            out.extend(v for v in self.day(day).visits if v.start < end and v.end > start)
            day += timedelta(days=1)
        return out

    def devices_of(self, visit: Visit) -> list[str]:
        """The devices a visit uses: its machine, and the member's strap if they own one."""
        strap = self.strap_of.get(visit.member_id)
        return [visit.device_id] if strap is None else [visit.device_id, strap]

    def visit_rng(self, device_id: str, visit: Visit) -> np.random.Generator:
        return self._rng(4, zlib.crc32(device_id.encode()), int(visit.start.timestamp()))


@dataclass(slots=True)
class GymFleet(Fleet):
    """Devices of a :class:`GymPlan` (all of them, or the subset one publisher serves) that send only while
    in use."""

    plan: GymPlan
    always_in_use: ClassVar[bool] = False
    _by_id: dict[str, SimDevice] = field(init=False, repr=False)
    _active: dict[str, Visit] = field(init=False, repr=False, default_factory=dict)
    _queue: deque[tuple[datetime, str, Visit]] = field(init=False, repr=False, default_factory=deque)
    _loaded: date | None = field(init=False, repr=False, default=None)
    _changes: list[UseChange] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        self._by_id = {d.device_id: d for d in self.devices}

    def subset(self, devices: list[SimDevice]) -> GymFleet:
        return GymFleet(self.site, devices, self.plan)

    @property
    def in_use(self) -> dict[str, Visit]:
        """Device id -> the visit it serves now."""
        return dict(self._active)

    def use_changes(self) -> list[UseChange]:
        return self._changes

    def _load_through(self, day: date) -> None:
        if self._loaded is None:
            self._loaded = day - timedelta(days=1)
        while self._loaded < day:
            self._loaded += timedelta(days=1)
            for v in self.plan.day(self._loaded).visits:
                for device_id in self.plan.devices_of(v):
                    if device_id in self._by_id:
                        self._queue.append((v.start, device_id, v))

    def next_start(self, after: datetime) -> datetime | None:
        """``after`` while a device is in use, else when the next visit of these devices starts (searching a
        week ahead), or ``None``."""
        if self._active:
            return after
        if self._loaded is None:
            self._load_through(self.plan.local_date(after))
        assert self._loaded is not None
        limit = self._loaded + timedelta(days=_LOOKAHEAD_DAYS)
        while not self._queue and self._loaded < limit:
            self._load_through(self._loaded + timedelta(days=1))
        return max(self._queue[0][0], after) if self._queue else None

    def stop(self, t: datetime) -> list[UseChange]:
        self._changes = [UseChange(self._by_id[d], t, False) for d in self._active]
        self._active.clear()
        return self._changes

    def advance(self, t: datetime, dt_s: float = 1.0) -> list[SimDevice]:
        """Move to ``t``: visits that ended stop, visits that began start (a late joiner catches up
        silently); returns the devices in use, which then step once."""
        self._changes = []
        self._load_through(self.plan.local_date(t))
        for device_id in [d for d, v in self._active.items() if v.end <= t]:
            v = self._active.pop(device_id)
            self._changes.append(UseChange(self._by_id[device_id], v.end, False))
        queue = self._queue
        while queue and queue[0][0] <= t:
            start, device_id, v = queue.popleft()
            if v.end <= t:
                continue  # over before this run reached it
            dev = self._by_id[device_id]
            if device_id in self._active:  # cannot happen with GymDay's rules; end the old one cleanly
                self._changes.append(UseChange(dev, start, False))
            dev.rng = self.plan.visit_rng(device_id, v)
            dev.start_session(self.plan.member_by_id[v.member_id], v.plan)
            self._active[device_id] = v
            self._changes.append(UseChange(dev, start, True))
        out: list[SimDevice] = []
        for device_id, v in self._active.items():
            dev = self._by_id[device_id]
            missed = math.floor(((t - v.start).total_seconds() - dev.elapsed_s) / dt_s + 1e-6)
            for _ in range(missed):
                dev.step(v.start + timedelta(seconds=dev.elapsed_s), dt_s)
            out.append(dev)
        return out

    def iter_history(
        self, start: datetime, seconds: float, rate_hz: float = 1.0
    ) -> Iterator[list[tuple[SimDevice, Sample]]]:
        """The ticks of ``seconds`` from ``start`` in which something happens (idle stretches are skipped)."""
        dt = 1.0 / rate_hz
        n = math.ceil(seconds * rate_hz)
        i = 0
        while i < n:
            yield self.tick(start + timedelta(seconds=i * dt), dt)
            i += 1
            if not self._active:
                nxt = self.next_start(start + timedelta(seconds=i * dt))
                if nxt is None:
                    return
                i = max(i, math.ceil((nxt - start).total_seconds() / dt - 1e-9))
