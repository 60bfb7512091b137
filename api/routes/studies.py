"""Studies (admin), enrolment and consent (a kiosk or front desk at the participant's site), enrolments under
pseudonyms (researchers of the study). The rules are in :mod:`api.services.studies`.

Who may call what is the policy table (:mod:`api.policy`); the guard hands the caller over
(:data:`api.security.CallerDep`). The handlers check the resources against the caller's scope and answer 404
for one out of it exactly as for an unknown one: a study outside the caller's studies (a kiosk: a study not
taking part at its site), a participant outside the caller's sites.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Request, Response, status

from api import pagination
from api.deps import ConnDep, NowDep, SettingsDep
from api.errors import not_found, responses
from api.exports.pseudonyms import PSEUDONYM_PATTERN
from api.pagination import CursorParam, PageLimit
from api.queries import studies as q
from api.research_models import (
    ConsentIn,
    ConsentOut,
    ConsentRecordOut,
    EnrolmentIn,
    EnrolmentOut,
    StudyIn,
    StudyOut,
    StudyPatch,
)
from api.security import Caller, CallerDep
from api.services import studies as rules
from vitalab.wire.topics import ID_PATTERN

router = APIRouter(prefix="/v1/studies", tags=["research"], responses=responses(404, 422))

StudyId = Annotated[str, Path(pattern=ID_PATTERN, description="a study id")]
PseudonymPath = Annotated[str, Path(pattern=PSEUDONYM_PATTERN, description="a pseudonym in this study")]


def who(caller: Caller) -> str:
    """What the records keep of who asked: the API key's id, else the single-sign-on token's subject (a
    caller always has one of them)."""
    return caller.key_id or caller.subject or "unknown"


def in_scope(caller: Caller, study_id: str) -> None:
    """404 for a study outside the caller's studies (as if it did not exist)."""
    if not caller.can_study(study_id):
        raise not_found("study", study_id, field="path.study_id")


@router.post("", response_model=StudyOut, status_code=status.HTTP_201_CREATED, responses=responses(409))
async def create_study(conn: ConnDep, now: NowDep, caller: CallerDep, body: StudyIn) -> StudyOut:
    """Create a study (its pseudonym key is generated with it and never returned). 409 if the id exists."""
    return await rules.create(conn, body, now)


@router.get("", response_model=list[StudyOut], responses=pagination.PAGED)
async def list_studies(
    conn: ConnDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    limit: PageLimit = 100,
    cursor: CursorParam = None,
) -> list[StudyOut]:
    """The studies the caller may see, by id."""
    page = await q.list_studies(conn, caller.studies, pagination.decode(cursor, q.KEYSET), limit)
    pagination.link(request, response, page)
    return page.rows


@router.get("/{study_id}", response_model=StudyOut)
async def get_study(conn: ConnDep, caller: CallerDep, study_id: StudyId) -> StudyOut:
    in_scope(caller, study_id)
    return await rules.require_study(conn, study_id)


@router.patch("/{study_id}", response_model=StudyOut, responses=responses(409))
async def update_study(
    conn: ConnDep, now: NowDep, caller: CallerDep, study_id: StudyId, body: StudyPatch
) -> StudyOut:
    """Change a study: scopes and the removal of sites only while a draft; status draft -> recruiting ->
    closed (409 otherwise)."""
    in_scope(caller, study_id)
    return await rules.update(conn, study_id, body, now)


@router.delete("/{study_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(409))
async def delete_study(conn: ConnDep, caller: CallerDep, study_id: StudyId) -> Response:
    """Delete a draft study without enrolments or exports (409 otherwise: close it instead)."""
    in_scope(caller, study_id)
    await rules.delete(conn, study_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{study_id}/enrolments",
    response_model=ConsentOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "the same enrolment again"}, **responses(409)},
)
async def enrol(
    conn: ConnDep,
    settings: SettingsDep,
    now: NowDep,
    caller: CallerDep,
    study_id: StudyId,
    body: EnrolmentIn,
    response: Response,
) -> ConsentOut:
    """Enrol a participant of one of the study's sites with their first consent (the study must be
    recruiting). The same request again answers 200 with what is stored; 409 for a different one."""
    record, created = await rules.enrol(
        conn, study_id, body, who(caller), now, settings.max_future_s, allowed_sites=caller.sites
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return record


@router.post(
    "/{study_id}/participants/{participant_id}/consents",
    response_model=ConsentOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "already withdrawn: the stored withdrawal"}, **responses(409)},
)
async def change_consent(
    conn: ConnDep,
    settings: SettingsDep,
    now: NowDep,
    caller: CallerDep,
    study_id: StudyId,
    participant_id: UUID,
    body: ConsentIn,
    response: Response,
) -> ConsentOut:
    """Record a consent change: a new consent (text version, scopes; the study must be recruiting) or a
    withdrawal (always possible). The history is append-only; a change cannot take effect before the newest
    record (409)."""
    record, created = await rules.change_consent(
        conn,
        study_id,
        participant_id,
        body,
        who(caller),
        now,
        settings.max_future_s,
        allowed_sites=caller.sites,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return record


@router.get("/{study_id}/enrolments", response_model=list[EnrolmentOut], responses=pagination.PAGED)
async def list_enrolments(
    conn: ConnDep,
    caller: CallerDep,
    study_id: StudyId,
    request: Request,
    response: Response,
    limit: PageLimit = 1000,
    cursor: CursorParam = None,
) -> list[EnrolmentOut]:
    """The study's enrolments under pseudonyms, by pseudonym, each with its current consent."""
    in_scope(caller, study_id)
    await rules.require_study(conn, study_id)
    pads = await rules.study_pads(conn, study_id)
    page = await q.list_enrolments(conn, study_id, pads, pagination.decode(cursor, q.ENROLMENT_KEYSET), limit)
    pagination.link(request, response, page)
    return page.rows


@router.get("/{study_id}/enrolments/{pseudonym}/consents", response_model=list[ConsentRecordOut])
async def consent_history(
    conn: ConnDep, caller: CallerDep, study_id: StudyId, pseudonym: PseudonymPath
) -> list[ConsentRecordOut]:
    """The consent history of the participant with this pseudonym, in the order it took effect."""
    in_scope(caller, study_id)
    return await rules.history(conn, study_id, pseudonym)
