"""Raw-frame devices: simulated machines and sensors that notify the BLE / ANT+ frames a real one would.

A :class:`RawDevice` wraps a :class:`simulators.fleet.SimDevice` (the member, the heart, the workout) and
turns each step into the frames of its radio, made with the gateway's own record types and
``gateway.decode.encode_frame``:

| kind | BLE | ANT+ |
|---|---|---|
| bike | FTMS Indoor Bike Data 0x2AD2, split in two (21 bytes > the 20-byte MTU) | FE-C pages 16 + 25 |
| treadmill | FTMS Treadmill Data 0x2ACD (20 bytes, one notification) | FE-C pages 16 + 17 |
| rower | FTMS Rower Data 0x2AD1 (one notification) | FE-C pages 16 + 22 |
| cross_trainer | FTMS Cross Trainer Data 0x2ACE, split (24 bytes) | FE-C pages 16 + 20 |
| hr_strap | Heart Rate Measurement 0x2A37 with RR intervals | HRM page 4, one per beat |
| power_meter | Cycling Power Measurement 0x2A63 with crank revolutions | (BLE only) |

**Identity.** A BLE device answers its Device Information Service (:meth:`RawDevice.dis_frames`:
manufacturer, model number, firmware revision), which a gateway reads when it connects; its configured
:meth:`RawDevice.info` says only what an operator knows (id, kind, radio). An ANT+ device has no DIS here: its
info carries vendor, model and firmware as a device list would.

**Vendor behaviour.** A device may be given one of :data:`QUIRKY` (``RawDevice.quirk``): it then identifies as
that machine and breaks the specification the way the real one is reported to, by changing the frames after
they are encoded (not through the gateway's quirk registry): ``trailing_byte`` (a Concept2 PM rower: one byte
after the last field), ``cadence_without_flag`` (a Life Fitness bike: cadence sent, flag bit 2 clear; its
record goes out whole, 21 bytes, as the real one negotiates a larger MTU), ``reserved_bits`` (a flag bit
reserved for future use set, two vendor bytes after the fields). Values and expected samples stay the same:
a gateway must decode them without anyone naming the model.

FTMS machines also notify Fitness Machine Status 0x2ADA ("started" at the first tick, "stopped" at
:meth:`RawDevice.finish`, "stopped by safety key" for a device error) and Training Status 0x2AD3 whenever
the workout moves to another segment (warm-up, high/low interval, recovery, cool-down). In a gym day
(:class:`simulators.gymfleet.GymFleet`) every visit is a workout of its own: :meth:`RawDevice.begin_visit`
restarts it (FTMS counters from zero, "started" again) and :meth:`RawDevice.end_visit` stops it (FTMS
"stopped" and post-workout; ANT+ FE a page 16 in state FINISHED, whose totals keep counting: FE counters
wrap and a gateway accumulates them across workouts, so the expected totals follow the same wrap counter).

Values are quantised to the resolution of their wire field *before* encoding, and :class:`Tick.expected`
is the :class:`vitalab.wire.Sample` a correct gateway must make of the frames (computed here from the
protocol rules — resolutions, RR in 1/1024 s, ANT+ beat counts and wrapping totals — not by decoding).
Faults (``simulators.faults.FaultRates``): ``drop`` loses a notification on the radio, ``malformed``
replaces one by bytes no decoder accepts (:func:`corrupt`), ``dropout`` loses heart-rate contact for a
tick, ``device_error`` pulls a machine's safety key. A tick whose every data frame was lost leaves no
sample (``Tick.expected is None``); a tick that lost only some parts leaves a partial one
(``Tick.complete`` is false).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from fractions import Fraction
from typing import Any, Final, Literal

import numpy as np

from gateway import ant, cycling, dis, ftms, hrm
from gateway.decode import Record, encode_frame, source_of
from gateway.fields import SIZE, FlagLayout
from gateway.quirks import DeviceIdentity
from gateway.transport import DeviceInfo, Frame
from simulators.faults import FaultInjector
from simulators.fleet import VENDORS, SimDevice
from simulators.workouts import workout
from vitalab.wire import Sample, registry

Radio = Literal["ble", "ant"]
Behaviour = Literal["trailing_byte", "cadence_without_flag", "reserved_bits"]
SIM_FIRMWARE: Final = "1.0.0"
QUIRKY: Final[dict[str, tuple[DeviceIdentity, Behaviour]]] = {
    "rower": (DeviceIdentity("Concept2", "PM5", "32.100"), "trailing_byte"),
    "bike": (DeviceIdentity("LifeFitness", "IC Bike (simulated)", "2.4"), "cadence_without_flag"),
    "treadmill": (DeviceIdentity("vitalab-sim", "SimRun 2 reserved-bit", SIM_FIRMWARE), "reserved_bits"),
    "cross_trainer": (
        DeviceIdentity("vitalab-sim", "SimCross 1 reserved-bit", SIM_FIRMWARE),
        "reserved_bits",
    ),
    "power_meter": (DeviceIdentity("vitalab-sim", "SimPower reserved-bit", SIM_FIRMWARE), "reserved_bits"),
}
"""Per kind: the identity a quirky simulated device reads out and how its frames break the specification
(the bike and rower identities are those of the reported machines, see ``gateway.quirks.RULES``)."""
VENDOR_BYTES: Final = b"\x5a\xa5"
"""What a ``reserved_bits`` device appends after the fields."""
MTU_PAYLOAD: Final = 20
"""ATT payload of one notification at the default MTU of 23."""
RR_TICK_MS: Final = Fraction(1000, 1024)
TRAINING_CODES: Final[dict[str, int]] = {
    "idle": 0x01,
    "warm_up": 0x02,
    "low_interval": 0x03,
    "high_interval": 0x04,
    "recovery": 0x05,
    "cool_down": 0x0B,
    "manual": 0x0D,
    "pre_workout": 0x0E,
    "post_workout": 0x0F,
}
FE_EQUIPMENT: Final[dict[str, int]] = {k.name: k.ant_fe for k in registry.KINDS if k.ant_fe is not None}
FE_SECOND_PAGE: Final = {"bike": 25, "treadmill": 17, "rower": 22, "cross_trainer": 20}
FE_IN_USE: Final = 3
FE_FINISHED: Final = 4


def q(value: float, resolution: Fraction = Fraction(1)) -> float:
    """``value`` as its wire field carries it: a multiple of ``resolution`` (1, 1/2, 1/10, 1/100, ...),
    the one the decoder returns for the raw integer ``round(value / resolution)``."""
    if resolution.numerator != 1:
        return float(round(Fraction(value) / resolution) * resolution)
    raw = round(value * resolution.denominator)
    return float(raw) if resolution.denominator == 1 else raw / resolution.denominator


def rr_ticks(rr_ms: float) -> int:
    return round(Fraction(rr_ms) / RR_TICK_MS)


@dataclass(slots=True)
class Tick:
    frames: list[Frame]
    expected: Sample | None
    """The sample the gateway must make of this tick's frames; ``None``: nothing valid got through."""
    complete: bool = True
    """Every data frame of the tick got through unchanged (``expected`` is exact, field by field)."""
    malformed: int = 0
    dropped: int = 0


@dataclass(slots=True)
class _Part:
    frame: Frame
    data: bool
    """A data frame (carries telemetry), not a status notification."""
    beat: int | None = None
    """ANT+ HRM: the beat count of the page."""
    rr_ms: float | None = None


@dataclass(slots=True)
class RawDevice:
    sim: SimDevice
    radio: Radio = "ble"
    quirk: bool = False
    """Behave like the kind's :data:`QUIRKY` machine (BLE only)."""
    _segment: int | None = None
    _started: bool = False
    _strokes: float = 0.0
    _crank_revs: float = 0.0
    _crank_event_ticks: int = 0
    _crank_seen: tuple[int, int] | None = None  # (revs, ticks) of the last CPS frame the gateway got
    _beat_ticks: int = 0
    _beat_count: int = 0
    _beat_seen: int | None = None  # beat count of the last HRM page the gateway got
    _pages_sent: int = 0
    _last_page: ant.HrmPage | None = None
    _last_rr: float | None = None
    _fe_events: int = 0
    _fe_power_acc: int = 0
    _fe_elapsed: ant.WrapCounter = field(default_factory=lambda: ant.WrapCounter(256))  # what a gateway sums
    _fe_distance: ant.WrapCounter = field(default_factory=lambda: ant.WrapCounter(256))
    _fe_last: tuple[int, int] = (0, 0)  # raw elapsed (1/4 s) and distance (m) of the last page 16
    _cross_distance_m: float = 0.0
    _error: bool = False
    _pending: list[_Part] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.radio == "ant" and self.sim.kind == "power_meter":
            raise ValueError("simulated power meters speak BLE Cycling Power only")
        if self.quirk and (self.radio != "ble" or self.sim.kind not in QUIRKY):
            raise ValueError(f"no quirky {self.radio} {self.sim.kind} is simulated")

    @property
    def device_id(self) -> str:
        return self.sim.device_id

    @property
    def behaviour(self) -> Behaviour | None:
        return QUIRKY[self.sim.kind][1] if self.quirk else None

    def identity(self) -> DeviceIdentity:
        """What the device says it is (its Device Information Service)."""
        if self.quirk:
            return QUIRKY[self.sim.kind][0]
        vendor, model = VENDORS[self.sim.kind]
        return DeviceIdentity(vendor, model, SIM_FIRMWARE)

    def info(self) -> DeviceInfo:
        """What a gateway is configured with: for BLE the id, kind and radio (the rest it reads from the
        device, :meth:`dis_frames`); for ANT+ also vendor, model and firmware."""
        if self.radio == "ble":
            return DeviceInfo(self.device_id, self.sim.kind, self.radio)
        me = self.identity()
        return DeviceInfo(
            self.device_id,
            self.sim.kind,
            self.radio,
            model=me.model,
            vendor=me.manufacturer,
            firmware=me.firmware,
        )

    def dis_frames(self, t: datetime) -> list[Frame]:
        """The Device Information Service strings a gateway reads when it connects (none over ANT+)."""
        if self.radio != "ble":
            return []
        return [self._frame(t, record) for record in dis.strings_of(self.identity())]

    # --- one tick -------------------------------------------------------------------------------------
    def tick(
        self, t: datetime, faults: FaultInjector | None = None, dt_s: float = 1.0, *, linked: bool = True
    ) -> Tick:
        """Step the member and the device; ``linked=False``: the radio link is down, nothing is sent (and
        no fault is drawn)."""
        truth = self.sim.step(t, dt_s)
        if not linked:
            faults = None
        contact = faults is None or truth.hr_bpm is None or not faults.hit_dropout()
        self._pending = []
        if self.sim.kind in FE_EQUIPMENT:
            self._status_frames(t, faults, dt_s)
        expected = self._data(t, truth, contact, dt_s)
        if not linked:
            return Tick([], None, complete=False)
        return self._deliver(t, expected, faults)

    def finish(self, t: datetime) -> list[Frame]:
        """The frames of the end of the workout (machine stopped, post-workout), no faults."""
        if self.sim.kind not in FE_EQUIPMENT or self.radio != "ble":
            return []
        stop = ftms.MachineStatus(op_code=0x02, event="", params=(("control", 1),))
        post = _training("post_workout")
        return [self._frame(t, stop), self._frame(t, post)]

    def begin_visit(self) -> None:
        """A member steps on (after ``sim.start_session``): a new workout, announced again; FTMS counters
        restart with the simulated ones."""
        self._started = False
        self._segment = None
        self._error = False
        self._strokes = 0.0
        self._cross_distance_m = 0.0

    def end_visit(self, t: datetime) -> tuple[list[Frame], Sample | None]:
        """The member steps off at ``t``: the frames (no faults) and the sample a gateway makes of them
        (ANT+ FE: speed 0 and the totals; ``None`` for BLE FTMS, whose frames are status only)."""
        if self.sim.kind not in FE_EQUIPMENT:
            return [], None
        if self.radio == "ble":
            return self.finish(t), None
        elapsed_q, distance = self._fe_last
        page = ant.FeGeneral(
            equipment_type=FE_EQUIPMENT[self.sim.kind],
            elapsed_s=elapsed_q % 256 / 4,
            distance_m=distance % 256,
            speed_mps=0.0,
            hr_bpm=None,
            fe_state=FE_FINISHED,
        )
        expected = Sample(
            t=t,
            speed_kmh=0.0,
            elapsed_s=self._fe_elapsed.update(elapsed_q) / 4,
            distance_m=float(self._fe_distance.update(distance)),
        )
        return [self._frame(t, page)], expected

    def _frame(self, t: datetime, record: Record, *, last: bool = True) -> Frame:
        data = encode_frame(record)
        behaviour = self.behaviour
        if behaviour is not None and isinstance(record, ftms.FtmsData | cycling.CyclingPower):
            data = misbehave(behaviour, record.LAYOUT, data, last=last)
        return Frame(self.device_id, source_of(record), data, t)

    def _add(
        self,
        t: datetime,
        record: Record,
        *,
        data: bool = True,
        beat: int | None = None,
        rr_ms: float | None = None,
        last: bool = True,
    ) -> None:
        self._pending.append(_Part(self._frame(t, record, last=last), data, beat, rr_ms))

    def _status_frames(self, t: datetime, faults: FaultInjector | None, dt_s: float) -> None:
        if self.radio != "ble":
            return
        if not self._started or self._error:
            self._started, self._error = True, False
            self._add(t, ftms.MachineStatus(op_code=0x04, event=""), data=False)
        if faults is not None and faults.device_error():
            self._error = True
            self._add(t, ftms.MachineStatus(op_code=0x03, event=""), data=False)
        number, _ = workout(self.sim.plan).position(self.sim.elapsed_s - dt_s)
        if number != self._segment:
            self._segment = number
            seg = workout(self.sim.plan).segment(number)
            self._add(t, _training(seg.training), data=False)

    def training(self) -> str:
        """The training status the machine shows now (the wire contract's name)."""
        return workout(self.sim.plan).at(max(self.sim.elapsed_s - 1, 0))[0].training

    # --- data frames ----------------------------------------------------------------------------------
    def _data(self, t: datetime, s: Sample, contact: bool, dt_s: float) -> Sample:
        kind = self.sim.kind
        hr = None if s.hr_bpm is None or not contact else q(s.hr_bpm)
        if kind == "cross_trainer":  # ~0.11 km/h per stride/min
            speed = q(0.11 * (s.cadence_rpm or 0.0), Fraction(1, 100))
            self._cross_distance_m += speed / 3.6 * dt_s
            s = replace_sample(s, speed_kmh=speed, distance_m=float(math.floor(self._cross_distance_m)))
        if kind == "hr_strap":
            return self._strap(t, s, contact)
        if kind == "power_meter":
            return self._power_meter(t, s, dt_s)
        if self.radio == "ant":
            return self._fe(t, s, hr)
        return self._ftms(t, s, hr, dt_s)

    def _ftms(self, t: datetime, s: Sample, hr: float | None, dt_s: float) -> Sample:
        kind = self.sim.kind
        common: dict[str, Any] = {
            "energy_kcal": q(s.energy_kcal or 0.0),
            "elapsed_s": q(s.elapsed_s or 0.0),
            "hr_bpm": hr,
        }
        record: ftms.FtmsData
        if kind == "bike":
            v: dict[str, Any] = {
                "speed_kmh": q(s.speed_kmh or 0.0, Fraction(1, 100)),
                "cadence_rpm": q(s.cadence_rpm or 0.0, Fraction(1, 2)),
                "distance_m": q(s.distance_m or 0.0),
                "resistance_level": q(s.resistance_level or 0.0),
                "power_w": q(s.power_w or 0.0),
            }
            bits = (1 << 2) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 11) | _hr_bit(hr, 9)
            record = ftms.IndoorBikeData(flags=bits, **_rec(v, common))
        elif kind == "treadmill":
            v = {
                "speed_kmh": q(s.speed_kmh or 0.0, Fraction(1, 100)),
                "distance_m": q(s.distance_m or 0.0),
                "incline_pct": q(s.incline_pct or 0.0, Fraction(1, 10)),
                "met": q(s.met or 0.0, Fraction(1, 10)),
            }
            bits = (1 << 2) | (1 << 3) | (1 << 7) | (1 << 9) | (1 << 10) | _hr_bit(hr, 8)
            record = ftms.TreadmillData(flags=bits, **_rec(v, common))
        elif kind == "rower":
            power = max(s.power_w or 0.0, 1.0)
            self._strokes += (s.stroke_rate_spm or 0.0) / 60 * dt_s
            v = {
                "stroke_rate_spm": q(s.stroke_rate_spm or 0.0, Fraction(1, 2)),
                "distance_m": q(s.distance_m or 0.0),
                "pace_s_per_500m": q(s.pace_s_per_500m or 500 * (2.8 / power) ** (1 / 3)),
                "power_w": q(s.power_w or 0.0),
            }
            bits = (1 << 2) | (1 << 3) | (1 << 5) | (1 << 8) | (1 << 11) | _hr_bit(hr, 9)
            record = ftms.RowerData(flags=bits, stroke_count=int(self._strokes) & 0xFFFF, **_rec(v, common))
        else:  # cross_trainer: two steps per stride
            cadence = s.cadence_rpm or 0.0
            v = {
                "speed_kmh": s.speed_kmh or 0.0,
                "distance_m": s.distance_m or 0.0,
                "resistance_level": q(10 + 20 * (cadence - 55) / 20, Fraction(1, 10)),
                "power_w": q(s.power_w or 0.0),
            }
            bits = (1 << 2) | (1 << 3) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 13) | _hr_bit(hr, 11)
            record = ftms.CrossTrainerData(flags=bits, steps_per_min=round(2 * cadence), **_rec(v, common))
        parts = [record] if self.behaviour == "cadence_without_flag" else split(record)
        for i, part in enumerate(parts):
            self._add(t, part, last=i == len(parts) - 1)
        return Sample(t=t, **{k: val for k, val in {**v, **common}.items() if val is not None})

    def _fe(self, t: datetime, s: Sample, hr: float | None) -> Sample:
        kind = self.sim.kind
        elapsed_q = round((s.elapsed_s or 0.0) * 4)
        distance = math.floor(s.distance_m or 0.0)
        speed_mps = q((s.speed_kmh or 0.0) / 3.6, Fraction(1, 1000))
        general = ant.FeGeneral(
            equipment_type=FE_EQUIPMENT[kind],
            elapsed_s=elapsed_q % 256 / 4,
            distance_m=distance % 256,
            speed_mps=speed_mps,
            hr_bpm=None if hr is None else int(hr),
            fe_state=FE_IN_USE,
        )
        self._fe_last = (elapsed_q, distance)
        out: dict[str, Any] = {  # elapsed and distance: the gateway's totals of the wrapping counters
            "speed_kmh": speed_mps * 3.6,
            "hr_bpm": hr,
            "elapsed_s": self._fe_elapsed.update(elapsed_q) / 4,
            "distance_m": float(self._fe_distance.update(distance)),
        }
        second: ant.FePage
        power = round(s.power_w or 0.0)
        if kind == "bike":
            self._fe_events = (self._fe_events + 1) % 256
            self._fe_power_acc = (self._fe_power_acc + power) % 0x10000
            cadence = round(s.cadence_rpm or 0.0)
            second = ant.FeTrainer(
                event_count=self._fe_events,
                cadence_rpm=cadence,
                accumulated_power_w=self._fe_power_acc,
                power_w=power,
                fe_state=FE_IN_USE,
            )
            out.update(cadence_rpm=float(cadence), power_w=float(power))
        elif kind == "treadmill":
            incline = q(s.incline_pct or 0.0, Fraction(1, 100))
            second = ant.FeSettings(incline_pct=incline, fe_state=FE_IN_USE)
            out.update(incline_pct=incline)
        elif kind == "rower":
            self._strokes += (s.stroke_rate_spm or 0.0) / 60
            spm = round(s.stroke_rate_spm or 0.0)
            second = ant.FeRower(
                stroke_count=int(self._strokes) % 256, stroke_rate_spm=spm, power_w=power, fe_state=FE_IN_USE
            )
            out.update(stroke_rate_spm=float(spm), power_w=float(power))
        else:
            second = ant.FeElliptical(
                cadence_spm=round(s.cadence_rpm or 0.0), power_w=power, fe_state=FE_IN_USE
            )
            out.update(power_w=float(power))
        self._add(t, general)
        self._add(t, second)
        return Sample(t=t, **{k: v for k, v in out.items() if v is not None})

    def _strap(self, t: datetime, s: Sample, contact: bool) -> Sample:
        hr = round(s.hr_bpm or 0.0) if contact else 0
        beats = [rr_ticks(ms) for ms in (s.rr_ms or [])]
        if self.radio == "ble":
            if not contact:
                record = hrm.HeartRateMeasurement(flags=0b100, hr_bpm=0)
            else:
                rrs = tuple(float(b * RR_TICK_MS) for b in beats)
                record = hrm.HeartRateMeasurement(
                    flags=0b110 | (hrm.RR_BIT if rrs else 0), hr_bpm=hr, rr_ms=rrs
                )
            self._add(t, record)
            return Sample(t=t, hr_bpm=float(hr), rr_ms=list(record.rr_ms) or None)
        # ANT+: one page 4 per beat (a real strap repeats each at 4 Hz); without a beat, the last page again
        pages: list[tuple[ant.HrmPage, float | None]] = []
        for ticks in beats if contact else []:
            prev = self._beat_ticks
            self._beat_ticks = (self._beat_ticks + ticks) % 0x10000
            self._beat_count = (self._beat_count + 1) % 256
            page = self._hrm_page(prev, hr)
            pages.append((page, float(ticks * RR_TICK_MS)))
        if not pages and self._last_page is not None:
            pages.append((replace(self._last_page, hr_bpm=hr, toggle=self._toggle()), self._last_rr))
        for page, page_rr in pages:
            self._last_page, self._last_rr = page, page_rr
            self._add(t, page, beat=page.beat_count, rr_ms=page_rr)
        return Sample(t=t, hr_bpm=float(hr) if hr else None)  # rr_ms: filled in _deliver

    def _toggle(self) -> bool:
        self._pages_sent += 1
        return (self._pages_sent // 4) % 2 == 1

    def _hrm_page(self, prev_ticks: int, hr: int) -> ant.HrmPage:
        return ant.HrmPage(
            page=4,
            toggle=self._toggle(),
            page_specific=0xFF | prev_ticks << 8,
            beat_time_s=self._beat_ticks / 1024,
            beat_count=self._beat_count,
            hr_bpm=hr,
        )

    def _power_meter(self, t: datetime, s: Sample, dt_s: float) -> Sample:
        cadence = s.cadence_rpm or 0.0
        before = math.floor(self._crank_revs)
        self._crank_revs += cadence / 60 * dt_s
        revs = math.floor(self._crank_revs)
        if revs > before and cadence > 0:  # time of the last whole revolution, in 1/1024 s since the start
            since_s = (self._crank_revs - revs) / (cadence / 60)
            end_s = self.sim.elapsed_s
            self._crank_event_ticks = math.floor((end_s - since_s) * 1024)
        power = round(s.power_w or 0.0)
        record = cycling.CyclingPower(
            flags=1 << 5,
            power_w=power,
            crank_revs=revs & 0xFFFF,
            crank_event_s=(self._crank_event_ticks % 0x10000) / 1024,
        )
        self._add(t, record)
        return Sample(t=t, power_w=float(power))  # cadence_rpm: filled in _deliver

    # --- faults and what gets through -----------------------------------------------------------------
    def _deliver(self, t: datetime, expected: Sample, faults: FaultInjector | None) -> Tick:
        frames: list[Frame] = []
        delivered: list[_Part] = []
        data_parts = [p for p in self._pending if p.data]
        tick = Tick(frames, expected)
        for part in self._pending:
            fate = "ok" if faults is None else faults.frame_fate()
            if fate == "drop":
                tick.dropped += 1
                continue
            if fate == "malformed":
                assert faults is not None
                tick.malformed += 1
                frames.append(
                    replace(part.frame, data=corrupt(part.frame.source, part.frame.data, faults.rng)),
                )
                continue
            frames.append(part.frame)
            if part.data:
                delivered.append(part)
        tick.complete = len(delivered) == len(data_parts)
        kind = self.sim.kind
        if kind == "hr_strap" and self.radio == "ant":
            rr = []
            for p in delivered:
                if p.beat != self._beat_seen and p.rr_ms is not None:
                    rr.append(p.rr_ms)
                self._beat_seen = p.beat
            values: dict[str, Any] = {"hr_bpm": expected.hr_bpm, "rr_ms": rr or None}
            tick.expected = None if not delivered or not any(values.values()) else Sample(t=t, **values)
            return tick
        if kind == "power_meter" and delivered:
            tick.expected = replace_sample(expected, cadence_rpm=self._cadence_seen())
            return tick
        if not delivered or (kind == "hr_strap" and not expected.hr_bpm):
            tick.expected = None
        return tick

    def _cadence_seen(self) -> float | None:
        """Cadence from the crank data of consecutive CPS frames the gateway got (16-bit wrap)."""
        now = (math.floor(self._crank_revs) & 0xFFFF, self._crank_event_ticks % 0x10000)
        last, self._crank_seen = self._crank_seen, now
        if last is None:
            return None
        d_revs, d_ticks = (now[0] - last[0]) % 0x10000, (now[1] - last[1]) % 0x10000
        if d_revs == 0 or d_ticks == 0:
            self._crank_seen = last if d_revs == 0 else now
            return None
        return d_revs * 1024 / d_ticks * 60


def replace_sample(s: Sample, **changes: object) -> Sample:
    values = {f: getattr(s, f) for f in s.__struct_fields__}
    values.update(changes)
    return Sample(**values)


def _hr_bit(hr: float | None, bit: int) -> int:
    return 0 if hr is None else 1 << bit


def _rec(v: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    names = {"energy_kcal": "energy_total_kcal"}
    out: dict[str, Any] = {k: _int(x) for k, x in v.items()}
    out.update({names.get(k, k): _int(x) for k, x in common.items()})
    return out


def _int(x: float | None) -> float | int | None:
    return int(x) if x is not None and float(x).is_integer() else x


def _training(name: str) -> ftms.TrainingStatus:
    return ftms.TrainingStatus(flags=0, status_code=TRAINING_CODES[name], status="", training=name)


# --- splitting a record over notifications ----------------------------------------------------------------
def split(record: ftms.FtmsData, mtu: int = MTU_PAYLOAD) -> list[ftms.FtmsData]:
    """The notifications of a record that may not fit one: every part but the last has More Data (bit 0)
    set, which also means it does not carry the first field group (speed, or stroke rate for rowers); the
    last part carries it. Groups are packed greedily in flag order."""
    plan = _split_plan(record.LAYOUT, record.flags, mtu)
    if len(plan) == 1:
        return [record]
    return [replace(record, flags=f, more_data=bool(f & 1)) for f in plan]


@functools.cache
def _split_plan(layout: FlagLayout, flags: int, mtu: int) -> tuple[int, ...]:
    flag_size = SIZE[layout.flags_kind]
    groups = [g for g in layout.groups if g.bit != 0 and g.present(flags)]
    first = next(g for g in layout.groups if g.bit == 0)
    sizes = {g.bit: sum(f.size for f in g.fields) for g in [*groups, first]}
    if flag_size + sum(sizes.values()) <= mtu:
        return (flags,)
    parts: list[list[int]] = [[]]
    used = 0
    for g in groups:
        if used + sizes[g.bit] > mtu - flag_size:
            parts.append([])
            used = 0
        parts[-1].append(g.bit)
        used += sizes[g.bit]
    if used + sizes[0] > mtu - flag_size:
        parts.append([])
    only = flags & layout.flag_only_bits
    last = len(parts) - 1
    return tuple(only | sum(1 << b for b in bits) | (0 if i == last else 1) for i, bits in enumerate(parts))


# --- vendor behaviour -------------------------------------------------------------------------------------
def misbehave(behaviour: Behaviour, layout: FlagLayout, frame: bytes, *, last: bool) -> bytes:
    """A correctly encoded data frame as the vendor sends it (see the module doc); ``last``: the final part
    of a split record (where the vendor's extra bytes go)."""
    size = SIZE[layout.flags_kind]
    flags = int.from_bytes(frame[:size], "little")
    if behaviour == "trailing_byte":
        return frame + b"\x00"
    if behaviour == "cadence_without_flag":
        return (flags & ~(1 << 2)).to_bytes(size, "little") + frame[size:]
    if not last:
        return frame
    top_reserved = 1 << (layout.reserved_mask.bit_length() - 1)
    return (flags | top_reserved).to_bytes(size, "little") + frame[size:] + VENDOR_BYTES


FLAG_LAYOUTS: Final[dict[str, FlagLayout]] = {
    **{cls.SOURCE: cls.LAYOUT for cls in ftms.DATA_TYPES},
    cycling.CPM_LAYOUT.source: cycling.CPM_LAYOUT,
    cycling.CSC_LAYOUT.source: cycling.CSC_LAYOUT,
}


# --- corrupted frames ------------------------------------------------------------------------------------
def corrupt(source: str, data: bytes, rng: np.random.Generator) -> bytes:
    """Bytes no decoder of ``source`` accepts (by the protocol's rules, also with the quirks of the device
    that sent ``data``): cut below the mandatory part, bytes after the last field (not where a reserved flag
    bit may account for them), a training status with text but no string flag, or an ANT+ page with the
    wrong length or page number."""
    choice = int(rng.integers(3))
    if source.startswith("ant:"):
        if choice == 0:
            return data[: int(rng.integers(0, 8))]
        if choice == 1:
            return data + bytes([int(rng.integers(256))])
        return bytes([(data[0] & 0x80) | ((data[0] & 0x7F) + 1) % 128]) + data[1:]
    if source == "ble:2a37":  # RR intervals fill the rest of an HRM frame: extra bytes are not an error
        return data[:1] if choice == 0 else b""  # the heart rate cut
    if source == "ble:2ada":  # machine status: a reserved op code, or nothing
        return b"" if choice == 0 else bytes([0x16]) + data[1:]
    if source == "ble:2ad3":  # training status: cut, or text without the string flag (no reserved bit)
        return data[:1] if choice == 0 else bytes([data[0] & 0x02, data[1]]) + b"?"
    layout = FLAG_LAYOUTS[source]
    flag_size = SIZE[layout.flags_kind]
    reserved = int.from_bytes(data[:flag_size], "little") & layout.reserved_mask
    if choice == 0 or reserved:  # bytes after the fields of a frame with reserved bits are allowed
        return data[: int(rng.integers(0, flag_size if source != "ble:2a63" else 4))]
    return data + bytes(int(x) for x in rng.integers(2, 256, int(rng.integers(2, 5))))
