"""``vitalab export``: research exports from the command line (mounted by :mod:`vitalab.cli` as
``app.add_typer(cli_export.app, name="export")``).

``vitalab export run STUDY`` queues an export job like the API does (who asked: ``cli:<user>`` unless
``--as``) and runs it at once in this process with a progress bar, into ``--out DIR`` (created; must be new or
empty) or the export directory the API serves from. Consent, pseudonyms, formats and the manifest are the
same as through the API. ``vitalab export site SITE`` does the same for a site's aggregates (gym operators:
utilisation, occupancy, suppressed vitality over ``--from``/``--to`` local days). ``vitalab export worker``
runs queued jobs (of both kinds) until stopped; ``vitalab export status`` shows a job.
"""

from __future__ import annotations

import getpass
import json
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import psycopg
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vitalab import logs
from vitalab.settings import Settings, load_settings

if TYPE_CHECKING:
    from api.exports.engine import ExportParams
    from api.exports.site import SiteExportParams

app = typer.Typer(no_args_is_help=True, help="Research exports (consented, pseudonymised study data).")
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")]
OutDir = Annotated[Path | None, typer.Option(help="write into this directory (new or empty)")]
RequestedBy = Annotated[str | None, typer.Option("--as", help="who asks (recorded in the manifest)")]


def _clock() -> datetime:
    return datetime.now(UTC)


def _setup(log_level: str) -> tuple[Settings, str]:
    logs.configure(log_level)
    try:
        settings = load_settings()
    except ValueError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not settings.database_url:
        typer.echo("VITALAB_DATABASE_URL is not set", err=True)
        raise typer.Exit(2)
    return settings, settings.database_url


class _Bar:
    """Engine progress -> the job row (the wrapped progress) and a terminal progress bar."""

    def __init__(self, inner: Any, bar: Progress) -> None:
        self.inner, self.bar = inner, bar
        self.task = bar.add_task("counting rows", total=None)

    def totals(self, rows: Mapping[str, int]) -> None:
        self.inner.totals(rows)
        self.bar.update(self.task, total=sum(rows.values()))

    def step(self, dataset: str) -> None:
        self.inner.step(dataset)
        self.bar.update(self.task, description=dataset)

    def advance(self, rows: int) -> None:
        self.inner.advance(rows)
        self.bar.advance(self.task, rows)


@app.command("run")
def run(
    study: Annotated[str, typer.Argument(help="the study id")],
    dataset: Annotated[
        list[str], typer.Option("--dataset", "-d", help="sessions, samples, rr, daily, participants (repeat)")
    ],
    fmt: Annotated[str, typer.Option("--format", "-f", help="csv, parquet, fhir-r4, omh")] = "csv",
    since: Annotated[
        datetime | None, typer.Option(help="from this time (UTC unless an offset is given)")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="up to this time (exclusive)")] = None,
    pseudonym: Annotated[list[str] | None, typer.Option(help="only these pseudonyms (repeat)")] = None,
    gzip: Annotated[bool, typer.Option(help="gzip the csv / ndjson files")] = False,
    out: OutDir = None,
    requested_by: RequestedBy = None,
    log_level: LogLevel = "warning",
) -> None:
    """Export a study's consented data now, with a progress bar; print the manifest's file list."""
    from api.exports.engine import ExportError, ExportParams

    settings, url = _setup(log_level)

    def utc(t: datetime | None) -> datetime | None:
        return None if t is None else (t if t.tzinfo else t.replace(tzinfo=UTC))

    try:
        params = ExportParams.canonical(
            dataset,  # type: ignore[arg-type]  # checked below against the known names
            fmt,  # type: ignore[arg-type]
            utc(since),
            utc(until),
            pseudonym or None,
            gzip,
        )
    except (ExportError, KeyError) as exc:
        typer.echo(f"bad export request: {exc}", err=True)
        raise typer.Exit(2) from None
    _queue_and_run(url, settings, study, params, requested_by, out)


@app.command("site")
def site_export(
    site: Annotated[str, typer.Argument(help="the site id")],
    datasets: Annotated[
        list[str],
        typer.Option("--datasets", "-d", help="utilisation, occupancy, vitality (repeat or comma-separate)"),
    ],
    since: Annotated[datetime, typer.Option("--from", formats=["%Y-%m-%d"], help="first local day")],
    until: Annotated[datetime, typer.Option("--to", formats=["%Y-%m-%d"], help="last local day (included)")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="csv, parquet")] = "csv",
    gzip: Annotated[bool, typer.Option(help="gzip the csv files")] = False,
    slot_min: Annotated[int, typer.Option(help="occupancy slot in minutes (5, 10, 15, 20, 30, 60)")] = 15,
    breakdown: Annotated[str, typer.Option(help="vitality groups: none, sex, age_band")] = "none",
    k: Annotated[
        int | None, typer.Option(help="vitality suppression threshold (never below the configured one)")
    ] = None,
    out: OutDir = None,
    requested_by: RequestedBy = None,
    log_level: LogLevel = "warning",
) -> None:
    """Export a site's aggregates (utilisation, occupancy, suppressed vitality) now, with a progress bar;
    print the manifest's file list."""
    from api.exports.engine import ExportError
    from api.exports.site import SiteExportParams

    settings, url = _setup(log_level)
    try:
        params = SiteExportParams.canonical(
            [d.strip() for item in datasets for d in item.split(",") if d.strip()],
            fmt,
            since.date(),
            until.date(),
            gzip=gzip,
            slot_min=slot_min,
            breakdown=breakdown,
            k=max(settings.analytics_k_anonymity, k or 0),
        )
    except ExportError as exc:
        typer.echo(f"bad export request: {exc}", err=True)
        raise typer.Exit(2) from None
    _queue_and_run(url, settings, site, params, requested_by, out)


def _queue_and_run(
    url: str,
    settings: Settings,
    subject_id: str,
    params: ExportParams | SiteExportParams,
    requested_by: str | None,
    out: Path | None,
) -> None:
    """Queue a job of the study (or, for site export parameters, the site) ``subject_id`` and run it in this
    process with a progress bar, into ``out`` (new or empty) or the export directory; print its files."""
    from api.exports import jobs
    from api.exports.site import SiteExportParams

    if out is not None and out.exists() and any(out.iterdir()):
        typer.echo(f"{out} is not empty", err=True)
        raise typer.Exit(2)
    export_id = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            jobs.create(
                conn,
                export_id=export_id,
                subject_id=subject_id,
                requested_by=requested_by or f"cli:{getpass.getuser()}",
                requested_at=_clock(),
                params=params,
                max_attempts=1,
            )
        except psycopg.errors.ForeignKeyViolation:
            what = "site" if isinstance(params, SiteExportParams) else "study"
            typer.echo(f"no {what} {subject_id!r}", err=True)
            raise typer.Exit(2) from None
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bar:
        worker = jobs.Worker(
            url,
            settings.exports_root(),
            clock=_clock,
            lease_s=settings.export_lease_s,
            on_progress=lambda inner: _Bar(inner, bar),
        )
        outcome = worker.run_one(export_id, target=out)
    if outcome is None or outcome.status != "succeeded":
        typer.echo(f"export {export_id} failed: {outcome.error if outcome else 'not claimed'}", err=True)
        raise typer.Exit(1)
    assert outcome.directory is not None
    manifest = json.loads((outcome.directory / "manifest.json").read_text())
    typer.echo(f"export {export_id} in {outcome.directory}")
    for f in manifest["files"]:
        typer.echo(f"  {f['name']}: {f['rows'] if f['rows'] is not None else '-'} rows, {f['bytes']} bytes")


@app.command("worker")
def worker(
    poll_s: Annotated[float, typer.Option(help="seconds between looks for new jobs")] = 2.0,
    log_level: LogLevel = "info",
) -> None:
    """Run queued export jobs until Ctrl-C (several workers may run: each job is claimed once)."""
    from api.exports.jobs import Worker

    settings, url = _setup(log_level)
    stop = threading.Event()
    try:
        Worker(url, settings.exports_root(), clock=_clock, lease_s=settings.export_lease_s).run_forever(
            stop, poll_s
        )
    except KeyboardInterrupt:
        stop.set()


@app.command("status")
def status(export_id: Annotated[uuid.UUID, typer.Argument()], log_level: LogLevel = "warning") -> None:
    """Print an export job as JSON."""
    _, url = _setup(log_level)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT json_build_object('export_id', export_id, 'study_id', study_id, 'status', status, "
            "'attempts', attempts, 'rows_done', rows_done, 'rows_total', rows_total, 'error', error, "
            "'directory', directory, 'kind', kind, 'site_id', site_id) "
            "FROM export_jobs WHERE export_id = %s",
            (export_id,),
        ).fetchone()
    if row is None:
        typer.echo(f"no export {export_id}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(row[0]))
