"""Exports of a study's consented data (researchers of the study, admins): request (202 with a job), status
and progress, and the files, downloaded with HTTP range requests. The rules are in
:mod:`api.services.exports`; the jobs run in :class:`api.exports.jobs.Worker`, in a thread of this process
when the setting ``export_worker`` is on (and/or in ``vitalab export worker`` processes): a job outlives the
process that queued it.

A study outside the caller's studies answers 404 as an unknown one does. Every request and every download is
audited (:mod:`api.policy`: a write; downloads are ``personal``). A job keeps who asked: the caller's key id,
or its single-sign-on subject.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, FastAPI, Path, Request, Response, status
from fastapi.responses import FileResponse

from api import pagination
from api.deps import ConnDep, NowDep, SettingsDep
from api.errors import responses
from api.exports.jobs import Worker
from api.pagination import CursorParam, PageLimit
from api.queries import exports as q
from api.research_models import ExportIn, ExportOut
from api.routes.studies import StudyId, in_scope, who
from api.security import CallerDep
from api.services import export_jobs as files
from api.services import exports as rules
from vitalab.settings import Settings

logger = logging.getLogger(__name__)
STOP_TIMEOUT_S = 10.0
FILE_NAME = r"^[a-z_]+(\.[a-z0-9]+){1,3}$"
FILE_MEDIA_TYPES = (
    "application/json",
    "text/csv",
    "application/gzip",
    "application/vnd.apache.parquet",
    "application/fhir+ndjson",
    "application/x-ndjson",
)
DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the file", "content": {m: {} for m in FILE_MEDIA_TYPES}},
    206: {"description": "the requested byte range(s) of the file"},
    416: {"description": "range not satisfiable"},
    **responses(409, 410),
}


@asynccontextmanager
async def _worker(app: FastAPI) -> AsyncIterator[None]:
    """The export worker in a thread, while the app runs (setting ``export_worker``)."""
    settings = app.state.settings
    if not settings.export_worker:
        yield
        return
    worker = Worker(
        app.state.pool.conninfo,
        settings.exports_root(),
        clock=app.state.clock,
        lease_s=settings.export_lease_s,
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), name="export-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        # a job in progress stops at its next progress report and goes back to the queue
        stop.set()
        await asyncio.to_thread(thread.join, STOP_TIMEOUT_S)
        if thread.is_alive():  # stuck in one database call: its lease expires and another worker takes over
            logger.warning("the export worker did not stop within %.0f s", STOP_TIMEOUT_S)


router = APIRouter(prefix="/v1/studies", tags=["research"], responses=responses(404, 422), lifespan=_worker)

ExportId = Annotated[UUID, Path(description="an export id")]
FileName = Annotated[str, Path(pattern=FILE_NAME, description="a file name listed by the export")]


@router.post("/{study_id}/exports", response_model=ExportOut, status_code=status.HTTP_202_ACCEPTED)
async def request_export(
    conn: ConnDep,
    settings: SettingsDep,
    now: NowDep,
    caller: CallerDep,
    study_id: StudyId,
    body: ExportIn,
    response: Response,
) -> ExportOut:
    """Queue an export of the study's consented data: 202 with the job (``Location``: where to follow it).
    Consent is applied when the job runs, as it stands then."""
    in_scope(caller, study_id)
    job = await rules.request(conn, study_id, body, who(caller), now, settings.export_max_attempts)
    response.headers["Location"] = f"/v1/studies/{study_id}/exports/{job.export_id}"
    return job


@router.get("/{study_id}/exports", response_model=list[ExportOut], responses=pagination.PAGED)
async def list_exports(
    conn: ConnDep,
    caller: CallerDep,
    study_id: StudyId,
    request: Request,
    response: Response,
    limit: PageLimit = 100,
    cursor: CursorParam = None,
) -> list[ExportOut]:
    """The study's exports, newest first."""
    in_scope(caller, study_id)
    page = await rules.listing(conn, study_id, pagination.decode(cursor, q.KEYSET), limit)
    pagination.link(request, response, page)
    return [rules.out(j) for j in page.rows]


@router.get("/{study_id}/exports/{export_id}", response_model=ExportOut)
async def get_export(conn: ConnDep, caller: CallerDep, study_id: StudyId, export_id: ExportId) -> ExportOut:
    """Status and progress of an export; once it succeeded, its files (rows, bytes, SHA-256, URL)."""
    in_scope(caller, study_id)
    return rules.out(await rules.get(conn, study_id, export_id))


@router.get(
    "/{study_id}/exports/{export_id}/files/{name}",
    response_class=FileResponse,
    responses=DOWNLOAD_RESPONSES,
)
async def download(
    conn: ConnDep,
    settings: SettingsDep,
    caller: CallerDep,
    study_id: StudyId,
    export_id: ExportId,
    name: FileName,
) -> FileResponse:
    """A file of a succeeded export (``manifest.json`` or one it lists). ``Range`` requests are answered
    with 206 (RFC 9110); 409 while the export is queued or running, 410 when it failed."""
    in_scope(caller, study_id)
    return send_file(settings, await rules.get(conn, study_id, export_id), name)


def send_file(settings: Settings, job: q.Job, name: str) -> FileResponse:
    """File ``name`` of a job (a study's or a site's); Starlette's ``FileResponse`` answers ``Range``."""
    path, media_type = files.file_of(settings.exports_root(), job, name)
    return FileResponse(path, media_type=media_type, filename=name)
