"""The newest sample of every device."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api import pagination
from api.deps import ReadConnDep
from api.errors import responses
from api.models import SampleOut
from api.pagination import CursorParam, PageLimit
from api.params import SiteFilter
from api.queries import samples
from api.routes.lookup import require_site
from api.security import CallerDep, scope_sites

router = APIRouter(prefix="/v1/samples", tags=["samples"], responses=responses(404, 422))


@router.get("/latest", response_model=list[SampleOut], responses=pagination.PAGED)
async def latest_samples(
    conn: ReadConnDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    site: SiteFilter = None,
    limit: PageLimit = 1000,
    cursor: CursorParam = None,
) -> list[SampleOut]:
    """The newest sample of every device that has one, by device id (one index probe per device)."""
    await require_site(conn, site, "query.site", caller)
    page = await samples.latest(
        conn, site, pagination.decode(cursor, samples.LATEST_KEYSET), limit, sites=scope_sites(caller)
    )
    pagination.link(request, response, page)
    return page.rows
