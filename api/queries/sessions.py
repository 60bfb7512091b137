"""Sessions assembled by the analytics job (``sessions``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, sql

from api.models import SessionDetail, SessionOut
from api.pagination import Cursor, Keyset, Page
from api.queries import cols, fetch_one, fetch_page, in_sites

SESSION_COLS = (
    "session_id",
    "site_id",
    "participant_id",
    "device_ids",
    "started_at",
    "ended_at",
    "source",
    "hr_source",
    "algorithm_version",
    "duration_s",
    "hr_avg_bpm",
    "trimp",
    "moderate_min",
    "vigorous_min",
    "pai_as",
    "rmssd_ms",
    "energy_kcal",
    "distance_m",
)
KEYSET = Keyset(("started_at", "session_id"), (datetime, int))


async def list_sessions(
    conn: AsyncConnection,
    *,
    algorithm_version: str,
    site: str | None,
    device: str | None,
    participant: UUID | None,
    since: datetime | None,
    until: datetime | None,
    cursor: Cursor,
    limit: int,
    sites: list[str] | None = None,
    with_participants: bool = True,
) -> Page[SessionOut]:
    """Sessions starting in ``[since, until)``; ``device`` matches any device of a session; ``sites``: only
    of these sites; without participants: ``participant_id`` null in every row (not read)."""
    columns = sql.SQL(", ").join(
        sql.SQL("NULL::uuid AS participant_id")
        if c == "participant_id" and not with_participants
        else sql.Identifier(c)
        for c in SESSION_COLS
    )
    select = sql.SQL("SELECT {} FROM sessions").format(columns)
    where = sql.SQL(
        "algorithm_version = %(v)s AND (%(site)s::text IS NULL OR site_id = %(site)s) "
        "AND (%(device)s::text IS NULL OR device_ids @> ARRAY[%(device)s::text]) "
        "AND (%(pid)s::uuid IS NULL OR participant_id = %(pid)s) "
        "AND (%(since)s::timestamptz IS NULL OR started_at >= %(since)s) "
        "AND (%(until)s::timestamptz IS NULL OR started_at < %(until)s) AND {}"
    ).format(in_sites("site_id"))
    params: dict[str, Any] = {
        "sites": sites,
        "v": algorithm_version,
        "site": site,
        "device": device,
        "pid": participant,
        "since": since,
        "until": until,
    }
    return await fetch_page(
        conn, SessionOut, select, where, params, KEYSET, cursor, limit, lambda s: (s.started_at, s.session_id)
    )


async def get_session(conn: AsyncConnection, session_id: int) -> SessionDetail | None:
    query = sql.SQL("SELECT {}, summary, computed_at FROM sessions WHERE session_id = %s").format(
        cols(SESSION_COLS)
    )
    return await fetch_one(conn, SessionDetail, query, (session_id,))
