"""/health reports the checks the composition root registers (e.g. a failing background job)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import AsyncConnection

from api.health import CheckResult, analytics_job
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

    async with serve(app_at(database_url, NOW, health_checks=[jobs, broken]), key=None) as http:
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

    async with serve(app_at(empty_database, NOW, health_checks=[fine]), key=None) as http:
        r = await http.get("/health")
    assert (r.status_code, r.json()["status"], r.json()["checks"]) == (
        200,
        "ok",
        [{"name": "job:x", "ok": True, "detail": None}],
    )
    gone = psycopg.conninfo.make_conninfo(empty_database, dbname="vitalab_does_not_exist")
    async with serve(app_at(gone, NOW, health_checks=[fine]), key=None) as http:
        r = await http.get("/health")
    assert (r.status_code, r.json()["status"], r.json()["database"]) == (503, "unavailable", False)


async def test_health_reports_the_analytics_job_from_its_run_records(database_url: str) -> None:
    """The composition root's check (api.health.analytics_job) over the real analytics_job_runs table."""
    check = analytics_job(stale_after=timedelta(minutes=10))
    app = app_at(database_url, NOW, health_checks=[check])
    async with serve(app, key=None) as http:
        never = (await http.get("/health")).json()
    assert never["status"] == "ok"
    assert never["checks"][0]["detail"] == "never_run"

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO analytics_job_runs (job, started_at, finished_at, outcome, error) VALUES "
            "('default', %(a)s, %(a)s, 'ok', NULL), ('default', %(b)s, %(b)s, 'failed', %(e)s), "
            "('default', %(c)s, %(c)s, 'failed', %(e)s)",
            {
                "a": NOW - timedelta(minutes=3),
                "b": NOW - timedelta(minutes=2),
                "c": NOW - timedelta(minutes=1),
                "e": "ValueError: year 0 is out of range",
            },
        )
    async with serve(app, key=None) as http:
        failing = (await http.get("/health")).json()
    assert failing["status"] == "degraded"
    assert failing["checks"][0]["name"] == "analytics:default"
    assert failing["checks"][0]["ok"] is False
    assert failing["checks"][0]["detail"] == "failing (2 runs in a row): ValueError: year 0 is out of range"

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM analytics_job_runs")
        conn.execute(
            "INSERT INTO analytics_job_runs (job, started_at, finished_at, outcome) "
            "VALUES ('default', %(a)s, %(a)s, 'ok')",
            {"a": NOW - timedelta(minutes=30)},
        )
    async with serve(app, key=None) as http:
        stale = (await http.get("/health")).json()
    assert stale["status"] == "degraded"
    assert stale["checks"][0]["ok"] is False
    assert stale["checks"][0]["detail"].startswith("stale: no run finished since")
