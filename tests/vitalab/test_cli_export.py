"""``vitalab export site``: a site's aggregates exported by the real command in a child process, with the
files the API's export of the same request would hold; a bad request is refused before anything is queued."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import psycopg

from tests.exports import site_world as w
from tests.vitalab.cli_support import vitalab


def test_export_site_writes_the_files_and_the_manifest(database_url: str, tmp_path: Path) -> None:
    w.seed(database_url)
    out = tmp_path / "out"
    proc = vitalab(
        "export",
        "site",
        w.SITE,
        "--datasets",
        "occupancy,vitality",
        "--datasets",
        "utilisation",
        "--format",
        "parquet",
        "--from",
        "2026-11-23",
        "--to",
        "2026-11-29",
        "--breakdown",
        "sex",
        "--out",
        str(out),
        "--as",
        "ops@gym-x",
        data_dir=tmp_path / "data",
        VITALAB_DATABASE_URL=database_url,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["requested_by"] == "ops@gym-x"
    assert manifest["parameters"]["datasets"] == ["utilisation", "occupancy", "vitality"]
    assert manifest["suppression"]["k_anonymity"] == 5
    for f in manifest["files"]:
        data = (out / f["name"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f["bytes"], f["sha256"])
        if f["rows"] is not None:
            assert f"{f['name']}: {f['rows']} rows" in proc.stdout
    rows = {f["name"]: f["rows"] for f in manifest["files"]}
    assert rows["utilisation.parquet"] == 5 * 7 * 24
    assert rows["occupancy.parquet"] == 7 * 96
    with psycopg.connect(database_url) as conn:
        job = conn.execute("SELECT kind, site_id, status, directory FROM export_jobs").fetchall()
    assert job == [("site", w.SITE, "succeeded", str(out.resolve()))]


def test_export_site_refuses_a_bad_request(database_url: str, tmp_path: Path) -> None:
    w.seed(database_url)
    common = ("--from", "2026-11-23", "--to", "2026-11-29")
    for args, words in (
        (("--datasets", "members", *common), "unknown dataset"),
        (("--datasets", "vitality", "--format", "parquet", "--gzip", *common), "gzip"),
        (("--datasets", "vitality", "--from", "2026-11-29", "--to", "2026-11-23"), "since"),
    ):
        proc = vitalab(
            "export", "site", w.SITE, *args, data_dir=tmp_path / "data", VITALAB_DATABASE_URL=database_url
        )
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr
    proc = vitalab(
        "export",
        "site",
        "gym-nope",
        "--datasets",
        "vitality",
        *common,
        data_dir=tmp_path / "data",
        VITALAB_DATABASE_URL=database_url,
    )
    assert proc.returncode == 2
    assert "no site 'gym-nope'" in proc.stderr
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM export_jobs").fetchone() == (0,)
