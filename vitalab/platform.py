"""`vitalab up`: the whole platform in one process, on embedded services unless external ones are set.

With :mod:`vitalab.runners` (one runner per single-service command) and :mod:`vitalab.cli` this is the
composition root: the only place that wires the broker, the ingester, the API, the analytics job, the
simulator and the gateway together. No service imports it.

Broker logins. The in-process broker enforces the broker accounts of :mod:`vitalab.broker` like the deploy
Mosquitto: no anonymous client. Its account store lives in ``<data_dir>/broker`` (or
``VITALAB_BROKER_STATE_DIR``) and is shared with the API in this process, so devices and gateways registered
through the API (``POST /v1/sites/{site}/devices``) get logins that work at once and lose them when retired
(their connections are closed). The in-process clients get fresh passwords at every start, held in memory
only: the ingester a read-only ``ingest`` account (with an unguessable client id: amqtt deletes a session's
subscriptions on a clean CONNECT with its client id before it checks the login), each simulated gateway a
gateway account for exactly the devices it publishes for. With an external broker (``VITALAB_MQTT_URL``)
every client uses the configured URL's login, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import uvicorn
from psycopg.types.json import Jsonb

from analytics.jobs import DEFAULT_INTERVAL_S, interval_of, run_periodically
from analytics.opening_hours import WEEKDAYS
from api.access import UpKeys, keys_for_up
from api.health import analytics_job
from api.main import create_app
from ingest.service import open_ingester
from simulators.fleet import Fleet
from simulators.gymfleet import MACHINE_MIX
from simulators.publisher import FleetPublisher, gateway_client, now_ms
from simulators.rawfleet import RawFleet, now_s
from simulators.run import (
    SimulationPlan,
    gym_config,
    gym_gateways,
    run_raw_gateway,
    simulate_gym,
    split_fleet,
)
from vitalab.broker import IssuedCredential, MosquittoAuth, Role
from vitalab.broker.amqtt_auth import LiveAccounts
from vitalab.db import prepare
from vitalab.embedded import embedded_broker_with_accounts, embedded_postgres
from vitalab.errors import ConfigError
from vitalab.progress import Meter
from vitalab.settings import MqttTarget, Settings

logger = logging.getLogger(__name__)

HISTORY_IN_FLIGHT = 20
"""Messages of `vitalab up`'s background history awaiting their PUBACK at once (50 samples each): the
in-process broker carries the live data too."""


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


INGEST_ACCOUNT = "ingest"
LIVE_ACCOUNT = "live"
"""The live floor's read-only broker account in `vitalab up`."""
SIMULATED_GATEWAYS = ("sim-gw", "sim-gw-raw", "sim-gw-history", "sim-gw-history-raw", "sim-raw-gw")
"""The connections of the simulated gym (and fleet) of `vitalab up`: their logins of an earlier run that this
run does not use are revoked."""


@dataclasses.dataclass(frozen=True, slots=True)
class Broker:
    target: MqttTarget
    embedded: bool
    auth: MosquittoAuth | None
    """The in-process broker's account store (None: an external broker, every client with its URL's login)."""

    def login(self, issued: IssuedCredential) -> MqttTarget:
        return dataclasses.replace(self.target, username=issued.username, password=issued.password)

    async def ingester(self, settings: Settings) -> tuple[Settings, MqttTarget]:
        """The ingester's settings and login: a fresh password of the read-only ``ingest`` account and an
        unguessable client id on the in-process broker."""
        auth = self.auth
        if auth is None:
            return settings, self.target
        issued = await asyncio.to_thread(auth.issue_service, Role.INGESTER, INGEST_ACCOUNT)
        client_id = f"vitalab-ingest-{secrets.token_hex(12)}"
        return settings.model_copy(update={"ingest_client_id": client_id}), self.login(issued)

    async def live_view(self) -> MqttTarget:
        """The live floor's login: a fresh password of the read-only ``live`` account on the in-process
        broker (an external broker: the URL's own login)."""
        auth = self.auth
        if auth is None:
            return self.target
        issued = await asyncio.to_thread(auth.issue_service, Role.LIVE_VIEW, LIVE_ACCOUNT)
        return self.login(issued)

    async def gateways(self, site: str, devices: Mapping[str, list[str]]) -> dict[str, MqttTarget]:
        """A login for each simulated gateway, publishing for exactly its ``devices`` (gateway id -> device
        ids); the logins of simulated gateways this run does not use are revoked."""
        auth = self.auth
        if auth is None:
            return {gw: self.target for gw in devices}

        def issue() -> dict[str, IssuedCredential]:
            issued = {gw: auth.issue_gateway(gw, site, attached) for gw, attached in devices.items()}
            stale = [gw for gw in SIMULATED_GATEWAYS if gw not in devices and gw in auth.accounts()]
            for gw in stale:
                auth.revoke(gw)
            return issued

        issued = await asyncio.to_thread(issue)
        return {gw: self.login(credential) for gw, credential in issued.items()}


@contextlib.asynccontextmanager
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    """The configured broker, or an in-process one enforcing the broker accounts of the data directory."""
    target = settings.mqtt_target()
    if target is not None:
        yield Broker(target, False, None)
        return
    auth = MosquittoAuth(settings.broker_state_dir or settings.data_dir / "broker")
    live = LiveAccounts(await asyncio.to_thread(auth.apply))
    auth.reloader = live
    async with embedded_broker_with_accounts(live, settings.embedded_mqtt_port) as t:
        yield Broker(t, True, auth)


class _Api(uvicorn.Server):
    """uvicorn without its own signal handling: `vitalab up` owns Ctrl-C and stops everything in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _banner(
    settings: Settings,
    db_url: str,
    target: MqttTarget,
    embedded_mqtt: bool,
    api_url: str,
    simulator: str,
    access: UpKeys,
) -> str:
    db = (
        f"embedded PostgreSQL, data in {settings.data_dir / 'postgres'} (psql: vitalab db shell)"
        if not settings.database_url
        else db_url
    )
    where = (
        "in-process broker; no anonymous clients, devices get logins from the API"
        if embedded_mqtt
        else "external"
    )
    mqtt = f"{target.url()} ({where})"
    if access.admin is not None:
        admin = f"{access.admin}  (shown once; also in {access.admin_file}, mode 0600)"
    else:
        admin = f"in {access.admin_file} (made at the first start)"
    return "\n".join(
        [
            "vitalab is up",
            f"  API        {api_url}  (try {api_url}/v1/samples/latest, docs at {api_url}/docs)",
            f"  admin key  {admin}",
            f'             curl -H "Authorization: Bearer $(cat {access.admin_file})" {api_url}/v1/devices',
            f"  MQTT       {mqtt}",
            f"  database   {db}",
            f"  simulator  {simulator}",
            "Ctrl-C stops everything; committed data stays.",
        ]
    )


def _set_site(db_url: str, settings: Settings) -> None:
    """The simulated site's row, with the configured timezone (local days and midnights of the analytics) and
    the simulated gym's opening hours (every day alike; none for the always-busy fleet)."""
    hours = None
    if settings.sim_mode == "gym":
        config = gym_config(settings, demo=True)
        day = [[f"{config.open_h:02d}:00", f"{config.close_h:02d}:00"]]
        hours = Jsonb({weekday: day for weekday in WEEKDAYS})
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO sites (site_id, timezone, opening_hours) VALUES (%s, %s, %s) ON CONFLICT (site_id) "
            "DO UPDATE SET timezone = EXCLUDED.timezone, opening_hours = EXCLUDED.opening_hours",
            (settings.site, settings.site_timezone, hours),
        )


def _bound_url(server: uvicorn.Server, settings: Settings) -> str:
    """The API's base URL as a local client reaches it (the port uvicorn bound, also when 0 was asked)."""
    port = settings.api_port
    for srv in getattr(server, "servers", []):
        for sock in srv.sockets:
            port = sock.getsockname()[1]
    host = settings.api_host if settings.api_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def _gym_plans(
    settings: Settings, api_url: str, api_key: str
) -> tuple[SimulationPlan, SimulationPlan | None, str]:
    """The live gym of `vitalab up`, the optional history run beside it, and the banner's description."""
    config = gym_config(settings, demo=True)
    live = settings.sim_start or now_s()
    days = settings.sim_backfill_days
    registered = live - timedelta(days=days, minutes=1)
    plan = SimulationPlan(
        devices=settings.sim_devices,
        seed=settings.sim_seed,
        raw_share=settings.sim_raw_share,
        mix=MACHINE_MIX,
        gym=config,
        api_url=api_url,
        api_key=api_key,
        start=live,
        registered_from=registered,
    )
    history = None
    if days > 0:
        # beside the live gym, on its own connection, as wire-contract devices (raw frames through a second
        # in-process gateway would cost minutes of CPU per day), few messages in flight (the broker carries
        # the live data too); the live run continues the visits going on at its start
        history = dataclasses.replace(
            plan,
            duration_s=0,
            backfill_s=round(days * 86400),
            close_at_end=False,
            gateway_id="sim-gw-history",
            raw_share=0.0,
            samples_per_message=50,
            max_in_flight=HISTORY_IN_FLIGHT,
        )
    straps = round(config.strap_share * config.members)
    text = (
        f"a gym at site '{settings.site}' ({config.timezone}): {settings.sim_devices} machines, "
        f"{config.members} members ({straps} with their own strap), open {config.open_h}-{config.close_h} h, "
        f"visits of {config.visit_minutes[0]}-{config.visit_minutes[1]} min, "
        f"{round(100 * config.check_in_share)} % checked in via the API"
        + (f"; {days:g} days of history in the background" if days > 0 else "")
    )
    return plan, history, text


def _fleet_split(settings: Settings) -> tuple[Fleet, Fleet]:
    return split_fleet(
        Fleet.build(settings.site, settings.sim_devices, seed=settings.sim_seed), settings.sim_raw_share
    )


def fleet_gateways(settings: Settings) -> dict[str, list[str]]:
    """The connections of :func:`_fleet`: gateway id -> the devices it publishes for."""
    wire, raw = _fleet_split(settings)
    found = {"sim-gw": [d.device_id for d in wire.devices]}
    if raw.devices:
        found["sim-raw-gw"] = [d.device_id for d in raw.devices]
    return found


async def _fleet(settings: Settings, logins: Mapping[str, MqttTarget]) -> None:
    """The always-busy fleet (``VITALAB_SIM_MODE=fleet``): every device in use every second."""
    fleet, raw = _fleet_split(settings)
    client = gateway_client(logins["sim-gw"], "sim-gw", settings.site, protocol=settings.mqtt_protocol)
    async with client, asyncio.TaskGroup() as tg:
        publisher = FleetPublisher(client, fleet, "sim-gw")
        await publisher.announce()
        tg.create_task(publisher.run_realtime(), name="simulator")
        if raw.devices:  # part of the gym speaks BLE/ANT+ frames, via an in-process gateway
            tg.create_task(
                run_raw_gateway(
                    logins["sim-raw-gw"],
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


def _listen(settings: Settings) -> socket.socket:
    """The API's listening socket, bound here so that a port in use is a clear error before anything runs."""
    host = settings.api_host or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, settings.api_port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            "api_port", f"cannot listen on {host}:{settings.api_port}: {exc.strerror}"
        ) from None
    sock.set_inheritable(True)
    return sock


async def _metered(meter: Meter, run: Coroutine[Any, Any, object]) -> None:
    with meter:
        await run


async def _guarded(run: Coroutine[Any, Any, object], what: str) -> None:
    """The simulator is the demo's data source, not the platform: its failure is logged, the rest runs on."""
    try:
        await run
    except Exception:
        logger.exception("%s failed; the platform runs on without it", what)


async def run_platform(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with database(settings) as db_url, broker(settings) as mqtt:
        target, embedded_mqtt = mqtt.target, mqtt.embedded
        if embedded_mqtt:
            settings = settings.model_copy(update={"ingest_share_group": None, "mqtt_protocol": "3.1.1"})
        await asyncio.to_thread(_set_site, db_url, settings)
        access = await keys_for_up(db_url, settings.data_dir, settings.site, datetime.now(UTC))
        every = interval_of(settings.analytics_interval_s, default=DEFAULT_INTERVAL_S)
        # /health: the analytics job is failing, or has not finished a run in ten of its intervals
        stale = None if every is None else timedelta(seconds=10 * every)
        # the API issues and revokes device logins in the in-process broker's store (an external broker's:
        # VITALAB_BROKER_STATE_DIR, read by create_app); the live floor follows the broker read-only
        app = create_app(
            settings,
            db_url,
            health_checks=[analytics_job(stale_after=stale)],
            broker_auth=mqtt.auth,
            live_mqtt=await mqtt.live_view(),
        )
        server = _Api(
            uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_level="warning")
        )
        listening = _listen(settings)
        ingest_settings, ingest_login = await mqtt.ingester(settings)
        async with (
            # the embedded path is MQTT whatever VITALAB_BUS says
            open_ingester(
                ingest_settings.model_copy(update={"bus": "mqtt"}), ingest_login, db_url
            ) as ingester,
            asyncio.TaskGroup() as tg,
        ):
            ingest_task = tg.create_task(ingester.run(), name="ingest")
            api_task = tg.create_task(server.serve(sockets=[listening]), name="api")
            analytics_task = None if every is None else tg.create_task(run_periodically(db_url, every))
            while not server.started:
                if api_task.done():
                    break
                await asyncio.sleep(0.05)
            api_url = _bound_url(server, settings)
            sim_tasks: list[asyncio.Task[None]] = []
            protocol, data_dir = settings.mqtt_protocol, settings.data_dir
            site = settings.site
            if settings.sim_mode == "gym":
                plan, history, simulator = _gym_plans(settings, api_url, access.kiosk)
                connections = gym_gateways(site, plan) | (
                    {} if history is None else gym_gateways(site, history)
                )
                logins = await mqtt.gateways(site, connections)
                run = simulate_gym(target, site, plan, protocol=protocol, data_dir=data_dir, logins=logins)
                sim_tasks.append(tg.create_task(_guarded(run, "gym")))
                if history is not None:
                    meter = Meter.history(history.backfill_s)
                    history = dataclasses.replace(history, on_history=meter.reporter(history.backfill_s))
                    run = simulate_gym(
                        target, site, history, protocol=protocol, data_dir=data_dir, logins=logins
                    )
                    sim_tasks.append(tg.create_task(_guarded(_metered(meter, run), "gym history")))
            else:
                simulator = f"{settings.sim_devices} devices at site '{site}', always in use, 1 Hz"
                logins = await mqtt.gateways(site, fleet_gateways(settings))
                sim_tasks.append(tg.create_task(_guarded(_fleet(settings, logins), "simulator")))
            print(
                _banner(settings, db_url, target, embedded_mqtt, api_url, simulator, access),
                file=sys.stderr,
                flush=True,
            )
            if ready is not None:
                ready.set()
            await stop.wait()
            print("stopping...", file=sys.stderr, flush=True)
            for task in sim_tasks:
                task.cancel()
            _, late = await asyncio.wait(sim_tasks, timeout=5)
            for task in late:
                logger.warning("simulator task %s still running 5 s after its cancellation", task.get_name())
            if analytics_task is not None:
                analytics_task.cancel()
            await asyncio.sleep(0.5)  # let the last published messages reach the ingester
            ingest_task.cancel()  # writes and acks the batch in hand before it stops
            server.should_exit = True
            await api_task
    print("vitalab stopped", file=sys.stderr, flush=True)
