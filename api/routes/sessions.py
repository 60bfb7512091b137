"""Sessions assembled by the analytics job (``vitalab analytics run``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query
from psycopg.rows import class_row

from analytics.session_metrics import ALGORITHM_VERSION
from api.deps import ConnDep
from api.models import SessionDetail, SessionOut

router = APIRouter(prefix="/v1/sessions", tags=["analytics"])

SESSION_COLS = (
    "session_id, site_id, participant_id, device_ids, started_at, ended_at, source, hr_source, "
    "algorithm_version, duration_s, hr_avg_bpm, trimp, moderate_min, vigorous_min, pai_as, rmssd_ms, "
    "energy_kcal, distance_m"
)
Limit = Annotated[int, Query(ge=1, le=10_000)]


@router.get("", response_model=list[SessionOut])
async def list_sessions(
    conn: ConnDep,
    site: str | None = None,
    device: str | None = None,
    participant: UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    algorithm_version: str = ALGORITHM_VERSION,
    limit: Limit = 100,
) -> list[SessionOut]:
    """Sessions starting in ``[since, until)`` in start order; with neither bound, the newest ``limit``.
    ``device`` matches any device of a session (machine or strap)."""
    newest_first = since is None and until is None
    async with conn.cursor(row_factory=class_row(SessionOut)) as cur:
        await cur.execute(
            f"SELECT * FROM (SELECT {SESSION_COLS} FROM sessions WHERE algorithm_version = %(v)s "
            "AND (%(site)s::text IS NULL OR site_id = %(site)s) "
            "AND (%(device)s::text IS NULL OR device_ids @> ARRAY[%(device)s::text]) "
            "AND (%(pid)s::uuid IS NULL OR participant_id = %(pid)s) "
            "AND (%(since)s::timestamptz IS NULL OR started_at >= %(since)s) "
            "AND (%(until)s::timestamptz IS NULL OR started_at < %(until)s) "
            f"ORDER BY started_at {'DESC' if newest_first else ''}, session_id LIMIT %(limit)s) s "
            "ORDER BY started_at, session_id",
            {
                "v": algorithm_version,
                "site": site,
                "device": device,
                "pid": participant,
                "since": since,
                "until": until,
                "limit": limit,
            },
        )
        return await cur.fetchall()


@router.get("/{session_id}", response_model=SessionDetail)
async def get_session(conn: ConnDep, session_id: int) -> SessionDetail:
    """One session with its full metric summary."""
    async with conn.cursor(row_factory=class_row(SessionDetail)) as cur:
        await cur.execute(
            f"SELECT {SESSION_COLS}, summary, computed_at FROM sessions WHERE session_id = %s", (session_id,)
        )
        found = await cur.fetchone()
    if found is None:
        raise HTTPException(status_code=404, detail=f"no session {session_id}")
    return found
