"""The hook through which ``/health`` reports more than the database: background jobs and the like.

A :data:`HealthCheck` is an async function given a connection and the request's ``now``; it returns one
:class:`CheckResult` per thing it looked at (e.g. one per analytics job: its last run failed, or it has not
run for too long). The composition root passes the checks to :func:`api.main.create_app`
(``health_checks=[...]``); ``/health`` lists every result and says ``"degraded"`` when one is not ok, while
still answering 200 as long as the database answers (a failing job does not make the API unavailable; the
status and the failing check say what to look at).

For the analytics job-run records (migration 0005), the check is an adapter around the analytics package's
job-health function, e.g.::

    async def jobs(conn: AsyncConnection, now: datetime) -> list[CheckResult]:
        runs = await job_health(conn, now)
        return [CheckResult(name=f"job:{j.job}", ok=j.ok, detail=j.detail) for j in runs]
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from psycopg import AsyncConnection
from pydantic import BaseModel


class CheckResult(BaseModel):
    name: str
    ok: bool
    detail: str | None = None


HealthCheck = Callable[[AsyncConnection, datetime], Awaitable[Sequence[CheckResult]]]
