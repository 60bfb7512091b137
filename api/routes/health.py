"""Is the API usable: the database answers (else 503), and every registered check (api/health.py) is ok."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import psycopg
from fastapi import APIRouter, Response, status
from psycopg import AsyncConnection

from api.deps import HealthChecksDep, NowDep, PoolDep
from api.health import CheckResult, HealthCheck
from api.models import Health
from api.queries import system

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


async def _run(check: HealthCheck, conn: AsyncConnection, now: datetime) -> Sequence[CheckResult]:
    """The check's results; a check that fails on the database is itself a failed check."""
    try:
        async with conn.transaction():
            return await check(conn, now)
    except psycopg.Error as exc:
        name = getattr(check, "__name__", "check")
        log.warning("health check %s failed: %s", name, exc)
        return [CheckResult(name=name, ok=False, detail=f"the check failed: {exc}")]


@router.get(
    "/health", response_model=Health, responses={503: {"model": Health, "description": "no database"}}
)
async def health(pool: PoolDep, now: NowDep, checks: HealthChecksDep, response: Response) -> Health:
    """200 when the database answers (``status`` "degraded" when a check, e.g. of a background job, fails),
    503 otherwise."""
    results: list[CheckResult] = []
    try:
        async with pool.connection(timeout=2.0) as conn:
            timescale = await system.has_timescale(conn)
            for check in checks:
                results.extend(await _run(check, conn, now))
    except (psycopg.Error, TimeoutError) as exc:
        log.warning("health: database unavailable: %s", exc)
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(status="unavailable", database=False)
    ok = all(r.ok for r in results)
    return Health(status="ok" if ok else "degraded", database=True, timescale=timescale, checks=results)
