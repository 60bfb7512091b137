"""What the ingester refused, with why."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api import pagination
from api.deps import ReadConnDep
from api.errors import responses
from api.models import DeadLetterOut
from api.pagination import CursorParam, PageLimit
from api.queries import dead_letters
from api.routes.lookup import require_letters_device
from api.security import CallerDep, scope_sites
from vitalab.wire.topics import ID_PATTERN

router = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"], responses=responses(404, 422))


@router.get("", response_model=list[DeadLetterOut], responses=pagination.PAGED)
async def list_dead_letters(
    conn: ReadConnDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    reason: Annotated[str | None, Query(max_length=64, description="e.g. schema, implausible_value")] = None,
    device_id: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="only this device (404 if never heard of)")
    ] = None,
    limit: PageLimit = 100,
    cursor: CursorParam = None,
) -> list[DeadLetterOut]:
    """What the ingester refused, newest first, with the reason and the offending field."""
    await require_letters_device(conn, device_id, "query.device_id", caller)
    page = await dead_letters.list_dead_letters(
        conn,
        reason,
        device_id,
        pagination.decode(cursor, dead_letters.KEYSET),
        limit,
        sites=scope_sites(caller),
    )
    pagination.link(request, response, page)
    return [
        DeadLetterOut(
            id=r.id,
            received_at=r.received_at,
            topic=r.topic,
            reason=r.reason,
            detail=r.detail,
            path=r.path,
            device_id=r.device_id,
            payload_size=r.payload_size,
            payload_preview=bytes(r.payload).decode("utf-8", errors="replace"),
        )
        for r in page.rows
    ]
