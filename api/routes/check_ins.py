"""Check-ins through the API (a kiosk's calls); the rules are in :mod:`api.services.check_ins`."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, Query, Request, Response, status

from api import pagination
from api.deps import ConnDep, NowDep, SettingsDep
from api.errors import responses
from api.models import CheckInIn, CheckInOut, CheckOutIn
from api.pagination import CursorParam, PageLimit
from api.params import DeviceFilter, DeviceId, Since, Until, check_range
from api.queries import check_ins
from api.routes.lookup import require_device, require_participant
from api.security import CallerDep, scope_sites
from api.services import check_ins as rules

router = APIRouter(prefix="/v1/check-ins", tags=["participants"], responses=responses(404, 422))


@router.post("", response_model=CheckInOut, status_code=status.HTTP_201_CREATED, responses=responses(409))
async def check_in(
    conn: ConnDep, caller: CallerDep, settings: SettingsDep, now: NowDep, body: CheckInIn, response: Response
) -> CheckInOut:
    """Check a participant in on a device from ``started_at`` (default: now; not before 2000 nor more than
    ``max_future_s`` ahead). 200 instead of 201 for the same check-in again or one already open; an open
    check-in of the device closes at ``started_at``; 409 for an overlap."""
    outcome = await rules.check_in(conn, body, now, settings.max_future_s, caller)
    if not outcome.created:
        response.status_code = status.HTTP_200_OK
    return outcome.check_in


@router.post("/{device_id}/end", response_model=CheckInOut, responses=responses(409))
async def end_check_in(
    conn: ConnDep,
    caller: CallerDep,
    settings: SettingsDep,
    now: NowDep,
    device_id: DeviceId,
    body: Annotated[CheckOutIn | None, Body()] = None,
) -> CheckInOut:
    """End the device's open check-in at ``ended_at`` (default: now); 409 without an open check-in."""
    return await rules.check_out(conn, device_id, body or CheckOutIn(), now, settings.max_future_s, caller)


@router.get("", response_model=list[CheckInOut], responses=pagination.PAGED)
async def list_check_ins(
    conn: ConnDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    device: DeviceFilter = None,
    participant: Annotated[UUID | None, Query(description="only this participant (404 if unknown)")] = None,
    since: Since = None,
    until: Until = None,
    limit: PageLimit = 1000,
    cursor: CursorParam = None,
) -> list[CheckInOut]:
    """Check-ins overlapping ``[since, until)`` (either bound optional), by start (then device)."""
    check_range(since, until)
    await require_device(conn, device, "query.device", caller)
    await require_participant(conn, participant, "query.participant", caller)
    page = await check_ins.list_check_ins(
        conn,
        device=device,
        participant=participant,
        since=since,
        until=until,
        cursor=pagination.decode(cursor, check_ins.KEYSET),
        limit=limit,
        sites=scope_sites(caller),
    )
    pagination.link(request, response, page)
    return page.rows
