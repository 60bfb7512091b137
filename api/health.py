"""The hook through which ``/health`` reports more than the database: background jobs and the like.

A :data:`HealthCheck` is an async function given a connection and the request's ``now``; it returns one
:class:`CheckResult` per thing it looked at (e.g. one per analytics job: its last run failed, or it has not
run for too long). The composition root passes the checks to :func:`api.main.create_app`
(``health_checks=[...]``); ``/health`` lists every result and says ``"degraded"`` when one is not ok, while
still answering 200 as long as the database answers (a failing job does not make the API unavailable; the
status and the failing check say what to look at).

For the analytics job-run records (migration 0005), :func:`analytics_job` adapts the analytics package's
job-health function: the job is not ok when its last run failed, or when no run finished within
``stale_after`` (a job that should run every minute and has not for ten).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from psycopg import AsyncConnection
from pydantic import BaseModel

from analytics.job_runs import job_health_async


class CheckResult(BaseModel):
    name: str
    ok: bool
    detail: str | None = None


HealthCheck = Callable[[AsyncConnection, datetime], Awaitable[Sequence[CheckResult]]]


def analytics_job(stale_after: timedelta | None, job: str = "default") -> HealthCheck:
    """A check of the analytics job's runs (``analytics_job_runs``): ``failing`` and ``stale`` are not ok;
    ``degraded`` (the last run set rows aside) is ok and says how many."""

    async def analytics_job_check(conn: AsyncConnection, now: datetime) -> Sequence[CheckResult]:
        h = await job_health_async(conn, now, job=job, stale_after=stale_after)
        ok = h.status not in ("failing", "stale")
        detail: str = h.status
        if h.status == "failing":
            detail = f"failing ({h.consecutive_failures} runs in a row): {h.last_error}"
        elif h.status == "degraded":
            detail = f"degraded: {h.rows_set_aside} rows set aside by the last run ({h.rejects} in all)"
        elif h.status == "stale":
            last = "never" if h.last_ok_at is None else h.last_ok_at.isoformat()
            detail = f"stale: no run finished since {last}"
        return [CheckResult(name=f"analytics:{h.job}", ok=ok, detail=detail)]

    return analytics_job_check
