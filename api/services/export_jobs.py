"""What the study and the site exports share once a job is queued (:mod:`api.services.exports`,
:mod:`api.services.site_exports`): reading a job of a subject, its status fields, and its files.

* a job not of the subject answers 404;
* progress is rows_done / rows_total (0..1) while running, 1 once succeeded; files are listed (with their
  download URLs) once the job succeeded;
* files are served only for a succeeded job and only by the names its manifest lists (plus
  ``manifest.json``): 409 while the job is queued or running, 410 once it failed.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

from api.errors import Problem, not_found
from api.exports.engine import MANIFEST
from api.queries import exports as q
from api.research_models import ExportFile


async def get(conn: AsyncConnection, kind: q.Kind[q.J], subject_id: str, export_id: uuid.UUID) -> q.J:
    """The job ``export_id`` of the subject (which the caller checked exists)."""
    job = await q.get_job(conn, kind, subject_id, export_id)
    if job is None:
        raise not_found("export", str(export_id), field="path.export_id")
    return job


def status_fields(job: q.Job, base_url: str) -> dict[str, Any]:
    """The fields of a job's status that both kinds answer with (``base_url``: where its files are)."""
    files: list[ExportFile] = []
    if job.status == "succeeded" and job.manifest is not None:
        files = [
            ExportFile(
                name=f["name"],
                dataset=f["dataset"],
                media_type=f["media_type"],
                rows=f["rows"],
                bytes=f["bytes"],
                sha256=f["sha256"],
                url=f"{base_url}/{job.export_id}/files/{f['name']}",
            )
            for f in job.manifest["files"]
        ]
    progress: float | None = None
    if job.status == "succeeded":
        progress = 1.0
    elif job.rows_total:
        progress = min(job.rows_done / job.rows_total, 1.0)
    return {
        "export_id": job.export_id,
        "status": job.status,
        "requested_by": job.requested_by,
        "requested_at": job.requested_at,
        "parameters": job.params,
        "attempts": job.attempts,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "progress_step": job.progress_step,
        "rows_done": job.rows_done,
        "rows_total": job.rows_total,
        "progress": progress,
        "error": job.error,
        "files": files,
    }


def file_of(root: Path, job: q.Job, name: str) -> tuple[Path, str]:
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
