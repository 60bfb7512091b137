"""Site exports for gym operators (admins, operators of the site): a site's utilisation, occupancy and
suppressed vitality over a range of its local days as CSV or Parquet files. Request (202 with a job), status
and progress, and the files, downloaded with HTTP range requests; the rules are in
:mod:`api.services.site_exports`. The jobs run in the export worker of :mod:`api.routes.exports` (one queue
for study and site exports): a job outlives the process that queued it.

A site outside the caller's sites answers 404 as an unknown one does. Requests (writes) and downloads are
audited (:mod:`api.policy`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import FileResponse

from api import pagination
from api.deps import ConnDep, NowDep, SettingsDep
from api.errors import not_found, responses
from api.pagination import CursorParam, PageLimit
from api.params import SiteId
from api.queries import exports as q
from api.routes.exports import DOWNLOAD_RESPONSES, ExportId, FileName, send_file
from api.routes.studies import who
from api.security import Caller, CallerDep
from api.services import site_exports as rules
from api.site_export_models import SiteExportIn, SiteExportOut

router = APIRouter(prefix="/v1/sites", tags=["analytics"], responses=responses(404, 422))


def in_scope(caller: Caller, site_id: str) -> None:
    """404 for a site outside the caller's sites (as if it did not exist)."""
    if not caller.can_site(site_id):
        raise not_found("site", site_id, field="path.site_id")


@router.post("/{site_id}/exports", response_model=SiteExportOut, status_code=status.HTTP_202_ACCEPTED)
async def request_export(
    conn: ConnDep,
    settings: SettingsDep,
    now: NowDep,
    caller: CallerDep,
    site_id: SiteId,
    body: SiteExportIn,
    response: Response,
) -> SiteExportOut:
    """Queue an export of the site's aggregates over ``[since, until]`` (its local days): 202 with the job
    (``Location``: where to follow it). Vitality cells of fewer than ``k`` members are suppressed as in
    ``GET .../vitality`` (``k``: the configured minimum unless a larger one is asked for)."""
    in_scope(caller, site_id)
    job = await rules.request(
        conn, site_id, body, who(caller), now, settings.export_max_attempts, settings.analytics_k_anonymity
    )
    response.headers["Location"] = f"/v1/sites/{site_id}/exports/{job.export_id}"
    return job


@router.get("/{site_id}/exports", response_model=list[SiteExportOut], responses=pagination.PAGED)
async def list_exports(
    conn: ConnDep,
    caller: CallerDep,
    site_id: SiteId,
    request: Request,
    response: Response,
    limit: PageLimit = 100,
    cursor: CursorParam = None,
) -> list[SiteExportOut]:
    """The site's exports, newest first."""
    in_scope(caller, site_id)
    page = await rules.listing(conn, site_id, pagination.decode(cursor, q.KEYSET), limit)
    pagination.link(request, response, page)
    return [rules.out(j) for j in page.rows]


@router.get("/{site_id}/exports/{export_id}", response_model=SiteExportOut)
async def get_export(conn: ConnDep, caller: CallerDep, site_id: SiteId, export_id: ExportId) -> SiteExportOut:
    """Status and progress of a site export; once it succeeded, its files (rows, bytes, SHA-256, URL)."""
    in_scope(caller, site_id)
    return rules.out(await rules.get(conn, site_id, export_id))


@router.get(
    "/{site_id}/exports/{export_id}/files/{name}",
    response_class=FileResponse,
    responses=DOWNLOAD_RESPONSES,
)
async def download(
    conn: ConnDep,
    settings: SettingsDep,
    caller: CallerDep,
    site_id: SiteId,
    export_id: ExportId,
    name: FileName,
) -> FileResponse:
    """A file of a succeeded site export (``manifest.json`` or one it lists). ``Range`` requests are
    answered with 206 (RFC 9110); 409 while the export is queued or running, 410 when it failed."""
    in_scope(caller, site_id)
    return send_file(settings, await rules.get(conn, site_id, export_id), name)
