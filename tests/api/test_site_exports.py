"""Site exports through the HTTP API: an operator of the site asks (202 with the job), follows it, downloads
its files whole and in ranges; bad requests are problems naming the field; another site answers 404 as an
unknown one; requests and downloads are audited under the operator's key."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid
from pathlib import Path

import psycopg
import pytest

from api.exports.jobs import Worker
from api.security import Scope
from tests.api.support import app_at, assert_problem, serve
from tests.exports import site_world as w
from tests.support.helpers import make_key

pytestmark = pytest.mark.asyncio

BASE = f"/v1/sites/{w.SITE}/exports"
ASK = {
    "datasets": ["vitality", "utilisation"],
    "format": "csv",
    "since": "2026-11-23",
    "until": "2026-11-29",
    "breakdown": "sex",
    "k": 3,
}


async def test_request_follow_download(database_url: str, tmp_path: Path) -> None:
    w.seed(database_url)
    operator = await make_key(database_url, "operator", Scope.parse([f"site:{w.SITE}"]), name="op")
    key_id = operator[3:19]
    app = app_at(database_url, w.NOW, export_worker=False, export_dir=tmp_path, analytics_k_anonymity=5)
    async with serve(app, key=operator) as http:
        for body, field in (
            ({**ASK, "datasets": ["nope"]}, "body.datasets.0"),
            ({**ASK, "datasets": []}, "body.datasets"),
            ({**ASK, "format": "fhir-r4"}, "body.format"),
            ({**ASK, "since": "2026-12-01"}, "body.since"),
            ({**ASK, "format": "parquet", "gzip": True}, "body.gzip"),
            ({**ASK, "slot_min": 25}, "body.slot_min"),
            ({**ASK, "breakdown": "postcode"}, "body.breakdown"),
            ({**ASK, "k": 1}, "body.k"),
            ({k: v for k, v in ASK.items() if k != "until"}, "body.until"),
            ({**ASK, "extra": 1}, "body.extra"),
        ):
            assert_problem(await http.post(BASE, json=body), 422, field)
        # another site (out of the operator's scope) and an unknown one answer alike
        outside = await http.post(f"/v1/sites/{w.OTHER_SITE}/exports", json=ASK)
        unknown = await http.post("/v1/sites/gym-zz/exports", json=ASK)
        assert_problem(outside, 404, "path.site_id")
        assert outside.json() == json.loads(unknown.text.replace("gym-zz", w.OTHER_SITE))

        asked = await http.post(BASE, json=ASK)
        assert asked.status_code == 202, asked.text
        job = asked.json()
        assert asked.headers["location"] == f"{BASE}/{job['export_id']}"
        assert (job["status"], job["requested_by"], job["files"]) == ("queued", key_id, [])
        # canonical parameters; the threshold is the configured minimum, never lower
        assert job["parameters"]["datasets"] == ["utilisation", "vitality"]
        assert job["parameters"]["k"] == 5
        assert_problem(await http.get(f"{BASE}/{job['export_id']}/files/manifest.json"), 409)

        outcome = Worker(database_url, tmp_path, clock=lambda: w.NOW).run_one()
        assert outcome is not None
        assert outcome.status == "succeeded"

        done = (await http.get(asked.headers["location"])).json()
        assert (done["status"], done["progress"], done["data_as_of"]) == (
            "succeeded",
            1.0,
            "2026-12-14T12:00:00Z",
        )
        assert done["rows_done"] == done["rows_total"] > 0
        files = {f["name"]: f for f in done["files"]}
        assert set(files) == {"utilisation.csv", "vitality.csv", "data_dictionary.csv"}
        vit = files["vitality.csv"]
        whole = await http.get(vit["url"])
        assert whole.status_code == 200
        assert hashlib.sha256(whole.content).hexdigest() == vit["sha256"]
        assert whole.headers["accept-ranges"] == "bytes"
        part = await http.get(vit["url"], headers={"Range": "bytes=10-49"})
        assert part.status_code == 206
        assert part.content == whole.content[10:50]
        assert part.headers["content-range"] == f"bytes 10-49/{len(whole.content)}"
        # the cells of the API's vitality report for the same week and k, suppressed ones empty
        api = await http.get(
            f"/v1/sites/{w.SITE}/vitality",
            params={"since": "2026-11-23", "until": "2026-11-29", "breakdown": "sex"},
        )
        rows = list(csv.DictReader(io.StringIO(whole.text)))
        assert [(r["group"], r["suppressed"], r["members"]) for r in rows] == [
            (
                c["group"],
                "true" if c["suppressed"] else "false",
                "" if c["members"] is None else str(c["members"]),
            )
            for c in api.json()["cells"]
        ]
        assert [r["suppressed"] for r in rows] == ["false", "true", "true"]
        manifest = (await http.get(f"{BASE}/{job['export_id']}/files/manifest.json")).json()
        assert (manifest["export_id"], manifest["requested_by"]) == (job["export_id"], key_id)
        assert manifest["suppression"]["k_anonymity"] == 5
        assert_problem(await http.get(f"{BASE}/{job['export_id']}/files/other.csv"), 404, "path.name")
        assert [j["export_id"] for j in (await http.get(BASE)).json()] == [job["export_id"]]
        assert_problem(await http.get(f"{BASE}/{uuid.uuid4()}"), 404, "path.export_id")
        # a site export is not found through another site, nor a study's export through a site
        assert_problem(
            await http.get(f"/v1/sites/{w.OTHER_SITE}/exports/{job['export_id']}"), 404, "path.site_id"
        )
    with psycopg.connect(database_url) as conn:
        rows_audit = conn.execute(
            "SELECT key_id, action, resource, outcome FROM audit_log WHERE action LIKE '%%/exports%%' "
            "AND outcome IN ('202', '200', '206', '409') ORDER BY id"
        ).fetchall()
    files_route = "GET /v1/sites/{site_id}/exports/{export_id}/files/{name}"
    base = f"{BASE}/{job['export_id']}/files/"
    assert [r[1:] for r in rows_audit] == [
        ("POST /v1/sites/{site_id}/exports", BASE, "202"),
        (files_route, base + "manifest.json", "409"),
        (files_route, base + "vitality.csv", "200"),
        (files_route, base + "vitality.csv", "206"),
        (files_route, base + "manifest.json", "200"),
    ]
    assert {r[0] for r in rows_audit} == {key_id}


async def test_a_failed_export_answers_410(database_url: str, tmp_path: Path) -> None:
    w.seed(database_url)
    app = app_at(database_url, w.NOW, export_worker=False, export_dir=tmp_path)
    async with serve(app) as http:
        job = (await http.post(BASE, json={**ASK, "format": "parquet"})).json()
        with psycopg.connect(database_url) as conn:
            conn.execute(
                "UPDATE export_jobs SET status = 'failed', error = 'disk full' WHERE export_id = %s",
                (job["export_id"],),
            )
        failed = await http.get(f"{BASE}/{job['export_id']}/files/manifest.json")
        assert "disk full" in assert_problem(failed, 410)["detail"]
        assert (await http.get(f"{BASE}/{job['export_id']}")).json()["error"] == "disk full"
