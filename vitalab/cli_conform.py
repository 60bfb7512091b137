"""``vitalab conform``: watch one device on a broker and judge it by the ingester's rules
(:mod:`vitalab.conform`). Mounted into the ``vitalab`` command by :func:`register`."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from vitalab import logs
from vitalab.errors import ConfigError
from vitalab.settings import MqttTarget, load_settings
from vitalab.wire.topics import ID_PATTERN, valid_id


def conform(
    device: Annotated[str, typer.Option(help="the device id to watch")],
    mqtt_url: Annotated[
        str | None,
        typer.Option(
            help="the broker the device publishes to, mqtt:// or mqtts://user:pass@host:port "
            "(default VITALAB_MQTT_URL)"
        ),
    ] = None,
    site: Annotated[str | None, typer.Option(help="the site the device belongs to (default: any)")] = None,
    seconds: Annotated[float, typer.Option(min=1, help="how long to watch")] = 60.0,
    max_skew_s: Annotated[
        float, typer.Option(min=0, help="largest accepted clock skew (receive - device time), seconds")
    ] = 2.0,
    max_gap_s: Annotated[
        float | None,
        typer.Option(
            min=0, help="largest accepted interval between samples (default: 3 x the device's period)"
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")] = "warning",
) -> None:
    """Watch one device (or the simulator standing in for it) and print a conformance report: every message
    judged by the ingester's own rules, sample rate and gaps, seq continuity, clock skew, retained meta and
    state, and what stands for its last will. Exit 0: conformant; 1: violations; 2: cannot run."""
    import aiomqtt

    from ingest.service import router_from_settings
    from vitalab.conform import Rules, check, filters, watch

    logs.configure(log_level)
    try:
        settings = load_settings()
    except ValueError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None
    url = mqtt_url or settings.mqtt_url
    if not url:
        typer.echo("conform: give --mqtt-url (or set VITALAB_MQTT_URL)", err=True)
        raise typer.Exit(2)
    for what, value in (("--device", device), ("--site", site)):
        if value is not None and not valid_id(value):
            typer.echo(f"conform: {what} {value!r} must match {ID_PATTERN}", err=True)
            raise typer.Exit(2)
    try:
        target = MqttTarget.parse(url)
    except ConfigError as exc:
        typer.echo(f"conform: --mqtt-url: {exc}", err=True)
        raise typer.Exit(2) from None

    def ready() -> None:
        typer.echo(
            f"watching {', '.join(filters(device, site))} on {target.url()} for {seconds:g} s", err=True
        )

    ca_file = str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None
    try:
        observed, started, ended = asyncio.run(
            watch(target, device, site, seconds, on_ready=ready, ca_file=ca_file)
        )
    except aiomqtt.MqttError as exc:
        typer.echo(f"conform: broker {target.url()}: {exc}", err=True)
        raise typer.Exit(2) from None
    report = check(
        observed,
        device=device,
        site=site,
        started_at=started,
        ended_at=ended,
        router=router_from_settings(settings),
        rules=Rules(max_skew_s=max_skew_s, max_gap_s=max_gap_s),
    )
    typer.echo(json.dumps(report.as_dict(), indent=2) if json_out else report.render())
    raise typer.Exit(0 if report.ok else 1)


def register(app: typer.Typer) -> None:
    """Mount ``conform`` into the ``vitalab`` command."""
    app.command("conform")(conform)


def main() -> None:
    """``python -m vitalab.cli_conform``: the command on its own (before it is mounted)."""
    app = typer.Typer(add_completion=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
