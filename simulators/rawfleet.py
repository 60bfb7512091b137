"""A fleet of raw-frame devices and the in-process transport that feeds their frames to a gateway.

:class:`RawFleet` wraps a :class:`simulators.fleet.Fleet` (the same members, hearts and workouts) into
:class:`simulators.rawdev.RawDevice` s, a share of them on ANT+ and a share of the BLE ones behaving like a
quirky real machine (``quirky_share``, see ``simulators.rawdev.QUIRKY``), and steps them tick by tick under
the fault injector: frame drops and corruption, heart-rate dropouts, device errors, disconnect/reconnect
storms.
What a correct gateway must make of it is recorded in :attr:`RawFleet.expected` ((device, t) -> the
sample, exact when the tick was complete) and the fault log (``FaultInjector.log``: counts, and ``lost``:
the (device, t) that can leave no row).

:class:`SimTransport` is a ``gateway.transport.Transport``: it yields one batch of events per tick, in real
time (``speed=1``), accelerated (``speed=N``: N seconds of device time per second) or as fast as the
gateway takes it (``speed=None``, backfill: not ``live``, so the gateway paces it by its backlog).

Connecting: the first batch announces the devices (``DeviceInfo``) and hands over what a gateway reads from
each BLE device's Device Information Service when it connects (:meth:`RawFleet.connect`); a device that
comes back after a disconnect (storm, a strap put on) is read again.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.transport import Event, Frame, Link
from simulators.faults import FaultInjector
from simulators.fleet import Fleet, UseChange
from simulators.publisher import stop_if_cancelled
from simulators.rawdev import QUIRKY, RawDevice, Tick
from vitalab.wire import Sample

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class RawFleet:
    fleet: Fleet
    ant_share: float = 0.25
    faults: FaultInjector | None = None
    quirky_share: float = 0.0
    """Share of the BLE devices of each kind with a quirky variant that behave like it."""
    record: bool = True
    """Keep :attr:`expected` (tests); off for long runs and benchmarks."""
    devices: list[RawDevice] = field(init=False)
    expected: dict[str, dict[datetime, Sample]] = field(init=False, default_factory=dict)
    partial: set[tuple[str, datetime]] = field(init=False, default_factory=set)
    """(device, t) whose sample is expected but lost some of its frames (fields may be missing)."""
    frames_sent: int = 0
    malformed_sent: dict[str, int] = field(init=False, default_factory=dict)
    _down: dict[str, int] = field(init=False, default_factory=dict)  # device -> ticks until it is back

    _by_id: dict[str, RawDevice] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        for name, share in (("ant_share", self.ant_share), ("quirky_share", self.quirky_share)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name}={share} is not within [0, 1]")
        self.devices = []
        per_kind: dict[str, int] = {}
        ble_per_kind: dict[str, int] = {}
        for d in self.fleet.devices:  # every 1/ant_share-th device of each kind speaks ANT+
            k = per_kind[d.kind] = per_kind.get(d.kind, 0) + 1
            ant = d.kind != "power_meter" and _every(k, self.ant_share)
            quirky = False
            if not ant and d.kind in QUIRKY:
                b = ble_per_kind[d.kind] = ble_per_kind.get(d.kind, 0) + 1
                quirky = _every(b, self.quirky_share)
            self.devices.append(RawDevice(d, "ant" if ant else "ble", quirk=quirky))
        self._by_id = {d.device_id: d for d in self.devices}

    @property
    def site(self) -> str:
        return self.fleet.site

    def infos(self) -> list[Event]:
        return [d.info() for d in self.devices]

    def connect(self, t: datetime) -> list[Event]:
        """What a gateway gets when it connects to every device at ``t``: the devices, then what their
        Device Information Services say."""
        return [*self.infos(), *(f for d in self.devices for f in d.dis_frames(t))]

    def tick(self, t: datetime, dt_s: float = 1.0) -> list[Event]:
        """Step every device in use once; the events a gateway receives for this tick (in a gym day also
        the start and end of visits: see :meth:`_use_change`)."""
        out: list[Event] = []
        faults = self.faults
        in_use = [self._by_id[d.device_id] for d in self.fleet.advance(t, dt_s)]
        for change in self.fleet.use_changes():
            out.extend(self._use_change(change))
        if faults is not None:
            for device_id in faults.storm([d.device_id for d in in_use if d.device_id not in self._down]):
                self._down[device_id] = faults.rates.storm_ticks
                out.append(Link(device_id, False, t))
        for dev in in_use:
            down = self._down.get(dev.device_id)
            tick = dev.tick(t, faults, dt_s, linked=down is None)
            if down is not None:  # the member goes on training; the radio link is gone
                self._lost(dev.device_id, t)
                if down <= 1:
                    del self._down[dev.device_id]
                    out.append(Link(dev.device_id, True, t))
                    out.extend(dev.dis_frames(t))  # read again on the new connection
                else:
                    self._down[dev.device_id] = down - 1
                continue
            out.extend(tick.frames)
            self._account(dev.device_id, t, tick)
        return out

    def _account(self, device_id: str, t: datetime, tick: Tick) -> None:
        self.frames_sent += len(tick.frames)
        if tick.malformed:
            self.malformed_sent[device_id] = self.malformed_sent.get(device_id, 0) + tick.malformed
        if tick.expected is None:
            self._lost(device_id, t)
            return
        if self.record:
            self.expected.setdefault(device_id, {})[t] = tick.expected
            if not tick.complete:
                self.partial.add((device_id, t))

    def _lost(self, device_id: str, t: datetime) -> None:
        if self.faults is not None and self.record:
            self.faults.log.lost.add((device_id, t))

    def _use_change(self, change: UseChange) -> list[Event]:
        """A visit starts or ends: a strap connects when put on and disconnects when taken off; a machine
        begins a new workout, or stops it (:meth:`RawDevice.end_visit`)."""
        dev = self._by_id[change.device.device_id]
        if dev.sim.kind == "hr_strap":
            link: list[Event] = [Link(dev.device_id, change.in_use, change.t)]
            return [*link, *dev.dis_frames(change.t)] if change.in_use else link
        if change.in_use:
            dev.begin_visit()
            return []
        frames, expected = dev.end_visit(change.t)
        self.frames_sent += len(frames)
        if expected is not None and self.record:
            self.expected.setdefault(dev.device_id, {})[change.t] = expected
        return list(frames)

    def next_start(self, after: datetime) -> datetime | None:
        return self.fleet.next_start(after)

    def finish(self, t: datetime) -> list[Event]:
        """End of the run: machines stop (machine status, post-workout; in a gym day only those in use, and
        straps disconnect), devices still down come back."""
        out: list[Event] = []
        for d in sorted(self._down):
            out += [Link(d, True, t), *self._by_id[d].dis_frames(t)]
        self._down.clear()
        if not self.fleet.always_in_use:
            for change in self.fleet.stop(t):
                out.extend(self._use_change(change))
            return out
        for dev in self.devices:
            frames: list[Frame] = dev.finish(t)
            self.frames_sent += len(frames)
            out.extend(frames)
        return out

    def expected_rows(self) -> set[tuple[str, datetime]]:
        return {(d, t) for d, samples in self.expected.items() for t in samples}


class SimTransport:
    """Feeds a :class:`RawFleet` to a gateway in-process (a ``gateway.transport.Transport``).

    With ``backfill_s``, the ``backfill_s`` seconds before ``start`` are played first as fast as the gateway
    takes them (not ``live`` meanwhile), then the run from ``start``; a real-time run then starts at the
    current second and keeps its planned end (a gym fleet's members catch up silently). Stretches in which
    no device of a gym fleet is in use are skipped (backfill) or slept through (live) instead of ticked.
    At the end the machines stop (:meth:`RawFleet.finish`) unless ``finish`` is false."""

    name = "sim"

    def __init__(
        self,
        fleet: RawFleet,
        start: datetime,
        seconds: float | None,
        *,
        speed: float | None = 1.0,
        rate_hz: float = 1.0,
        on_uplink_storm: Callable[[], None] | None = None,
        backfill_s: float = 0.0,
        finish: bool = True,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive (None: as fast as the gateway takes it)")
        if seconds is None and speed != 1.0:
            raise ValueError("only a real-time run may be open-ended")
        if backfill_s < 0:
            raise ValueError("backfill_s must not be negative")
        self.fleet = fleet
        self.start = start.replace(microsecond=0)  # device time on whole seconds, like the gateway's periods
        self.seconds = seconds
        self.speed = speed
        self.backfill_s = backfill_s
        self.finish = finish
        self.clock = clock or now_s  # the current second of device time (tests pin it)
        self.live = speed is not None and backfill_s == 0
        self.dt_s = 1.0 / rate_hz
        self.on_uplink_storm = on_uplink_storm
        self.ticks = 0
        self.end: datetime | None = None

    async def events(self) -> AsyncIterator[Sequence[Event]]:
        start = self.start
        yield self.fleet.connect(start - timedelta(seconds=self.backfill_s))
        if self.backfill_s > 0:
            self.live = False
            async for batch in self._play(start - timedelta(seconds=self.backfill_s), self.backfill_s, None):
                yield batch
            self.live = self.speed is not None
        seconds = self.seconds
        now = self.clock().replace(microsecond=0)
        if self.backfill_s > 0 and self.speed == 1.0 and now > start:
            # real time after a backfill: from the current second, to the planned end
            late = now - start
            start += late
            seconds = None if seconds is None else max(0.0, seconds - late.total_seconds())
        async for batch in self._play(start, seconds, self.speed):
            yield batch
        if self.finish:
            yield self.fleet.finish(self.end or start)

    async def _play(
        self, start: datetime, seconds: float | None, speed: float | None
    ) -> AsyncIterator[Sequence[Event]]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        faults = self.fleet.faults
        gym = not self.fleet.fleet.always_in_use
        n = None if seconds is None else round(seconds / self.dt_s)
        i = 0
        while n is None or i < n:
            t = start + timedelta(seconds=i * self.dt_s)
            if faults is not None and self.on_uplink_storm is not None and faults.uplink_storm():
                self.on_uplink_storm()
            yield self.fleet.tick(t, self.dt_s)
            i += 1
            self.ticks += 1
            if gym:  # nobody in: on to the next arrival (none within a week: an hour later, or the end)
                nxt = self.fleet.next_start(start + timedelta(seconds=i * self.dt_s))
                if nxt is None:
                    i = i + round(3600 / self.dt_s) if n is None else n
                else:
                    i = max(i, math.ceil((nxt - start).total_seconds() / self.dt_s - 1e-9))
            if speed is not None:  # nobody in until after the end: sleep to the end, not to the next visit
                wake = i if n is None else min(i, n)
                await asyncio.sleep(max(0.0, t0 + wake * self.dt_s / speed - loop.time()))
            else:
                await asyncio.sleep(0)
            stop_if_cancelled()
        self.end = start + timedelta(seconds=(i if n is None else min(i, n)) * self.dt_s)


def _every(k: int, share: float) -> bool:
    """Whether the ``k``-th (from 1) of a sequence is in a ``share`` of it spread evenly."""
    return int(k * share) > int((k - 1) * share)


def now_s() -> datetime:
    """The current second (device time on whole seconds)."""
    return datetime.now(UTC).replace(microsecond=0)
