"""Fault injection for the simulated fleet: each fault has a rate, draws come from a seeded generator, and
every injection is logged so that a test can tell exactly which valid samples the platform must keep.

Faults act on outgoing telemetry messages (drop, duplicate, reorder, delay, malformed extra message) and on
devices (clock skew, sensor dropouts, error states). For raw-frame devices (:mod:`simulators.rawdev`)
``drop`` and ``malformed`` act on single BLE/ANT+ notifications instead (logged as ``frame_drop`` and
``malformed_frame``), and two more apply: disconnect/reconnect storms of many devices at once, and the
gateway's own MQTT connection dropping (``uplink_storm``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from vitalab.wire import Sample


@dataclass(frozen=True, slots=True)
class FaultRates:
    drop: float = 0.0
    """A telemetry message is never sent (its samples are lost at the source, like a radio drop)."""
    duplicate: float = 0.0
    """A message is sent twice."""
    reorder: float = 0.0
    """A message is held back and sent after the device's next one."""
    delay: float = 0.0
    """A message is held back for ``delay_s`` seconds of simulated time."""
    delay_s: float = 5.0
    malformed: float = 0.0
    """An extra, malformed payload is sent on the device's telemetry topic (the real one still goes)."""
    clock_skew: float = 0.0
    """Fraction of devices whose clock is off by up to ±``max_skew_s``."""
    max_skew_s: float = 30.0
    dropout: float = 0.0
    """A sample loses its heart rate (strap contact lost)."""
    device_error: float = 0.0
    """Per device and tick: the device reports an error state."""
    storm: float = 0.0
    """Per tick: a disconnect/reconnect storm: ``storm_share`` of the raw-frame devices drop their radio
    link at once and come back ``storm_ticks`` ticks later (what they measured meanwhile is lost)."""
    storm_share: float = 0.3
    storm_ticks: int = 5
    uplink_storm: float = 0.0
    """Per tick: the gateway's MQTT connection drops (it reconnects and resends; nothing may be lost)."""

    def __post_init__(self) -> None:
        for name in (
            "drop",
            "duplicate",
            "reorder",
            "delay",
            "malformed",
            "clock_skew",
            "dropout",
            "device_error",
            "storm",
            "storm_share",
            "uplink_storm",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault rate {name}={value} is not within [0, 1]")
        if self.storm_ticks < 1:
            raise ValueError(f"storm_ticks={self.storm_ticks} must be at least 1")


MALFORMED: tuple[bytes, ...] = (
    b"\x00\xff garbage",
    b'{"v":1,"device":"?"',
    b'{"v":9,"device":"x","seq":0,"samples":[]}',
    b"[]",
)


@dataclass
class FaultLog:
    """What was injected. ``lost`` holds the (device, t) of samples that were never sent."""

    counts: Counter[str] = field(default_factory=Counter)
    lost: set[tuple[str, datetime]] = field(default_factory=set)
    skew_s: dict[str, float] = field(default_factory=dict)

    def note(self, fault: str, n: int = 1) -> None:
        self.counts[fault] += n


@dataclass
class Outgoing:
    """One telemetry message on its way out, possibly held back."""

    device_id: str
    payload: bytes
    samples: list[Sample]
    due_tick: int = 0


class FaultInjector:
    def __init__(self, rates: FaultRates, seed: int = 0) -> None:
        self.rates = rates
        self.log = FaultLog()
        self._rng = np.random.default_rng(seed)
        self._held: list[Outgoing] = []
        self._reordered: dict[str, Outgoing] = {}

    def _hit(self, rate: float) -> bool:
        return rate > 0 and bool(self._rng.random() < rate)

    @property
    def rng(self) -> np.random.Generator:
        return self._rng

    # --- raw-frame devices ----------------------------------------------------------------------------
    def hit_dropout(self) -> bool:
        """A heart-rate sensor loses contact for a tick."""
        hit = self._hit(self.rates.dropout)
        if hit:
            self.log.note("dropout")
        return hit

    def frame_fate(self) -> str:
        """``"drop"`` (lost on the radio), ``"malformed"`` (corrupted) or ``"ok"`` for one notification."""
        if self._hit(self.rates.drop):
            self.log.note("frame_drop")
            return "drop"
        if self._hit(self.rates.malformed):
            self.log.note("malformed_frame")
            return "malformed"
        return "ok"

    def storm(self, connected: list[str]) -> list[str]:
        """The devices a storm takes down this tick (none most ticks)."""
        if not connected or not self._hit(self.rates.storm):
            return []
        n = max(1, round(self.rates.storm_share * len(connected)))
        picked = sorted(
            str(d) for d in self._rng.choice(connected, size=min(n, len(connected)), replace=False)
        )
        self.log.note("storm")
        self.log.note("storm_disconnect", len(picked))
        return picked

    def uplink_storm(self) -> bool:
        hit = self._hit(self.rates.uplink_storm)
        if hit:
            self.log.note("uplink_storm")
        return hit

    def device_skew(self, device_id: str) -> timedelta:
        """A constant clock error for a device, drawn once."""
        if device_id not in self.log.skew_s:
            skew = 0.0
            if self._hit(self.rates.clock_skew):
                skew = float(self._rng.uniform(-self.rates.max_skew_s, self.rates.max_skew_s))
                self.log.note("clock_skew")
            self.log.skew_s[device_id] = skew
        return timedelta(seconds=self.log.skew_s[device_id])

    def sample_dropout(self, sample: Sample) -> Sample:
        if sample.hr_bpm is not None and self._hit(self.rates.dropout):
            self.log.note("dropout")
            return Sample(
                **{f: getattr(sample, f) for f in sample.__struct_fields__ if f not in ("hr_bpm", "rr_ms")}
            )
        return sample

    def device_error(self) -> bool:
        hit = self._hit(self.rates.device_error)
        if hit:
            self.log.note("device_error")
        return hit

    def dropped(self, msg: Outgoing) -> bool:
        return bool(msg.samples) and (msg.device_id, msg.samples[0].t) in self.log.lost

    def route(self, msg: Outgoing, tick: int) -> list[tuple[str, bytes]]:
        """(device, payload) to send now for ``msg``, plus held-back messages that became due."""
        r = self.rates
        out: list[tuple[str, bytes]] = []
        if self._hit(r.malformed):
            out.append((msg.device_id, MALFORMED[int(self._rng.integers(len(MALFORMED)))]))
            self.log.note("malformed")
        if self._hit(r.drop):
            self.log.note("drop")
            self.log.lost.update((msg.device_id, s.t) for s in msg.samples)
        elif self._hit(r.delay):
            self.log.note("delay")
            msg.due_tick = tick + int(r.delay_s)
            self._held.append(msg)
        elif self._hit(r.reorder) and msg.device_id not in self._reordered:
            self.log.note("reorder")
            self._reordered[msg.device_id] = msg
            return out
        else:
            out.append((msg.device_id, msg.payload))
            if self._hit(r.duplicate):
                self.log.note("duplicate")
                out.append((msg.device_id, msg.payload))
        late = self._reordered.pop(msg.device_id, None)
        if late is not None and late is not msg:
            out.append((late.device_id, late.payload))
        return out + self.due(tick)

    def due(self, tick: int) -> list[tuple[str, bytes]]:
        ready = [m for m in self._held if m.due_tick <= tick]
        self._held = [m for m in self._held if m.due_tick > tick]
        return [(m.device_id, m.payload) for m in ready]

    def drain(self) -> list[tuple[str, bytes]]:
        """Everything still held back (end of a run)."""
        out = [(m.device_id, m.payload) for m in [*self._held, *self._reordered.values()]]
        self._held.clear()
        self._reordered.clear()
        return out
