"""`vitalab up`: the whole platform in one process, on embedded services unless external ones are set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import uvicorn

from analytics.jobs import DEFAULT_INTERVAL_S, interval_of, run_periodically
from api.main import create_app
from ingest.service import open_ingester
from simulators.fleet import Fleet
from simulators.publisher import FleetPublisher, gateway_client, now_ms
from simulators.rawfleet import RawFleet
from simulators.run import run_raw_gateway, split_fleet
from vitalab.db import prepare
from vitalab.embedded import embedded_broker, embedded_postgres
from vitalab.settings import MqttTarget, Settings

if TYPE_CHECKING:
    from simulators.run import SimulationPlan

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[str]:
    """The configured database, or the embedded one; migrated to the newest schema."""
    async with contextlib.AsyncExitStack() as stack:
        url: str
        if settings.database_url:
            url = settings.database_url
        else:
            url = await stack.enter_async_context(embedded_postgres(settings.data_dir))
        report = await asyncio.to_thread(prepare, url, settings)
        logger.info(
            "schema ready (applied %s; TimescaleDB: %s)", report.applied or "nothing", report.timescale
        )
        yield url


@contextlib.asynccontextmanager
async def broker(settings: Settings) -> AsyncIterator[tuple[MqttTarget, bool]]:
    """The configured broker, or an in-process one. Yields (target, embedded)."""
    target = settings.mqtt_target()
    if target is not None:
        yield target, False
        return
    async with embedded_broker(settings.embedded_mqtt_port) as t:
        yield t, True


class _Api(uvicorn.Server):
    """uvicorn without its own signal handling: `vitalab up` owns Ctrl-C and stops everything in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _banner(settings: Settings, db_url: str, target: MqttTarget, embedded_mqtt: bool, api_url: str) -> str:
    db = (
        "embedded PostgreSQL, data in " + str(settings.data_dir / "postgres")
        if not settings.database_url
        else db_url
    )
    mqtt = f"{target.url()} ({'in-process broker' if embedded_mqtt else 'external'})"
    return "\n".join(
        [
            "vitalab is up",
            f"  API        {api_url}  (try {api_url}/v1/samples/latest, docs at {api_url}/docs)",
            f"  MQTT       {mqtt}",
            f"  database   {db}",
            f"  simulator  {settings.sim_devices} devices at site '{settings.site}', 1 Hz",
            "Ctrl-C stops everything; committed data stays.",
        ]
    )


async def run_platform(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with database(settings) as db_url, broker(settings) as (target, embedded_mqtt):
        if embedded_mqtt:
            settings = settings.model_copy(update={"ingest_share_group": None, "mqtt_protocol": "3.1.1"})
        app = create_app(settings, db_url)
        server = _Api(
            uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_level="warning")
        )
        async with open_ingester(settings, target, db_url) as ingester:
            fleet, raw = split_fleet(
                Fleet.build(settings.site, settings.sim_devices, seed=settings.sim_seed),
                settings.sim_raw_share,
            )
            client = gateway_client(target, "sim-gw", settings.site, protocol=settings.mqtt_protocol)
            async with client, asyncio.TaskGroup() as tg:
                publisher = FleetPublisher(client, fleet, "sim-gw")
                await publisher.announce()
                ingest_task = tg.create_task(ingester.run(), name="ingest")
                api_task = tg.create_task(server.serve(), name="api")
                every = interval_of(settings.analytics_interval_s, default=DEFAULT_INTERVAL_S)
                analytics_task = None if every is None else tg.create_task(run_periodically(db_url, every))
                sim_task = tg.create_task(publisher.run_realtime(), name="simulator")
                raw_task = (
                    None
                    if not raw.devices
                    else tg.create_task(  # part of the gym speaks BLE/ANT+ frames, via an in-process gateway
                        run_raw_gateway(
                            target,
                            RawFleet(raw, record=False),
                            now_ms(),
                            None,
                            speed=1.0,
                            gateway_id="sim-raw-gw",
                            buffer_path=settings.data_dir / "gateway" / "sim-raw-gw.sqlite",
                            protocol=settings.mqtt_protocol,
                        ),
                        name="raw-gateway",
                    )
                )
                while not server.started:  # noqa: ASYNC110  (uvicorn exposes a flag, not an event)
                    await asyncio.sleep(0.05)
                api_url = f"http://{settings.api_host}:{settings.api_port}"
                print(_banner(settings, db_url, target, embedded_mqtt, api_url), file=sys.stderr, flush=True)
                if ready is not None:
                    ready.set()
                await stop.wait()
                print("stopping...", file=sys.stderr, flush=True)
                sim_task.cancel()
                if analytics_task is not None:
                    analytics_task.cancel()
                if raw_task is not None:
                    raw_task.cancel()
                await asyncio.sleep(0.5)  # let the last published messages reach the ingester
                ingest_task.cancel()  # writes and acks the batch in hand before it stops
                server.should_exit = True
                await api_task
    print("vitalab stopped", file=sys.stderr, flush=True)


def _require_broker(settings: Settings) -> MqttTarget:
    target = settings.mqtt_target()
    if target is None:
        raise SystemExit("VITALAB_MQTT_URL is not set (only `vitalab up` runs an embedded broker)")
    return target


async def run_ingest(settings: Settings, database_url: str) -> None:
    """`vitalab ingest`: one ingester until SIGINT/SIGTERM; the batch in hand is committed and acked."""
    target = _require_broker(settings)
    await asyncio.to_thread(prepare, database_url, settings)
    loop = asyncio.get_running_loop()
    async with open_ingester(settings, target, database_url) as ingester:
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
                    tg.create_task(run_periodically(database_url, every))


async def run_simulator(settings: Settings, plan: SimulationPlan) -> None:
    """`vitalab simulate`: a fleet publishing to the configured broker (raw-frame devices via a gateway)."""
    from simulators.run import simulate

    target = _require_broker(settings)
    await simulate(target, settings.site, plan, protocol=settings.mqtt_protocol, data_dir=settings.data_dir)
