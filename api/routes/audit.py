"""The audit log, for admins: newest first, filtered, in pages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api import pagination
from api.deps import ConnDep
from api.errors import responses
from api.models import AuditEntry, RoleName
from api.pagination import CursorParam, PageLimit
from api.params import Since, Until, check_range
from api.queries import audit

router = APIRouter(prefix="/v1/audit", tags=["access"], responses=responses(401, 403, 422))


@router.get("", response_model=list[AuditEntry], responses=pagination.PAGED)
async def list_audit(
    conn: ConnDep,
    request: Request,
    response: Response,
    since: Since = None,
    until: Until = None,
    key_id: Annotated[str | None, Query(max_length=64)] = None,
    subject: Annotated[str | None, Query(max_length=200)] = None,
    role: RoleName | None = None,
    action: Annotated[
        str | None, Query(max_length=200, description="e.g. `authenticate`, `POST /v1/participants`")
    ] = None,
    outcome: Annotated[
        str | None,
        Query(max_length=40, description="the outcome's start: `401` (every refused credential), `4`"),
    ] = None,
    limit: PageLimit = 100,
    cursor: CursorParam = None,
) -> list[AuditEntry]:
    """What was done, by whom, newest first, in ``[since, until)``."""
    check_range(since, until)
    page = await audit.list_entries(
        conn,
        since=since,
        until=until,
        key_id=key_id,
        subject=subject,
        role=role,
        action=action,
        outcome=outcome,
        cursor=pagination.decode(cursor, audit.KEYSET),
        limit=limit,
    )
    pagination.link(request, response, page)
    return [AuditEntry.model_validate(r, from_attributes=True) for r in page.rows]
