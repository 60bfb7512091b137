"""Export requests through the API: checked here, queued in ``export_jobs``, run by the worker
(:mod:`api.exports.jobs`), downloaded from the directory of the succeeded job.

* the study must exist (404); every dataset's scope must be one the study asks for, the format must carry
  the datasets, the range must run forwards, a pseudonym subset must name enrolled participants (422);
* the job records who asked (the caller's key id or subject), when (the API's clock) and the canonical
  parameters; the answer is 202 with the job;
* files are served only for a succeeded job and only by the names its manifest lists (plus
  ``manifest.json``): 409 while the job is queued or running, 410 once it failed.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from psycopg import AsyncConnection

from api.errors import Problem, invalid, not_found
from api.exports.datasets import BY_NAME
from api.exports.engine import MANIFEST, ExportError, ExportParams
from api.pagination import Cursor, Page
from api.queries import exports as q
from api.queries import studies as studies_q
from api.research_models import ExportFile, ExportIn, ExportOut
from api.services import studies


def _params(body: ExportIn) -> ExportParams:
    try:
        return ExportParams.canonical(
            body.datasets, body.format, body.since, body.until, body.pseudonyms, body.gzip
        )
    except ExportError as exc:
        field = (
            "body.since" if "since" in str(exc) else "body.gzip" if "gzip" in str(exc) else "body.datasets"
        )
        raise invalid(field, str(exc)) from None


async def request(
    conn: AsyncConnection, study_id: str, body: ExportIn, requested_by: str, now: datetime, max_attempts: int
) -> ExportOut:
    params = _params(body)
    async with conn.transaction():
        study = await studies.require_study(conn, study_id)
        missing = [d for d in params.datasets if BY_NAME[d].scope not in study.scopes]
        if missing:
            raise invalid(
                "body.datasets",
                f"study {study_id!r} does not ask for the scope of {', '.join(missing)} "
                f"({', '.join(f'{d}: {BY_NAME[d].scope}' for d in missing)})",
            )
        if params.pseudonyms is not None:
            pads = await studies.study_pads(conn, study_id)
            known = await studies_q.known_pseudonyms(conn, study_id, pads, params.pseudonyms)
            unknown = [p for p in params.pseudonyms if p not in known]
            if unknown:
                shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
                raise invalid("body.pseudonyms", f"not enrolled in {study_id!r}: {shown}")
        job = await q.insert_job(
            conn,
            export_id=uuid.uuid4(),
            study_id=study_id,
            requested_by=requested_by,
            requested_at=now,
            params=params.as_json(),
            max_attempts=max_attempts,
        )
    return out(job)


def out(job: q.JobRow) -> ExportOut:
    files: list[ExportFile] = []
    base = f"/v1/studies/{job.study_id}/exports/{job.export_id}/files/"
    if job.status == "succeeded" and job.manifest is not None:
        files = [
            ExportFile(
                name=f["name"],
                dataset=f["dataset"],
                media_type=f["media_type"],
                rows=f["rows"],
                bytes=f["bytes"],
                sha256=f["sha256"],
                url=base + f["name"],
            )
            for f in job.manifest["files"]
        ]
    progress: float | None = None
    if job.status == "succeeded":
        progress = 1.0
    elif job.rows_total:
        progress = min(job.rows_done / job.rows_total, 1.0)
    return ExportOut(
        export_id=job.export_id,
        study_id=job.study_id,
        status=job.status,
        requested_by=job.requested_by,
        requested_at=job.requested_at,
        parameters=job.params,
        attempts=job.attempts,
        started_at=job.started_at,
        finished_at=job.finished_at,
        progress_step=job.progress_step,
        rows_done=job.rows_done,
        rows_total=job.rows_total,
        progress=progress,
        error=job.error,
        consent_snapshot=job.consent_snapshot,
        files=files,
    )


async def get(conn: AsyncConnection, study_id: str, export_id: uuid.UUID) -> q.JobRow:
    await studies.require_study(conn, study_id)
    job = await q.get_job(conn, study_id, export_id)
    if job is None:
        raise not_found("export", str(export_id), field="path.export_id")
    return job


async def listing(conn: AsyncConnection, study_id: str, cursor: Cursor, limit: int) -> Page[q.JobRow]:
    await studies.require_study(conn, study_id)
    return await q.list_jobs(conn, study_id, cursor, limit)


class Published(Protocol):
    """What serving a file needs of a job (a study's or a site's)."""

    @property
    def export_id(self) -> uuid.UUID: ...
    @property
    def status(self) -> str: ...
    @property
    def error(self) -> str | None: ...
    @property
    def directory(self) -> str | None: ...
    @property
    def manifest(self) -> dict[str, Any] | None: ...


def file_of(root: Path, job: Published, name: str) -> tuple[Path, str]:
    """The path and media type of file ``name`` of a succeeded job."""
    if job.status in ("queued", "running"):
        raise Problem(409, f"export {job.export_id} is {job.status}; its files come once it succeeded")
    if job.status == "failed" or job.directory is None or job.manifest is None:
        raise Problem(410, f"export {job.export_id} failed: {job.error}")
    if name == MANIFEST:
        return root / job.directory / MANIFEST, "application/json"
    for f in job.manifest["files"]:
        if f["name"] == name:
            return root / job.directory / name, str(f["media_type"])
    raise not_found("file", name, field="path.name")
