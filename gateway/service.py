"""The running gateway: frames from transports -> decoded, reassembled, normalised, merged -> published.

Per frame: ``decode_frame`` with the device's quirks; FTMS records split over several notifications
are put back together (``ftms.Reassembler``, one per device); ANT+ FE pages update the device's wrapping
totals (``ant.FeAccumulator``); Cycling Power / CSC crank data give cadence (``cycling.CadenceTracker``); an
ANT+ HRM page contributes its RR interval only when it reports a new beat (a strap repeats each beat's page
about four times); then ``normalize.to_sample_with_notes`` maps the record onto a wire ``Sample``.

**Merging.** The wire contract's row identity is (device, t), so the records of one device are merged per
period (``period_s``, default 1 s): the sample time is the start of the period (the frame time floored),
and each field takes the value of the record with the highest priority — dedicated sensors first (a
heart-rate strap's HR/RR over the HR a machine shows, a power meter's power and cadence over the
machine's) — and at equal priority the newest record (a machine that notified twice in one period
reports its latest state). RR intervals of all records of the period are kept, in arrival order (at most
64). A period is published when a frame of a later period arrives for the device, when the transport's
time has moved ``grace_s`` past its end (live transports; the simulator's batches close a tick at once),
when the device has been quiet for ``hold_s`` of wall time, when it disconnects, and at the end.
A frame of an older period than the device's current one (out of order) is published on its own.

**Identity and quirks.** A device's quirks (``gateway.quirks``) are chosen from what it says it is: the
Device Information Service strings a transport reads on connect and hands over as frames (``ble:2a29``
manufacturer, ``ble:2a24`` model, ``ble:2a26`` firmware, ...), over what the device list configured; a
``quirks`` profile in the device list wins over both. The strings also become the device's meta (vendor,
model, firmware), published again when they change.

**Reserved flag bits.** A frame that sets flag bits reserved for future use is decoded like any other (the
decoders ignore those bits and keep what they add); it is counted per device in
:attr:`ServiceStats.reserved_flags` and logged once per device.

**Dropped values.** A decoded value outside the wire contract's bounds is left out of the sample and counted
as ``out_of_bounds:<field>`` in :attr:`ServiceStats.notes`.

**State.** Training Status -> ``state.training``; Fitness Machine Status started / stopped / reset /
safety key -> training and ``errors``; an ANT+ FE state change (ready, in use, finished); a :class:`Link`
event -> ``online``. Every state message is the device's full retained snapshot.

**Bad input never stops the gateway.** A frame that does not decode (``DecodeError``) or a payload a
transport could not read (:class:`Rejected`) is counted per device (:attr:`ServiceStats.dead_frames`),
logged (the first per device, then every 100th) and kept in the gateway's local dead-letter table (the
buffer file, ``gateway.buffer.Buffer.dead_frames``); the frames around it flow on. The ingester never
sees them: it takes decoded telemetry only, and the raw topics are the gateway's input.

**Pacing.** A transport that is not ``live`` (simulated backfill) waits while the publisher's backlog is
above ``high_water`` entries, until it is below ``low_water``; live ones are never held up (the disk buffer
absorbs a broker outage). With commit acknowledgements the backlog includes what the broker took and no
ingester has acknowledged yet, so a backfill goes at the pace of the ingesters' commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, get_args

from gateway import ant, cycling, dis, ftms, hrm, quirks
from gateway.buffer import DeadFrame
from gateway.decode import Record, canonical_source, decode_frame
from gateway.errors import DecodeError
from gateway.normalize import BOUNDS, to_sample_with_notes
from gateway.publisher import GatewayPublisher
from gateway.transport import (
    DeviceInfo,
    Event,
    Frame,
    Link,
    Radio,
    Rejected,
    Transport,
    kind_of_source,
)
from vitalab.wire import DeviceKind, DeviceState, Sample, registry
from vitalab.wire.payload import MAX_RR_PER_SAMPLE, TrainingStatus

logger = logging.getLogger(__name__)

TRAINING: Final[dict[str, TrainingStatus]] = {name: name for name in get_args(TrainingStatus)}
FE_KIND: Final[dict[int, DeviceKind]] = {k.ant_fe: k.name for k in registry.KINDS if k.ant_fe is not None}
FE_TRAINING: Final[dict[int, TrainingStatus]] = {2: "idle", 3: "manual", 4: "post_workout"}
SENSOR: Final = 2
MACHINE: Final = 1
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
ZERO: Final = timedelta(0)


@dataclass(slots=True)
class ServiceStats:
    frames: int = 0
    records: int = 0
    samples: int = 0
    """Merged samples handed to the publisher."""
    states: int = 0
    late_frames: int = 0
    dead_frames: Counter[str] = field(default_factory=Counter)
    """Per device ("" when the device is unknown): frames that did not decode, payloads not readable."""
    notes: Counter[str] = field(default_factory=Counter)
    """What normalisation dropped (``out_of_bounds:<field>``: values outside the wire contract's bounds) and
    reassembly flagged (``incomplete_split``)."""
    reserved_flags: Counter[str] = field(default_factory=Counter)
    """Per device: frames that set flag bits reserved for future use (decoded; what the bits added kept)."""

    @property
    def dead_total(self) -> int:
        return sum(self.dead_frames.values())


@dataclass(slots=True)
class _Bucket:
    t: datetime
    values: dict[str, Any] = field(default_factory=dict)
    priority: dict[str, int] = field(default_factory=dict)
    rr: list[float] = field(default_factory=list)

    def add(self, sample: Sample, priority: int) -> None:
        for name in sample.__struct_fields__:
            if name == "t":
                continue
            value = getattr(sample, name)
            if value is None:
                continue
            if name == "rr_ms":
                self.rr.extend(value)
            elif priority >= self.priority.get(name, 0):
                self.values[name] = value
                self.priority[name] = priority

    def sample(self) -> Sample | None:
        if self.rr:
            self.values["rr_ms"] = self.rr[-MAX_RR_PER_SAMPLE:]
        return Sample(t=self.t, **self.values) if self.values else None


@dataclass(slots=True)
class _Device:
    device_id: str
    info: DeviceInfo | None = None
    """As configured or announced by the transport."""
    dis: quirks.DeviceIdentity | None = None
    """What the device's Device Information Service said (strings read so far)."""
    selection: quirks.Selection = quirks.SPEC
    announced: DeviceInfo | None = None
    transport: str = ""
    bucket: _Bucket | None = None
    last_wall: float = 0.0
    reassembler: ftms.Reassembler = field(default_factory=lambda: ftms.Reassembler(timeout_s=math.inf))
    fe: ant.FeAccumulator = field(default_factory=ant.FeAccumulator)
    cadence: cycling.CadenceTracker = field(default_factory=cycling.CadenceTracker)
    beat: int | None = None
    fe_state: int | None = None
    online: bool = True
    training: TrainingStatus | None = None
    errors: list[str] = field(default_factory=list)
    stated: bool = False

    @property
    def override(self) -> str | None:
        return None if self.info is None else self.info.quirks

    def identity(self) -> quirks.DeviceIdentity | None:
        """The configured vendor / model / firmware, with what the device said over them."""
        info, said = self.info, self.dis
        if info is None:
            return said
        base = quirks.DeviceIdentity(manufacturer=info.vendor, model=info.model, firmware=info.firmware)
        if said is None:
            return base
        return quirks.DeviceIdentity(
            manufacturer=said.manufacturer or base.manufacturer,
            model=said.model or base.model,
            firmware=said.firmware or base.firmware,
            hardware=said.hardware,
            software=said.software,
        )

    def meta(self) -> DeviceInfo | None:
        """The device as its meta describes it: the configuration, with what the device said over it."""
        identity = self.identity()
        if self.info is None or identity is None:
            return self.info
        return replace(
            self.info, vendor=identity.manufacturer, model=identity.model, firmware=identity.firmware
        )


@dataclass(slots=True)
class Output:
    """What a batch of events asks of the publisher."""

    samples: list[tuple[str, Sample]] = field(default_factory=list)
    metas: list[DeviceInfo] = field(default_factory=list)
    states: dict[str, DeviceState] = field(default_factory=dict)
    dead: list[DeadFrame] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.samples or self.metas or self.states or self.dead)


def floor_time(t: datetime, period_s: float) -> datetime:
    """``t`` floored to a multiple of ``period_s`` since the epoch, in whole milliseconds."""
    if period_s == 1.0 and t.utcoffset() == ZERO:
        return t.replace(microsecond=0)
    ms = round((t - EPOCH) / timedelta(milliseconds=1))
    step = max(1, round(period_s * 1000))
    return EPOCH + timedelta(milliseconds=ms - ms % step)


class GatewayService:
    """Runs transports into a :class:`Pipeline` and the pipeline's output into a ``GatewayPublisher``."""

    def __init__(
        self,
        publisher: GatewayPublisher,
        transports: Sequence[Transport],
        *,
        devices: Sequence[DeviceInfo] = (),
        period_s: float = 1.0,
        grace_s: float = 0.5,
        hold_s: float = 1.5,
        high_water: int = 5_000,
        low_water: int = 1_000,
    ) -> None:
        self.publisher = publisher
        self.transports = list(transports)
        self.pipeline = Pipeline(devices=devices, period_s=period_s, grace_s=grace_s, hold_s=hold_s)
        self.high_water = high_water
        self.low_water = low_water

    @property
    def stats(self) -> ServiceStats:
        return self.pipeline.stats

    async def run(self) -> None:
        """Consume every transport until all of them end (or the task is cancelled); then publish what is
        still merging."""
        ticker = asyncio.create_task(self._ticker())
        try:
            metas = self.pipeline.known()
            if metas:
                await self.publisher.announce([m.meta() for m in metas])
            async with asyncio.TaskGroup() as tg:
                for transport in self.transports:
                    tg.create_task(self._consume(transport), name=f"transport-{transport.name}")
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self._samples(self.pipeline.drain())  # sync: also when cancelled

    async def _consume(self, transport: Transport) -> None:
        loop = asyncio.get_running_loop()
        async for batch in transport.events():
            await self._publish(self.pipeline.handle(batch, transport.name, loop.time(), live=transport.live))
            if not transport.live:
                await self._pace()
        await self._publish(self.pipeline.end(transport.name))
        logger.info("transport %s ended", transport.name)

    def _samples(self, out: Output) -> None:
        for device_id, sample in out.samples:
            self.publisher.add_sample(device_id, sample)

    async def _publish(self, out: Output) -> None:
        self._samples(out)
        if out.metas:
            await self.publisher.announce([m.meta() for m in out.metas])
        if out.states:
            await self.publisher.set_states(list(out.states.values()))
        if out.dead:
            await self.publisher.record_dead_frames(out.dead)

    async def _pace(self) -> None:
        if self.publisher.stats.buffered <= self.high_water:
            return
        while self.publisher.stats.buffered > self.low_water:  # noqa: ASYNC110  (a count, not an event)
            await asyncio.sleep(0.05)

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(0.25, self.pipeline.hold_s / 2))
            self._samples(self.pipeline.expire(loop.time()))


class Pipeline:
    """Decoding, reassembly, normalisation and merging, without I/O: events in, :class:`Output` out.
    ``wall`` is a monotonic clock reading the caller passes (for :meth:`expire`)."""

    def __init__(
        self,
        *,
        devices: Sequence[DeviceInfo] = (),
        period_s: float = 1.0,
        grace_s: float = 0.5,
        hold_s: float = 1.5,
    ) -> None:
        if period_s <= 0 or grace_s < 0 or hold_s <= 0:
            raise ValueError("period_s and hold_s must be positive, grace_s not negative")
        self.period = timedelta(seconds=period_s)
        self.period_s = period_s
        self.grace = timedelta(seconds=grace_s)
        self.hold_s = hold_s
        self.stats = ServiceStats()
        self._devices: dict[str, _Device] = {}
        self._sources: dict[str, str] = {}
        for info in devices:
            dev = self._devices[info.device_id] = _Device(info.device_id, info)
            self._choose_quirks(dev)
            dev.announced = dev.meta()

    def _canonical(self, source: str) -> str:
        canonical = canonical_source(source)  # raises UnknownSource (a DecodeError)
        if len(self._sources) < 1024:
            self._sources[source] = canonical
        return canonical

    def known(self) -> list[DeviceInfo]:
        """Devices configured up front (as their meta describes them)."""
        return [m for d in self._devices.values() if (m := d.meta()) is not None]

    def expire(self, wall: float) -> Output:
        """Periods of devices quiet for ``hold_s`` since their last frame."""
        out = Output()
        for dev in self._devices.values():
            if dev.bucket is not None and wall - dev.last_wall >= self.hold_s:
                self._emit_device(dev, out)
        return out

    def end(self, transport: str) -> Output:
        """A transport ended: publish what its devices were merging."""
        out = Output()
        for dev in self._devices.values():
            if dev.transport == transport:
                self._emit_device(dev, out)
        return out

    def drain(self) -> Output:
        out = Output()
        for dev in self._devices.values():
            self._emit_device(dev, out)
        return out

    # --- one batch (synchronous: no awaits between the frames of a batch) ---------------------------------
    def handle(self, events: Sequence[Event], transport: str, wall: float, *, live: bool = True) -> Output:
        out = Output()
        newest: datetime | None = None
        for ev in events:
            if isinstance(ev, Frame):
                self._frame(ev, transport, wall, out)
                newest = ev.t if newest is None or ev.t > newest else newest
            elif isinstance(ev, DeviceInfo):
                dev = self._device(ev.device_id, transport)
                if dev.info != ev:
                    dev.info = ev
                    self._identified(dev, out)
            elif isinstance(ev, Link):
                dev = self._device(ev.device_id, transport)
                dev.online = ev.connected
                if not ev.connected:
                    self._emit_device(dev, out)
                self._state(dev, out, ev.device_id, ev.t)
            elif isinstance(ev, Rejected):
                self._dead(out, ev.device_id, ev.source, ev.data, ev.t, ev.reason)
        if newest is not None:
            self._emit_before(newest - (self.grace if live else timedelta(0)), out)
        return out

    def _device(self, device_id: str, transport: str) -> _Device:
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = _Device(device_id, transport=transport)
        elif transport and not dev.transport:
            dev.transport = transport
        return dev

    def _frame(self, f: Frame, transport: str, wall: float, out: Output) -> None:
        self.stats.frames += 1
        dev = self._device(f.device_id, transport)
        dev.last_wall = wall
        try:
            source = self._sources.get(f.source) or self._canonical(f.source)
            record = decode_frame(source, f.data, model=dev.override, quirks=dev.selection)
        except DecodeError as exc:
            self._dead(out, f.device_id, f.source, f.data, f.t, str(exc))
            return
        self.stats.records += 1
        if isinstance(record, dis.DisString):
            dev.dis = dis.with_string(dev.dis, record)
            self._identified(dev, out)
            return
        reserved = getattr(record, "reserved_flags", 0)
        if reserved:
            self._reserved(dev, source, reserved, record)
        if dev.info is None:
            self._discover(dev, source, record, out)
        t = floor_time(f.t, self.period_s)
        if not dev.stated:  # its first frame: online, at device time (the ingester keeps the newest state)
            self._state(dev, out, dev.device_id, t)
        current = dev.bucket
        if current is not None and t < current.t:  # out of order: on its own
            self.stats.late_frames += 1
            late = _Bucket(t)
            for rec in self._complete(dev, record, f.t):
                self._record(dev, rec, late, out)
            self._send(dev.device_id, late.sample(), out)
            return
        if current is not None and t > current.t:
            self._emit_device(dev, out)
        if dev.bucket is None:
            dev.bucket = _Bucket(t)
        for rec in self._complete(dev, record, f.t):
            self._record(dev, rec, dev.bucket, out)

    def _complete(self, dev: _Device, record: Record, t: datetime) -> list[Record]:
        if isinstance(record, ftms.FtmsData):
            return list(dev.reassembler.push(dev.device_id, record, t.timestamp()))
        return [record]

    def _discover(self, dev: _Device, source: str, record: Record, out: Output) -> None:
        kind = kind_of_source(source)
        if kind is None and isinstance(record, ant.FeGeneral):
            kind = FE_KIND.get(record.equipment_type & 0x1F)
        if kind is None:
            return
        radio: Radio = "ant" if source.startswith("ant:") else "ble"
        dev.info = DeviceInfo(dev.device_id, kind, "mqtt" if dev.transport == "mqtt" else radio)
        self._identified(dev, out)

    def _identified(self, dev: _Device, out: Output) -> None:
        """The device's configuration or identity changed: choose its quirks again, and publish its meta
        again if that changed (once per batch)."""
        self._choose_quirks(dev)
        meta = dev.meta()
        if meta is None or meta == dev.announced:
            return
        dev.announced = meta
        out.metas[:] = [m for m in out.metas if m.device_id != dev.device_id]
        out.metas.append(meta)

    def _choose_quirks(self, dev: _Device) -> None:
        try:
            chosen = quirks.select(dev.identity(), override=dev.override)
        except ValueError as exc:  # an unknown profile: the device list is checked, an event may not be
            logger.warning("%s: %s; decoding per the specification", dev.device_id, exc)
            chosen = quirks.SPEC
        if chosen != dev.selection:
            logger.info(
                "%s: quirks %s (%s) for %s",
                dev.device_id,
                ", ".join(chosen.names) or "none",
                chosen.origin,
                dev.identity(),
            )
            dev.selection = chosen

    def _reserved(self, dev: _Device, source: str, reserved: int, record: Record) -> None:
        n = self.stats.reserved_flags[dev.device_id] = self.stats.reserved_flags[dev.device_id] + 1
        if n == 1:
            kept = len(getattr(record, "trailing", b""))
            logger.info(
                "%s (%s) sets flag bits %#x reserved for future use: decoded, %d bytes after the fields kept",
                dev.device_id,
                source,
                reserved,
                kept,
            )

    def _record(self, dev: _Device, record: Record, bucket: _Bucket, out: Output) -> None:
        priority = MACHINE
        totals = None
        if isinstance(record, ftms.TrainingStatus):
            dev.training = TRAINING.get(record.training, "other")
            self._state(dev, out, dev.device_id, bucket.t)
            return
        if isinstance(record, ftms.MachineStatus):
            self._machine_status(dev, record, bucket.t, out)
            return
        if isinstance(record, ant.FePage):
            totals = dev.fe.update(record)
            if record.fe_state != dev.fe_state:
                dev.fe_state = record.fe_state
                if record.fe_state in FE_TRAINING:
                    dev.training = FE_TRAINING[record.fe_state]
                    self._state(dev, out, dev.device_id, bucket.t)
        elif isinstance(record, ant.HrmPage):
            priority = SENSOR
            if record.rr_ms is not None:
                if record.beat_count == dev.beat:  # the same beat again: its RR is already taken
                    record = replace(record, rr_ms=None)
                dev.beat = record.beat_count
        elif isinstance(record, hrm.HeartRateMeasurement | cycling.CyclingPower | cycling.CscMeasurement):
            priority = SENSOR
        elif isinstance(record, ftms.FtmsData) and "incomplete_split" in record.quirks:
            self.stats.notes["incomplete_split"] += 1
        norm = to_sample_with_notes(record, bucket.t, totals=totals)
        for name in norm.dropped:
            self.stats.notes[f"out_of_bounds:{name}"] += 1
        if norm.sample is not None:
            bucket.add(norm.sample, priority)
        if isinstance(record, cycling.CyclingPower | cycling.CscMeasurement):
            self._cadence(dev, record, bucket)

    def _cadence(
        self, dev: _Device, record: cycling.CyclingPower | cycling.CscMeasurement, b: _Bucket
    ) -> None:
        if record.crank_revs is None or record.crank_event_s is None:
            return
        rpm = dev.cadence.update(int(record.crank_revs), float(record.crank_event_s))
        if rpm is None:
            return
        lo, hi = BOUNDS["cadence_rpm"]
        if lo <= rpm <= hi:
            b.add(Sample(t=b.t, cadence_rpm=rpm), SENSOR)
        else:
            self.stats.notes["out_of_bounds:cadence_rpm"] += 1

    def _machine_status(self, dev: _Device, record: ftms.MachineStatus, t: datetime, out: Output) -> None:
        op = record.op_code
        if op == 0x01:
            dev.training = "idle"
        elif op == 0x02 and dict(record.params).get("control") == 1:
            dev.training = "post_workout"
        elif op == 0x03:
            if "safety_key" not in dev.errors:
                dev.errors.append("safety_key")
        elif op == 0x04:
            dev.errors.clear()
        else:
            return
        self._state(dev, out, dev.device_id, t)

    def _state(self, dev: _Device, out: Output, device_id: str, t: datetime) -> None:
        dev.stated = True
        t = t.replace(microsecond=t.microsecond // 1000 * 1000)
        self.stats.states += 1
        out.states[device_id] = DeviceState(
            v=1, device=device_id, t=t, online=dev.online, training=dev.training, errors=list(dev.errors)
        )

    def _dead(
        self, out: Output, device: str | None, source: str, data: bytes, t: datetime, reason: str
    ) -> None:
        n = self.stats.dead_frames[device or ""] = self.stats.dead_frames[device or ""] + 1
        if n == 1 or n % 100 == 0:
            logger.warning("undecodable frame #%d from %s (%s): %s", n, device, source, reason)
        out.dead.append(DeadFrame(t, device, source, bytes(data)[:1024], reason))

    # --- emitting merged samples ----------------------------------------------------------------------
    def _send(self, device_id: str, sample: Sample | None, out: Output) -> None:
        if sample is not None:
            out.samples.append((device_id, sample))
            self.stats.samples += 1

    def _emit_device(self, dev: _Device, out: Output) -> None:
        """Publish the device's current period, with what arrived of a split record that never finished."""
        if dev.bucket is None:
            return
        for rec in dev.reassembler.flush(math.inf):
            self._record(dev, rec, dev.bucket, out)
        bucket, dev.bucket = dev.bucket, None
        self._send(dev.device_id, bucket.sample(), out)

    def _emit_before(self, t: datetime, out: Output) -> None:
        """Publish every period that ended at or before ``t``."""
        for dev in self._devices.values():
            if dev.bucket is not None and dev.bucket.t + self.period <= t:
                self._emit_device(dev, out)
