"""Publishing a simulated fleet over MQTT with the wire contract (aiomqtt, QoS 1).

One connection stands for a gateway: a retained birth on its status topic and an LWT that says offline,
retained meta and state per device, then telemetry messages that batch ``samples_per_message`` samples.
In a gym day (:class:`simulators.gymfleet.GymFleet`) a device sends only while in use, and the start and
end of each use become retained states: a machine reports the workout's first training status when a member
steps on and ``post_workout`` when they leave (the messages batched so far go out then); a strap is online
while worn and offline when taken off.
Everything published is recorded in a :class:`PublishLog` so that tests can check the platform kept
every sample exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiomqtt
import msgspec

from simulators.faults import FaultInjector, Outgoing
from simulators.fleet import Fleet, SimDevice
from simulators.workouts import workout
from vitalab.settings import MqttTarget
from vitalab.wire import (
    DeviceState,
    GatewayStatus,
    Sample,
    TelemetryMessage,
    TopicKind,
    device_topic,
    encode,
    gateway_status_topic,
    telemetry_topic,
)
from vitalab.wire.payload import TrainingStatus

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PublishLog:
    """What a publisher sent: sample timestamps per device, in publish order."""

    samples: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    messages: int = 0

    @property
    def total_samples(self) -> int:
        return sum(len(v) for v in self.samples.values())


def stop_if_cancelled() -> None:
    """Raise ``CancelledError`` when the current task was asked to stop. The run loops call it every tick:
    under load (`vitalab up` with its in-process broker, Python 3.11) a cancellation was seen requested
    (``Task.cancelling()`` > 0) and yet never delivered to the loop's awaits, which then ran on for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def now_ms() -> datetime:
    """Device clocks tick in milliseconds. The wall clock: the default :data:`Clock` of real-time runs, read
    only where a run starts (tests pass a pinned one)."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


Clock = Callable[[], datetime]
"""What time it is for the simulated devices."""


class FleetPublisher:
    def __init__(
        self,
        client: aiomqtt.Client,
        fleet: Fleet,
        gateway_id: str,
        log: PublishLog | None = None,
        faults: FaultInjector | None = None,
        *,
        max_in_flight: int = 1000,
        ack_timeout_s: float | None = None,
        clock: Clock = now_ms,
    ) -> None:
        """Telemetry goes out with up to ``max_in_flight`` messages awaiting their PUBACK at once (aiomqtt
        waits for each PUBACK; one at a time would cap a fleet at one message per round trip); a PUBACK
        later than ``ack_timeout_s`` (default: the client's timeout) fails the run. ``clock`` stamps the
        announcements and error states and paces :meth:`run_realtime` (default: the wall clock)."""
        self._client = client
        self.fleet = fleet
        self.gateway_id = gateway_id
        self.log = log or PublishLog()
        self.faults = faults
        self._tick = 0
        self._ack_timeout_s = ack_timeout_s
        self._window = asyncio.Semaphore(max_in_flight)
        # aiomqtt warns above its threshold of concurrent calls; this many are intended
        client.pending_calls_threshold = max(client.pending_calls_threshold, max_in_flight + 16)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self.clock = clock

    async def announce(self) -> None:
        site = self.fleet.site
        await self._client.publish(
            gateway_status_topic(site, self.gateway_id),
            encode(
                GatewayStatus(
                    v=1,
                    gateway=self.gateway_id,
                    online=True,
                    t=self.clock(),
                    devices=[d.device_id for d in self.fleet.devices],
                )
            ),
            qos=1,
            retain=True,
        )
        # a gym's devices report their training status when used; a state without one changes nothing
        training: TrainingStatus | None = "manual" if self.fleet.always_in_use else None
        for d in self.fleet.devices:
            await self._client.publish(
                device_topic(site, d.device_id, TopicKind.META), encode(d.meta()), qos=1, retain=True
            )
            state = DeviceState(v=1, device=d.device_id, t=self.clock(), online=True, training=training)
            await self._client.publish(
                device_topic(site, d.device_id, TopicKind.STATE), encode(state), qos=1, retain=True
            )

    async def publish(self, device: SimDevice, samples: Sequence[Sample]) -> None:
        faults = self.faults
        if faults is not None:
            skew = faults.device_skew(device.device_id)
            samples = [faults.sample_dropout(msgspec.structs.replace(s, t=s.t + skew)) for s in samples]
        msg = TelemetryMessage(v=1, device=device.device_id, seq=device.seq, samples=list(samples))
        device.seq += 1
        payload = encode(msg)
        if faults is None:
            await self._send(device.device_id, payload)
        else:
            out = Outgoing(device.device_id, payload, list(samples))
            for device_id, p in faults.route(out, self._tick):
                await self._send(device_id, p)
            if faults.dropped(out):
                return
        self.log.samples[device.device_id].extend(s.t for s in samples)

    async def _send(self, device_id: str, payload: bytes) -> None:
        await self._out(telemetry_topic(self.fleet.site, device_id), payload)
        self.log.messages += 1

    async def _out(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish in a task of its own, at most ``max_in_flight`` awaiting their PUBACK. The caller never
        awaits aiomqtt itself: Python 3.11's ``asyncio.wait_for`` (inside aiomqtt) can swallow a
        cancellation that coincides with the PUBACK, and a run must stop when cancelled."""
        if self._failure is not None:
            raise self._failure
        await self._window.acquire()
        # paho takes the message when the task first runs; tasks run in creation order, so order is kept
        task = asyncio.create_task(
            self._client.publish(topic, payload, qos=1, retain=retain, timeout=self._ack_timeout_s)
        )
        self._in_flight.add(task)
        task.add_done_callback(self._acked)

    def _acked(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._window.release()
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()

    async def drain(self) -> None:
        """Wait until every message sent so far was acknowledged."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._failure is not None:
            raise self._failure

    async def finish(self) -> None:
        """Send what fault injection still holds back, and wait for every PUBACK."""
        if self.faults is not None:
            for device_id, p in self.faults.drain():
                await self._send(device_id, p)
        await self.drain()

    async def report_errors(self) -> None:
        """Devices that the fault injector picks report an error state (retained)."""
        if self.faults is None:
            return
        for d in self.fleet.devices:
            if self.faults.device_error():
                state = DeviceState(
                    v=1, device=d.device_id, t=self.clock(), online=True, errors=["E_SIM_FAULT"]
                )
                topic = device_topic(self.fleet.site, d.device_id, TopicKind.STATE)
                await self._out(topic, encode(state), retain=True)

    async def _add(
        self, tick: list[tuple[SimDevice, Sample]], pending: dict[str, list[Sample]], samples_per_message: int
    ) -> None:
        """The samples of one tick, after the uses that started or ended with it (gym fleets)."""
        for change in self.fleet.use_changes():
            dev = change.device
            if not change.in_use:
                await self._flush(dev, pending)
            if dev.kind == "hr_strap":
                state = DeviceState(v=1, device=dev.device_id, t=change.t, online=change.in_use)
            else:
                training = workout(dev.plan).segments[0].training if change.in_use else "post_workout"
                state = DeviceState(v=1, device=dev.device_id, t=change.t, online=True, training=training)
            topic = device_topic(self.fleet.site, dev.device_id, TopicKind.STATE)
            await self._out(topic, encode(state), retain=True)
        for dev, sample in tick:
            buf = pending[dev.device_id]
            buf.append(sample)
            if len(buf) >= samples_per_message:
                await self.publish(dev, buf)
                pending[dev.device_id] = []

    async def _flush(self, dev: SimDevice, pending: dict[str, list[Sample]]) -> None:
        buf = pending.pop(dev.device_id, None)
        if buf:
            await self.publish(dev, buf)

    async def _flush_all(self, pending: dict[str, list[Sample]]) -> None:
        by_id = {d.device_id: d for d in self.fleet.devices}
        for dev_id in list(pending):
            await self._flush(by_id[dev_id], pending)

    async def stop_uses(self, t: datetime, pending: dict[str, list[Sample]] | None = None) -> None:
        """End of a gym run at ``t``: the members still training leave (their machines report
        post-workout, their straps go offline); what ``pending`` holds for them goes out first."""
        self.fleet.stop(t)
        await self._add([], pending if pending is not None else {}, 1)

    async def backfill(
        self,
        start: datetime,
        seconds: int,
        samples_per_message: int = 10,
        *,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        """Publish ``seconds`` of history from ``start`` as fast as the broker takes it; ``progress`` is told
        the seconds of history published so far (device time) after each tick, and ``seconds`` at the end."""
        pending: dict[str, list[Sample]] = defaultdict(list)
        for tick in self.fleet.iter_history(start, seconds):
            self._tick += 1
            await self._add(tick, pending, samples_per_message)
            if progress is not None and tick:
                progress((tick[0][1].t - start).total_seconds())
            stop_if_cancelled()
        await self._flush_all(pending)
        await self.finish()
        if progress is not None:
            progress(float(seconds))

    async def run_paced(
        self, start: datetime, seconds: float | None, *, speed: float = 1.0, samples_per_message: int = 1
    ) -> None:
        """``seconds`` of device time from ``start`` (forever with ``None``), ``speed`` device seconds per
        wall second (1: real time; ``start`` is then now). A gym fleet ticks on whole seconds from ``start``
        also in real time, and sleeps while nobody is in."""
        if speed == 1.0 and self.fleet.always_in_use:
            await self.run_realtime(samples_per_message=samples_per_message, duration_s=seconds)
            return
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        pending: dict[str, list[Sample]] = defaultdict(list)
        tick = 0
        while seconds is None or tick < seconds:
            self._tick += 1
            await self.report_errors()
            t = start + timedelta(seconds=tick)
            await self._add(self.fleet.tick(t), pending, samples_per_message)
            tick += 1
            nxt = self.fleet.next_start(start + timedelta(seconds=tick))
            if nxt is None:  # nobody for a week: look again in an hour
                tick += 3600
            else:
                tick = max(tick, math.ceil((nxt - start).total_seconds() - 1e-9))
            # nobody in until after the end: sleep to the end, not to the next visit
            wake = tick if seconds is None else min(tick, seconds)
            await asyncio.sleep(max(0.0, t0 + wake / speed - loop.time()))
            stop_if_cancelled()
        if seconds is not None:
            if not self.fleet.always_in_use:
                await self.stop_uses(start + timedelta(seconds=seconds), pending)
            await self._flush_all(pending)
        await self.drain()

    async def run_realtime(self, *, samples_per_message: int = 1, duration_s: float | None = None) -> None:
        """1 Hz device time following the publisher's clock, until cancelled or ``duration_s`` has passed."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        pending: dict[str, list[Sample]] = defaultdict(list)
        tick = 0
        while duration_s is None or tick < duration_s:
            self._tick += 1
            await self.report_errors()
            await self._add(self.fleet.tick(self.clock()), pending, samples_per_message)
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick - loop.time()))
            stop_if_cancelled()
        await self._flush_all(pending)
        await self.drain()


def gateway_client(target: MqttTarget, gateway_id: str, site: str, *, protocol: str = "5") -> aiomqtt.Client:
    """An aiomqtt client for a (simulated) gateway, with its LWT on the retained status topic."""
    will = aiomqtt.Will(
        gateway_status_topic(site, gateway_id),
        encode(GatewayStatus(v=1, gateway=gateway_id, online=False)),
        qos=1,
        retain=True,
    )
    return aiomqtt.Client(
        target.host,
        target.port,
        identifier=f"sim-{gateway_id}",
        username=target.username,
        password=target.password,
        will=will,
        protocol=aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311,
        tls_context=target.ssl_context(),
        max_queued_outgoing_messages=None,
    )


def history_start(seconds: int, clock: Clock = now_ms) -> datetime:
    """A backfill window that ends now (by ``clock``)."""
    return clock() - timedelta(seconds=seconds)
