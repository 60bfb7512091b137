"""The ``vitalab`` command line. Settings come from ``VITALAB_*`` environment variables; options override."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from vitalab import logs
from vitalab.errors import VitalabError
from vitalab.settings import Settings, load_settings

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="vitalab: smart-gym telemetry for living labs"
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")

LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")]


def _setup(log_level: str) -> Settings:
    logs.configure(log_level)
    try:
        return load_settings()
    except ValueError as exc:  # pydantic ValidationError: a bad VITALAB_* variable
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None


def _database_url(settings: Settings) -> str:
    if not settings.database_url:
        typer.echo("VITALAB_DATABASE_URL is not set (only `vitalab up` runs an embedded database)", err=True)
        raise typer.Exit(2)
    return settings.database_url


@app.command()
def up(log_level: LogLevel = "warning") -> None:
    """Run the whole platform: database, broker, ingester, API and a simulated gym.

    With VITALAB_DATABASE_URL / VITALAB_MQTT_URL unset, PostgreSQL and the broker are embedded.
    """
    from vitalab.platform import run_platform

    settings = _setup(log_level)
    asyncio.run(run_platform(settings))


@db_app.command("migrate")
def db_migrate(log_level: LogLevel = "info") -> None:
    """Apply the schema migrations (idempotent)."""
    from vitalab.db import prepare

    settings = _setup(log_level)
    report = prepare(_database_url(settings), settings)
    typer.echo(json.dumps({"applied": report.applied, "timescale": report.timescale_version}))


@app.command()
def ingest(log_level: LogLevel = "info") -> None:
    """Run an ingester against VITALAB_MQTT_URL and VITALAB_DATABASE_URL."""
    from vitalab.platform import run_ingest

    settings = _setup(log_level)
    try:
        asyncio.run(run_ingest(settings, _database_url(settings)))
    except Exception as exc:
        error = _vitalab_error(exc)
        if error is None:
            raise
        typer.echo(f"vitalab ingest: {error}", err=True)  # e.g. a database error retrying cannot fix
        raise typer.Exit(1) from None


def _vitalab_error(exc: BaseException) -> VitalabError | None:
    """The error vitalab raised on purpose, also from inside a task group."""
    if isinstance(exc, VitalabError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _vitalab_error(inner)
            if found is not None:
                return found
    return None


analytics_app = typer.Typer(no_args_is_help=True, help="Sessions, per-participant and per-site metrics.")
app.add_typer(analytics_app, name="analytics")


@analytics_app.command("run")
def analytics_run(
    full: Annotated[bool, typer.Option(help="recompute everything, not only what is new")] = False,
    log_level: LogLevel = "info",
) -> None:
    """Compute what is new since the last run (sessions, daily series, utilisation, quality); print a report.
    Runs wait for each other; `--full` recomputes everything."""
    from analytics.errors import AnalyticsError
    from analytics.jobs import run_once

    settings = _setup(log_level)
    try:
        report = run_once(_database_url(settings), full=full)
    except AnalyticsError as exc:
        typer.echo(f"analytics run failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(report.as_dict()))


@app.command()
def api(log_level: LogLevel = "info") -> None:
    """Serve the HTTP API on VITALAB_API_HOST:VITALAB_API_PORT."""
    import uvicorn

    from api.main import create_app

    settings = _setup(log_level)
    uvicorn.run(create_app(settings, _database_url(settings)), host=settings.api_host, port=settings.api_port)


@app.command()
def simulate(
    devices: Annotated[int | None, typer.Option(help="fleet size (default VITALAB_SIM_DEVICES)")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default VITALAB_SIM_SEED)")] = None,
    duration: Annotated[float | None, typer.Option(help="seconds to run (default: until Ctrl-C)")] = None,
    backfill: Annotated[int, typer.Option(help="publish this many seconds of history first, fast")] = 0,
    samples_per_message: Annotated[int, typer.Option(min=1)] = 1,
    faults: Annotated[
        str,
        typer.Option(
            help="fault rates, e.g. 'drop=0.01,duplicate=0.02,reorder=0.01,delay=0.01,malformed=0.001,"
            "clock_skew=0.1,dropout=0.05,device_error=0.001,storm=0.001,uplink_storm=0.001'"
        ),
    ] = "",
    mix: Annotated[
        str | None,
        typer.Option(
            help="device kinds to cycle through, comma-separated, or 'all' (default bike,treadmill,rower,"
            "hr_strap; --gym: its machine kinds, default bike,treadmill,rower,cross_trainer)"
        ),
    ] = None,
    raw_share: Annotated[
        float, typer.Option(min=0, max=1, help="share of devices sending BLE/ANT+ frames via a gateway")
    ] = 0.0,
    ant_share: Annotated[float, typer.Option(min=0, max=1, help="share of raw-frame devices on ANT+")] = 0.25,
    class_share: Annotated[
        float, typer.Option(min=0, max=1, help="share of machines riding a class together")
    ] = 0.0,
    speed: Annotated[
        float, typer.Option(min=0.001, help="device seconds per wall second (>1 needs --duration)")
    ] = 1.0,
    mqtt_url: Annotated[str | None, typer.Option(help="target broker (default VITALAB_MQTT_URL)")] = None,
    gym: Annotated[
        bool,
        typer.Option(
            "--gym",
            help="a gym day: members come and go (local opening hours, weekday/weekend peaks, classes, idle "
            "machines), --devices machines, members' own straps; with --api-url a kiosk checks visits in",
        ),
    ] = False,
    days: Annotated[
        float, typer.Option(min=0, help="--gym: publish this many days of history ending now first, fast")
    ] = 0.0,
    members: Annotated[int | None, typer.Option(min=1, help="--gym: members (VITALAB_SIM_MEMBERS)")] = None,
    open_hours: Annotated[
        str | None, typer.Option(help="--gym: local opening hours, e.g. 6-22 (VITALAB_SIM_OPEN_HOURS)")
    ] = None,
    visit_minutes: Annotated[
        str | None, typer.Option(help="--gym: shortest-longest visit, e.g. 20-60 (VITALAB_SIM_VISIT_MINUTES)")
    ] = None,
    strap_share: Annotated[
        float | None, typer.Option(min=0, max=1, help="--gym: share of members wearing their own strap")
    ] = None,
    check_in_share: Annotated[
        float | None, typer.Option(min=0, max=1, help="--gym: share of visits checked in at the kiosk")
    ] = None,
    api_url: Annotated[
        str | None,
        typer.Option(help="--gym: the platform's HTTP API: members registered, straps paired, check-ins"),
    ] = None,
    log_level: LogLevel = "info",
) -> None:
    """Publish a simulated gym to VITALAB_MQTT_URL (or --mqtt-url)."""
    from simulators.faults import FaultRates
    from simulators.fleet import MACHINES, MIX_ALL
    from simulators.gymfleet import MACHINE_MIX, GymConfig
    from simulators.run import SimulationPlan, gym_config
    from vitalab.platform import run_simulator
    from vitalab.wire import DeviceKind

    settings = _setup(log_level)
    if mqtt_url:
        settings = settings.model_copy(update={"mqtt_url": mqtt_url})
    try:
        values: dict[str, Any] = {
            k.strip(): int(v) if k.strip() == "storm_ticks" else float(v)
            for k, v in (kv.split("=") for kv in faults.split(",") if kv)
        }
        rates = FaultRates(**values)
    except (TypeError, ValueError) as exc:
        typer.echo(f"--faults: {exc}", err=True)
        raise typer.Exit(2) from None
    known: dict[str, DeviceKind] = {k: k for k in MIX_ALL}
    mix = mix or (",".join(MACHINE_MIX) if gym else "bike,treadmill,rower,hr_strap")
    names = [k.strip() for k in (",".join(MIX_ALL) if mix == "all" else mix).split(",") if k.strip()]
    if not names or set(names) - set(known):
        typer.echo(f"--mix: kinds are {', '.join(MIX_ALL)}", err=True)
        raise typer.Exit(2)
    kinds = tuple(known[k] for k in names if not gym or k in MACHINES)
    if not kinds:
        typer.echo(
            f"--mix: a gym needs machines ({', '.join(MACHINE_MIX)}); straps come with members", err=True
        )
        raise typer.Exit(2)
    if speed != 1.0 and duration is None:
        typer.echo("--speed other than 1 needs --duration", err=True)
        raise typer.Exit(2)
    gym_options = (days, members, open_hours, visit_minutes, strap_share, check_in_share, api_url)
    if not gym and any(x not in (None, 0.0) for x in gym_options):
        typer.echo(
            "--days, --members, --open-hours, --visit-minutes, --strap-share, --check-in-share and "
            "--api-url need --gym",
            err=True,
        )
        raise typer.Exit(2)
    config: GymConfig | None = None
    if gym:
        try:
            config = gym_config(
                settings,
                demo=False,
                open_hours=open_hours,
                visit_minutes=visit_minutes,
                members=members,
                strap_share=strap_share,
                check_in_share=check_in_share,
            )
        except ValueError as exc:
            typer.echo(f"--gym: {exc}", err=True)
            raise typer.Exit(2) from None
    plan = SimulationPlan(
        devices=settings.sim_devices if devices is None else devices,
        seed=settings.sim_seed if seed is None else seed,
        duration_s=duration,
        backfill_s=backfill + round(days * 86400),
        samples_per_message=samples_per_message,
        faults=rates,
        raw_share=raw_share,
        ant_share=ant_share,
        speed=speed,
        mix=kinds,
        class_share=class_share,
        gym=config,
        api_url=api_url,
    )
    asyncio.run(run_simulator(settings, plan))


@app.command()
def gateway(
    transport: Annotated[
        str | None, typer.Option(help="mqtt, ble, ant, comma-separated (default VITALAB_GATEWAY_TRANSPORTS)")
    ] = None,
    devices_file: Annotated[
        Path | None, typer.Option(help="TOML device list (default VITALAB_GATEWAY_DEVICES_FILE)")
    ] = None,
    log_level: LogLevel = "info",
) -> None:
    """Run a gateway: frames from BLE, ANT+ or raw MQTT topics, decoded and published to VITALAB_MQTT_URL."""
    from gateway.errors import DeviceListError, TransportUnavailable
    from gateway.run import run_gateway
    from vitalab.errors import ConfigError

    settings = _setup(log_level)
    try:
        asyncio.run(
            run_gateway(
                settings, transports=transport.split(",") if transport else None, devices_file=devices_file
            )
        )
    except (TransportUnavailable, DeviceListError, ConfigError) as exc:
        typer.echo(f"gateway: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def schema(
    out_dir: Annotated[Path, typer.Option(help="where to write the documents")] = Path("docs"),
) -> None:
    """Write the JSON Schema of the payloads and the AsyncAPI document of the topic tree."""
    from vitalab.wire.schema import write_documents

    for path in write_documents(out_dir):
        typer.echo(str(path))


@app.command()
def decode(
    char: Annotated[str, typer.Argument(help="BLE characteristic (2ad2, 0x2AD2) or ANT+ page (ant:fe:16)")],
    frame: Annotated[str, typer.Argument(metavar="HEX", help="the frame (spaces, colons, 0x allowed)")],
    model: Annotated[str | None, typer.Option(help="device model whose quirks apply")] = None,
    sample: Annotated[bool, typer.Option("--sample", help="also print the normalised wire Sample")] = False,
) -> None:
    """Decode one raw BLE/ANT+ frame and print the record as JSON."""
    from datetime import UTC, datetime

    from gateway.decode import decode_report, known_models, parse_hex
    from gateway.errors import DecodeError

    try:
        data = parse_hex(frame)
    except ValueError as exc:
        typer.echo(f"decode: HEX: {exc}", err=True)
        raise typer.Exit(2) from None
    if model is not None and model.strip().casefold() not in known_models():
        typer.echo(f"decode: unknown model {model!r}, decoding per the specification", err=True)
    try:
        report = decode_report(char, data, model=model, sample_at=datetime.now(UTC) if sample else None)
    except DecodeError as exc:
        where = "" if exc.offset is None else f" (byte {exc.offset})"
        typer.echo(f"decode: {exc.source}: {exc.detail}{where}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(report, indent=2))


def main() -> None:
    app()
