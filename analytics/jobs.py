"""`vitalab analytics run`: compute what is new since the last run, in one transaction, idempotently.

What is new. With every batch, in the same transaction as its rows, the ingester appends one row to
``ingest_batches``: per device and UTC day, the samples it received and the device-time range they cover.
Triggers queue in ``analytics_dirty`` the ranges of new device events (training status, errors, offline) and
of check-ins that were added, changed or removed. A run deletes (consumes) the ``ingest_batches`` and
``analytics_dirty`` rows it can see, inside its own transaction, and recomputes the ranges they name; rows
that commit while it works are invisible to it and stay for the next run. Nothing depends on clocks or on
commit order (a batch that waited out a database outage is still seen), and late data, however old its
device time, re-opens the sessions and days it falls into. If the run fails, its transaction rolls back and
the rows are consumed again next time. Rows written without the ingester (manual SQL, imports) are not
counted: ``vitalab analytics run --full`` recomputes everything, as do the first run and a run after
:data:`~analytics.session_metrics.ALGORITHM_VERSION` changed.

A run, step by step (each step a function of its own):

1. plan (:mod:`analytics.job_plan`): collect the new ranges, check each (a range dated before 2000 or in
   the future, of an unknown device or of a site without a usable time zone is set aside), merge them
   into windows per site (padded by an hour, never across a local midnight);
2. per window (:mod:`analytics.job_window`): read the site's samples, events and check-ins, assemble
   sessions (widening the window until every session's edges are proven), compute the finished sessions'
   metrics (:mod:`analytics.job_sessions`) and make the stored sessions of the window equal to them;
   **open** sessions (activity less than ``gap_s`` before ``now``) are not stored but queued in
   ``analytics_dirty`` for the next run; recompute ``device_hourly`` (utilisation) for the window's hours;
3. per day (:mod:`analytics.job_daily`): for every participant whose sessions changed, the whole daily
   series (``participant_daily``, written from the first changed day on), and ``device_quality_daily``
   for the complete UTC days (before today) whose samples changed. When the UTC day changes, every
   participant's series is extended to today and yesterday's device quality is computed;
4. fleet (:mod:`analytics.fleet`): the machines' odometers and running hours for the windows' hours, and
   the alerts as of ``now`` (with their webhook deliveries queued in the outbox);
5. record (:mod:`analytics.job_runs`): the rows set aside, the run's outcome and the job's state.

One bad row never stops the job for everyone: every window, participant and device-day is computed in a
savepoint, and one whose data cannot be processed (:data:`analytics.job_runs.DATA_ERRORS`) is rolled back
and set aside in ``analytics_rejects`` with its reason while the rest is computed. Every run that was not
skipped leaves a row in ``analytics_job_runs`` (``ok``, or ``failed`` with the error after its rollback),
which :func:`job_health` reads for the API's ``/health``.

The clock. A run computes "as of" the ``now`` it is given (open sessions, today, the window ends) and never
reads the clock itself; :func:`run_periodically` reads its ``clock`` once per run.

Concurrency. The run holds a transaction-level advisory lock: a second run waits (``wait=True``) or returns
at once with ``skipped`` (``wait=False``, what the periodic trigger uses), and then finds nothing new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

import httpx
import psycopg

from analytics import fleet, session_metrics, store
from analytics.errors import AnalyticsJobError
from analytics.job_daily import device_quality, participant_daily
from analytics.job_plan import (
    EARLIEST,
    Range,
    Window,
    WindowConfig,
    accepted,
    collect_work,
    plan_windows,
    quality_days,
    site_timezones,
)
from analytics.job_runs import (
    JobHealth,
    Reject,
    isolated,
    job_health,
    job_health_async,
    reason_of,
    record_run,
    set_aside,
)
from analytics.job_window import GrowConfig, WindowResult, process_window
from analytics.sessions import AssemblyParams

__all__ = [
    "DEFAULT_INTERVAL_S",
    "JOB",
    "LOCK_KEY",
    "JobConfig",
    "JobHealth",
    "RunReport",
    "interval_of",
    "job_health",
    "job_health_async",
    "run_once",
    "run_periodically",
]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Told (windows done, windows in this run) after each window."""

LOCK_KEY: Final[int] = 0x7669_7461_6E61  # "vitana"
JOB: Final[str] = "default"
DEFAULT_INTERVAL_S: Final[float] = 60.0


@dataclass(frozen=True, slots=True)
class JobConfig:
    assembly: AssemblyParams = field(default_factory=AssemblyParams)
    pad_s: float = 3600.0
    """Margin loaded around every dirty range before assembling."""
    merge_s: float = 6 * 3600.0
    """Dirty ranges of one site closer than this are processed as one window."""
    chunk_s: float = 86_400.0
    """Longer windows are processed in chunks of this length (bounded memory on a full run)."""
    max_extend_s: float = 2 * 86_400.0
    """A window grows at most this far beyond its chunk to find a session's boundary."""
    fleet: fleet.FleetConfig = field(default_factory=fleet.FleetConfig)
    """Odometers, alerts and their webhooks (:mod:`analytics.fleet`)."""

    @property
    def windows(self) -> WindowConfig:
        return WindowConfig(pad_s=self.pad_s, merge_s=self.merge_s, chunk_s=self.chunk_s)

    @property
    def grow(self) -> GrowConfig:
        return GrowConfig(pad_s=self.pad_s, max_extend_s=self.max_extend_s)


@dataclass
class RunReport:
    skipped: bool = False
    full: bool = False
    windows: int = 0
    samples_read: int = 0
    sessions_written: int = 0
    sessions_deleted: int = 0
    sessions_final: int = 0
    sessions_open: int = 0
    participants: int = 0
    daily_rows: int = 0
    hourly_rows: int = 0
    quality_rows: int = 0
    usage_rows: int = 0
    counters: int = 0
    alerts_opened: int = 0
    alerts_closed: int = 0
    webhooks_queued: int = 0
    set_aside: int = 0
    """rows this run could not process, recorded in ``analytics_rejects``"""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, w: WindowResult) -> None:
        self.samples_read += w.samples_read
        self.sessions_written += w.sessions_written
        self.sessions_deleted += w.sessions_deleted
        self.sessions_final += w.sessions_final
        self.sessions_open += w.sessions_open
        self.hourly_rows += w.hourly_rows


# ---------------------------------------------------------------------------------------------- entry points


def run_once(
    conn_or_url: psycopg.Connection[Any] | str,
    *,
    now: datetime,
    full: bool = False,
    wait: bool = True,
    config: JobConfig = JobConfig(),
    progress: Progress | None = None,
) -> RunReport:
    """One incremental run as of ``now`` (module docstring). Commits on success; on error nothing is changed
    but the ``failed`` row in ``analytics_job_runs``, and the error is raised. ``progress`` is told (windows
    done, windows in this run) after each window."""
    if now.tzinfo is None:
        raise AnalyticsJobError("now", "must be timezone-aware")
    t0 = time.perf_counter()
    with _connection(conn_or_url) as conn:
        if conn.autocommit:
            raise AnalyticsJobError("connection", "needs a connection with autocommit off (one transaction)")
        try:
            report = _run(conn, now, full, wait, config, progress)
        except Exception as exc:
            conn.rollback()
            _record_failure(conn, now, time.perf_counter() - t0, exc)
            raise
        except BaseException:
            conn.rollback()
            raise
        if report.skipped:
            conn.rollback()
        else:
            report.seconds = time.perf_counter() - t0
            _record_success(conn, now, report)
            conn.commit()
    logger.info("analytics run: %s", report.as_dict())
    return report


def interval_of(configured: float | None, *, default: float | None) -> float | None:
    """The periodic trigger's interval: the configured one (0 = off), else ``default`` (None = off)."""
    if configured is None:
        return default
    return configured if configured > 0 else None


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def run_periodically(
    database_url: str,
    interval_s: float,
    *,
    clock: Callable[[], datetime] = _utc_now,
    config: JobConfig = JobConfig(),
) -> None:
    """Run the job every ``interval_s`` seconds as of ``clock()`` until cancelled (``vitalab up``,
    ``vitalab ingest``). A run that finds another one in progress skips; a failed run is logged (and
    recorded in ``analytics_job_runs``) and the next one tries again, so the service carrying the trigger
    never stops because of it. After every run the alert webhooks due are posted in a task of their own
    (:func:`analytics.fleet.deliver_due`): a slow receiver never holds up the next run."""
    deliveries: asyncio.Task[fleet.DeliveryReport] | None = None
    async with httpx.AsyncClient() as client:
        try:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    report = await asyncio.to_thread(
                        run_once, database_url, now=clock(), wait=False, config=config
                    )
                except Exception:  # a failed run must not stop the service that triggers it
                    logger.exception("analytics run failed; retrying in %.0f s", interval_s)
                    report = None
                if report is not None and report.skipped:
                    logger.info("analytics run skipped: another run is in progress")
                if deliveries is None or deliveries.done():
                    deliveries = asyncio.create_task(
                        fleet.deliver_due(database_url, client, now=clock(), cfg=config.fleet)
                    )
                    deliveries.add_done_callback(_delivered)
        finally:
            if deliveries is not None and not deliveries.done():
                deliveries.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await deliveries


def _delivered(task: asyncio.Task[fleet.DeliveryReport]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.error("alert webhooks: delivery failed: %s", reason_of(exc))
    elif task.result().delivered or task.result().failed:
        logger.info("alert webhooks: %s", task.result())


@contextlib.contextmanager
def _connection(conn_or_url: psycopg.Connection[Any] | str) -> Iterator[psycopg.Connection[Any]]:
    if isinstance(conn_or_url, str):
        with psycopg.connect(conn_or_url) as conn:
            yield conn
    else:
        yield conn_or_url


def _record_success(conn: psycopg.Connection[Any], now: datetime, report: RunReport) -> None:
    result = report.as_dict()
    record_run(
        conn,
        job=JOB,
        started_at=now,
        seconds=report.seconds,
        error=None,
        rows_set_aside=report.set_aside,
        report=result,
    )
    store.save_job_result(conn, JOB, report.seconds, result)


def _record_failure(conn: psycopg.Connection[Any], now: datetime, seconds: float, exc: Exception) -> None:
    """Record the failed run in a transaction of its own (the run's was rolled back)."""
    logger.error("analytics run failed: %s", reason_of(exc))
    try:
        record_run(conn, job=JOB, started_at=now, seconds=seconds, error=exc, rows_set_aside=0, report={})
        conn.commit()
    except psycopg.Error:
        logger.exception("could not record the failed analytics run")
        with contextlib.suppress(psycopg.Error):
            conn.rollback()


# ---------------------------------------------------------------------------------------------- one run


def _run(
    conn: psycopg.Connection[Any],
    now: datetime,
    full: bool,
    wait: bool,
    cfg: JobConfig,
    progress: Progress | None = None,
) -> RunReport:
    if not _lock(conn, wait):
        return RunReport(skipped=True)
    version = session_metrics.ALGORITHM_VERSION
    state = store.job_state(conn, JOB)
    report = RunReport(full=full or state is None or state.algorithm_version != version)
    today = now.astimezone(UTC).date()
    daily_through = state.daily_through if state else None

    work = collect_work(conn, now, full=report.full)
    site_of = store.device_sites(conn)
    tz_of, rejects = site_timezones(conn)
    ranges, range_rejects = accepted(work, site_of, tz_of, now)
    rejects += range_rejects
    windows = plan_windows(ranges, site_of, tz_of, now.timestamp(), cfg.windows)
    participants, open_notes = _run_windows(
        conn, windows, tz_of, now, version, cfg, report, rejects, progress
    )

    quality_keys = _quality_keys(conn, work.quality_keys, ranges, daily_through, today)
    participants = _participants_to_update(conn, participants, report.full, daily_through, today)
    report.participants = len(participants)
    report.daily_rows = _run_daily(conn, participants, now, version, rejects)
    report.quality_rows = _run_quality(conn, sorted(quality_keys), site_of, rejects)
    fleet_report, fleet_rejects = fleet.run_step(conn, windows, now, cfg.fleet)
    rejects += fleet_rejects
    report.usage_rows, report.counters = fleet_report.usage_rows, fleet_report.counters
    report.alerts_opened, report.alerts_closed = fleet_report.alerts_opened, fleet_report.alerts_closed
    report.webhooks_queued = fleet_report.webhooks_queued

    store.delete_notes(conn, work.notes)
    store.note_dirty(conn, open_notes, "open")
    report.set_aside = set_aside(conn, rejects, now)
    store.save_job_state(conn, JOB, version, today, now)
    return report


def _lock(conn: psycopg.Connection[Any], wait: bool) -> bool:
    """Take the job's transaction-level advisory lock (waiting for it, or not); whether it was taken."""
    if wait:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        return True
    got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_KEY,)).fetchone()
    return bool(got and got[0])


def _run_windows(
    conn: psycopg.Connection[Any],
    windows: list[Window],
    tz_of: dict[str, ZoneInfo],
    now: datetime,
    version: str,
    cfg: JobConfig,
    report: RunReport,
    rejects: list[Reject],
    progress: Progress | None = None,
) -> tuple[dict[str, datetime], list[tuple[str, datetime, datetime]]]:
    """Process every window in a savepoint of its own; a window that fails on its data is set aside.
    Returns the participants whose sessions changed (with their earliest changed start) and the ranges of
    sessions still open."""
    participants: dict[str, datetime] = {}
    open_notes: list[tuple[str, datetime, datetime]] = []
    for window in windows:
        done: list[WindowResult] = []

        def work(ws: Sequence[Window], out: list[WindowResult] = done) -> None:
            w = ws[0]
            out.append(
                process_window(
                    conn,
                    w.site_id,
                    w.lo_s,
                    w.hi_s,
                    tz=tz_of[w.site_id],
                    now=now,
                    version=version,
                    params=cfg.assembly,
                    grow=cfg.grow,
                )
            )

        report.windows += 1
        rejects += isolated(conn, [window], work, _window_reject)
        for result in done:
            report.add(result)
            rejects += result.rejects
            open_notes += result.open_ranges
            for pid, started in result.participants.items():
                if pid not in participants or started < participants[pid]:
                    participants[pid] = started
        if progress is not None:
            progress(report.windows, len(windows))
    return participants, open_notes


def _window_reject(w: Window, exc: BaseException) -> Reject:
    lo, hi = store.to_datetime(w.lo_s), store.to_datetime(w.hi_s)
    return Reject(
        "window",
        f"{w.site_id}/{lo.isoformat()}/{hi.isoformat()}",
        reason_of(exc),
        {"site_id": w.site_id, "from": lo.isoformat(), "to": hi.isoformat()},
    )


def _quality_keys(
    conn: psycopg.Connection[Any],
    received: set[tuple[str, date]],
    ranges: list[Range],
    daily_through: date | None,
    today: date,
) -> set[tuple[str, date]]:
    """Device-days whose quality to (re)compute: complete UTC days with new samples, every day of a full
    run's ranges, and the days since the last rollover."""
    keys = set(received) | quality_days([r for r in ranges if r.source == "samples"], today)
    if daily_through is not None and daily_through < today:
        keys |= set(store.received_device_days(conn, daily_through, today))
    return {k for k in keys if EARLIEST.date() <= k[1] < today}


def _participants_to_update(
    conn: psycopg.Connection[Any],
    changed: dict[str, datetime],
    full: bool,
    daily_through: date | None,
    today: date,
) -> dict[str, datetime]:
    """Participants whose daily series to rewrite, each from when: those with changed sessions; on a new
    UTC day every participant with a series (from the last day written); on a full run everybody."""
    out = dict(changed)
    if daily_through is None or daily_through < today:
        since = datetime.combine(daily_through or today, datetime.min.time(), UTC)
        for pid in store.participants_with_daily_rows(conn):
            out.setdefault(pid, since)
    if full:
        for pid in store.participants_with_results(conn):
            out[pid] = datetime(1970, 1, 1, tzinfo=UTC)
    return out


def _run_daily(
    conn: psycopg.Connection[Any],
    participants: dict[str, datetime],
    now: datetime,
    version: str,
    rejects: list[Reject],
) -> int:
    """Participants' daily series, narrowing a failure down to the participant that caused it."""
    written = [0]

    def work(pids: Sequence[str]) -> None:
        written[0] += participant_daily(conn, {p: participants[p] for p in pids}, now, version)

    rejects += isolated(
        conn, sorted(participants), work, lambda p, exc: Reject("participant_daily", p, reason_of(exc))
    )
    return written[0]


def _run_quality(
    conn: psycopg.Connection[Any],
    keys: list[tuple[str, date]],
    site_of: dict[str, str],
    rejects: list[Reject],
) -> int:
    """Device-day quality, narrowing a failure down to the device-day that caused it."""
    written = [0]

    def work(ks: Sequence[tuple[str, date]]) -> None:
        written[0] += device_quality(conn, list(ks), site_of)

    rejects += isolated(
        conn, keys, work, lambda k, exc: Reject("device_quality_daily", f"{k[0]}/{k[1]}", reason_of(exc))
    )
    return written[0]
