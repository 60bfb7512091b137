"""The ingest loop: take messages, batch them, write each batch in one transaction, then acknowledge.

At-least-once from the broker (QoS 1, persistent session, PUBACK only after commit) plus idempotent writes
gives exactly one row per (device, t). Batches are pipelined: the next batch is collected and decoded while
earlier ones are written, on up to ``writers`` database connections at once, each batch in one
transaction. A batch's messages are acknowledged after its own commit and after the batch before it, so the
broker sees PUBACKs in the order it sent the messages. The ingester's CPU and the database's thus overlap,
and several batches share the database's cores and its waits for the disk.

Database errors are classified by SQLSTATE class (:mod:`ingest.dberrors`): while the database is down
(transient) each write retries its batch with backoff, no more batches are taken than writers plus the one
being collected, and the broker holds the rest (bounded by the in-flight window, in messages and bytes); a
batch the database refuses for its content is split until the message(s) responsible are found, which are
dead-lettered with the database's reason while the rest is stored; any other error (a schema mismatch,
missing privileges) stops the ingester with :class:`~ingest.dberrors.DatabaseRejected`.

Every message is thus stored or dead-lettered and then acknowledged; none can stop ingestion for the
others. On shutdown (cancellation) what the ingester holds is committed and acknowledged first. With
``drain_timeout_s`` (an ingester of a share group being scaled down) it then drains its session: it
unsubscribes, commits and acknowledges whatever the broker had still routed to it, and ends the session, so
that nothing is left stranded for a client id that will not come back; if that cannot be finished in time,
the session is kept with its messages.

After each commit the ingester also tells the senders which telemetry it is done with (commit
acknowledgements, :mod:`vitalab.wire.acks`; ``VITALAB_INGEST_COMMIT_ACKS``), so that gateways and devices
that keep their messages until then lose nothing to a broker crash or a dead ingester's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg

from ingest.batch import Batch, Router
from ingest.dberrors import DatabaseRejected, Severity, classify, describe
from ingest.errors import PublishFailed, SiteConflict
from ingest.health import HealthServer
from ingest.metrics import IngestMetrics
from ingest.mqtt import MqttSource
from ingest.nats import NatsConsumer, NatsSource
from ingest.source import Inbound, Source
from ingest.writer import WriteResult, prepare, write_batch
from vitalab.errors import ConfigError
from vitalab.settings import MqttTarget, Settings
from vitalab.wire import TopicKind, WireLimits, plan_acks, subscription

logger = logging.getLogger(__name__)

KNOWN_DEVICES_REFRESH_S = 30.0
"""How often the ingester rereads the devices (their sites; under the quarantine policy, which it takes)."""
_REGISTRY = "SELECT device_id, site_id, NOT quarantined AND retired_at IS NULL FROM devices"
DATABASE_REJECTED = "database_rejected"
"""Dead-letter reason of a message whose rows the database refused (its SQLSTATE is in the detail)."""
_YIELD_EVERY = 32
"""Messages routed in a row before the collecting loop lets the event loop run: with a backlog, routing a
whole batch takes tens of milliseconds, and each of the writers' round trips to the database would wait
that long to be read or answered."""
# what a write can raise because of a batch's content or the database's state; anything else is a bug
_WRITE_ERRORS = (psycopg.Error, ValueError, OverflowError, msgspec.EncodeError)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _total(results: list[WriteResult]) -> WriteResult:
    return WriteResult(
        sum(r.samples_inserted for r in results),
        sum(r.samples_duplicate for r in results),
        sum(r.rr_inserted for r in results),
        sum(r.dead_letters for r in results),
    )


@dataclass(frozen=True, slots=True)
class IngestConfig:
    batch_rows: int = 5000
    batch_age_s: float = 0.2
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    shutdown_timeout_s: float = 10.0
    """How long a stopping ingester keeps trying to commit what it holds (the broker redelivers the rest)."""
    commit_acks: bool = True
    """After each commit, publish per sender which telemetry messages it is done with (vitalab.wire.acks)."""
    drain_timeout_s: float | None = None
    """Set: a stopping ingester drains and ends its session within this time (instead of
    ``shutdown_timeout_s``); None: it keeps its session, for the same client id to resume."""
    writers: int = 2
    """Batches written at once, each on its own database connection."""

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestConfig:
        """Drains on stop only as a member of a share group: the others take over its share. A plain
        subscription keeps its session (its messages wait for the ingester's return)."""
        drain = settings.ingest_drain_timeout_s if settings.ingest_share_group else 0
        return cls(
            batch_rows=settings.ingest_batch_rows,
            batch_age_s=settings.ingest_batch_age_ms / 1000,
            commit_acks=settings.ingest_commit_acks,
            drain_timeout_s=drain or None,
            writers=settings.ingest_writers,
        )


def subscriptions(share_group: str | None) -> list[str]:
    """Telemetry through the shared subscription; retained meta/state/status on plain subscriptions
    (brokers do not send retained messages to shared subscribers; writing them twice is idempotent)."""
    return [
        subscription(TopicKind.TELEMETRY, share_group=share_group),
        subscription(TopicKind.META),
        subscription(TopicKind.STATE),
        subscription(TopicKind.GATEWAY_STATUS),
    ]


def router_from_settings(settings: Settings) -> Router:
    return Router(
        limits=WireLimits(
            max_payload_bytes=settings.max_payload_bytes,
            max_future=timedelta(seconds=settings.max_future_s),
            max_past=timedelta(seconds=settings.max_past_s),
        ),
        dead_letter_max_bytes=settings.dead_letter_max_bytes,
        unknown_devices=settings.ingest_unknown_devices,
    )


class Ingester:
    def __init__(
        self,
        source: Source,
        database_url: str,
        *,
        router: Router,
        config: IngestConfig = IngestConfig(),
        metrics: IngestMetrics | None = None,
        on_commit: Callable[[Batch, WriteResult], None] | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._source = source
        self._dsn = database_url
        self._router = router
        self._config = config
        self.metrics = metrics or IngestMetrics()
        self._conns: list[psycopg.AsyncConnection | None] = [None] * max(config.writers, 1)
        """One connection per writer slot (each with its staging tables); slot 0 also reads the registry."""
        self._next_slot = 0
        self._known: set[str] | None = None
        self._sites: dict[str, str] = {}
        """device id -> its site: the identity rule (ingest.batch)."""
        self._known_at: float | None = None
        self._current = Batch()
        """The batch being collected."""
        self._writing: list[Batch] = []
        """The batches being written, until their messages are acknowledged."""
        self.committed_batches = 0
        self._on_commit = on_commit
        self._acking: list[asyncio.Task[None]] = []
        """Commit acks being published (the next batches do not wait for them; see :meth:`_acknowledge`)."""
        self._clock = clock
        self.db_ok = True
        """False while the last attempt to write failed."""
        self.last_commit_at: float | None = None
        self.session_ended = False
        """True once a drain on stop has ended the session on the broker."""
        self.metrics.inflight_bytes.set_function(lambda: source.inflight_bytes)

    @property
    def mqtt_connected(self) -> bool:
        return self._source.connected

    @property
    def backlog(self) -> int:
        """Messages received from the broker and not yet taken into a batch."""
        return self._source.backlog

    @property
    def holding(self) -> int:
        """Messages received and not yet acknowledged: the batch being collected, the ones being written,
        and the backlog."""
        writing = sum(b.messages for b in self._writing)
        return self._current.messages + writing + self._source.backlog

    async def wait_subscribed(self, timeout_s: float = 10.0) -> None:
        """Until the broker has acknowledged this ingester's subscriptions."""
        await self._source.wait_subscribed(timeout_s)

    async def run(self) -> None:
        """Run until cancelled, or until a database error that retrying cannot fix
        (:class:`DatabaseRejected`).

        On cancellation, what the ingester holds (the batch being collected or written, and the messages
        received but not yet batched) is committed and acknowledged before the cancellation goes on; messages
        that arrive after that point are not taken, so the broker keeps them for the next session. A batch
        being written is never interrupted by a stop.

        Pipelined: batches are collected while up to ``writers`` earlier ones are written (tasks, each on its
        own connection); a batch's messages are acknowledged after its commit and after the batch before it
        (:meth:`_flush`). The registry of devices is reread only while nothing is being written."""
        writes: list[asyncio.Task[WriteResult | None]] = []
        try:
            while True:
                if writes and self._registry_due():
                    await self._finish(writes, len(writes))
                self._current = batch = Batch()
                await self._collect_while_writing(batch, writes)
                await self._finish(writes, len(writes) - len(self._conns) + 1)
                writes.append(asyncio.create_task(self._flush(batch, writes[-1] if writes else None)))
        except asyncio.CancelledError:
            await self._stop(self._current, writes)
            raise
        finally:
            for w in writes:  # stopped by an error: what was not acknowledged is sent again by the bus
                w.cancel()
            await asyncio.gather(*writes, return_exceptions=True)
            self._current = Batch()
            self._writing = []
            if self._acking:  # stopped by an error, or acks still unconfirmed after the stop
                for t in self._acking:
                    t.cancel()
                await asyncio.gather(*self._acking, return_exceptions=True)
                self._acking = []
            for conn in self._conns:
                if conn is not None:
                    await conn.close()

    @staticmethod
    async def _finish(writes: list[asyncio.Task[WriteResult | None]], count: int) -> None:
        """Until the oldest ``count`` writes are done (in order), taken off ``writes``; a write that failed
        raises here (never cancelled from here: a stop lets a write finish)."""
        for _ in range(max(count, 0)):
            await asyncio.shield(writes[0])
            writes.pop(0)

    async def _collect_while_writing(
        self, batch: Batch, writes: list[asyncio.Task[WriteResult | None]]
    ) -> None:
        """:meth:`_collect`, unless a write fails first: its error (a database that refuses the ingester)
        then stops the ingester at once, not when the next batch is complete (which, with no more traffic,
        could be never)."""
        collect = asyncio.ensure_future(self._collect(batch))
        try:
            while not collect.done():
                for w in writes:
                    if w.done() and not w.cancelled() and w.exception() is not None:
                        w.result()  # raises
                pending = {w for w in writes if not w.done()}
                await asyncio.wait({collect, *pending}, return_when=asyncio.FIRST_COMPLETED)
            collect.result()
        finally:
            if not collect.done():  # a stop (cancellation) or a failed write: the batch stays as it is
                collect.cancel()
                await asyncio.gather(collect, return_exceptions=True)

    async def _collect(self, batch: Batch) -> None:
        src, cfg = self._source, self._config
        known = await self._known_devices()
        msg = await src.get()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.batch_age_s
        taken = 0
        while True:
            self._router.add(batch, msg, known_devices=known, device_sites=self._sites)
            if batch.size >= cfg.batch_rows:
                break
            taken += 1
            if taken % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # the writers' round trips to the database go on meanwhile
            nxt = src.get_nowait()
            if nxt is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                nxt = await src.get_within(remaining)
                if nxt is None:
                    break
            msg = nxt
        self.metrics.queue_depth.set(src.backlog)

    async def _stop(self, batch: Batch, writes: list[asyncio.Task[WriteResult | None]]) -> None:
        """Commit and ack what is held, then drain and end the session if configured, within the time."""
        drain = self._config.drain_timeout_s
        if drain is None:
            self._source.stop_intake()

        async def finish() -> None:
            if drain is not None:
                await self._source.drain()  # unsubscribes at once; what it had routed here is taken below
            await self._finish(writes, len(writes))  # the batches being written
            await self._flush_buffered(batch)  # the batch being collected, and the backlog
            if drain is None:
                return
            while not await self._source.drain():
                await self._flush_buffered(Batch())
            await self._acks_published()  # on this connection, before the session ends with it
            self.session_ended = await self._source.end_session()

        timeout = self._config.shutdown_timeout_s if drain is None else drain
        task = asyncio.create_task(finish())
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({task})
            self._source.stop_intake()
        if task in done:
            task.result()  # a DatabaseRejected stops the ingester with its own message
            if not self.session_ended:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._config.shutdown_timeout_s):
                        await self._acks_published()
            logger.info(
                "stopped: everything held is committed and acknowledged%s",
                "; the session is drained and ended" if self.session_ended else "",
            )
        else:
            logger.warning(
                "stopped before committing what it held (%d messages) within %.1f s; the broker keeps them",
                self.holding,
                timeout,
            )

    async def _flush_buffered(self, rest: Batch) -> None:
        """Commit ``rest`` and everything received and not yet taken, in batches."""
        while True:
            while rest.size < self._config.batch_rows and (msg := self._source.get_nowait()) is not None:
                self._router.add(rest, msg, known_devices=self._quarantine_known(), device_sites=self._sites)
            if not rest:
                return
            await self._flush(rest)
            rest = Batch()

    async def _connection(self, slot: int) -> psycopg.AsyncConnection:
        conn = self._conns[slot]
        if conn is None or conn.closed or conn.broken:
            conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=False)
            await prepare(conn)
            self._conns[slot] = conn
        return conn

    def _quarantine_known(self) -> set[str] | None:
        return self._known if self._router.unknown_devices == "quarantine" else None

    def _registry_due(self) -> bool:
        return self._known_at is None or time.monotonic() - self._known_at > KNOWN_DEVICES_REFRESH_S

    async def _known_devices(self) -> set[str] | None:
        """The devices the quarantine policy takes (None under ``register``); rereads the devices' sites too,
        every :data:`KNOWN_DEVICES_REFRESH_S` (never while a batch is being written: see :meth:`run`)."""
        if self._registry_due():
            now = time.monotonic()
            delay = self._config.retry_initial_s
            while True:
                conn = await self._write_connection(0)
                try:
                    cur = await conn.execute(_REGISTRY)
                    rows = await cur.fetchall()
                    await conn.commit()
                    break
                except psycopg.Error as exc:
                    if classify(exc) is not Severity.TRANSIENT:
                        raise DatabaseRejected.from_error(exc) from exc
                    delay = await self._backoff(exc, delay, "reading the registered devices failed", 0)
            self._sites = {str(d): str(site) for d, site, _ in rows}
            self._known = {str(d) for d, _, taken in rows if taken}
            self._known_at = now
        return self._quarantine_known()

    def _reroute(self, batch: Batch, sites: dict[str, str]) -> Batch:
        """``batch``'s messages routed again, now that ``sites`` are known to be the stored sites of devices
        it had bound elsewhere."""
        self._sites.update(sites)
        again = Batch()
        for msg in batch.acks:
            self._router.add(again, msg, known_devices=self._quarantine_known(), device_sites=self._sites)
        return again

    async def _backoff(self, exc: BaseException, delay: float, what: str, slot: int) -> float:
        self.db_ok = False
        self.metrics.db_errors.inc()
        logger.warning("%s (%s); retrying in %.1f s", what, describe(exc), delay)
        conn = self._conns[slot]
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
        await asyncio.sleep(delay)
        return min(delay * 2, self._config.retry_max_s)

    async def _write_connection(self, slot: int) -> psycopg.AsyncConnection:
        delay = self._config.retry_initial_s
        while True:
            try:
                return await self._connection(slot)
            except psycopg.Error as exc:
                if classify(exc) is not Severity.TRANSIENT:
                    raise DatabaseRejected.from_error(exc) from exc
                delay = await self._backoff(exc, delay, "database unavailable", slot)

    async def _try_write(self, batch: Batch, slot: int) -> tuple[WriteResult | BaseException, Batch]:
        """Write ``batch``, retrying transient errors and routing it again when another ingester bound one of
        its devices to another site meanwhile; what was written (or the error if the database refused its
        content) and the batch as written."""
        delay = self._config.retry_initial_s
        while True:
            conn = await self._write_connection(slot)
            try:
                result = await write_batch(conn, batch)
                self._sites.update(batch.claims)
                return result, batch
            except SiteConflict as exc:
                logger.info("%s; routing the batch again", exc)
                batch = self._reroute(batch, exc.sites)
            except _WRITE_ERRORS as exc:
                severity = classify(exc)
                if severity is Severity.DATA:
                    return exc, batch
                if severity is Severity.FATAL:
                    raise DatabaseRejected.from_error(exc) from exc
                delay = await self._backoff(exc, delay, "batch write failed", slot)

    async def _write(self, batch: Batch, slot: int) -> tuple[WriteResult, list[Batch]]:
        """Write ``batch``; if the database refuses its content, split it until the messages responsible are
        found and dead-letter those. Returns what was written and the batches it was written as."""
        got, batch = await self._try_write(batch, slot)
        if isinstance(got, WriteResult):
            return got, [batch]
        logger.warning(
            "the database refused a batch of %d messages (%s); looking for the message(s) responsible",
            batch.messages,
            describe(got),
        )
        return await self._split(batch.acks, got, slot)

    def _rebatch(self, messages: list[Inbound]) -> Batch:
        batch = Batch()
        for msg in messages:
            self._router.add(batch, msg, known_devices=self._quarantine_known(), device_sites=self._sites)
        return batch

    async def _split(
        self, messages: list[Inbound], error: BaseException, slot: int
    ) -> tuple[WriteResult, list[Batch]]:
        if len(messages) == 1:
            (msg,) = messages
            rejected = Batch()
            self._router.reject(rejected, msg, DATABASE_REJECTED, describe(error))
            logger.warning("dead-lettered a message on %r: %s", rejected.dead[0].topic, describe(error))
            got, rejected = await self._try_write(rejected, slot)
            if not isinstance(got, WriteResult):  # not even its dead letter can be stored
                raise DatabaseRejected.from_error(got) from got
            return got, [rejected]
        results: list[WriteResult] = []
        written: list[Batch] = []
        half = len(messages) // 2
        for part in (messages[:half], messages[half:]):
            batch = self._rebatch(part)
            got, batch = await self._try_write(batch, slot)
            if isinstance(got, WriteResult):
                results.append(got)
                written.append(batch)
            else:
                result, batches = await self._split(part, got, slot)
                results.append(result)
                written.extend(batches)
        return _total(results), written

    async def _flush(
        self, batch: Batch, after: asyncio.Task[WriteResult | None] | None = None
    ) -> WriteResult | None:
        """Write ``batch`` on the next writer's connection, then, once ``after`` (the write of the batch
        before it) is done too, acknowledge its messages: in the order the bus sent them, as MQTT asks. If
        ``after`` failed, this batch is still committed and acknowledged (the ingester stops on that
        failure)."""
        if not batch:
            return None
        if self._current is batch:
            self._current = Batch()
        slot = self._next_slot
        self._next_slot = (slot + 1) % len(self._conns)
        self._writing.append(batch)
        t0 = time.perf_counter()
        result, written = await self._write(batch, slot)
        elapsed = time.perf_counter() - t0
        self.db_ok = True
        self.last_commit_at = time.time()
        if after is not None:
            await asyncio.wait({after})
        self._writing.remove(batch)  # committed: no longer held (the acks below let new messages in)
        for msg in batch.acks:
            self._source.ack(msg)
        self.committed_batches += 1
        self._record(batch, written, result, elapsed)
        if self._on_commit is not None:
            self._on_commit(batch, result)
        if self._config.commit_acks:
            self._acknowledge(batch)
        return result

    def _acknowledge(self, batch: Batch) -> None:
        """Tell the senders of ``batch``'s telemetry that it is committed (stored or dead-lettered). The acks
        are published while the next batches are collected and written, and the commit path never waits for
        their PUBACKs: these come on the connection that brings the telemetry, behind what the broker has
        sent already, and at the byte bound (:class:`~ingest.mqtt.MqttSource`) paho's network thread reads
        nothing until a commit frees bytes; waiting for them there would stall ingestion until the publish
        timeout. So one publish per batch may be in flight, each ending within the source's publish timeout
        (confirmed or failed): at most as many as batches committed in that time. A failure loses nothing:
        the rows are committed, and a sender resends what it sees no ack for (a duplicate)."""
        acks = plan_acks((msg.topic, msg.payload) for msg in batch.acks)
        for t in self._acking:
            if t.done():
                t.result()  # only a bug raises here (a failure to publish is counted and logged)
        self._acking = [t for t in self._acking if not t.done()]
        if acks:
            self._acking.append(asyncio.create_task(self._publish_acks(acks)))

    async def _acks_published(self) -> None:
        """Until the acks being published are confirmed (or failed)."""
        while self._acking:
            await self._acking.pop(0)

    async def _publish_acks(self, acks: list[tuple[str, bytes]]) -> None:
        try:
            await self._source.publish(acks)
        except PublishFailed as exc:
            self.metrics.ack_failures.inc()
            logger.warning("commit acknowledgement not confirmed (%s); senders will resend", exc)
        else:
            self.metrics.acks.inc(len(acks))

    def _record(self, batch: Batch, written: list[Batch], result: WriteResult, elapsed: float) -> None:
        m = self.metrics
        m.batches.inc()
        m.commit_seconds.observe(elapsed)
        m.samples.inc(sum(len(b.samples) for b in written))
        m.inserted.inc(result.samples_inserted)
        m.duplicates.inc(result.samples_duplicate)
        m.redelivered.inc(batch.redelivered)
        for b in written:
            for dl in b.dead:
                m.dead_letters.labels(dl.reason).inc()
        if batch.seen:
            newest = max(t for _, t in batch.seen.values())
            m.lag_seconds.set((self._clock() - newest).total_seconds())
        m.messages.labels("all").inc(batch.messages)


def open_source(settings: Settings, target: MqttTarget | None) -> AbstractAsyncContextManager[Source]:
    """The bus VITALAB_BUS chooses: the MQTT broker at ``target``, or the NATS JetStream cluster at
    VITALAB_NATS_URLS (whose MQTT listener the devices speak to)."""
    if settings.bus == "nats":
        return NatsSource(
            settings.nats_servers(),
            consumer=NatsConsumer(
                name=settings.nats_consumer,
                ack_wait_s=settings.nats_ack_wait_s,
                max_ack_pending=settings.nats_max_ack_pending,
                replicas=settings.nats_replicas,
            ),
            startup_timeout_s=settings.nats_startup_timeout_s,
            max_buffered=settings.ingest_receive_maximum,
            max_inflight_bytes=settings.ingest_max_inflight_bytes,
            client_name=settings.ingest_client_id,
        )
    if target is None:
        raise ConfigError("mqtt_url", "VITALAB_MQTT_URL is not set (VITALAB_BUS=mqtt)")
    return MqttSource(
        target,
        client_id=settings.ingest_client_id,
        filters=subscriptions(settings.ingest_share_group),
        protocol=settings.mqtt_protocol,
        receive_maximum=settings.ingest_receive_maximum,
        max_inflight_bytes=settings.ingest_max_inflight_bytes,
        ca_file=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
        session_expiry_s=settings.ingest_session_expiry_s,
    )


@contextlib.asynccontextmanager
async def open_ingester(
    settings: Settings, target: MqttTarget | None, database_url: str
) -> AsyncIterator[Ingester]:
    """Open the bus connection (:func:`open_source`; and the metrics endpoint, if configured) for one
    ingester."""
    async with open_source(settings, target) as source:
        ingester = Ingester(
            source,
            database_url,
            router=router_from_settings(settings),
            config=IngestConfig.from_settings(settings),
        )
        server = None
        if settings.ingest_metrics_port is not None:
            server = HealthServer(ingester, settings.ingest_metrics_port)
            server.start()
            logger.info("health and metrics on :%d (/health, /metrics)", server.port)
        try:
            yield ingester
        finally:
            if server is not None:
                server.stop()
