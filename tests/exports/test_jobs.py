"""Export jobs: a worker killed mid-way leaves nothing served; its job is taken over after the lease and
finished, or failed with the reason once no attempt is left; concurrent workers never share a job."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from api.exports import engine, jobs
from api.exports.engine import ExportParams
from api.exports.site import SiteExportParams
from tests.api.support import app_at, serve
from tests.exports.world import SNAPSHOT, T0
from tests.support.helpers import wait_until

LEASE_S = 60.0
REPO = Path(__file__).resolve().parents[2]

_STALLED_WORKER = """
import sys, threading
from datetime import datetime
from pathlib import Path
from api.exports.jobs import Worker

class Stall:
    def __init__(self, inner):
        self.inner = inner
    def totals(self, rows):
        self.inner.totals(rows)
    def step(self, dataset):
        self.inner.step(dataset)
    def advance(self, rows):
        self.inner.advance(rows)
        print("WRITING", flush=True)
        threading.Event().wait()  # stalls mid-file until killed

now = datetime.fromisoformat(sys.argv[3])
Worker(sys.argv[1], Path(sys.argv[2]), clock=lambda: now, lease_s=60.0, on_progress=Stall).run_one()
"""


def queue(
    url: str,
    max_attempts: int = 3,
    *,
    subject_id: str = "s-a",
    params: ExportParams | SiteExportParams | None = None,
    at: datetime = T0,
) -> uuid.UUID:
    """Queue a job (by default of study s-a: its samples and sessions as csv)."""
    export_id = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        jobs.create(
            conn,
            export_id=export_id,
            subject_id=subject_id,
            requested_by="tester",
            requested_at=at,
            params=params or ExportParams.canonical(["samples", "sessions"], "csv"),
            max_attempts=max_attempts,
        )
    return export_id


def job(url: str, export_id: uuid.UUID) -> tuple[str, int, str | None, str | None]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT status, attempts, error, directory FROM export_jobs WHERE export_id = %s", (export_id,)
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3]


def kill_mid_way(url: str, root: Path) -> None:
    """Run a worker in a process until it is writing its first file, then SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _STALLED_WORKER, url, str(root), SNAPSHOT.isoformat()],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the worker writes (or dies: then the line is empty)
        assert line.strip() == b"WRITING", line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_killed_worker_is_taken_over_after_its_lease(world: str, tmp_path: Path) -> None:
    export_id = queue(world)
    kill_mid_way(world, tmp_path)
    status, attempts, _, directory = job(world, export_id)
    assert (status, attempts, directory) == ("running", 1, None)
    partial = tmp_path / str(export_id) / ".attempt-1.tmp"
    assert partial.is_dir()
    assert not (partial / "manifest.json").exists()
    assert not (tmp_path / str(export_id) / "attempt-1").exists()

    # within the lease nobody takes it; after it, the next worker does and finishes
    early = jobs.Worker(
        world, tmp_path, clock=lambda: SNAPSHOT + timedelta(seconds=LEASE_S - 1), lease_s=LEASE_S
    )
    assert early.run_one() is None
    later = jobs.Worker(
        world, tmp_path, clock=lambda: SNAPSHOT + timedelta(seconds=LEASE_S + 1), lease_s=LEASE_S
    )
    outcome = later.run_one()
    assert outcome is not None
    assert outcome.status == "succeeded"
    status, attempts, _, directory = job(world, export_id)
    assert (status, attempts, directory) == ("succeeded", 2, f"{export_id}/attempt-2")
    assert not partial.exists()
    final = tmp_path / str(export_id) / "attempt-2"
    manifest = json.loads((final / "manifest.json").read_text())
    for f in manifest["files"]:
        assert hashlib.sha256((final / f["name"]).read_bytes()).hexdigest() == f["sha256"]
    assert [p.name for p in (tmp_path / str(export_id)).iterdir()] == ["attempt-2"]


def test_a_job_whose_last_attempt_died_is_failed_with_the_reason(world: str, tmp_path: Path) -> None:
    export_id = queue(world, max_attempts=1)
    kill_mid_way(world, tmp_path)
    later = jobs.Worker(
        world, tmp_path, clock=lambda: SNAPSHOT + timedelta(seconds=LEASE_S + 1), lease_s=LEASE_S
    )
    assert later.run_one() is None  # nothing left to run: the job was failed on the way
    status, attempts, error, directory = job(world, export_id)
    assert (status, attempts, directory) == ("failed", 1, None)
    assert error is not None
    assert "lease" in error


def test_a_request_that_cannot_be_met_fails_at_once(world: str, tmp_path: Path) -> None:
    with psycopg.connect(world) as conn:
        conn.execute("UPDATE studies SET scopes = '{derived_metrics}' WHERE study_id = 's-a'")
    export_id = queue(world)
    outcome = jobs.Worker(world, tmp_path, clock=lambda: SNAPSHOT).run_one()
    assert outcome is not None
    assert outcome.status == "failed"
    status, attempts, error, _ = job(world, export_id)
    assert (status, attempts) == ("failed", 1)
    assert error is not None
    assert "samples" in error
    assert list((tmp_path / str(export_id)).iterdir()) == []


def test_concurrent_workers_never_share_a_job(world: str, tmp_path: Path) -> None:
    ids = {queue(world) for _ in range(4)}
    barrier = threading.Barrier(4)
    claimed: list[uuid.UUID] = []
    lock = threading.Lock()

    def claim_one(n: int) -> None:
        with psycopg.connect(world, autocommit=True) as conn:
            barrier.wait(timeout=30)
            got = jobs.claim(conn, f"w{n}", SNAPSHOT, LEASE_S)
            assert got is not None
            with lock:
                claimed.append(got.export_id)

    threads = [threading.Thread(target=claim_one, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sorted(claimed) == sorted(ids)
    with psycopg.connect(world) as conn:
        owners = conn.execute(
            "SELECT count(DISTINCT lease_owner) FROM export_jobs WHERE status = 'running'"
        ).fetchone()
    assert owners == (4,)


def test_a_stopped_worker_gives_its_job_back_at_once(world: str, tmp_path: Path) -> None:
    """Stopping a worker (its process shuts down) abandons the attempt at its next progress report: the job is
    queued again without counting the attempt, no lease to wait for, nothing left on disk."""
    export_id = queue(world)
    writing, resume = threading.Event(), threading.Event()

    class Hold:
        def __init__(self, inner: engine.Progress) -> None:
            self.inner = inner

        def totals(self, rows: Mapping[str, int]) -> None:
            self.inner.totals(rows)

        def step(self, dataset: str) -> None:
            self.inner.step(dataset)
            if not writing.is_set():  # the first dataset: hold the attempt here until told
                writing.set()
                assert resume.wait(30)

        def advance(self, rows: int) -> None:
            self.inner.advance(rows)

    worker = jobs.Worker(world, tmp_path, clock=lambda: SNAPSHOT, lease_s=LEASE_S, on_progress=Hold)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop, 0.05))
    thread.start()
    try:
        assert writing.wait(30)
        assert job(world, export_id)[:2] == ("running", 1)
        stop.set()
    finally:
        resume.set()
        thread.join(30)
    assert not thread.is_alive()
    status, attempts, _, directory = job(world, export_id)
    assert (status, attempts, directory) == ("queued", 0, None)
    assert list((tmp_path / str(export_id)).iterdir()) == []
    # the next worker takes it at once (no lease to wait out) as a first attempt
    outcome = jobs.Worker(world, tmp_path, clock=lambda: SNAPSHOT, lease_s=LEASE_S).run_one()
    assert outcome is not None
    assert outcome.status == "succeeded"
    assert job(world, export_id)[1] == 1


@pytest.mark.asyncio
async def test_the_api_runs_the_worker_for_its_lifetime(world: str, tmp_path: Path) -> None:
    """``export_worker`` on: the API process runs queued jobs in a thread that starts and stops with it."""
    app = app_at(world, SNAPSHOT, export_worker=True, export_dir=tmp_path)
    async with serve(app) as http:
        assert [t.name for t in threading.enumerate()].count("export-worker") == 1
        asked = await http.post("/v1/studies/s-a/exports", json={"datasets": ["sessions"], "format": "csv"})
        assert asked.status_code == 202, asked.text

        async def done() -> bool:
            r = await http.get(asked.headers["location"])
            return bool(r.json()["status"] == "succeeded")

        await wait_until(done, timeout_s=60, what="the export to succeed in the API's worker")
    assert "export-worker" not in [t.name for t in threading.enumerate()]
