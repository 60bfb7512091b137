"""The single-service commands (`vitalab ingest`, `api`, `simulate`, `gateway`, `analytics run`,
`db migrate`, `db url`, `db shell`): each wires one service to the configured broker and database.

Part of the composition root with :mod:`vitalab.platform` (`vitalab up`). Each runner imports its service
when it runs, so that a command loads only what it uses (`vitalab api` does not load the analytics or the
simulators). Errors a user can act on are raised as typed errors (:mod:`vitalab.failures` words them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from vitalab.embedded import postgres_bin, postgres_server, running_url
from vitalab.errors import ConfigError
from vitalab.failures import NotRunning, Unreachable
from vitalab.progress import Meter
from vitalab.settings import MqttTarget, Settings

if TYPE_CHECKING:
    from analytics.jobs import RunReport
    from gateway.service import ServiceStats
    from simulators.run import SimulationPlan
    from vitalab.db import MigrationReport

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10


def require_database(settings: Settings) -> str:
    if not settings.database_url:
        raise ConfigError(
            "database_url", "VITALAB_DATABASE_URL is not set (only `vitalab up` runs an embedded database)"
        )
    return settings.database_url


def require_broker(settings: Settings) -> MqttTarget:
    target = settings.mqtt_target()
    if target is None:
        raise ConfigError(
            "mqtt_url", "VITALAB_MQTT_URL is not set (only `vitalab up` runs an embedded broker)"
        )
    return target


def check_database(url: str) -> None:
    """Connect once: a server that refuses, a wrong host or database are reported before anything starts."""
    import psycopg

    with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S):
        pass


# --- database -------------------------------------------------------------------------------------------


def migrate_database(settings: Settings) -> MigrationReport:
    """`vitalab db migrate`."""
    from vitalab.db import prepare

    return prepare(require_database(settings), settings)


def database_url(settings: Settings) -> str:
    """`vitalab db url`: the configured database's URL, or the URL of the embedded server while it runs."""
    if settings.database_url:
        return settings.database_url
    url = running_url(settings.data_dir)
    if url is None:
        raise NotRunning(
            f"the embedded database ({settings.data_dir / 'postgres'}) is not running: start `vitalab up`, "
            "or open it with `vitalab db shell`"
        )
    return url


def database_shell(settings: Settings, psql_args: Sequence[str]) -> int:
    """`vitalab db shell`: ``psql`` (the one shipped with the embedded server) on the configured database, or
    on the embedded one, started for the session if `vitalab up` is not running it. Returns psql's exit
    status."""
    psql = str(postgres_bin() / "psql")
    if settings.database_url or running_url(settings.data_dir) is not None:
        os.execv(psql, [psql, database_url(settings), *psql_args])  # replaces this process
    with postgres_server(settings.data_dir) as url:
        # psql handles Ctrl-C itself (it cancels the query); this process waits to stop the server after it
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return subprocess.run([psql, url, *psql_args], check=False).returncode
        finally:
            signal.signal(signal.SIGINT, previous)


# --- ingest, API, analytics -------------------------------------------------------------------------------


async def run_ingest(settings: Settings) -> None:
    """`vitalab ingest`: one ingester until SIGINT/SIGTERM; the batch in hand is committed and acked."""
    from analytics.jobs import interval_of, run_periodically
    from ingest.service import open_ingester
    from vitalab.db import prepare

    target = require_broker(settings) if settings.bus == "mqtt" else None
    url = require_database(settings)
    await asyncio.to_thread(prepare, url, settings)
    loop = asyncio.get_running_loop()
    async with open_ingester(settings, target, url) as ingester:
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        every = interval_of(settings.analytics_interval_s, default=None)
        with contextlib.suppress(asyncio.CancelledError):
            if every is None:
                await ingester.run()
            else:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(ingester.run())
                    tg.create_task(run_periodically(url, every))


def serve_api(settings: Settings, log_level: str = "info") -> None:
    """`vitalab api`: the HTTP API on VITALAB_API_HOST:VITALAB_API_PORT with VITALAB_API_WORKERS processes,
    once the database answers."""
    from api import asgi

    url = require_database(settings)
    check_database(url)
    asgi.serve(settings, log_level)


def run_analytics(settings: Settings, *, full: bool) -> RunReport:
    """`vitalab analytics run`, with a progress bar over the windows of the run."""
    from analytics.jobs import run_once

    url = require_database(settings)
    with Meter("analytics run", unit="windows", decimals=0) as meter:
        return run_once(url, now=datetime.now(UTC), full=full, progress=meter.update)


# --- devices ----------------------------------------------------------------------------------------------


async def run_simulator(settings: Settings, plan: SimulationPlan) -> None:
    """`vitalab simulate`: a fleet publishing to the configured broker (raw-frame devices via a gateway)."""
    from simulators.run import simulate

    target = require_broker(settings)
    if plan.api_url:
        await _check_api(plan.api_url)
    meter = Meter.history(plan.backfill_s) if plan.backfill_s else None
    if meter is not None:
        plan = dataclasses.replace(plan, on_history=meter.reporter(plan.backfill_s))
    with meter or contextlib.nullcontext():
        await simulate(
            target, settings.site, plan, protocol=settings.mqtt_protocol, data_dir=settings.data_dir
        )


async def _check_api(url: str) -> None:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=CONNECT_TIMEOUT_S) as client:
            await client.get(url.rstrip("/") + "/health")
    except httpx.HTTPError as exc:
        raise Unreachable("the API", url, str(exc) or type(exc).__name__) from None


async def run_gateway_service(
    settings: Settings, *, transports: Sequence[str] | None, devices_file: Path | None
) -> ServiceStats:
    """`vitalab gateway`: frames from the transports, decoded and published (see :mod:`gateway.run`)."""
    from gateway.run import run_gateway

    return await run_gateway(settings, transports=transports, devices_file=devices_file)
