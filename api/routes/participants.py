"""Per-participant daily series (participant_daily, written by ``vitalab analytics run``)."""

from __future__ import annotations

from datetime import date
from uuid import UUID

from fastapi import APIRouter, HTTPException
from psycopg.rows import class_row

from analytics.session_metrics import ALGORITHM_VERSION
from api.deps import ConnDep
from api.models import ParticipantDay, ParticipantLoad

router = APIRouter(prefix="/v1/participants", tags=["analytics"])

_DAY_COLS = (
    "day, sessions, load, load_7d, ctl, atl, tsb, acwr_ewma, acwr_rolling, moderate_min, vigorous_min, "
    "who_min_7d, who_status, pai_as, pai_7d, rhr_bpm, rhr_7d_bpm, rhr_28d_bpm, rmssd_ms, ln_rmssd_7d, "
    "vo2max_ml_kg_min"
)


@router.get("/{participant_id}/load", response_model=ParticipantLoad)
async def participant_load(
    conn: ConnDep, participant_id: UUID, since: date | None = None, until: date | None = None
) -> ParticipantLoad:
    """Daily load, PMC (CTL/ATL/TSB), ACWR, WHO minutes, PAI, resting-HR/HRV trends and VO2max for the days
    ``[since, until]`` (site-local days; rest days included once the participant has trained)."""
    cur = await conn.execute("SELECT 1 FROM participants WHERE participant_id = %s", (participant_id,))
    if await cur.fetchone() is None:
        raise HTTPException(status_code=404, detail=f"no participant {participant_id}")
    async with conn.cursor(row_factory=class_row(ParticipantDay)) as dcur:
        await dcur.execute(
            f"SELECT {_DAY_COLS} FROM participant_daily WHERE participant_id = %(p)s "
            "AND (%(since)s::date IS NULL OR day >= %(since)s) "
            "AND (%(until)s::date IS NULL OR day <= %(until)s) "
            "ORDER BY day",
            {"p": participant_id, "since": since, "until": until},
        )
        days = await dcur.fetchall()
    return ParticipantLoad(participant_id=participant_id, algorithm_version=ALGORITHM_VERSION, days=days)
