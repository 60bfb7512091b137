"""Sessions assembled by the analytics job (``vitalab analytics run``)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request, Response

from analytics.version import ALGORITHM_VERSION
from api import pagination
from api.deps import ReadConnDep
from api.errors import not_found, responses
from api.models import SessionDetail, SessionOut
from api.pagination import CursorParam, PageLimit
from api.params import DeviceFilter, Since, SiteFilter, Until, check_range
from api.policy import sees_participants
from api.queries import sessions
from api.routes.lookup import require_device, require_participant, require_site
from api.security import CallerDep, scope_sites

router = APIRouter(prefix="/v1/sessions", tags=["analytics"], responses=responses(404, 422))


@router.get("", response_model=list[SessionOut], responses=pagination.PAGED)
async def list_sessions(
    conn: ReadConnDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    site: SiteFilter = None,
    device: DeviceFilter = None,
    participant: Annotated[UUID | None, Query(description="only this participant (404 if unknown)")] = None,
    since: Since = None,
    until: Until = None,
    algorithm_version: Annotated[str, Query(max_length=32)] = ALGORITHM_VERSION,
    limit: PageLimit = 100,
    cursor: CursorParam = None,
) -> list[SessionOut]:
    """Sessions starting in ``[since, until)`` in start order. With neither bound, the newest page
    (``Link: rel="prev"`` leads to older sessions). ``device`` matches any device of a session (machine or
    strap). Operators see sessions without their participant (``participant_id`` null)."""
    check_range(since, until)
    await require_site(conn, site, "query.site", caller)
    await require_device(conn, device, "query.device", caller)
    await require_participant(conn, participant, "query.participant", caller)
    default = pagination.FROM_END if since is None and until is None else pagination.FROM_START
    page = await sessions.list_sessions(
        conn,
        algorithm_version=algorithm_version,
        site=site,
        device=device,
        participant=participant,
        since=since,
        until=until,
        cursor=pagination.decode(cursor, sessions.KEYSET, default),
        limit=limit,
        sites=scope_sites(caller),
        with_participants=sees_participants(caller),
    )
    pagination.link(request, response, page)
    return page.rows


@router.get("/{session_id}", response_model=SessionDetail)
async def get_session(
    conn: ReadConnDep, caller: CallerDep, session_id: Annotated[int, Path(ge=1, le=2**63 - 1)]
) -> SessionDetail:
    """One session with its full metric summary (for operators without its participant)."""
    found = await sessions.get_session(conn, session_id)
    if found is None or not caller.can_site(found.site_id):
        raise not_found("session", session_id, field="path.session_id")
    return found if sees_participants(caller) else found.model_copy(update={"participant_id": None})
