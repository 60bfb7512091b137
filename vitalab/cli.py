"""The ``vitalab`` command line: options in, a runner of the composition root called (:mod:`vitalab.platform`
for `vitalab up`, :mod:`vitalab.runners` for the others), failures out as one line on stderr and an exit
status (2: a wrong setting, option or URL; 1: a service unreachable or refusing; 130: interrupted). Settings
come from ``VITALAB_*`` environment variables; options override them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

import vitalab
from vitalab import cli_conform, cli_export, cli_keys, cli_participants, logs
from vitalab.errors import ConfigError
from vitalab.settings import Settings, load_settings

logger = logging.getLogger(__name__)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="vitalab: smart-gym telemetry for living labs",
    pretty_exceptions_show_locals=False,  # locals hold settings, and settings hold passwords
)
db_app = typer.Typer(no_args_is_help=True, help="The database: schema, URL, psql.")
app.add_typer(db_app, name="db")
app.add_typer(cli_keys.app, name="keys")
app.add_typer(cli_export.app, name="export")
app.add_typer(cli_participants.app, name="participants")
cli_conform.register(app)

LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")]


def _version(show: bool) -> None:
    if show:
        typer.echo(f"vitalab {vitalab.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """vitalab: smart-gym telemetry for living labs."""


def _fail(command: str, message: str, code: int) -> typer.Exit:
    typer.echo(f"vitalab {command}: {message}", err=True)
    return typer.Exit(code)


def _setup(command: str, log_level: str, **overrides: Any) -> Settings:
    """Logging, then the settings (options in ``overrides``), with the URLs checked: a wrong value is one
    line and exit status 2."""
    from pydantic import ValidationError

    from vitalab.failures import USAGE, explain, settings_failure

    logs.configure(log_level)
    try:
        settings = load_settings()
        if overrides:
            settings = Settings.model_validate({**settings.model_dump(), **overrides})
        settings.mqtt_target()  # ConfigError for a wrong VITALAB_MQTT_URL
        if settings.database_url:
            _check_database_url(settings.database_url)
    except ValidationError as exc:
        raise _fail(command, settings_failure(exc).message, USAGE) from None
    except ConfigError as exc:
        failure = explain(exc)
        assert failure is not None
        raise _fail(command, failure.message, failure.exit_code) from None
    return settings


def _check_database_url(url: str) -> None:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError("database_url", " ".join(str(exc).split())) from None


@contextlib.contextmanager
def _failures(command: str, settings: Settings) -> Iterator[None]:
    """Around a command's work: an error a user can act on becomes one line (its traceback is logged at
    debug level) and an exit status; anything else is a bug and propagates with its traceback."""
    from vitalab.failures import INTERRUPTED, explain

    try:
        yield
    except KeyboardInterrupt:
        raise _fail(command, "interrupted", INTERRUPTED) from None
    except Exception as exc:
        target = None
        with contextlib.suppress(ConfigError):
            target = settings.mqtt_target()
        failure = explain(exc, mqtt_url=target.url() if target else None)
        if failure is None:
            raise
        logger.debug("vitalab %s failed", command, exc_info=True)
        raise _fail(command, failure.message, failure.exit_code) from None


@app.command()
def up(log_level: LogLevel = "warning") -> None:
    """Run the whole platform: database, broker, ingester, API and a simulated gym.

    With VITALAB_DATABASE_URL / VITALAB_MQTT_URL unset, PostgreSQL and the broker are embedded.
    """
    settings = _setup("up", log_level)
    with _failures("up", settings):
        from vitalab.platform import run_platform

        asyncio.run(run_platform(settings))


@db_app.command("migrate")
def db_migrate(log_level: LogLevel = "info") -> None:
    """Apply the schema migrations (idempotent)."""
    from vitalab.runners import migrate_database

    settings = _setup("db migrate", log_level)
    with _failures("db migrate", settings):
        report = migrate_database(settings)
    typer.echo(json.dumps({"applied": report.applied, "timescale": report.timescale_version}))


@db_app.command("url")
def db_url(log_level: LogLevel = "warning") -> None:
    """Print the database's connection URL: VITALAB_DATABASE_URL, or the embedded server's while `vitalab up`
    runs it (for psql, pg_dump, a notebook)."""
    from vitalab.runners import database_url

    settings = _setup("db url", log_level)
    with _failures("db url", settings):
        typer.echo(database_url(settings))


@db_app.command("shell", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def db_shell(ctx: typer.Context, log_level: LogLevel = "warning") -> None:
    """Open psql on the database (the embedded one is started for the session if `vitalab up` is not
    running). Arguments after `--` go to psql:
    `vitalab db shell -- -c 'SELECT count(*) FROM samples'`."""
    from vitalab.runners import database_shell

    settings = _setup("db shell", log_level)
    with _failures("db shell", settings):
        code = database_shell(settings, ctx.args)
    raise typer.Exit(code)


@app.command()
def ingest(log_level: LogLevel = "info") -> None:
    """Run an ingester against VITALAB_MQTT_URL and VITALAB_DATABASE_URL."""
    from vitalab.runners import run_ingest

    settings = _setup("ingest", log_level)
    with _failures("ingest", settings):
        asyncio.run(run_ingest(settings))


analytics_app = typer.Typer(no_args_is_help=True, help="Sessions, per-participant and per-site metrics.")
app.add_typer(analytics_app, name="analytics")


@analytics_app.command("run")
def analytics_run(
    full: Annotated[bool, typer.Option(help="recompute everything, not only what is new")] = False,
    log_level: LogLevel = "info",
) -> None:
    """Compute what is new since the last run (sessions, daily series, utilisation, quality); print a report.
    Runs wait for each other; `--full` recomputes everything. A progress bar shows on a terminal."""
    from vitalab.runners import run_analytics

    settings = _setup("analytics run", log_level)
    with _failures("analytics run", settings):
        report = run_analytics(settings, full=full)
    typer.echo(json.dumps(report.as_dict()))


@app.command()
def api(log_level: LogLevel = "info") -> None:
    """Serve the HTTP API on VITALAB_API_HOST:VITALAB_API_PORT."""
    from vitalab.runners import serve_api

    settings = _setup("api", log_level)
    with _failures("api", settings):
        serve_api(settings, log_level)


@app.command()
def simulate(
    devices: Annotated[int | None, typer.Option(help="fleet size (default VITALAB_SIM_DEVICES)")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default VITALAB_SIM_SEED)")] = None,
    duration: Annotated[
        float | None,
        typer.Option(min=0, help="seconds of live data, after the history (default: until Ctrl-C)"),
    ] = None,
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
    api_key: Annotated[
        str | None,
        typer.Option(envvar="VITALAB_API_KEY", help="--api-url: the site's kiosk key"),
    ] = None,
    log_level: LogLevel = "info",
) -> None:
    """Publish a simulated gym to VITALAB_MQTT_URL (or --mqtt-url). History (--backfill, --days) shows a
    progress bar on a terminal."""
    from simulators.faults import FaultRates
    from simulators.fleet import MACHINES, MIX_ALL
    from simulators.gymfleet import MACHINE_MIX, GymConfig
    from simulators.run import SimulationPlan, gym_config
    from vitalab.runners import run_simulator
    from vitalab.wire import DeviceKind

    settings = _setup("simulate", log_level, **({"mqtt_url": mqtt_url} if mqtt_url else {}))

    def usage(message: str) -> typer.Exit:
        return _fail("simulate", message, 2)

    try:
        values: dict[str, Any] = {
            k.strip(): int(v) if k.strip() == "storm_ticks" else float(v)
            for k, v in (kv.split("=") for kv in faults.split(",") if kv)
        }
        rates = FaultRates(**values)
    except (TypeError, ValueError) as exc:
        raise usage(f"--faults: {exc}") from None
    known: dict[str, DeviceKind] = {k: k for k in MIX_ALL}
    mix = mix or (",".join(MACHINE_MIX) if gym else "bike,treadmill,rower,hr_strap")
    names = [k.strip() for k in (",".join(MIX_ALL) if mix == "all" else mix).split(",") if k.strip()]
    if not names or set(names) - set(known):
        raise usage(f"--mix: kinds are {', '.join(MIX_ALL)}")
    kinds = tuple(known[k] for k in names if not gym or k in MACHINES)
    if not kinds:
        raise usage(f"--mix: a gym needs machines ({', '.join(MACHINE_MIX)}); straps come with members")
    if speed != 1.0 and duration is None:
        raise usage("--speed other than 1 needs --duration")
    gym_options = (days, members, open_hours, visit_minutes, strap_share, check_in_share, api_url)
    if not gym and any(x not in (None, 0.0) for x in gym_options):
        raise usage(
            "--days, --members, --open-hours, --visit-minutes, --strap-share, --check-in-share and "
            "--api-url need --gym"
        )
    if api_url is not None:
        parts = urlsplit(api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise usage(f"--api-url: an http:// or https:// URL with a host, got {api_url!r}")
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
            raise usage(f"--gym: {exc}") from None
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
        api_key=api_key,
        start=settings.sim_start if gym else None,
    )
    with _failures("simulate", settings):
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
    """Run a gateway: frames from BLE, ANT+ or raw MQTT topics, decoded and published to VITALAB_MQTT_URL.
    While the broker cannot be reached it keeps buffering (store and forward) and says so in its log."""
    from vitalab.runners import run_gateway_service

    settings = _setup("gateway", log_level)
    with _failures("gateway", settings):
        asyncio.run(
            run_gateway_service(
                settings, transports=transport.split(",") if transport else None, devices_file=devices_file
            )
        )


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
