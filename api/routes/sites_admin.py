"""Sites as admins set them up: id, name, timezone and opening hours (``POST``/``PATCH`` for admins; reading
them for every role that works at a site). Without this a site exists once a device of it has reported (the
ingester's ``register`` policy), with the timezone UTC; such a site is completed with ``PATCH``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from api import pagination
from api.deps import ConnDep, NowDep
from api.errors import conflict, invalid, not_found, responses
from api.pagination import CursorParam, PageLimit
from api.params import SiteId
from api.queries import registration as q
from api.security import CallerDep, scope_sites
from api.site_models import SiteIn, SiteOut, SitePatch

router = APIRouter(prefix="/v1/sites", tags=["sites"], responses=responses(404, 422))


@router.post("", response_model=SiteOut, status_code=status.HTTP_201_CREATED, responses=responses(409))
async def create_site(conn: ConnDep, now: NowDep, body: SiteIn) -> SiteOut:
    """A new site. 409 when the id exists (also a site created by the ingester when a device of it reported
    first): ``PATCH`` that one."""
    async with conn.transaction():
        created = await q.insert_site(conn, body.id, body.name, body.timezone, body.opening_hours, now)
    if created is None:
        raise conflict(
            f"the site {body.id!r} exists; PATCH /v1/sites/{body.id} changes it",
            field="body.id",
        )
    return created


@router.get("", response_model=list[SiteOut], responses=pagination.PAGED)
async def list_sites(
    conn: ConnDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    limit: PageLimit = 1000,
    cursor: CursorParam = None,
) -> list[SiteOut]:
    """The caller's sites by id."""
    page = await q.list_sites(conn, scope_sites(caller), pagination.decode(cursor, q.SITE_KEYSET), limit)
    pagination.link(request, response, page)
    return page.rows


@router.get("/{site_id}", response_model=SiteOut)
async def get_site(conn: ConnDep, caller: CallerDep, site_id: SiteId) -> SiteOut:
    found = await q.get_site(conn, site_id) if caller.can_site(site_id) else None
    if found is None:
        raise not_found("site", site_id, field="path.site_id")
    return found


@router.patch("/{site_id}", response_model=SiteOut)
async def update_site(conn: ConnDep, caller: CallerDep, site_id: SiteId, body: SitePatch) -> SiteOut:
    """Change the fields given: ``name``, ``timezone`` (local days of the analytics from then on),
    ``opening_hours`` (null: not set)."""
    if "timezone" in body.model_fields_set and body.timezone is None:
        raise invalid("body.timezone", "a site always has a timezone")
    changes = {name: getattr(body, name) for name in sorted(body.model_fields_set)}
    async with conn.transaction():
        updated = await q.update_site(conn, site_id, changes) if caller.can_site(site_id) else None
    if updated is None:
        raise not_found("site", site_id, field="path.site_id")
    return updated
