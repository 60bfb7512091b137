"""Export jobs as the API sees them (``export_jobs``), of both kinds: a study's (``study_id``) and a site's
(``site_id``); a :class:`Kind` names the subject column and the row type. The worker's statements are in
:mod:`api.exports.jobs`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb

from api.pagination import Cursor, Keyset, Page
from api.queries import fetch_one, fetch_page

KEYSET = Keyset(("requested_at", "export_id"), (datetime, str), descending=True)


@dataclass(frozen=True, slots=True)
class Job:
    """What the jobs of both kinds have."""

    export_id: UUID
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
    directory: str | None
    manifest: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class JobRow(Job):
    """A study's export job."""

    study_id: str
    consent_snapshot: datetime | None


@dataclass(frozen=True, slots=True)
class SiteJobRow(Job):
    """A site's export job (``data_as_of``: the column ``consent_snapshot``, when the data was read)."""

    site_id: str
    data_as_of: datetime | None


J = TypeVar("J", bound=Job)


@dataclass(frozen=True, slots=True)
class Kind(Generic[J]):
    """A kind of job: its ``kind`` value, subject column, row type and the name its rows give
    ``consent_snapshot``."""

    name: str
    subject: str
    row: type[J]
    snapshot_as: str

    def select(self) -> sql.Composed:
        return sql.SQL(
            "SELECT export_id, {}, status, requested_by, requested_at, params, attempts, started_at, "
            "finished_at, progress_step, rows_done, rows_total, error, consent_snapshot AS {}, directory, "
            "manifest FROM export_jobs"
        ).format(sql.Identifier(self.subject), sql.Identifier(self.snapshot_as))

    def where(self) -> sql.Composed:
        return sql.SQL("kind = %(kind)s AND {} = %(subject)s").format(sql.Identifier(self.subject))


STUDY = Kind("study", "study_id", JobRow, "consent_snapshot")
SITE = Kind("site", "site_id", SiteJobRow, "data_as_of")


async def insert_job(
    conn: AsyncConnection,
    kind: Kind[J],
    *,
    export_id: UUID,
    subject_id: str,
    requested_by: str,
    requested_at: datetime,
    params: dict[str, Any],
    max_attempts: int,
) -> J:
    await conn.execute(
        sql.SQL(
            "INSERT INTO export_jobs (export_id, kind, {}, requested_by, requested_at, params, max_attempts) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)"
        ).format(sql.Identifier(kind.subject)),
        (export_id, kind.name, subject_id, requested_by, requested_at, Jsonb(params), max_attempts),
    )
    job = await get_job(conn, kind, subject_id, export_id)
    assert job is not None
    return job


async def get_job(conn: AsyncConnection, kind: Kind[J], subject_id: str, export_id: UUID) -> J | None:
    query = sql.SQL("{} WHERE {} AND export_id = %(export_id)s").format(kind.select(), kind.where())
    return await fetch_one(
        conn, kind.row, query, {"kind": kind.name, "subject": subject_id, "export_id": export_id}
    )


async def list_jobs(
    conn: AsyncConnection, kind: Kind[J], subject_id: str, cursor: Cursor, limit: int
) -> Page[J]:
    """The subject's exports, newest first."""
    return await fetch_page(
        conn,
        kind.row,
        kind.select(),
        kind.where(),
        {"kind": kind.name, "subject": subject_id},
        KEYSET,
        cursor,
        limit,
        lambda j: (j.requested_at, str(j.export_id)),
    )
