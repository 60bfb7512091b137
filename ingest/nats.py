"""The NATS JetStream source of the ingester: devices keep speaking MQTT (to the cluster's MQTT listener), the
ingesters pull what it stored from a replicated stream, and acknowledge each message after its commit.

NATS's MQTT listener stores every QoS 1 PUBLISH in the stream ``$MQTT_msgs`` as ``$MQTT.msgs.<subject>``
(the topic with ``/`` as ``.``) before it sends the PUBACK, on ``stream_replicas`` nodes. The stream keeps a
message while a consumer wants it and has not acknowledged it (interest retention). Every ingester binds the
same durable pull consumer, so each message goes to one of them; one not acknowledged within ``ack_wait`` (its
ingester died, or lost its connection) goes to an ingester again, and one an ingester gives back when it
stops goes out again at once. An acknowledgement is not bound to a connection: an ingester that fails over
to another node acknowledges there what it took before.

Interest retention drops a message that no consumer wants when it arrives, so the consumer must exist before
devices publish: at start the source creates the stream (if the listener has not yet, with ``replicas``) and
the consumer, waiting up to ``startup_timeout_s`` for JetStream (a meta leader, stream and consumer
leaders, and as many nodes up as the stream has replicas).

Memory stays bounded twice: no more than ``max_buffered`` messages wait to be taken, and the source fetches
only while the payloads it holds (fetched, not yet acknowledged or given back) are below
``max_inflight_bytes``. nats-py's fetch has no byte limit (nats.py issue #413), so a fetch asks for no more
messages than fit in the room left at the server's largest payload each (``max_payload``, from its INFO),
and for one when less than that is left: the held payloads never exceed the bound by more than one message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig

from ingest.errors import BrokerUnavailable, PublishFailed
from ingest.source import Inbound
from vitalab.wire import TopicKind
from vitalab.wire.topics import PREFIX

logger = logging.getLogger(__name__)

MQTT_STREAM = "$MQTT_msgs"
"""The stream of nats-server's MQTT listener (2.9+) that holds QoS 1 messages."""
MQTT_SUBJECT_PREFIX = "$MQTT.msgs."
MQTT_QOS_HEADER = "Nmqtt-Pub"
"""The header by which the listener tells MQTT subscribers a message was published with QoS 1."""
DEFAULT_FILTER = MQTT_SUBJECT_PREFIX + PREFIX.replace("/", ".") + ".>"
INGESTED_KINDS = frozenset(
    k.value for k in (TopicKind.TELEMETRY, TopicKind.META, TopicKind.STATE, TopicKind.GATEWAY_STATUS)
)
"""What the ingester takes; the consumer filter (one subject: nats-server 2.9 has no list of filters) also
matches other topics of the tree (commit acknowledgements), which are acknowledged at once, unread."""
_RETRY_S = 0.25


_NO_PEERS = frozenset({10005, 10023})
"""JetStream error codes of a stream that cannot be placed on enough nodes now: "no suitable peers for
placement" and "insufficient resources" (a node is down, e.g. when the cluster first starts)."""


def _awaiting_peers(exc: BaseException) -> bool:
    """Whether JetStream refused to create the stream or consumer only because too few nodes are up: the
    ingester waits for them (within its start-up time) instead of stopping."""
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code in _NO_PEERS


def topic_to_subject(topic: str) -> str:
    """The NATS subject of an MQTT topic name, as nats-server's MQTT listener maps it (an empty level
    becomes ``/``; a ``.``, a space or a wildcard cannot be mapped: ValueError)."""
    if not topic or any(c in topic for c in ". +#"):
        raise ValueError(f"the MQTT topic {topic!r} cannot be a NATS subject ('.', ' ', '+', '#')")
    out: list[str] = []
    end = len(topic) - 1
    for i, c in enumerate(topic):
        if c != "/":
            out.append(c)
        elif i == 0 or (out and out[-1] == "."):
            out.append("/.")
        elif i == end or topic[i + 1] == "/":
            out.append("./")
        else:
            out.append(".")
    return "".join(out)


def subject_to_topic(subject: str) -> str:
    """The MQTT topic of a subject the listener mapped (the inverse of :func:`topic_to_subject`)."""
    if "/" not in subject:  # no empty level: the common case, in C
        return subject.replace(".", "/")
    out: list[str] = []
    i, end = 0, len(subject) - 1
    while i <= end:
        c = subject[i]
        if c == "/":
            if not (i == 0 and i < end and subject[i + 1] == "."):
                out.append("/")
        elif c == ".":
            out.append("/")
            if i < end and subject[i + 1] == "/":
                i += 1
        else:
            out.append(c)
        i += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class NatsConsumer:
    """The durable consumer every ingester shares, and the stream it is on."""

    name: str = "vitalab-ingest"
    ack_wait_s: float = 30.0
    max_ack_pending: int = 20000
    replicas: int = 3
    """Of the stream, when the source creates it (the listener's ``stream_replicas``)."""
    filter_subject: str = DEFAULT_FILTER

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.name,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.filter_subject,
        )


class NatsSource:
    """One ingester's connection to the cluster: ``async with NatsSource(...) as s: m = await s.get()``."""

    def __init__(
        self,
        servers: Sequence[str],
        *,
        consumer: NatsConsumer = NatsConsumer(),
        startup_timeout_s: float = 60.0,
        fetch_batch: int = 1000,
        max_buffered: int = 5000,
        max_inflight_bytes: int | None = None,
        fetch_wait_s: float = 1.0,
        publish_timeout_s: float = 10.0,
        client_name: str = "vitalab-ingest",
    ) -> None:
        if not servers:
            raise ValueError("no NATS server given")
        self._servers = list(servers)
        self._consumer = consumer
        self._startup_timeout = startup_timeout_s
        self._fetch_batch = fetch_batch
        self._max_buffered = max_buffered
        self._max_bytes = max_inflight_bytes
        self._fetch_wait = fetch_wait_s
        self._publish_timeout = publish_timeout_s
        self._name = client_name
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._psub: JetStreamContext.PullSubscription | None = None
        self._fetcher: asyncio.Task[None] | None = None
        self._buf: deque[Inbound] = deque()
        self._held: dict[int, Msg] = {}
        """handle (Inbound.mid) -> message, for every message fetched and not yet acked or given back"""
        self._held_bytes = 0
        self.inflight_bytes_peak = 0
        """The most payload bytes held (fetched, not yet acked or given back) at any moment."""
        self._next_mid = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._intake_open = True
        self._fetching = True
        self._closing = False
        self._acks: list[str] = []
        self._background: set[asyncio.Task[None]] = set()
        self._ack_sender: asyncio.Task[None] | None = None
        self.given_back = 0
        """Messages handed back to the stream unread (negative ack) because the intake had stopped."""
        self.passed_over = 0
        """Messages of other topics of the tree (not ingested) acknowledged unread."""
        self.fetch_errors = 0

    # --- connection and start-up ----------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_timeout
        self._nc = await self._connect(deadline)
        self._js = self._nc.jetstream()
        try:
            await self._prepare(deadline)
        except BaseException:
            await self._nc.close()
            raise
        self._fetcher = asyncio.create_task(self._fetch_loop(), name="nats-fetch")
        return self

    async def _connect(self, deadline: float) -> Client:
        async def disconnected() -> None:
            self._subscribed.clear()
            if self._closing:
                return
            logger.warning("disconnected from NATS; reconnecting to one of %d servers", len(self._servers))

        async def reconnected() -> None:
            self._subscribed.set()
            url = nc.connected_url.netloc if nc.connected_url else "?"
            logger.info("reconnected to NATS at %s", url.rpartition("@")[2])

        async def error(exc: Exception) -> None:
            logger.debug("NATS client: %s", exc)

        loop = asyncio.get_running_loop()
        while True:
            nc = Client()
            try:
                await nc.connect(
                    servers=self._servers,
                    name=self._name,
                    connect_timeout=5,
                    reconnect_time_wait=1,
                    max_reconnect_attempts=-1,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                )
                return nc
            except (OSError, nats.errors.Error) as exc:
                if loop.time() >= deadline:
                    raise BrokerUnavailable(_safe(self._servers), str(exc) or type(exc).__name__) from exc
                logger.info("NATS not reachable yet (%s); retrying", exc or type(exc).__name__)
                await asyncio.sleep(_RETRY_S)

    async def _prepare(self, deadline: float) -> None:
        """The stream (created with ``replicas`` unless the listener made it) and the durable consumer, then
        a pull subscription bound to it; retried while JetStream has no leader for them yet, or too few nodes
        for the stream's replicas (a node down when the cluster first starts: it waits for the node)."""
        assert self._js is not None
        js, cons = self._js, self._consumer
        loop = asyncio.get_running_loop()
        warned = False
        while True:
            try:
                try:
                    info = await js.stream_info(MQTT_STREAM)
                    if info.config.num_replicas != cons.replicas:
                        logger.warning(
                            "stream %s has %s replicas, not %d (VITALAB_NATS_REPLICAS)",
                            MQTT_STREAM,
                            info.config.num_replicas,
                            cons.replicas,
                        )
                except nats.js.errors.NotFoundError:
                    await js.add_stream(
                        StreamConfig(
                            name=MQTT_STREAM,
                            subjects=[MQTT_SUBJECT_PREFIX + ">"],
                            storage=StorageType.FILE,
                            retention=RetentionPolicy.INTEREST,
                            num_replicas=cons.replicas,
                        )
                    )
                    logger.info("created stream %s with %d replicas", MQTT_STREAM, cons.replicas)
                await js.add_consumer(MQTT_STREAM, cons.config())
                self._psub = await js.pull_subscribe_bind(durable=cons.name, stream=MQTT_STREAM)
                self._subscribed.set()
                logger.info("pulling from consumer %s of %s", cons.name, MQTT_STREAM)
                return
            except (nats.errors.Error, TimeoutError) as exc:
                waiting = _awaiting_peers(exc)
                if isinstance(exc, nats.js.errors.BadRequestError) and not waiting:
                    raise  # a consumer of that name with another filter, or another refusal: not transient
                if loop.time() >= deadline:
                    raise BrokerUnavailable(
                        _safe(self._servers), f"JetStream not ready within {self._startup_timeout} s: {exc!r}"
                    ) from exc
                if waiting and not warned:
                    warned = True
                    logger.warning(
                        "the stream %s needs %d nodes for its replicas and JetStream has fewer up (%s); "
                        "waiting for them",
                        MQTT_STREAM,
                        cons.replicas,
                        getattr(exc, "description", exc),
                    )
                elif not waiting:
                    logger.info("JetStream not ready (%r); retrying", exc)
                await asyncio.sleep(_RETRY_S)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop fetching, give back what was fetched and not acknowledged (it goes out again at once), make
        sure the server has our acknowledgements, and close."""
        self.stop_intake()
        await self._stop_fetching()
        if self._nc is None or self._nc.is_closed:
            return
        if self._background:
            await asyncio.wait(self._background, timeout=5.0)
        await self._give_back(list(self._held.values()))
        self._held.clear()
        self._held_bytes = 0
        self._buf.clear()
        await self._flush_acks()
        self._closing = True
        await self._nc.close()

    async def _stop_fetching(self) -> None:
        self._fetching = False
        self._room.set()
        if self._fetcher is not None and not self._fetcher.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._fetcher), self._fetch_wait + 5.0)
            except TimeoutError:
                self._fetcher.cancel()
                await asyncio.wait({self._fetcher})

    # --- fetching -------------------------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        assert self._psub is not None
        psub = self._psub
        while self._fetching:
            room = min(self._max_buffered - len(self._buf), self._room_in_bytes())
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                msgs = await psub.fetch(min(self._fetch_batch, room), timeout=self._fetch_wait)
            except nats.errors.TimeoutError:
                continue
            except nats.errors.ConnectionClosedError:
                return
            except (nats.errors.Error, TimeoutError) as exc:
                self.fetch_errors += 1
                logger.info("fetch failed (%r); retrying", exc)
                await asyncio.sleep(_RETRY_S)
                continue
            self._take(msgs)

    def _room_in_bytes(self) -> int:
        """How many messages the next fetch may ask for under the byte bound: as many as fit in the room left
        at the server's largest payload each, at least one while below the bound, none at it."""
        if self._max_bytes is None:
            return self._fetch_batch
        room = self._max_bytes - self._held_bytes
        if room <= 0:
            return 0
        assert self._nc is not None
        return max(1, room // max(self._nc.max_payload, 1))

    def _take(self, msgs: list[Msg]) -> None:
        now = time.time()
        late: list[Msg] = []
        other: list[str] = []
        for m in msgs:
            if not self._intake_open:
                late.append(m)
                continue
            topic = subject_to_topic(m.subject.removeprefix(MQTT_SUBJECT_PREFIX))
            if topic.rpartition("/")[2] not in INGESTED_KINDS:
                other.append(m.reply)
                continue
            self._next_mid += 1
            self._held[self._next_mid] = m
            self._held_bytes += len(m.data)
            self.inflight_bytes_peak = max(self.inflight_bytes_peak, self._held_bytes)
            dup = m.metadata.num_delivered > 1 if m.reply else False
            self._buf.append(Inbound(topic, m.data, 1, False, self._next_mid, 0, now, dup))
        if other:
            self.passed_over += len(other)
            self._queue_acks(other)
        if late:
            self.given_back += len(late)
            task = asyncio.get_running_loop().create_task(self._give_back(late))
            self._background.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._background.discard)
        if self._buf:
            self._ready.set()

    async def _give_back(self, msgs: list[Msg]) -> None:
        """Negative acknowledgements: the stream delivers these again at once (to any ingester)."""
        for m in msgs:
            try:
                await m.nak()
            except nats.errors.Error as exc:  # the server redelivers after ack_wait anyway
                logger.info("could not give back a message (%r); it goes out again after ack_wait", exc)
                return

    # --- acknowledgements -----------------------------------------------------------------------------
    def ack(self, msg: Inbound) -> bool:
        """Acknowledge a message whose effects are committed; False if it is not held (acked already or
        given back). The ack is sent in the background; one lost on the way means a redelivery, which the
        idempotent writes absorb."""
        m = self._held.pop(msg.mid, None)
        if m is None:
            return False
        self._held_bytes -= len(m.data)
        if self._max_bytes is not None:
            self._room.set()  # the fetcher may wait for bytes to be freed
        self._queue_acks([m.reply])
        return True

    def _queue_acks(self, replies: list[str]) -> None:
        self._acks.extend(replies)
        if self._ack_sender is None or self._ack_sender.done():
            self._ack_sender = asyncio.get_running_loop().create_task(self._send_acks())

    async def _send_acks(self) -> None:
        assert self._nc is not None
        while self._acks:
            replies, self._acks = self._acks, []
            for reply in replies:
                try:
                    await self._nc.publish(reply, b"+ACK")
                except nats.errors.Error as exc:
                    logger.info("an ack could not be sent (%r); the message comes again after ack_wait", exc)

    async def _flush_acks(self, timeout_s: float = 5.0) -> bool:
        """Until every ack is sent and the server has read it (a PING answered after them)."""
        assert self._nc is not None
        if self._ack_sender is not None:
            await self._ack_sender
        try:
            await self._nc.flush(timeout=max(1, round(timeout_s)))
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("the NATS server did not confirm our acks (%r)", exc)
            return False
        return True

    # --- the Source protocol --------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def backlog(self) -> int:
        return len(self._buf)

    @property
    def inflight_bytes(self) -> int:
        """Payload bytes fetched and not yet acknowledged."""
        return self._held_bytes

    async def wait_subscribed(self, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self._subscribed.wait(), timeout_s)

    def stop_intake(self) -> None:
        """Take no more messages; what is buffered stays to be taken, what comes after is given back."""
        self._intake_open = False

    def _popped(self) -> Inbound:
        msg = self._buf.popleft()
        if len(self._buf) < self._max_buffered:
            self._room.set()
        return msg

    async def get(self) -> Inbound:
        while not self._buf:
            self._ready.clear()
            await self._ready.wait()
        return self._popped()

    async def get_within(self, timeout_s: float) -> Inbound | None:
        """The next message, or None after ``timeout_s`` (see :meth:`ingest.mqtt.MqttSource.get_within` for
        why this is not ``asyncio.wait_for``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._buf:
            if loop.time() >= deadline:
                return None
            self._ready.clear()
            timer = loop.call_at(deadline, self._ready.set)
            try:
                await self._ready.wait()
            finally:
                timer.cancel()
        return self._popped()

    def get_nowait(self) -> Inbound | None:
        return self._popped() if self._buf else None

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish ``(topic, payload)`` as the MQTT listener does a QoS 1 PUBLISH: to the subject (MQTT
        subscribers at QoS 0 get it there) and into the stream (QoS 1 subscribers' sessions get it from
        there, also after a reconnect). Raises :class:`PublishFailed` unless the stream confirms them all."""
        assert self._nc is not None
        assert self._js is not None
        nc, js = self._nc, self._js
        headers = {MQTT_QOS_HEADER: "1"}
        try:
            subjects = [(topic_to_subject(t), p) for t, p in messages]
        except ValueError as exc:
            raise PublishFailed(str(exc)) from exc

        async def store(subject: str, payload: bytes) -> None:
            await js.publish(
                MQTT_SUBJECT_PREFIX + subject, payload, timeout=self._publish_timeout, headers=headers
            )

        try:
            for subject, payload in subjects:
                await nc.publish(subject, payload, headers=headers)
            await asyncio.gather(*(store(s, p) for s, p in subjects))
        except (nats.errors.Error, TimeoutError) as exc:
            raise PublishFailed(f"{len(subjects)} messages: {exc!r}") from exc

    async def drain(self, timeout_s: float = 5.0) -> bool:
        """Leaving for good: the first call stops fetching (nothing new comes to this ingester). True once
        the last fetch is over and everything fetched has been taken and acked (and the server has the
        acks); False while messages are still to be taken, or if the server did not answer in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._fetching = False
        self._room.set()
        if self._fetcher is not None and not self._fetcher.done():
            done, _ = await asyncio.wait({self._fetcher}, timeout=timeout_s)
            if not done:
                return False
        if self._buf or self._held:
            return False
        return await self._flush_acks(max(deadline - loop.time(), 1.0))

    async def end_session(self) -> bool:
        """Close the connection once nothing fetched is unacknowledged (False otherwise: what is held is given
        back when the source closes). The durable consumer stays: the other ingesters share it."""
        if self._nc is None or self._held or self._buf:
            logger.warning("connection kept: %d messages held and not acknowledged", len(self._held))
            return False
        await self._stop_fetching()
        if not await self._flush_acks():
            return False
        self._closing = True
        await self._nc.close()
        return True


def _safe(servers: Sequence[str]) -> str:
    """The servers without passwords, for messages."""
    return ",".join(s.rpartition("@")[2] for s in servers)
