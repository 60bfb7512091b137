"""The live view's hubs: one per site, shared by every client watching that site.

A :class:`SiteHub` holds the site's :class:`~api.live.floor.Floor`, fed by ONE broker connection (aiomqtt, a
clean, non-persistent session: MQTT 5 clean start without a session expiry, or a 3.1.1 clean session; QoS 0
for telemetry and QoS 1 for the retained state, meta and gateway status; it never publishes) and by the
database for the first snapshot and for who is checked in. Every change becomes an event with the next
sequence number, kept in a small ring buffer and offered to each client's bounded queue. A client whose queue
overflows is dropped (its stream ends; it comes back with ``Last-Event-ID``) rather than buffered without
bound. A resuming client gets the events after its ``Last-Event-ID`` from the ring buffer, or a fresh
snapshot when they are no longer there (or the id is of another hub's lifetime).

:class:`LiveHubs` makes a site's hub for its first client and closes it after its last. The hubs read the
time from the app's clock (tests pin and move it) and judge silence on :meth:`SiteHub.tick`, which a timer
calls every ``tick_s`` (and tests may call themselves). A hub reads the site's opening hours and timezone
(``sites``) when it starts and again every ``profile_refresh_s`` with the check-ins: a change reaches a
watched floor within that time.

Event ids are ``<hub token>.<sequence>``: the token is new for every hub, the sequence increases by one per
event of that hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, Protocol

import aiomqtt
import msgspec
import paho.mqtt.client as paho
import psycopg
from psycopg_pool import PoolTimeout

from analytics.opening_hours import SiteHours
from api.live.floor import Floor, FloorConfig, KnownDevice, Tile
from vitalab.settings import MqttTarget
from vitalab.wire import TopicKind, subscription

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
BrokerState = Literal["connecting", "connected", "disconnected", "none"]
"""``none``: no broker is configured; the floor is the database's snapshot only."""
EventKind = Literal["snapshot", "device", "broker"]
CONNECT_WAIT_S: Final = 2.0
"""How long a site's first client waits for the hub's subscription before its snapshot is taken."""
RECONNECT_MAX_S: Final = 10.0


class Snapshot(msgspec.Struct, frozen=True):
    """The ``snapshot`` event: every device of the site, as of the event's id."""

    site_id: str
    at: datetime
    """The server's time."""
    timezone: str
    today_start: datetime
    """The site's local midnight of ``at`` (for "today" in the dashboard's reports)."""
    broker: BrokerState
    silent_after_s: float
    devices: list[Tile]


class BrokerEvent(msgspec.Struct, frozen=True):
    """The ``broker`` event: the hub's connection to the broker changed."""

    broker: BrokerState


@dataclass(frozen=True, slots=True)
class LiveEvent:
    id: str
    seq: int
    kind: EventKind
    data: bytes


class LiveSource(Protocol):
    """The database side of a hub (:mod:`api.queries.live` over the app's pool)."""

    async def site(self, site_id: str) -> tuple[list[KnownDevice], SiteHours]:
        """The site's devices, and its opening hours and timezone."""

    async def hours(self, site_id: str) -> SiteHours:
        """The site's opening hours and timezone."""

    async def profiles(self, site_id: str, now: datetime) -> Mapping[str, float]:
        """``{device: HRmax}`` of whoever is checked in on the site's devices."""


@dataclass(frozen=True, slots=True)
class HubConfig:
    floor: FloorConfig = field(default_factory=FloorConfig)
    client_queue: int = 256
    replay_events: int = 2000
    tick_s: float = 1.0
    profile_refresh_s: float = 30.0
    protocol: Literal["5", "3.1.1"] = "5"
    ca_file: str | None = None


class LiveClient:
    """One watcher: a bounded queue of events; ``None`` in it ends the stream."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue(maxsize)
        self.dropped = False

    def offer(self, event: LiveEvent) -> bool:
        """Queue an event; False (and the client is dropped) when its queue is full."""
        if self.dropped:
            return False
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped = True
            self.close()
            return False
        return True

    def close(self) -> None:
        """End the stream after nothing more (what is queued is thrown away)."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def next(self) -> LiveEvent | None:
        return await self._queue.get()


def _encode(value: msgspec.Struct) -> bytes:
    return msgspec.json.encode(value)


class SiteHub:
    """The live floor of one site, its broker subscription, and its clients."""

    def __init__(
        self,
        site_id: str,
        *,
        config: HubConfig,
        clock: Clock,
        source: LiveSource,
        target: MqttTarget | None,
    ) -> None:
        self.site_id = site_id
        self.config = config
        self.clock = clock
        self.source = source
        self.target = target
        self.token = secrets.token_hex(4)
        self.floor = Floor(site_id, config.floor)
        self.broker: BrokerState = "none" if target is None else "connecting"
        self.clients: set[LiveClient] = set()
        self.seq = 0
        self.connections = 0
        """Broker connections made (each subscribes once to the site's topics)."""
        self.subscribed = asyncio.Event()
        self._ring: deque[LiveEvent] = deque(maxlen=config.replay_events)
        self._tasks: list[asyncio.Task[None]] = []
        self._profiles_task: asyncio.Task[None] | None = None

    # --- life ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        known, hours = await self.source.site(self.site_id)
        self.floor = Floor(self.site_id, self.config.floor, hours)
        self.floor.load(known)
        await self._load_profiles()
        self.floor.take_started()  # those in use at the start have just been looked at
        if self.target is not None:
            self._tasks.append(asyncio.create_task(self._follow(self.target), name=f"live-{self.site_id}"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.subscribed.wait(), CONNECT_WAIT_S)
        self._tasks.append(asyncio.create_task(self._timer(), name=f"live-timer-{self.site_id}"))

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._profiles_task] if self._profiles_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in list(self.clients):
            client.close()
        self.clients.clear()

    # --- clients -----------------------------------------------------------------------------------------
    def join(self, last_event_id: str | None) -> tuple[LiveClient, list[LiveEvent]]:
        """A new client and what it gets first: the events after ``last_event_id`` when the ring buffer
        still has them all, else a snapshot. Taken in one step with the registration, so nothing falls
        between the two."""
        client = LiveClient(self.config.client_queue)
        after = self._resume_point(last_event_id)
        first = [e for e in self._ring if e.seq > after] if after is not None else [self.snapshot()]
        self.clients.add(client)
        return client, first

    def leave(self, client: LiveClient) -> None:
        self.clients.discard(client)

    @property
    def timezone(self) -> str:
        """The site's IANA timezone (as of the last read of the database)."""
        return self.floor.hours.timezone_name

    def snapshot(self) -> LiveEvent:
        now = self.clock()
        local = now.astimezone(self.floor.hours.timezone)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        snap = Snapshot(
            site_id=self.site_id,
            at=now,
            timezone=self.timezone,
            today_start=midnight.astimezone(now.tzinfo),
            broker=self.broker,
            silent_after_s=self.config.floor.silent_after_s,
            devices=self.floor.tiles(),
        )
        return LiveEvent(f"{self.token}.{self.seq}", self.seq, "snapshot", _encode(snap))

    def _resume_point(self, last_event_id: str | None) -> int | None:
        if not last_event_id:
            return None
        token, _, seq_s = last_event_id.strip().partition(".")
        if token != self.token or not seq_s.isdigit():
            return None
        seq = int(seq_s)
        oldest = self._ring[0].seq if self._ring else self.seq + 1
        if seq > self.seq or seq < oldest - 1:
            return None  # from the future, or what came after it is gone
        return seq

    # --- changes ---------------------------------------------------------------------------------------
    def _emit(self, kind: EventKind, data: bytes) -> None:
        self.seq += 1
        event = LiveEvent(f"{self.token}.{self.seq}", self.seq, kind, data)
        self._ring.append(event)
        for client in list(self.clients):
            if not client.offer(event):
                self.clients.discard(client)
                log.info("live view of %s: a client too slow to keep up was dropped", self.site_id)

    def _publish(self, tiles: Iterable[Tile]) -> None:
        for tile in tiles:
            self._emit("device", _encode(tile))
        started = self.floor.take_started()
        if started and (self._profiles_task is None or self._profiles_task.done()):
            self._profiles_task = asyncio.create_task(self._refresh_profiles())

    def on_message(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        self._publish(self.floor.on_message(topic, payload, self.clock(), retained=retained))

    def tick(self) -> None:
        """Judge silence at the clock's time (the timer calls this every ``tick_s``)."""
        self._publish(self.floor.tick(self.clock()))

    def _set_broker(self, state: BrokerState) -> None:
        if state != self.broker:
            self.broker = state
            self._emit("broker", _encode(BrokerEvent(state)))

    # --- database --------------------------------------------------------------------------------------
    async def _load_profiles(self) -> None:
        self._publish(self.floor.set_profiles(await self.source.profiles(self.site_id, self.clock())))

    async def _refresh_profiles(self) -> None:
        try:
            await self._load_profiles()
        except (psycopg.Error, PoolTimeout):  # the zones keep their last profiles; the stream goes on
            log.exception("live view of %s: check-ins could not be read", self.site_id)

    async def refresh_hours(self) -> None:
        """Read the site's opening hours and timezone again (the silences they change are published)."""
        try:
            hours = await self.source.hours(self.site_id)
        except (psycopg.Error, PoolTimeout):  # the floor keeps the hours it has; the stream goes on
            log.exception("live view of %s: opening hours could not be read", self.site_id)
            return
        self._publish(self.floor.set_hours(hours, self.clock()))

    async def _timer(self) -> None:
        loop = asyncio.get_running_loop()
        profiles_at = loop.time()
        while True:
            await asyncio.sleep(self.config.tick_s)
            self.tick()
            if loop.time() - profiles_at >= self.config.profile_refresh_s:
                profiles_at = loop.time()
                await self._refresh_profiles()
                await self.refresh_hours()

    # --- broker ----------------------------------------------------------------------------------------
    def _client(self, target: MqttTarget) -> aiomqtt.Client:
        v5 = self.config.protocol == "5"
        tls = target.ssl_context()
        if tls is not None and self.config.ca_file:
            tls.load_verify_locations(self.config.ca_file)
        return aiomqtt.Client(
            target.host,
            target.port,
            username=target.username,
            password=target.password,
            identifier=f"vitalab-live-{self.site_id}-{self.token}",
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            # a clean session that ends with the connection: the broker keeps nothing for the live view
            clean_session=None if v5 else True,
            clean_start=True if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            keepalive=30,
            tls_context=tls,
            max_queued_incoming_messages=10_000,
        )

    def filters(self) -> list[tuple[str, int]]:
        """The site's topics the hub reads: telemetry at QoS 0, the retained ones at QoS 1."""
        kinds = ((TopicKind.TELEMETRY, 0), (TopicKind.STATE, 1), (TopicKind.META, 1))
        found = [(subscription(k, site=self.site_id), q) for k, q in kinds]
        return [*found, (subscription(TopicKind.GATEWAY_STATUS, site=self.site_id), 1)]

    async def _follow(self, target: MqttTarget) -> None:
        delay = 0.5
        while True:
            try:
                async with self._client(target) as client:
                    await client.subscribe(self.filters())
                    self.connections += 1
                    self._set_broker("connected")
                    self.subscribed.set()
                    delay = 0.5
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes | bytearray):
                            self.on_message(message.topic.value, bytes(payload), retained=message.retain)
            except aiomqtt.MqttError as exc:
                log.warning("live view of %s: broker %s: %s", self.site_id, target.url(), exc)
            self._set_broker("disconnected")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)


class LiveHubs:
    """The hubs of the sites being watched: made for a site's first client, closed after its last."""

    def __init__(
        self,
        *,
        config: HubConfig,
        clock: Clock,
        source: LiveSource,
        target: MqttTarget | None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.source = source
        self.target = target
        self._hubs: dict[str, SiteHub] = {}
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    def hub(self, site_id: str) -> SiteHub | None:
        return self._hubs.get(site_id)

    async def join(
        self, site_id: str, last_event_id: str | None
    ) -> tuple[SiteHub, LiveClient, list[LiveEvent]]:
        async with self._lock:
            hub = self._hubs.get(site_id)
            if hub is None:
                hub = SiteHub(
                    site_id, config=self.config, clock=self.clock, source=self.source, target=self.target
                )
                try:
                    await hub.start()
                except BaseException:
                    await hub.close()
                    raise
                self._hubs[site_id] = hub
            client, first = hub.join(last_event_id)
            return hub, client, first

    def leave(self, hub: SiteHub, client: LiveClient) -> None:
        """Synchronous (a stream's cleanup may run while its task is being cancelled): the hub closes in a
        task of its own once its last client has gone."""
        hub.leave(client)
        if not hub.clients and self._hubs.get(hub.site_id) is hub:
            del self._hubs[hub.site_id]
            task = asyncio.create_task(hub.close(), name=f"live-close-{hub.site_id}")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        hubs, self._hubs = list(self._hubs.values()), {}
        for hub in hubs:
            await hub.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


__all__ = [
    "BrokerEvent",
    "HubConfig",
    "LiveClient",
    "LiveEvent",
    "LiveHubs",
    "LiveSource",
    "SiteHub",
    "Snapshot",
]
