from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from api import keys
from api.security import Role, Scope
from ingest.service import IngestConfig, Ingester, open_ingester, router_from_settings
from ingest.source import Source
from vitalab.settings import MqttTarget, Settings, load_settings

KEYS_MADE_AT = datetime(2026, 1, 1, tzinfo=UTC)
"""When the tests' keys are created (a fixed time: no test reads the wall clock)."""


def make_settings(**overrides: object) -> Settings:
    base: dict[str, object] = {"database_url": None, "mqtt_url": None, "ingest_batch_age_ms": 50}
    base.update(overrides)
    return load_settings(**base)


async def scalar(url: str, query: str, *params: object) -> object:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(query, params or None)
        row = await cur.fetchone()
        return row[0] if row else None


async def wait_until(
    check: Callable[[], object], *, timeout_s: float = 20.0, what: str = "condition"
) -> None:
    """Poll an async ``check`` until it returns truthy."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        last = await check()  # type: ignore[misc]
        if last:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


async def count(url: str, table: str, where: str = "TRUE") -> int:
    value = await scalar(url, f"SELECT count(*) FROM {table} WHERE {where}")
    assert isinstance(value, int)
    return value


@contextlib.asynccontextmanager
async def ingester_task(
    settings: Settings, target: MqttTarget | None, database_url: str
) -> AsyncIterator[tuple[Ingester, asyncio.Task[None]]]:
    """An ingester running in the background for the duration of the block, subscribed when the block
    starts; the block can look at its task (still running?). Leaving it stops the ingester as SIGTERM does
    (what it holds is committed and acknowledged) and re-raises what stopped it otherwise."""
    async with open_ingester(settings, target, database_url) as ingester:
        task = asyncio.create_task(ingester.run())
        try:
            await ingester.wait_subscribed()
            yield ingester, task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def make_key(
    database_url: str,
    role: Role = "admin",
    scope: Scope | None = None,
    *,
    name: str = "test",
    now: datetime = KEYS_MADE_AT,
    expires_at: datetime | None = None,
) -> str:
    """A new API key (``vl_...``) in the database; an admin's (scope everything) unless said otherwise."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        made = await keys.create_key(
            conn,
            name=name,
            owner="tests",
            role=role,
            scope=scope or Scope.everything(),
            now=now,
            expires_at=expires_at,
        )
    return made.token


@dataclass(frozen=True)
class RunningApi:
    url: str
    key: str
    """An admin key."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


@contextlib.asynccontextmanager
async def running_ingester(
    settings: Settings, target: MqttTarget | None, database_url: str
) -> AsyncIterator[Ingester]:
    """An ingester running in the background for the duration of the block (see :func:`ingester_task`)."""
    async with ingester_task(settings, target, database_url) as (ingester, _):
        yield ingester


def metric(ingester: Ingester, name: str, **labels: str) -> float:
    """The current value of one of the ingester's Prometheus series (0 if it has no sample yet)."""
    return ingester.metrics.registry.get_sample_value(name, labels or None) or 0.0


@contextlib.asynccontextmanager
async def running_api(
    settings: Settings, database_url: str, *, with_key: bool = True
) -> AsyncIterator[RunningApi]:
    """The real API served by uvicorn on a free loopback port; yields its base URL and an admin key (none,
    ``""``, without ``with_key``: for a database that is not there)."""
    import uvicorn

    from api.main import create_app
    from tests.conftest import free_port

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, database_url), host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield RunningApi(f"http://127.0.0.1:{port}", await make_key(database_url) if with_key else "")
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def watched_ingester(
    source: Source, database_url: str, settings: Settings
) -> AsyncIterator[tuple[Ingester, dict[str, float]]]:
    """An ingester running on ``source`` (retries at most 0.5 s apart), and the peaks of what /metrics says it
    holds in flight ("gauge", bytes) and of how many messages it holds ("holding"), watched every 5 ms until
    the block ends; then the watch stops and the ingester is cancelled."""
    ingester = Ingester(
        source, database_url, router=router_from_settings(settings), config=IngestConfig(retry_max_s=0.5)
    )
    task = asyncio.create_task(ingester.run())
    peaks = {"gauge": 0.0, "holding": 0}
    stop_watch = asyncio.Event()

    async def watch() -> None:
        while not stop_watch.is_set():
            peaks["gauge"] = max(peaks["gauge"], metric(ingester, "vitalab_ingest_inflight_bytes"))
            peaks["holding"] = max(peaks["holding"], ingester.holding)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        yield ingester, peaks
    finally:
        stop_watch.set()
        await watcher
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
