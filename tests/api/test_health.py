"""/health reports the checks the composition root registers (e.g. a failing background job)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import AsyncConnection

from api.health import CheckResult
from tests.api.support import app_at, serve

pytestmark = pytest.mark.asyncio

NOW = datetime(2026, 11, 25, 18, 0, tzinfo=UTC)


async def test_health_reports_failing_checks_and_stays_up(database_url: str) -> None:
    seen: list[datetime] = []

    async def jobs(conn: AsyncConnection, now: datetime) -> Sequence[CheckResult]:
        """Like a job-health check: reads the database, one result per job."""
        seen.append(now)
        cur = await conn.execute("SELECT count(*) FROM sessions")
        row = await cur.fetchone()
        assert row is not None
        return [
            CheckResult(name="job:sessions", ok=True, detail=f"{row[0]} sessions"),
            CheckResult(name="job:daily", ok=False, detail="last run failed: year 0 is out of range"),
        ]

    async def broken(conn: AsyncConnection, now: datetime) -> Sequence[CheckResult]:
        await conn.execute("SELECT * FROM no_such_table")
        return []

    async with serve(app_at(database_url, NOW, health_checks=[jobs, broken])) as http:
        r = await http.get("/health")
    assert r.status_code == 200  # the API itself is usable
    body = r.json()
    assert body["status"] == "degraded"
    assert body["database"] is True
    assert [(c["name"], c["ok"]) for c in body["checks"]] == [
        ("job:sessions", True),
        ("job:daily", False),
        ("broken", False),
    ]
    assert body["checks"][1]["detail"] == "last run failed: year 0 is out of range"
    assert "no_such_table" in body["checks"][2]["detail"]
    assert seen == [NOW]  # checks get the request's now from the API's clock


async def test_health_ok_with_passing_checks_and_503_without_database(empty_database: str) -> None:
    async def fine(conn: AsyncConnection, now: datetime) -> Sequence[CheckResult]:
        return [CheckResult(name="job:x", ok=True)]

    async with serve(app_at(empty_database, NOW, health_checks=[fine])) as http:
        r = await http.get("/health")
    assert (r.status_code, r.json()["status"], r.json()["checks"]) == (
        200,
        "ok",
        [{"name": "job:x", "ok": True, "detail": None}],
    )
    gone = psycopg.conninfo.make_conninfo(empty_database, dbname="vitalab_does_not_exist")
    async with serve(app_at(gone, NOW, health_checks=[fine])) as http:
        r = await http.get("/health")
    assert (r.status_code, r.json()["status"], r.json()["database"]) == (503, "unavailable", False)
