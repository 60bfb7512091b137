"""Export jobs: a queue in the ``export_jobs`` table and the worker that runs it. A job exports a study
(:mod:`api.exports.engine`) or a site's aggregates (:mod:`api.exports.site`, ``kind = 'site'``): one queue,
one worker, the same leases, attempts and atomic publication for both.

A job is created ``queued`` (by the API or the CLI). A worker claims one with ``FOR UPDATE SKIP LOCKED``
(several workers never take the same job), sets it ``running`` with a lease (``lease_owner``,
``lease_until`` = its clock + ``lease_s``) and counts the attempt. While it writes, every progress report
renews the lease (at most once a second); a renewal that finds the lease taken over (its worker was
presumed dead) stops the attempt and deletes its files.

Files are written into ``<root>/<export_id>/.attempt-<n>.tmp``; each is fsynced on close. Only when every
file and the manifest are written is the directory fsynced and renamed to ``<root>/<export_id>/attempt-<n>``,
then the job is marked ``succeeded`` with that directory in the same statement that checks the lease. A job
is therefore never ``succeeded`` with missing or half-written files, and files of an unfinished attempt are
never served (downloads read the directory of a succeeded job only).

A worker that dies (killed, machine lost) leaves its job ``running`` until the lease expires; the next claim
takes it again (a new attempt, the old temporary directory removed) or, once ``max_attempts`` attempts have
been made, marks it ``failed`` with the reason. An attempt that raises is retried the same way (``queued``
again, with the error noted) until ``max_attempts``, then ``failed``.

An attempt is given back (queued again, the attempt not counted) when its worker is stopped, and when a
participant whose data it holds was erased while it ran: it is never published (the erasure's report could
not have listed it); the next attempt's snapshot has nothing of them.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from api.exports import engine, site
from api.exports.engine import ExportParams, ExportSpec
from api.exports.files import fsync_dir

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
LEASE_S: Final = 120.0
RENEW_EVERY_S: Final = 1.0
MAX_ATTEMPTS: Final = 3


class LeaseLost(Exception):
    """Another worker took the job over: this attempt must stop and leave nothing behind."""


class Stopped(Exception):
    """The worker is asked to stop (its process shuts down): the attempt is abandoned, the job given back."""


@dataclass(frozen=True, slots=True)
class Claimed:
    export_id: UUID
    kind: str  # study, site (0011)
    study_id: str | None
    site_id: str | None
    requested_by: str
    requested_at: datetime
    params: dict[str, Any]
    attempts: int
    max_attempts: int

    def spec(self) -> ExportSpec:
        assert self.study_id is not None, "a study export names its study"
        return ExportSpec(
            self.export_id,
            self.study_id,
            self.requested_by,
            self.requested_at,
            ExportParams.from_json(self.params),
        )

    def site_spec(self) -> site.SiteExportSpec:
        assert self.site_id is not None, "a site export names its site"
        return site.SiteExportSpec(
            self.export_id,
            self.site_id,
            self.requested_by,
            self.requested_at,
            site.SiteExportParams.from_json(self.params),
        )


def create(
    conn: psycopg.Connection,
    *,
    export_id: UUID,
    subject_id: str,
    requested_by: str,
    requested_at: datetime,
    params: ExportParams | site.SiteExportParams,
    max_attempts: int = MAX_ATTEMPTS,
) -> None:
    """Queue a job (the CLI's way; the API queues through api.queries.exports): of the site ``subject_id``
    for site export parameters, else of the study ``subject_id``."""
    kind, column = ("site", "site_id") if isinstance(params, site.SiteExportParams) else ("study", "study_id")
    conn.execute(
        sql.SQL(
            "INSERT INTO export_jobs (export_id, kind, {}, requested_by, requested_at, params, max_attempts) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)"
        ).format(sql.Identifier(column)),
        (export_id, kind, subject_id, requested_by, requested_at, Jsonb(params.as_json()), max_attempts),
    )


_PICK = """
SELECT export_id, status, attempts, max_attempts FROM export_jobs
WHERE (status = 'queued') OR (status = 'running' AND lease_until < %(now)s)
ORDER BY requested_at, export_id
LIMIT 1
FOR UPDATE SKIP LOCKED"""
_PICK_ONE = """
SELECT export_id, status, attempts, max_attempts FROM export_jobs
WHERE export_id = %(export_id)s AND ((status = 'queued') OR (status = 'running' AND lease_until < %(now)s))
FOR UPDATE SKIP LOCKED"""


def claim(
    conn: psycopg.Connection, owner: str, now: datetime, lease_s: float, export_id: UUID | None = None
) -> Claimed | None:
    """Take the oldest claimable job (or ``export_id`` only): queued, or running with an expired lease. A job
    whose lease expired after its last allowed attempt is failed on the way. ``conn`` is in autocommit."""
    while True:
        with conn.transaction():
            params = {"now": now, "export_id": export_id}
            row = conn.execute(_PICK if export_id is None else _PICK_ONE, params).fetchone()
            if row is None:
                return None
            job_id, status, attempts, max_attempts = row
            if status == "running" and attempts >= max_attempts:
                conn.execute(
                    "UPDATE export_jobs SET status = 'failed', finished_at = %s, lease_owner = NULL, "
                    "lease_until = NULL, error = %s WHERE export_id = %s",
                    (
                        now,
                        f"the worker of attempt {attempts} of {max_attempts} stopped renewing its lease "
                        "(it crashed or was stopped); no attempt is left",
                        job_id,
                    ),
                )
                logger.warning("export %s failed: lease expired on its last attempt", job_id)
                continue
            if status == "running":
                logger.warning("export %s: lease of attempt %d expired; trying again", job_id, attempts)
            with conn.cursor(row_factory=class_row(Claimed)) as cur:
                cur.execute(
                    "UPDATE export_jobs SET status = 'running', attempts = attempts + 1, lease_owner = %s, "
                    "lease_until = %s, started_at = %s, rows_done = 0, rows_total = NULL, "
                    "progress_step = NULL "
                    "WHERE export_id = %s RETURNING export_id, kind, study_id, site_id, requested_by, "
                    "requested_at, params, attempts, max_attempts",
                    (owner, now + timedelta(seconds=lease_s), now, job_id),
                )
                claimed = cur.fetchone()
            assert claimed is not None  # the row is locked
            return claimed


def _held(conn: psycopg.Connection, job: Claimed, owner: str, sets: str, values: tuple[Any, ...]) -> bool:
    cur = conn.execute(
        "UPDATE export_jobs SET " + sets + " "  # sets: constant SQL of this module
        "WHERE export_id = %s AND status = 'running' AND lease_owner = %s AND attempts = %s",
        (*values, job.export_id, owner, job.attempts),
    )
    return cur.rowcount == 1


class _JobProgress:
    """Progress of an attempt into its job row; renews the lease; raises LeaseLost once it is gone."""

    def __init__(
        self, conn: psycopg.Connection, job: Claimed, owner: str, clock: Clock, lease_s: float
    ) -> None:
        self.conn, self.job, self.owner, self.clock, self.lease_s = conn, job, owner, clock, lease_s
        self.rows = 0
        self.step_name: str | None = None
        self._last = 0.0

    def _save(self, force: bool = False) -> None:
        mono = time.monotonic()
        if not force and mono - self._last < RENEW_EVERY_S:
            return
        self._last = mono
        until = self.clock() + timedelta(seconds=self.lease_s)
        if not _held(
            self.conn,
            self.job,
            self.owner,
            "lease_until = %s, rows_done = %s, progress_step = %s",
            (until, self.rows, self.step_name),
        ):
            raise LeaseLost(f"export {self.job.export_id}: attempt {self.job.attempts} lost its lease")

    def totals(self, rows: Mapping[str, int]) -> None:
        held = _held(
            self.conn,
            self.job,
            self.owner,
            "rows_total = %s, lease_until = %s",
            (sum(rows.values()), self.clock() + timedelta(seconds=self.lease_s)),
        )
        if not held:
            raise LeaseLost(f"export {self.job.export_id}: attempt {self.job.attempts} lost its lease")

    def step(self, dataset: str) -> None:
        self.step_name = dataset
        self._save(force=True)

    def advance(self, rows: int) -> None:
        self.rows += rows
        self._save()


class _Stoppable:
    """Progress that raises :class:`Stopped` at the next report once ``stop`` is set."""

    def __init__(self, inner: engine.Progress, stop: threading.Event) -> None:
        self.inner, self.stop = inner, stop

    def _check(self) -> None:
        if self.stop.is_set():
            raise Stopped

    def totals(self, rows: Mapping[str, int]) -> None:
        self._check()
        self.inner.totals(rows)

    def step(self, dataset: str) -> None:
        self._check()
        self.inner.step(dataset)

    def advance(self, rows: int) -> None:
        self._check()
        self.inner.advance(rows)


def _erased(conn: psycopg.Connection, participants: Sequence[UUID]) -> list[UUID]:
    """Those of ``participants`` that no longer exist; the others are share-locked until the transaction
    ends (an erasure of one of them waits)."""
    if not participants:
        return []
    rows = conn.execute(
        "SELECT participant_id FROM participants WHERE participant_id = ANY (%s) FOR SHARE",
        (list(participants),),
    ).fetchall()
    present = {r[0] for r in rows}
    return [p for p in participants if p not in present]


@dataclass(frozen=True, slots=True)
class Outcome:
    export_id: UUID
    status: str  # succeeded, retry, failed, lost, stopped
    error: str | None = None
    directory: Path | None = None


def job_dir(root: Path, export_id: UUID) -> Path:
    return root / str(export_id)


class Worker:
    """Runs export jobs from the database at ``database_url`` into directories under ``root``."""

    def __init__(
        self,
        database_url: str,
        root: Path,
        *,
        clock: Clock,
        lease_s: float = LEASE_S,
        owner: str | None = None,
        count_rows: bool = True,
        on_progress: Callable[[engine.Progress], engine.Progress] | None = None,
    ) -> None:
        self.database_url = database_url
        self.root = root
        self.clock = clock
        self.lease_s = lease_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.count_rows = count_rows
        self.on_progress = on_progress

    def run_one(
        self,
        export_id: UUID | None = None,
        *,
        target: Path | None = None,
        stop: threading.Event | None = None,
    ) -> Outcome | None:
        """Claim and run one job (``export_id`` only, when given); None when there was none to claim.
        ``target``: write the files into this directory (new or empty) instead of under ``root``. ``stop``:
        once set, the attempt is abandoned at its next progress report and the job given back."""
        with psycopg.connect(self.database_url, autocommit=True) as ctl:
            job = claim(ctl, self.owner, self.clock(), self.lease_s, export_id)
            if job is None:
                return None
            return self._attempt(ctl, job, target, stop)

    def run_pending(self, stop: threading.Event | None = None) -> list[Outcome]:
        """Run jobs until none is left to claim (or ``stop`` is set: the job in hand is given back)."""
        done = []
        while stop is None or not stop.is_set():
            outcome = self.run_one(stop=stop)
            if outcome is None:
                break
            done.append(outcome)
        return done

    def run_forever(self, stop: threading.Event, poll_s: float = 2.0) -> None:
        """Run jobs until ``stop`` is set, looking for new ones every ``poll_s`` seconds. Once ``stop`` is set
        the job in hand stops at its next progress report (within one block of rows) and goes back to the
        queue without counting the attempt: a worker stopped with its process leaves no lease to wait for."""
        logger.info("export worker %s: started", self.owner)
        while not stop.is_set():
            try:
                self.run_pending(stop)
            except psycopg.Error as exc:  # no database yet, or not migrated: look again later
                logger.warning("export worker: cannot read the job queue (%s); retrying", exc)
            stop.wait(poll_s)
        logger.info("export worker %s: stopped", self.owner)

    def _attempt(
        self,
        ctl: psycopg.Connection,
        job: Claimed,
        target: Path | None = None,
        stop: threading.Event | None = None,
    ) -> Outcome:
        if target is None:
            base = job_dir(self.root, job.export_id)
            base.mkdir(parents=True, exist_ok=True)
            for stale in base.glob(".attempt-*.tmp"):  # left by a dead worker's attempt
                shutil.rmtree(stale, ignore_errors=True)
            tmp = base / f".attempt-{job.attempts}.tmp"
            final = base / f"attempt-{job.attempts}"
            shutil.rmtree(final, ignore_errors=True)
        else:
            final = target.resolve()
            base = final.parent
            base.mkdir(parents=True, exist_ok=True)
            if final.exists():
                final.rmdir()  # refused unless empty: nothing of the user's is overwritten
            tmp = base / f".{final.name}.attempt-{job.attempts}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        progress: engine.Progress = _JobProgress(ctl, job, self.owner, self.clock, self.lease_s)
        if self.on_progress is not None:
            progress = self.on_progress(progress)
        if stop is not None:
            progress = _Stoppable(progress, stop)
        snapshot = self.clock()
        try:
            with psycopg.connect(self.database_url) as data:
                if job.kind == "site":
                    result = site.run(data, job.site_spec(), tmp, snapshot, progress)
                else:
                    result = engine.run(data, job.spec(), tmp, snapshot, progress, count_rows=self.count_rows)
            fsync_dir(tmp)
            os.rename(tmp, final)
            fsync_dir(base)
        except LeaseLost as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            logger.warning("%s", exc)
            return Outcome(job.export_id, "lost", str(exc))
        except Stopped:
            shutil.rmtree(tmp, ignore_errors=True)
            self._give_back(ctl, job, None)
            logger.info(
                "export %s: attempt %d stopped with its worker; queued again", job.export_id, job.attempts
            )
            return Outcome(job.export_id, "stopped")
        except engine.ExportError as exc:  # the request cannot be met: trying again would not help
            shutil.rmtree(tmp, ignore_errors=True)
            return self._failed(ctl, job, str(exc), final_attempt=True)
        except (psycopg.Error, OSError, ValueError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            return self._failed(ctl, job, f"{type(exc).__name__}: {exc}")
        with ctl.transaction():
            # a participant erased while the export ran must not be published (the next attempt's snapshot
            # has nothing of them); the share lock makes an erasure yet to come wait and then list this export
            erased = _erased(ctl, result.participants)
            done = not erased and _held(
                ctl,
                job,
                self.owner,
                "status = 'succeeded', finished_at = %s, lease_owner = NULL, lease_until = NULL, "
                "directory = %s, manifest = %s, consent_snapshot = %s, error = NULL, rows_done = %s",
                (
                    self.clock(),
                    str(final.relative_to(self.root)) if target is None else str(final),
                    Jsonb(result.manifest),
                    snapshot,
                    sum(f.rows or 0 for f in result.files),
                ),
            )
            if done:
                with ctl.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO export_contents (export_id, participant_id) VALUES (%s, %s)",
                        [(job.export_id, p) for p in result.participants],
                    )
        if erased:
            shutil.rmtree(final, ignore_errors=True)
            why = f"{len(erased)} participant(s) of it were erased while it ran; running it again"
            self._give_back(ctl, job, why)
            logger.info("export %s: %s", job.export_id, why)
            return Outcome(job.export_id, "retry", why)
        if not done:
            shutil.rmtree(final, ignore_errors=True)
            return Outcome(job.export_id, "lost", "the lease was taken over before the job was marked done")
        if target is None:
            for other in base.glob("attempt-*"):
                if other != final:
                    shutil.rmtree(other, ignore_errors=True)
        logger.info("export %s succeeded (attempt %d)", job.export_id, job.attempts)
        return Outcome(job.export_id, "succeeded", None, final)

    def _give_back(self, ctl: psycopg.Connection, job: Claimed, note: str | None) -> None:
        """The job queued again without counting this attempt (it did not fail: it was interrupted)."""
        _held(
            ctl,
            job,
            self.owner,
            "status = 'queued', attempts = attempts - 1, lease_owner = NULL, lease_until = NULL, "
            "started_at = NULL, rows_done = 0, rows_total = NULL, progress_step = NULL, error = %s",
            (note,),
        )

    def _failed(
        self, ctl: psycopg.Connection, job: Claimed, error: str, *, final_attempt: bool = False
    ) -> Outcome:
        last = final_attempt or job.attempts >= job.max_attempts
        status = "failed" if last else "queued"
        logger.warning("export %s attempt %d failed (%s): %s", job.export_id, job.attempts, status, error)
        _held(
            ctl,
            job,
            self.owner,
            "status = %s, error = %s, lease_owner = NULL, lease_until = NULL, finished_at = %s",
            (status, error, self.clock() if last else None),
        )
        return Outcome(job.export_id, "failed" if last else "retry", error)
