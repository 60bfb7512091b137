"""Site exports (gym operators): the files read back with the csv module and pyarrow hold, row for row, what
the site report endpoints return for the same range (suppressed cells stay suppressed); the manifest's
checksums are those of the files; a second run is the same bytes; a worker killed mid-way leaves nothing
served and its job is taken over, or failed once no attempt is left."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pyarrow.parquet as pq
import pytest

from api.exports import engine, jobs, site
from api.exports.site import SiteExportParams, SiteExportSpec
from tests.api.support import app_at, serve
from tests.exports import site_world as w
from tests.exports.test_jobs import job as state
from tests.exports.test_jobs import kill_mid_way
from tests.exports.test_jobs import queue as queue_job

LEASE_S = 60.0
OSLO = ZoneInfo("Europe/Oslo")


@pytest.fixture
def world(database_url: str) -> str:
    w.seed(database_url)
    return database_url


def export(
    url: str, out: Path, params: SiteExportParams, export_id: uuid.UUID | None = None
) -> engine.Result:
    out.mkdir()
    spec = SiteExportSpec(export_id or uuid.UUID(int=1), w.SITE, "tester", w.NOW, params)
    with psycopg.connect(url) as conn:
        return site.run(conn, spec, out, w.NOW)


def read_csv(path: Path) -> list[dict[str, str]]:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def num(v: str) -> float | None:
    return None if v == "" else float(v)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


async def api_reports(url: str, breakdown: str) -> dict[str, Any]:
    local = site.window("Europe/Oslo", w.SINCE, w.UNTIL)
    got: dict[str, Any] = {}
    async with serve(app_at(url, w.NOW, export_worker=False)) as http:
        span = {"since": local.start.isoformat(), "until": local.end.isoformat()}
        for name, params in (
            ("utilisation", span),
            ("occupancy", {**span, "slot_min": "15"}),
            (
                "vitality",
                {"since": w.SINCE.isoformat(), "until": w.UNTIL.isoformat(), "breakdown": breakdown},
            ),
        ):
            r = await http.get(f"/v1/sites/{w.SITE}/{name}", params=params)
            assert r.status_code == 200, r.text
            got[name] = r.json()
    return got


def check_utilisation(rows: list[dict[str, Any]], api: dict[str, Any]) -> None:
    expected = [
        (d["device_id"], utc(h), d["in_session_s"][j], d["utilisation"][j], d["minutes_with_data"][j])
        for d in api["devices"]
        for j, h in enumerate(api["hours"])
    ]
    got = [
        (r["device_id"], r["hour"], r["in_session_s"], r["utilisation"], r["minutes_with_data"]) for r in rows
    ]
    assert got == expected
    assert any(r[2] > 0 for r in got)
    assert any(r[2] == 0 for r in got)


def check_occupancy(rows: list[dict[str, Any]], api: dict[str, Any]) -> None:
    """The API's weekly profile is the mean of the exported slots per (weekday, slot of the day)."""
    sums: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for r in rows:
        acc = sums[(r["weekday"], r["slot_of_day"])]
        acc[0] += r["machines_in_use"]
        acc[1] += r["participants"]
        acc[2] += 1
        assert r["local_start"] == r["slot_start"].astimezone(OSLO).isoformat()
    for wd in range(7):
        for slot in range(96):
            m, p, n = sums[(wd, slot)]
            assert api["machines_in_use"][wd][slot] == pytest.approx(m / n, rel=1e-9, abs=1e-12)
            assert api["participants"][wd][slot] == pytest.approx(p / n, rel=1e-12)
    assert max(r["participants"] for r in rows) >= 1
    assert len(rows) == 21 * 96


def check_vitality(rows: list[dict[str, Any]], api: dict[str, Any]) -> None:
    keys = [c.name for c in site.VITALITY_COLUMNS]
    expected = [tuple(c[k] for k in keys) for c in api["cells"]]
    got = [tuple(str(r[k]) if k == "week" else r[k] for k in keys) for r in rows]
    assert got == expected
    suppressed = {(r["week"], r["group"]) for r in rows if r["suppressed"]}
    assert suppressed == {
        ("2026-11-23", "female"),
        ("2026-11-23", "male"),
        ("2026-11-30", "all"),
        ("2026-11-30", "female"),
        ("2026-11-30", "male"),
    }
    for r in rows:
        if r["suppressed"]:
            assert [r[k] for k in keys[3:]] == [None] * 6


def typed_csv(path: Path, name: str) -> list[dict[str, Any]]:
    """A CSV file's rows with the values typed as the data dictionary says."""
    out = []
    for r in read_csv(path):
        row: dict[str, Any] = dict(r)
        for c in site.COLUMNS[name]:  # type: ignore[index]
            v = r[c.name]
            if c.kind == "timestamp":
                row[c.name] = utc(v)
            elif c.kind in ("int16", "int32"):
                row[c.name] = None if v == "" else int(v)
            elif c.kind == "float64":
                row[c.name] = num(v)
            elif c.kind == "bool":
                row[c.name] = {"true": True, "false": False}[v]
            elif c.kind == "date":
                row[c.name] = v
        out.append(row)
    return out


@pytest.mark.asyncio
async def test_files_hold_what_the_api_returns(world: str, tmp_path: Path) -> None:
    def params(fmt: str, compress: bool = False) -> SiteExportParams:
        everything = list(site.SITE_DATASETS)
        return SiteExportParams.canonical(everything, fmt, w.SINCE, w.UNTIL, gzip=compress, breakdown="sex")

    as_csv = export(world, tmp_path / "csv", params("csv"))
    as_gz = export(world, tmp_path / "gz", params("csv", compress=True))
    as_pq = export(world, tmp_path / "pq", params("parquet"))
    api = await api_reports(world, "sex")
    checks = {"utilisation": check_utilisation, "occupancy": check_occupancy, "vitality": check_vitality}
    for name, check in checks.items():
        rows = typed_csv(tmp_path / "csv" / f"{name}.csv", name)
        check(rows, api[name])
        assert typed_csv(tmp_path / "gz" / f"{name}.csv.gz", name) == rows
        table = pq.read_table(tmp_path / "pq" / f"{name}.parquet")
        assert table.schema.names == [c.name for c in site.COLUMNS[name]]  # type: ignore[index]
        back = table.to_pylist()
        for r in back:
            for k, v in r.items():
                if hasattr(v, "isoformat") and not isinstance(v, datetime):
                    r[k] = v.isoformat()
        assert back == rows, name
    for result in (as_csv, as_gz, as_pq):
        assert [f.rows for f in result.files[:3]] == [5 * 21 * 24, 21 * 96, len(api["vitality"]["cells"])]
        assert result.participants == []


def test_manifest_and_byte_identical_rerun(world: str, tmp_path: Path) -> None:
    for fmt in ("csv", "parquet"):
        params = SiteExportParams.canonical(list(site.SITE_DATASETS), fmt, w.SINCE, w.UNTIL, k=6)
        export(world, tmp_path / f"{fmt}-1", params)
        export(world, tmp_path / f"{fmt}-2", params)
        first = sorted(p.name for p in (tmp_path / f"{fmt}-1").iterdir())
        assert first == sorted(p.name for p in (tmp_path / f"{fmt}-2").iterdir())
        for name in first:
            assert (tmp_path / f"{fmt}-1" / name).read_bytes() == (tmp_path / f"{fmt}-2" / name).read_bytes()
        manifest = json.loads((tmp_path / f"{fmt}-1" / "manifest.json").read_text())
        assert manifest["site_id"] == w.SITE
        assert manifest["suppression"]["k_anonymity"] == 6
        assert manifest["range"] == {"from": "2026-11-22T23:00:00Z", "to": "2026-12-13T23:00:00Z"}
        for f in manifest["files"]:
            data = (tmp_path / f"{fmt}-1" / f["name"]).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (f["bytes"], f["sha256"])
        dictionary = read_csv(tmp_path / f"{fmt}-1" / "data_dictionary.csv")
        assert {d["field"] for d in dictionary if d["dataset"] == "vitality"} >= {"suppressed", "members"}


def queue(url: str, max_attempts: int = 3) -> uuid.UUID:
    params = SiteExportParams.canonical(["utilisation", "vitality"], "csv", w.SINCE, w.UNTIL)
    return queue_job(url, max_attempts, subject_id=w.SITE, params=params, at=w.NOW)


def test_a_killed_worker_is_taken_over_or_the_job_fails(world: str, tmp_path: Path) -> None:
    export_id = queue(world)
    kill_mid_way(world, tmp_path)
    assert state(world, export_id)[:2] == ("running", 1)
    base = tmp_path / str(export_id)
    assert (base / ".attempt-1.tmp").is_dir()
    assert not (base / ".attempt-1.tmp" / "manifest.json").exists()
    assert not (base / "attempt-1").exists()
    later = w.NOW + timedelta(seconds=LEASE_S + 1)
    outcome = jobs.Worker(world, tmp_path, clock=lambda: later, lease_s=LEASE_S).run_one()
    assert outcome is not None
    assert outcome.status == "succeeded"
    assert state(world, export_id) == ("succeeded", 2, None, f"{export_id}/attempt-2")
    assert sorted(p.name for p in base.iterdir()) == ["attempt-2"]
    manifest = json.loads((base / "attempt-2" / "manifest.json").read_text())
    for f in manifest["files"]:
        assert hashlib.sha256((base / "attempt-2" / f["name"]).read_bytes()).hexdigest() == f["sha256"]
    # with no attempt left, a killed worker's job fails with the reason and nothing is published
    last = queue(world, max_attempts=1)
    kill_mid_way(world, tmp_path)
    outcome = jobs.Worker(world, tmp_path, clock=lambda: later, lease_s=LEASE_S).run_one()
    assert outcome is None  # the job was failed on the way: nothing left to claim
    status, attempts, error, directory = state(world, last)
    assert (status, attempts, directory) == ("failed", 1, None)
    assert error is not None
    assert "lease" in error
    assert not (tmp_path / str(last) / "attempt-1").exists()
