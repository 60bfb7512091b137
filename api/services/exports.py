"""Export requests through the API: checked here, queued in ``export_jobs``, run by the worker
(:mod:`api.exports.jobs`), read and downloaded as :mod:`api.services.export_jobs` says.

* the study must exist (404); every dataset's scope must be one the study asks for, the format must carry
  the datasets, the range must run forwards, a pseudonym subset must name enrolled participants (422);
* the job records who asked (the caller's key id or subject), when (the API's clock) and the canonical
  parameters; the answer is 202 with the job.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from psycopg import AsyncConnection

from api.errors import invalid
from api.exports.datasets import BY_NAME
from api.exports.engine import ExportError, ExportParams
from api.pagination import Cursor, Page
from api.queries import exports as q
from api.queries import studies as studies_q
from api.research_models import ExportIn, ExportOut
from api.services import export_jobs as jobs
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
            q.STUDY,
            export_id=uuid.uuid4(),
            subject_id=study_id,
            requested_by=requested_by,
            requested_at=now,
            params=params.as_json(),
            max_attempts=max_attempts,
        )
    return out(job)


def out(job: q.JobRow) -> ExportOut:
    return ExportOut(
        **jobs.status_fields(job, f"/v1/studies/{job.study_id}/exports"),
        study_id=job.study_id,
        consent_snapshot=job.consent_snapshot,
    )


async def get(conn: AsyncConnection, study_id: str, export_id: uuid.UUID) -> q.JobRow:
    await studies.require_study(conn, study_id)
    return await jobs.get(conn, q.STUDY, study_id, export_id)


async def listing(conn: AsyncConnection, study_id: str, cursor: Cursor, limit: int) -> Page[q.JobRow]:
    await studies.require_study(conn, study_id)
    return await q.list_jobs(conn, q.STUDY, study_id, cursor, limit)
