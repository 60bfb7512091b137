"""Erasure of a participant (admins): ``POST /v1/participants/{participant_id}/erase``. The rules are in
:mod:`api.services.erasure`."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from api.deps import ConnDep, NowDep
from api.errors import responses
from api.research_models import ErasureReport
from api.security import CallerDep
from api.services import erasure

router = APIRouter(prefix="/v1/participants", tags=["participants"], responses=responses(404, 422))


@router.post("/{participant_id}/erase", response_model=ErasureReport)
async def erase_participant(
    conn: ConnDep, caller: CallerDep, now: NowDep, participant_id: UUID
) -> ErasureReport:
    """Remove everything attributable to the participant, in one transaction: profile, enrolments and
    consent history, sessions, daily series, check-ins, the data of their own straps while they had them,
    their link to machines' samples. Answers what was removed and the earlier exports that contained them
    (their files keep the participant's rows under the study's pseudonym). The audit log keeps a tombstone
    without personal data. 404 for an unknown (or already erased) participant."""
    return await erasure.erase(conn, participant_id, caller=caller, now=now)
