"""Site export requests through the API (gym operators): checked here, queued in ``export_jobs`` as jobs of
kind ``site``, run by the worker of the study exports (:mod:`api.exports.jobs`), read and downloaded as
:mod:`api.services.export_jobs` says (as the study exports: 409 while queued or running, 410 once failed).

* the site must exist (404, as one out of the caller's scope); the range must run forwards, ``slot_min`` must
  divide an hour, gzip applies to csv (422);
* the vitality threshold applied is the larger of the configured minimum and the ``k`` asked for, recorded
  in the job's parameters (the export applies exactly that);
* the job records who asked (the caller's key id or subject), when (the API's clock) and the canonical
  parameters; the answer is 202 with the job.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from psycopg import AsyncConnection

from api.errors import invalid, not_found
from api.exports.engine import ExportError
from api.exports.site import SiteExportParams
from api.pagination import Cursor, Page
from api.queries import exports as q
from api.queries import sites as sites_q
from api.services import export_jobs as jobs
from api.site_export_models import SiteExportIn, SiteExportOut


def _params(body: SiteExportIn, k_min: int) -> SiteExportParams:
    try:
        return SiteExportParams.canonical(
            body.datasets,
            body.format,
            body.since,
            body.until,
            gzip=body.gzip,
            slot_min=body.slot_min,
            breakdown=body.breakdown,
            k=max(k_min, body.k or 0),
        )
    except ExportError as exc:
        text = str(exc)
        field = next((f for f in ("since", "gzip", "slot_min", "breakdown") if f in text), "datasets")
        raise invalid(f"body.{field}", text) from None


async def require_site(conn: AsyncConnection, site_id: str) -> None:
    if not await sites_q.known(conn, site_id):
        raise not_found("site", site_id, field="path.site_id")


async def request(
    conn: AsyncConnection,
    site_id: str,
    body: SiteExportIn,
    requested_by: str,
    now: datetime,
    max_attempts: int,
    k_min: int,
) -> SiteExportOut:
    params = _params(body, k_min)
    async with conn.transaction():
        await require_site(conn, site_id)
        job = await q.insert_job(
            conn,
            q.SITE,
            export_id=uuid.uuid4(),
            subject_id=site_id,
            requested_by=requested_by,
            requested_at=now,
            params=params.as_json(),
            max_attempts=max_attempts,
        )
    return out(job)


def out(job: q.SiteJobRow) -> SiteExportOut:
    return SiteExportOut(
        **jobs.status_fields(job, f"/v1/sites/{job.site_id}/exports"),
        site_id=job.site_id,
        data_as_of=job.data_as_of,
    )


async def get(conn: AsyncConnection, site_id: str, export_id: uuid.UUID) -> q.SiteJobRow:
    await require_site(conn, site_id)
    return await jobs.get(conn, q.SITE, site_id, export_id)


async def listing(conn: AsyncConnection, site_id: str, cursor: Cursor, limit: int) -> Page[q.SiteJobRow]:
    await require_site(conn, site_id)
    return await q.list_jobs(conn, q.SITE, site_id, cursor, limit)
