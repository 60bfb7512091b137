"""Site export jobs as the API sees them (``export_jobs`` rows of kind ``site``); the worker's statements are
in :mod:`api.exports.jobs`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb

from api.pagination import Cursor, Keyset, Page
from api.queries import fetch_one, fetch_page

KEYSET = Keyset(("requested_at", "export_id"), (datetime, str), descending=True)


@dataclass(frozen=True, slots=True)
class SiteJobRow:
    export_id: UUID
    site_id: str
    status: str
    requested_by: str
    requested_at: datetime
    params: dict[str, Any]
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    progress_step: str | None
    rows_done: int
    rows_total: int | None
    error: str | None
    data_as_of: datetime | None
    directory: str | None
    manifest: dict[str, Any] | None


_SELECT = sql.SQL(
    "SELECT export_id, site_id, status, requested_by, requested_at, params, attempts, started_at, "
    "finished_at, progress_step, rows_done, rows_total, error, consent_snapshot AS data_as_of, directory, "
    "manifest FROM export_jobs"
)


async def insert_job(
    conn: AsyncConnection,
    *,
    export_id: UUID,
    site_id: str,
    requested_by: str,
    requested_at: datetime,
    params: dict[str, Any],
    max_attempts: int,
) -> SiteJobRow:
    await conn.execute(
        "INSERT INTO export_jobs (export_id, kind, site_id, requested_by, requested_at, params, "
        "max_attempts) VALUES (%s, 'site', %s, %s, %s, %s, %s)",
        (export_id, site_id, requested_by, requested_at, Jsonb(params), max_attempts),
    )
    job = await get_job(conn, site_id, export_id)
    assert job is not None
    return job


async def get_job(conn: AsyncConnection, site_id: str, export_id: UUID) -> SiteJobRow | None:
    query = sql.SQL("{} WHERE kind = 'site' AND site_id = %s AND export_id = %s").format(_SELECT)
    return await fetch_one(conn, SiteJobRow, query, (site_id, export_id))


async def list_jobs(conn: AsyncConnection, site_id: str, cursor: Cursor, limit: int) -> Page[SiteJobRow]:
    """The site's exports, newest first."""
    return await fetch_page(
        conn,
        SiteJobRow,
        _SELECT,
        sql.SQL("kind = 'site' AND site_id = %(site)s"),
        {"site": site_id},
        KEYSET,
        cursor,
        limit,
        lambda j: (j.requested_at, str(j.export_id)),
    )
