"""Participants: registration by a kiosk or front desk (pseudonymous: a profile for the metrics, consent,
the site's own reference) and their per-participant daily series (participant_daily, written by
``vitalab analytics run``)."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Response, status

from analytics.version import ALGORITHM_VERSION
from api.deps import ConnDep, NowDep, SettingsDep
from api.errors import conflict, invalid, not_found, responses
from api.models import ParticipantIn, ParticipantLoad, ParticipantOut
from api.params import SinceDay, UntilDay, check_range, check_written
from api.policy import sees_participants
from api.queries import participants
from api.routes.lookup import require_participant, require_site
from api.security import CallerDep

router = APIRouter(prefix="/v1/participants", tags=["participants"], responses=responses(404, 422))


@router.post(
    "",
    response_model=ParticipantOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "this external_ref is already registered at the site"}, **responses(409)},
)
async def register_participant(
    conn: ConnDep,
    caller: CallerDep,
    settings: SettingsDep,
    now: NowDep,
    body: ParticipantIn,
    response: Response,
) -> ParticipantOut:
    """Register a pseudonymous participant at a site (no names, no e-mail). With an ``external_ref`` the
    call is idempotent: the same reference at the same site answers 200 with the participant registered
    first (whose profile is left as it was). 404 for an unknown site (a site exists once a device of it has
    reported)."""
    if body.birth_year is not None and body.birth_year > now.year:
        raise invalid("body.birth_year", f"birth_year {body.birth_year} is in the future")
    rest, top = body.hr_rest_bpm, body.hr_max_bpm
    if rest is not None and top is not None and rest >= top:
        raise invalid("body.hr_rest_bpm", f"hr_rest_bpm {rest:g} must be below hr_max_bpm {top:g}")
    if body.consent_given_at is not None:
        check_written(body.consent_given_at, "body.consent_given_at", now, settings.max_future_s)
    async with conn.transaction():
        await require_site(conn, body.site_id, "body.site_id", caller)
        found, created = await participants.insert_or_find(conn, body)
    if found is None:  # deleted between the two statements
        raise conflict("participant changed concurrently; retry")
    if not created:
        response.status_code = status.HTTP_200_OK
    return found


@router.get("/{participant_id}", response_model=ParticipantOut)
async def get_participant(conn: ConnDep, caller: CallerDep, participant_id: UUID) -> ParticipantOut:
    found = await participants.get_participant(conn, participant_id)
    if found is None or not (sees_participants(caller) and caller.can_site(found.site_id)):
        raise not_found("participant", str(participant_id), field="path.participant_id")
    return found


@router.get("/{participant_id}/load", response_model=ParticipantLoad, tags=["analytics"])
async def participant_load(
    conn: ConnDep, caller: CallerDep, participant_id: UUID, since: SinceDay = None, until: UntilDay = None
) -> ParticipantLoad:
    """Daily load, PMC (CTL/ATL/TSB), ACWR, WHO minutes, PAI, resting-HR/HRV trends and VO2max for the days
    ``[since, until]`` (site-local days; rest days included once the participant has trained; one row per
    day, so never more than the range has days)."""
    check_range(since, until, inclusive=True)
    await require_participant(conn, participant_id, "path.participant_id", caller)
    days = await participants.daily(conn, participant_id, since, until)
    return ParticipantLoad(participant_id=participant_id, algorithm_version=ALGORITHM_VERSION, days=days)
