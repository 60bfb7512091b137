"""Participants: registration by a kiosk or front desk (pseudonymous: a profile for the metrics, consent,
the site's own reference) and their per-participant daily series (participant_daily, written by
``vitalab analytics run``)."""

from __future__ import annotations

from datetime import date
from uuid import UUID

from fastapi import APIRouter, HTTPException, Response, status
from psycopg.rows import class_row

from analytics.session_metrics import ALGORITHM_VERSION
from api.deps import ConnDep
from api.models import ParticipantDay, ParticipantIn, ParticipantLoad, ParticipantOut

router = APIRouter(prefix="/v1/participants", tags=["participants"])

_PARTICIPANT_COLS = (
    "participant_id, site_id, external_ref, birth_year, sex, weight_kg, hr_rest_bpm, hr_max_bpm, "
    "consent_given_at, consent_withdrawn_at, created_at"
)


@router.post(
    "",
    response_model=ParticipantOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "this external_ref is already registered at the site"}},
)
async def register_participant(conn: ConnDep, body: ParticipantIn, response: Response) -> ParticipantOut:
    """Register a pseudonymous participant at a site (no names, no e-mail). With an ``external_ref`` the
    call is idempotent: the same reference at the same site answers 200 with the participant registered
    first (whose profile is left as it was). 404 for an unknown site (a site exists once a device of it has
    reported)."""
    async with conn.transaction():
        cur = await conn.execute("SELECT 1 FROM sites WHERE site_id = %s", (body.site_id,))
        if await cur.fetchone() is None:
            raise HTTPException(status_code=404, detail=f"no site {body.site_id!r}")
        values = body.model_dump()
        async with conn.cursor(row_factory=class_row(ParticipantOut)) as pcur:
            await pcur.execute(
                "INSERT INTO participants (site_id, external_ref, birth_year, sex, weight_kg, hr_rest_bpm, "
                "hr_max_bpm, consent_given_at) VALUES (%(site_id)s, %(external_ref)s, %(birth_year)s, "
                "%(sex)s, %(weight_kg)s, %(hr_rest_bpm)s, %(hr_max_bpm)s, %(consent_given_at)s) "
                f"ON CONFLICT (site_id, external_ref) DO NOTHING RETURNING {_PARTICIPANT_COLS}",
                values,
            )
            created = await pcur.fetchone()
            if created is not None:
                return created
            await pcur.execute(
                f"SELECT {_PARTICIPANT_COLS} FROM participants WHERE site_id = %(site_id)s "
                "AND external_ref = %(external_ref)s",
                values,
            )
            existing = await pcur.fetchone()
    if existing is None:  # deleted between the two statements
        raise HTTPException(status_code=409, detail="participant changed concurrently; retry")
    response.status_code = status.HTTP_200_OK
    return existing


@router.get("/{participant_id}", response_model=ParticipantOut)
async def get_participant(conn: ConnDep, participant_id: UUID) -> ParticipantOut:
    async with conn.cursor(row_factory=class_row(ParticipantOut)) as cur:
        await cur.execute(
            f"SELECT {_PARTICIPANT_COLS} FROM participants WHERE participant_id = %s", (participant_id,)
        )
        found = await cur.fetchone()
    if found is None:
        raise HTTPException(status_code=404, detail=f"no participant {participant_id}")
    return found


_DAY_COLS = (
    "day, sessions, load, load_7d, ctl, atl, tsb, acwr_ewma, acwr_rolling, moderate_min, vigorous_min, "
    "who_min_7d, who_status, pai_as, pai_7d, rhr_bpm, rhr_7d_bpm, rhr_28d_bpm, rmssd_ms, ln_rmssd_7d, "
    "vo2max_ml_kg_min"
)


@router.get("/{participant_id}/load", response_model=ParticipantLoad, tags=["analytics"])
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
