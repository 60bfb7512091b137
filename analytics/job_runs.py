"""The analytics job's record of itself: runs and their outcome, rows set aside, and the job's health.

Light on purpose (psycopg only, no NumPy/SciPy): the API's ``/health`` imports :func:`job_health_async`.

Rows set aside. A row the job cannot process (a dirty range dated year 1, a check-in outside the job's time
domain, a site whose time zone does not exist, a window whose computation raises on its data) is recorded in
``analytics_rejects`` with its identity and the reason, the rest of the run goes on, and the run counts it
in ``rows_set_aside``. :func:`isolated` runs one unit of work in a savepoint so that a failure on its data
rolls back that unit only (see :data:`DATA_ERRORS` for what counts as a failure on the data; anything else,
e.g. a lost database connection, fails the run).

Runs. Every run that was not skipped leaves one ``analytics_job_runs`` row: ``ok`` (written with the run's
own results, in its transaction) or ``failed`` (written after the rollback, with the error). Its times come
from the clock the run was given plus a monotonic duration; nothing here reads the wall clock.

Health (:func:`job_health`, from the runs of the last ``window``): ``never_run``, ``ok``, ``degraded`` (the
last run succeeded but set rows aside), ``failing`` (the last run failed; ``consecutive_failures`` says how
many in a row) or ``stale`` (no run finished within ``stale_after``, when given).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal, TypeVar

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from analytics.errors import AnalyticsError

logger = logging.getLogger(__name__)

DATA_ERRORS: Final[tuple[type[BaseException], ...]] = (
    ValueError,
    ArithmeticError,
    LookupError,
    AnalyticsError,
    psycopg.DataError,
    psycopg.IntegrityError,
)
"""Exceptions that mean "this data cannot be processed" (out-of-range dates, overflow, a missing time zone,
values the database refuses): the unit of work that raised is set aside, the run goes on."""
KEEP_RUNS: Final[timedelta] = timedelta(days=7)
HEALTH_WINDOW: Final[timedelta] = timedelta(days=7)
MAX_ERROR_CHARS: Final[int] = 2000

Status = Literal["never_run", "ok", "degraded", "failing", "stale"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Reject:
    """One row set aside: what it is (``source``, ``key``), why (``reason``) and what it held (``detail``)."""

    source: str
    key: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


def reason_of(exc: BaseException) -> str:
    """``ExceptionType: message`` (one line, bounded)."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:MAX_ERROR_CHARS]


_UPSERT_REJECTS = """
INSERT INTO analytics_rejects AS r (source, row_key, reason, detail, first_seen_at, last_seen_at)
SELECT * FROM unnest(%(source)s::text[], %(key)s::text[], %(reason)s::text[], %(detail)s::jsonb[],
                     %(seen)s::timestamptz[], %(seen)s::timestamptz[])
ON CONFLICT (source, row_key) DO UPDATE
SET reason = EXCLUDED.reason, detail = EXCLUDED.detail, last_seen_at = EXCLUDED.last_seen_at,
    times = r.times + 1
"""


def set_aside(conn: psycopg.Connection[Any], rejects: Sequence[Reject], now: datetime) -> int:
    """Record ``rejects`` (inside the caller's transaction) and log each; returns how many."""
    unique = list({(r.source, r.key): r for r in rejects}.values())
    if not unique:
        return 0
    for r in unique:
        logger.warning("analytics: set aside %s %s: %s", r.source, r.key, r.reason)
    conn.execute(
        _UPSERT_REJECTS,
        {
            "source": [r.source for r in unique],
            "key": [r.key for r in unique],
            "reason": [r.reason[:MAX_ERROR_CHARS] for r in unique],
            "detail": [json.dumps(r.detail, default=str) for r in unique],
            "seen": [now] * len(unique),
        },
    )
    return len(unique)


def isolated(
    conn: psycopg.Connection[Any],
    items: Sequence[T],
    work: Callable[[Sequence[T]], None],
    reject: Callable[[T, BaseException], Reject],
) -> list[Reject]:
    """Run ``work(items)`` in a savepoint. If it fails on the data (:data:`DATA_ERRORS`), roll it back and
    find the culprits by halving: each half is retried in its own savepoint, down to single items, which are
    set aside (``reject(item, error)``); everything else is done. One bad item among n costs about
    ``2·log2(n)`` extra attempts. Returns the rejects (not yet recorded)."""
    if not items:
        return []
    try:
        with conn.transaction():
            work(items)
    except DATA_ERRORS as exc:
        if len(items) == 1:
            return [reject(items[0], exc)]
        half = len(items) // 2
        return isolated(conn, items[:half], work, reject) + isolated(conn, items[half:], work, reject)
    return []


# ---------------------------------------------------------------------------------------------- runs


def record_run(
    conn: psycopg.Connection[Any],
    *,
    job: str,
    started_at: datetime,
    seconds: float,
    error: BaseException | None,
    rows_set_aside: int,
    report: dict[str, Any],
) -> None:
    """Append the run's row (inside the caller's transaction) and prune rows older than :data:`KEEP_RUNS`."""
    conn.execute(
        "INSERT INTO analytics_job_runs "
        "(job, started_at, finished_at, outcome, error, rows_set_aside, report) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            job,
            started_at,
            started_at + timedelta(seconds=seconds),
            "ok" if error is None else "failed",
            None if error is None else reason_of(error),
            rows_set_aside,
            Jsonb(report),
        ),
    )
    conn.execute(
        "DELETE FROM analytics_job_runs WHERE job = %s AND started_at < %s", (job, started_at - KEEP_RUNS)
    )


@dataclass(frozen=True, slots=True)
class JobRun:
    started_at: datetime
    finished_at: datetime
    outcome: str
    error: str | None
    rows_set_aside: int


@dataclass(frozen=True, slots=True)
class JobHealth:
    """What ``/health`` shows of one job (see the module docstring for ``status``)."""

    job: str
    status: Status
    last_run_at: datetime | None
    last_ok_at: datetime | None
    last_error: str | None
    consecutive_failures: int
    rows_set_aside: int
    """set aside by the last run"""
    rejects: int
    """rows in ``analytics_rejects`` (all sources, all time)"""

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "status": self.status,
            "last_run_at": None if self.last_run_at is None else self.last_run_at.isoformat(),
            "last_ok_at": None if self.last_ok_at is None else self.last_ok_at.isoformat(),
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "rows_set_aside": self.rows_set_aside,
            "rejects": self.rejects,
        }


_RUNS_QUERY = (
    "SELECT started_at, finished_at, outcome, error, rows_set_aside FROM analytics_job_runs "
    "WHERE job = %(job)s AND started_at >= %(since)s ORDER BY started_at DESC, id DESC"
)
_REJECTS_QUERY = "SELECT count(*)::int FROM analytics_rejects"


def assess(
    job: str,
    runs: Sequence[JobRun],
    rejects: int,
    now: datetime,
    stale_after: timedelta | None = None,
) -> JobHealth:
    """The health of ``job`` from its recent runs, newest first (pure)."""
    if not runs:
        return JobHealth(job, "never_run", None, None, None, 0, 0, rejects)
    last = runs[0]
    failures = 0
    for run in runs:
        if run.outcome != "failed":
            break
        failures += 1
    last_ok = next((r.finished_at for r in runs if r.outcome == "ok"), None)
    status: Status
    if last.outcome == "failed":
        status = "failing"
    elif stale_after is not None and now - last.finished_at > stale_after:
        status = "stale"
    elif last.rows_set_aside > 0:
        status = "degraded"
    else:
        status = "ok"
    return JobHealth(
        job=job,
        status=status,
        last_run_at=last.started_at,
        last_ok_at=last_ok,
        last_error=last.error,
        consecutive_failures=failures,
        rows_set_aside=last.rows_set_aside,
        rejects=rejects,
    )


def job_health(
    conn: psycopg.Connection[Any],
    now: datetime,
    *,
    job: str = "default",
    stale_after: timedelta | None = None,
) -> JobHealth:
    """The health of ``job`` as of ``now`` from its runs of the last :data:`HEALTH_WINDOW`."""
    with conn.cursor(row_factory=class_row(JobRun)) as cur:
        cur.execute(_RUNS_QUERY, {"job": job, "since": now - HEALTH_WINDOW})
        runs = cur.fetchall()
    row = conn.execute(_REJECTS_QUERY).fetchone()
    return assess(job, runs, int(row[0]) if row else 0, now, stale_after)


async def job_health_async(
    conn: psycopg.AsyncConnection[Any],
    now: datetime,
    *,
    job: str = "default",
    stale_after: timedelta | None = None,
) -> JobHealth:
    """:func:`job_health` on an async connection (the API's)."""
    async with conn.cursor(row_factory=class_row(JobRun)) as cur:
        await cur.execute(_RUNS_QUERY, {"job": job, "since": now - HEALTH_WINDOW})
        runs = await cur.fetchall()
    cur2 = await conn.execute(_REJECTS_QUERY)
    row = await cur2.fetchone()
    return assess(job, runs, int(row[0]) if row else 0, now, stale_after)
