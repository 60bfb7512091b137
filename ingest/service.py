"""The ingest loop: take messages, batch them, write each batch in one transaction, then acknowledge.

At-least-once from the broker (QoS 1, persistent session, PUBACK only after commit) plus idempotent writes
gives exactly one row per (device, t). While the database is down the loop retries the same batch with
backoff and takes nothing new; the broker holds the rest (bounded by the in-flight window).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from ingest.batch import Batch, Router
from ingest.errors import SiteConflict
from ingest.health import HealthServer
from ingest.metrics import IngestMetrics
from ingest.mqtt import MqttSource
from ingest.writer import WriteResult, prepare, write_batch
from vitalab.settings import MqttTarget, Settings
from vitalab.wire import TopicKind, WireLimits, subscription

logger = logging.getLogger(__name__)

KNOWN_DEVICES_REFRESH_S = 30.0
"""How often the ingester rereads the devices (their sites; under the quarantine policy, which it takes)."""
_REGISTRY = "SELECT device_id, site_id, NOT quarantined AND retired_at IS NULL FROM devices"


@dataclass(frozen=True, slots=True)
class IngestConfig:
    batch_rows: int = 5000
    batch_age_s: float = 0.2
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestConfig:
        return cls(batch_rows=settings.ingest_batch_rows, batch_age_s=settings.ingest_batch_age_ms / 1000)


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
        source: MqttSource,
        database_url: str,
        *,
        router: Router,
        config: IngestConfig = IngestConfig(),
        metrics: IngestMetrics | None = None,
        on_commit: Callable[[Batch, WriteResult], None] | None = None,
    ) -> None:
        self._source = source
        self._dsn = database_url
        self._router = router
        self._config = config
        self.metrics = metrics or IngestMetrics()
        self._conn: psycopg.AsyncConnection | None = None
        self._known: set[str] | None = None
        self._sites: dict[str, str] = {}
        """device id -> its site: the identity rule (ingest.batch)."""
        self._known_at: float | None = None
        self.committed_batches = 0
        self._on_commit = on_commit
        self.db_ok = True
        """False while the last attempt to write failed."""
        self.last_commit_at: float | None = None

    @property
    def mqtt_connected(self) -> bool:
        return self._source.connected

    @property
    def backlog(self) -> int:
        """Messages received from the broker and not yet taken into a batch."""
        return self._source.backlog

    async def run(self) -> None:
        """Run until cancelled. On cancellation the batch in hand is written and acked first."""
        try:
            while True:
                batch = await self._collect()
                await self._flush(batch)
        finally:
            if self._conn is not None:
                await self._conn.close()

    async def _collect(self) -> Batch:
        src, cfg = self._source, self._config
        batch = Batch()
        known = await self._known_devices()
        msg = await src.get()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.batch_age_s
        try:
            while True:
                self._router.add(batch, msg, known_devices=known, device_sites=self._sites)
                if batch.size >= cfg.batch_rows:
                    break
                nxt = src.get_nowait()
                if nxt is None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(src.get(), remaining)
                    except TimeoutError:
                        break
                msg = nxt
        except asyncio.CancelledError:
            # stopping: what we hold is still written and acked (shielded), then we stop
            if batch:
                await asyncio.shield(self._flush(batch))
            raise
        self.metrics.queue_depth.set(src.backlog)
        return batch

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=False)
            await prepare(self._conn)
        return self._conn

    async def _known_devices(self) -> set[str] | None:
        """The devices the quarantine policy takes (None under ``register``); rereads the devices' sites too,
        every :data:`KNOWN_DEVICES_REFRESH_S`."""
        now = time.monotonic()
        delay = self._config.retry_initial_s
        while self._known_at is None or now - self._known_at > KNOWN_DEVICES_REFRESH_S:
            conn = await self._write_connection()
            try:
                cur = await conn.execute(_REGISTRY)
                rows = await cur.fetchall()
                await conn.commit()
            except psycopg.OperationalError as exc:
                self.db_ok = False
                self.metrics.db_errors.inc()
                logger.warning("reading the devices failed (%s); retrying in %.1f s", exc, delay)
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._config.retry_max_s)
                continue
            self._sites = {str(d): str(s) for d, s, _ in rows}
            self._known = {str(d) for d, _, taken in rows if taken}
            self._known_at = now
        return self._known if self._router.unknown_devices == "quarantine" else None

    def _reroute(self, batch: Batch, sites: dict[str, str]) -> Batch:
        """``batch``'s messages routed again, now that ``sites`` are known to be the stored sites of devices
        it had bound elsewhere."""
        self._sites.update(sites)
        known = self._known if self._router.unknown_devices == "quarantine" else None
        again = Batch()
        for msg in batch.acks:
            self._router.add(again, msg, known_devices=known, device_sites=self._sites)
        return again

    async def _write_connection(self) -> psycopg.AsyncConnection:
        delay = self._config.retry_initial_s
        while True:
            try:
                return await self._connection()
            except psycopg.OperationalError as exc:
                self.db_ok = False
                self.metrics.db_errors.inc()
                logger.warning("database unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._config.retry_max_s)

    async def _flush(self, batch: Batch) -> WriteResult | None:
        if not batch:
            return None
        delay = self._config.retry_initial_s
        while True:
            conn = await self._write_connection()
            t0 = time.perf_counter()
            try:
                result = await write_batch(conn, batch)
                break
            except SiteConflict as exc:
                logger.info("%s; routing the batch again", exc)
                batch = self._reroute(batch, exc.sites)
                continue
            except psycopg.OperationalError as exc:
                self.db_ok = False
                self.metrics.db_errors.inc()
                logger.warning("batch write failed (%s); retrying in %.1f s", exc, delay)
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._config.retry_max_s)
        elapsed = time.perf_counter() - t0
        self._sites.update(batch.claims)
        self.db_ok = True
        self.last_commit_at = time.time()
        for msg in batch.acks:
            self._source.ack(msg)
        self.committed_batches += 1
        self._record(batch, result, elapsed)
        if self._on_commit is not None:
            self._on_commit(batch, result)
        return result

    def _record(self, batch: Batch, result: WriteResult, elapsed: float) -> None:
        m = self.metrics
        m.batches.inc()
        m.commit_seconds.observe(elapsed)
        m.samples.inc(len(batch.samples))
        m.inserted.inc(result.samples_inserted)
        m.duplicates.inc(result.samples_duplicate)
        for dl in batch.dead:
            m.dead_letters.labels(dl.reason).inc()
        if batch.seen:
            newest = max(t for _, t in batch.seen.values())
            m.lag_seconds.set((datetime.now(UTC) - newest).total_seconds())
        m.messages.labels("all").inc(batch.messages)


@contextlib.asynccontextmanager
async def open_ingester(settings: Settings, target: MqttTarget, database_url: str) -> AsyncIterator[Ingester]:
    """Open the broker connection (and the metrics endpoint, if configured) for one ingester."""
    async with MqttSource(
        target,
        client_id=settings.ingest_client_id,
        filters=subscriptions(settings.ingest_share_group),
        protocol=settings.mqtt_protocol,
        receive_maximum=settings.ingest_receive_maximum,
        ca_file=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
    ) as source:
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
