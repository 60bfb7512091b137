"""The gateway publisher against a real Mosquitto, checked by real subscribers: birth and LWT, a broker
outage mid-stream, a shared subscription across a broker restart (PUBACK 0x10), a gateway restart with a
full buffer file, and the buffer-full policy under a long outage."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Self

import msgspec
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.publisher import GatewayPublisher
from tests.conftest import Mosquitto
from vitalab.settings import MqttTarget
from vitalab.wire import (
    DeviceMeta,
    DeviceState,
    Sample,
    TelemetryMessage,
    TopicKind,
    decode_gateway_status,
    decode_meta,
    decode_state,
    gateway_status_topic,
    subscription,
)

SITE = "gym"
TELEMETRY = subscription(TopicKind.TELEMETRY, site=SITE)
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """A QoS 1 paho subscriber on its network thread that records every message; subscribes on every
    connect (Mosquitto 2.0 forgets shared subscriptions on restart), or, with ``resubscribe=False``, on the
    first connect only (what it gets after a reconnect then comes from the session the broker kept).
    ``persistent``: clean start off and a session that outlives the connection. ``connects`` and
    ``subscribes`` count the connections and SUBSCRIBE packets."""

    def __init__(
        self,
        target: MqttTarget,
        client_id: str,
        filters: Sequence[str],
        *,
        persistent: bool,
        resubscribe: bool = True,
    ) -> None:
        self._target = target
        self._client_id = client_id
        self._filters = list(filters)
        self._persistent = persistent
        self._resubscribe = resubscribe
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client: paho.Client | None = None
        self.messages: list[Received] = []
        self.connects = 0
        self.subscribes = 0

    def start(self, timeout_s: float = 10.0) -> Self:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=paho.MQTTv5)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 2)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self._persistent:
            props.SessionExpiryInterval = 3600
        self._subscribed.clear()
        client.connect_async(
            self._target.host, self._target.port, clean_start=not self._persistent, properties=props
        )
        client.loop_start()
        self._client = client
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise AssertionError(f"{self._client_id} not subscribed after {timeout_s} s")
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_connect(
        self, client: paho.Client, userdata: object, flags: object, reason: ReasonCode, props: object
    ) -> None:
        if reason.is_failure:
            return
        with self._cond:
            self.connects += 1
            if self.subscribes and not self._resubscribe:
                self._cond.notify_all()
                return
            self.subscribes += 1
        client.subscribe([(f, 1) for f in self._filters])

    def _on_subscribe(
        self, client: paho.Client, userdata: object, mid: int, reasons: list[ReasonCode], props: object
    ) -> None:
        assert not any(r.is_failure for r in reasons), reasons
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, check: Callable[[list[Received]], bool], what: str, timeout_s: float = 20.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: check(self.messages), timeout_s):
                raise AssertionError(f"{self._client_id}: timed out waiting for {what}")

    def wait_connects(self, n: int, timeout_s: float = 20.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.connects >= n, timeout_s):
                raise AssertionError(f"{self._client_id}: not connected {n} times after {timeout_s} s")

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.messages)


def sample(i: int) -> Sample:
    return Sample(t=BASE + timedelta(seconds=i), power_w=100 + i % 50, cadence_rpm=80)


def telemetry(messages: Sequence[Received]) -> list[TelemetryMessage]:
    return [
        msgspec.json.decode(m.payload, type=TelemetryMessage)
        for m in messages
        if m.topic.endswith("/telemetry")
    ]


def first_occurrences(messages: Sequence[Received]) -> dict[str, list[TelemetryMessage]]:
    """Per device, each seq once (its first arrival), in arrival order."""
    out: dict[str, list[TelemetryMessage]] = {}
    seen: set[tuple[str, int]] = set()
    for msg in telemetry(messages):
        if (msg.device, msg.seq) not in seen:
            seen.add((msg.device, msg.seq))
            out.setdefault(msg.device, []).append(msg)
    return out


def covers(sent: dict[str, list[datetime]]) -> Callable[[list[Received]], bool]:
    def check(messages: list[Received]) -> bool:
        got: dict[str, set[datetime]] = {}
        for msg in telemetry(messages):
            got.setdefault(msg.device, set()).update(s.t for s in msg.samples)
        return all(set(ts) <= got.get(d, set()) for d, ts in sent.items())

    return check


def assert_in_order_and_complete(messages: Sequence[Received], sent: dict[str, list[datetime]]) -> None:
    """After dropping repeated seqs, each device's seqs arrived increasing and carry exactly what was sent,
    in order."""
    firsts = first_occurrences(messages)
    assert set(firsts) == set(sent)
    for device, msgs in firsts.items():
        seqs = [m.seq for m in msgs]
        assert seqs == sorted(seqs), f"{device}: seqs arrived out of order: {seqs}"
        assert [s.t for m in msgs for s in m.samples] == sent[device]


async def until(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def _more_delivered(gw: GatewayPublisher, than: int) -> bool:
    return gw.stats.delivered > than


def add(
    gw: GatewayPublisher, sent: dict[str, list[datetime]], devices: Sequence[str], indexes: range
) -> None:
    for i in indexes:
        for d in devices:
            s = sample(i)
            gw.add_sample(d, s)
            sent.setdefault(d, []).append(s.t)


# --- (a) birth and last will -----------------------------------------------------------------------------

_GATEWAY_PROCESS = """
import asyncio, sys
from pathlib import Path
from gateway.publisher import GatewayPublisher
from vitalab.settings import MqttTarget
from vitalab.wire import DeviceMeta

async def main() -> None:
    target = MqttTarget("127.0.0.1", int(sys.argv[1]))
    async with GatewayPublisher(target, "gym", "gw-a", Path(sys.argv[2])) as gw:
        await gw.announce([DeviceMeta(v=1, device="bike-01", kind="bike")])
        await gw.wait_delivered(20)
        print("ready", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


def test_birth_is_retained_and_the_last_will_says_offline_when_the_gateway_dies(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    status = gateway_status_topic(SITE, "gw-a")
    watcher = Subscriber(mosquitto.target, "watch-a", [status], persistent=False).start()
    proc = subprocess.Popen(
        [sys.executable, "-c", _GATEWAY_PROCESS, str(mosquitto.port), str(tmp_path / "gw.sqlite")],
        stdout=subprocess.PIPE,
    )
    killer = threading.Timer(30, proc.kill)  # a hung gateway fails the test instead of hanging it
    killer.start()
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        late = Subscriber(
            mosquitto.target, "late-a", [status, f"vitalab/v1/{SITE}/dev/+/meta"], persistent=False
        ).start()
        late.wait_for(lambda m: len(m) >= 2, "retained birth and meta")
        by_topic = {m.topic: m for m in late.snapshot()}
        late.stop()
        birth = decode_gateway_status(by_topic[status].payload)
        assert by_topic[status].retain
        assert (birth.online, birth.devices) == (True, ["bike-01"])
        meta = by_topic[f"vitalab/v1/{SITE}/dev/bike-01/meta"]
        assert meta.retain
        assert decode_meta(meta.payload).kind == "bike"

        proc.kill()  # SIGKILL: no DISCONNECT, the broker publishes the will
        proc.wait()
        watcher.wait_for(
            lambda m: any(not decode_gateway_status(x.payload).online for x in m), "the last will"
        )
    finally:
        killer.cancel()
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        watcher.stop()
    after = Subscriber(mosquitto.target, "after-a", [status], persistent=False).start()
    try:
        after.wait_for(lambda m: len(m) >= 1, "retained status")
        last = after.snapshot()[0]
    finally:
        after.stop()
    assert last.retain
    assert decode_gateway_status(last.payload).online is False


# --- (b) broker outage mid-stream ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_broker_outage_mid_stream_loses_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A plain (not shared) persistent subscription survives a broker restart in Mosquitto's persistence:
    the subscriber subscribes once, before the outage, and still gets everything published after it, and
    the gateway never hears "no matching subscribers" (0x10)."""
    sub = await asyncio.to_thread(
        Subscriber(mosquitto.target, "sub-b", [TELEMETRY], persistent=True, resubscribe=False).start
    )
    devices = ["bike-01", "rower-01", "hr-01"]
    sent: dict[str, list[datetime]] = {}
    stop = asyncio.Event()
    async with GatewayPublisher(
        mosquitto.target, SITE, "gw-b", tmp_path / "gw.sqlite", batch_samples=5, batch_age_s=0.05
    ) as gw:

        async def produce() -> None:
            i = 0
            while not stop.is_set():
                add(gw, sent, devices, range(i, i + 1))
                i += 1
                await asyncio.sleep(0.002)

        producer = asyncio.create_task(produce())
        await asyncio.to_thread(sub.wait_for, lambda m: len(m) >= 10, "first messages")
        await asyncio.to_thread(mosquitto.stop)
        down = gw.stats.published
        await until(lambda: gw.stats.published >= down + 20, "messages buffered during the outage")
        assert not gw.connected
        await asyncio.to_thread(mosquitto.start)
        await until(lambda: gw.stats.delivered >= down + 40, "delivery after the restart", timeout_s=30)
        stop.set()
        await producer
        await gw.wait_delivered(30)
        stats = gw.stats
    try:
        await asyncio.to_thread(sub.wait_for, covers(sent), "every sample")
        assert_in_order_and_complete(sub.snapshot(), sent)
    finally:
        sub.stop()
    assert sub.connects >= 2  # it reconnected after the restart ...
    assert sub.subscribes == 1  # ... without subscribing again: the broker restored the subscription
    assert stats.unrouted == 0  # so no PUBACK said "no matching subscribers"
    assert stats.retried == 0
    assert stats.buffered == 0
    assert stats.dropped_when_full == 0


# --- (c) shared subscription across a broker restart ------------------------------------------------------


@pytest.mark.asyncio
async def test_shared_subscription_across_a_broker_restart_loses_nothing_thanks_to_0x10_retries(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    shared = subscription(TopicKind.TELEMETRY, site=SITE, share_group="ingest")
    sub = Subscriber(mosquitto.target, "sub-c", [shared], persistent=True)
    await asyncio.to_thread(sub.start)
    devices = ["bike-01", "bike-02"]
    sent: dict[str, list[datetime]] = {}
    async with GatewayPublisher(
        mosquitto.target, SITE, "gw-c", tmp_path / "gw.sqlite", batch_samples=5, retry_s=0.2
    ) as gw:
        add(gw, sent, devices, range(0, 20))
        await gw.wait_delivered(20)
        await asyncio.to_thread(sub.wait_for, covers(sent), "samples before the restart")

        await asyncio.to_thread(mosquitto.stop)
        await asyncio.to_thread(sub.stop)  # the ingester is slower to come back than the gateway
        add(gw, sent, devices, range(20, 40))
        await gw.flush()
        await asyncio.to_thread(mosquitto.start)
        # the restarted broker lost the shared subscription: "no matching subscribers", held and retried
        await until(lambda: gw.stats.unrouted >= 1, "PUBACK 0x10", timeout_s=30)
        assert gw.stats.buffered > 0
        await asyncio.to_thread(sub.start)
        add(gw, sent, devices, range(40, 60))
        await gw.wait_delivered(30)
        stats = gw.stats
    try:
        await asyncio.to_thread(sub.wait_for, covers(sent), "every sample")
    finally:
        sub.stop()
    seqs = {d: {m.seq for m in msgs} for d, msgs in first_occurrences(sub.snapshot()).items()}
    assert seqs == {d: set(range(12)) for d in devices}
    assert stats.retried >= 1
    assert stats.buffered == 0


# --- (d) gateway restart ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_new_gateway_process_sends_what_the_last_one_buffered_and_seq_keeps_growing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    path = tmp_path / "gw.sqlite"
    sub = await asyncio.to_thread(Subscriber(mosquitto.target, "sub-d", [TELEMETRY], persistent=True).start)
    devices = ["bike-01", "treadmill-01"]
    sent: dict[str, list[datetime]] = {}
    await asyncio.to_thread(mosquitto.stop)
    async with GatewayPublisher(mosquitto.target, SITE, "gw-d", path, batch_samples=4) as first:
        add(first, sent, devices, range(0, 10))
        await first.flush()  # 4 + 4 + 2 samples per device
        assert first.stats.buffered == 6
        assert not first.connected
    await asyncio.to_thread(mosquitto.start)
    async with GatewayPublisher(mosquitto.target, SITE, "gw-d", path, batch_samples=4) as second:
        assert second.stats.buffered == 6
        add(second, sent, devices, range(10, 22))
        await second.wait_delivered(30)
        stats = second.stats
    try:
        await asyncio.to_thread(sub.wait_for, covers(sent), "every sample")
        assert_in_order_and_complete(sub.snapshot(), sent)
    finally:
        sub.stop()
    for msgs in first_occurrences(sub.snapshot()).values():
        assert [m.seq for m in msgs] == list(range(6))  # 0-2 from the first process, 3-5 from the second
    assert (stats.published, stats.delivered, stats.buffered) == (6, 12, 0)


# --- (e) buffer full under a long outage ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_long_outage_drops_the_oldest_telemetry_and_counts_it(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    sub = await asyncio.to_thread(Subscriber(mosquitto.target, "sub-e", [TELEMETRY], persistent=True).start)
    await asyncio.to_thread(mosquitto.stop)
    metas = [DeviceMeta(v=1, device=d, kind="bike") for d in ("bike-01", "bike-02")]
    async with GatewayPublisher(
        mosquitto.target, SITE, "gw-e", tmp_path / "gw.sqlite", max_buffer_entries=10, batch_samples=1
    ) as gw:
        await gw.announce(metas)
        await gw.set_state(DeviceState(v=1, device="bike-01", t=BASE, online=True, training="manual"))
        for i in range(25):
            gw.add_sample("bike-01", sample(i))
        await gw.flush()
        # retained meta and state are kept: only telemetry is dropped while there is any
        assert (gw.stats.buffered, gw.stats.dropped_when_full) == (10, 18)
        await asyncio.to_thread(mosquitto.start)
        await gw.wait_delivered(30)
        stats = gw.stats
    try:
        await asyncio.to_thread(sub.wait_for, lambda m: len(telemetry(m)) >= 7, "the newest telemetry")
        assert sorted({m.seq for m in telemetry(sub.snapshot())}) == list(range(18, 25))
    finally:
        sub.stop()
    assert (stats.published, stats.delivered, stats.dropped_when_full, stats.buffered) == (28, 10, 18, 0)
    retained = [f"vitalab/v1/{SITE}/dev/+/meta", f"vitalab/v1/{SITE}/dev/+/state"]
    late = Subscriber(mosquitto.target, "late-e", retained, persistent=False)
    await asyncio.to_thread(late.start)
    try:
        await asyncio.to_thread(late.wait_for, lambda m: len(m) >= 3, "retained meta and state")
        got = late.snapshot()
    finally:
        late.stop()
    assert all(m.retain for m in got)
    metas_got = [decode_meta(m.payload).device for m in got if m.topic.endswith("/meta")]
    assert sorted(metas_got) == ["bike-01", "bike-02"]
    assert [decode_state(m.payload).training for m in got if m.topic.endswith("/state")] == ["manual"]


# --- (f) the connection cut under the gateway (fault injection), on MQTT 5 and 3.1.1 ----------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_cut_connection_fires_the_will_and_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path, protocol: Literal["5", "3.1.1"]
) -> None:
    status = gateway_status_topic(SITE, "gw-f")
    sub = await asyncio.to_thread(
        Subscriber(mosquitto.target, "sub-f", [TELEMETRY, status], persistent=True).start
    )
    devices = ["bike-01", "hr-01"]
    sent: dict[str, list[datetime]] = {}
    async with GatewayPublisher(
        mosquitto.target,
        SITE,
        "gw-f",
        tmp_path / "gw.sqlite",
        batch_samples=2,
        batch_age_s=0.05,
        protocol=protocol,
    ) as gw:
        undelivered_at_cut = []
        for cut in range(2):
            before = gw.stats.delivered
            add(gw, sent, devices, range(cut * 300, cut * 300 + 300))  # 300 messages of 2 samples
            await until(functools.partial(_more_delivered, gw, before), "the first PUBACK of this stream")
            undelivered_at_cut.append(gw.stats.buffered)  # written and not yet acknowledged
            gw.drop_connection()  # mid-stream, in the same loop iteration as the count above
            await until(lambda: not gw.connected, "the cut to be noticed")
            await until(lambda: gw.connected, "the reconnect", timeout_s=20)
        await gw.wait_delivered(30)
    try:
        await asyncio.to_thread(sub.wait_for, covers(sent), "every sample")
        assert_in_order_and_complete(sub.snapshot(), sent)
        states = [decode_gateway_status(m.payload).online for m in sub.snapshot() if m.topic == status]
    finally:
        sub.stop()
    assert all(n > 0 for n in undelivered_at_cut), undelivered_at_cut  # each cut was mid-stream
    assert states.count(False) >= 3  # the will, twice, and the clean offline at the end
    assert states[-1] is False
    assert states.count(True) >= 3  # a birth on every connect
