"""Studies, enrolment and consent, and exports through the HTTP API over a real database (pinned clock)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from api.exports.jobs import Worker
from tests.api.support import PinnedClock, app_at, assert_problem, serve
from tests.exports.world import KEY_A, SNAPSHOT, T0, P, pseudonym, seed

pytestmark = pytest.mark.asyncio

STUDY: dict[str, Any] = {
    "study_id": "hiit-2027",
    "title": "HIIT and resting heart rate",
    "principal_investigator": "Dr. A. Researcher",
    "ethics_ref": "EC-2026-117",
    "starts_on": "2026-10-01",
    "sites": ["gym-a"],
    "scopes": ["derived_metrics", "raw_samples"],
}


def iso(t: Any) -> str:
    return str(t.isoformat().replace("+00:00", "Z"))


async def test_studies_crud_and_status_rules(database_url: str) -> None:
    seed(database_url)
    async with serve(app_at(database_url, SNAPSHOT, export_worker=False)) as http:
        r = await http.post("/v1/studies", json=STUDY)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["status"] == "draft"
        assert body["sites"] == ["gym-a"]
        assert "key" not in r.text
        assert "hmac" not in r.text
        assert_problem(await http.post("/v1/studies", json=STUDY), 409, "body.study_id")
        assert_problem(
            await http.post("/v1/studies", json={**STUDY, "study_id": "x", "sites": ["nope"]}),
            422,
            "body.sites",
        )
        assert_problem(
            await http.post("/v1/studies", json={**STUDY, "study_id": "y", "scopes": ["everything"]}), 422
        )
        r = await http.patch(
            "/v1/studies/hiit-2027", json={"status": "recruiting", "sites": ["gym-a", "gym-b"]}
        )
        assert r.status_code == 200, r.text
        assert r.json()["sites"] == ["gym-a", "gym-b"]
        assert_problem(
            await http.patch("/v1/studies/hiit-2027", json={"scopes": ["derived_metrics"]}),
            409,
            "body.scopes",
        )
        assert_problem(
            await http.patch("/v1/studies/hiit-2027", json={"sites": ["gym-b"]}), 409, "body.sites"
        )
        assert_problem(
            await http.patch("/v1/studies/hiit-2027", json={"status": "draft"}), 409, "body.status"
        )
        assert_problem(await http.delete("/v1/studies/hiit-2027"), 409)
        listed = await http.get("/v1/studies", params={"limit": 2})
        assert [s["study_id"] for s in listed.json()] == ["hiit-2027", "s-a"]
        assert 'rel="next"' in listed.headers["link"]
        draft = {**STUDY, "study_id": "draft-1"}
        assert (await http.post("/v1/studies", json=draft)).status_code == 201
        assert (await http.delete("/v1/studies/draft-1")).status_code == 204
        assert_problem(await http.get("/v1/studies/draft-1"), 404, "path.study_id")
    with psycopg.connect(database_url) as conn:
        key = conn.execute("SELECT hmac_key FROM study_keys WHERE study_id = 'hiit-2027'").fetchone()
    assert key is not None
    assert len(bytes(key[0])) == 32


async def test_enrolment_and_an_append_only_consent_history(database_url: str) -> None:
    seed(database_url)
    clock = PinnedClock(SNAPSHOT)
    async with serve(app_at(database_url, clock, export_worker=False)) as http:
        assert (await http.post("/v1/studies", json={**STUDY, "status": "recruiting"})).status_code == 201
        enrol = {"participant_id": str(P["P1"]), "consent_version": "v2", "scopes": ["derived_metrics"]}
        first = await http.post("/v1/studies/hiit-2027/enrolments", json=enrol)
        assert first.status_code == 201, first.text
        assert first.json()["given_at"] == iso(SNAPSHOT)
        again = await http.post("/v1/studies/hiit-2027/enrolments", json={**enrol, "given_at": iso(SNAPSHOT)})
        assert again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        assert_problem(
            await http.post("/v1/studies/hiit-2027/enrolments", json={**enrol, "scopes": ["raw_samples"]}),
            409,
        )
        other_site = {**enrol, "participant_id": str(P["P5"])}
        assert_problem(
            await http.post("/v1/studies/hiit-2027/enrolments", json=other_site), 422, "body.participant_id"
        )
        assert_problem(
            await http.post(
                "/v1/studies/hiit-2027/enrolments",
                json={**enrol, "participant_id": str(P["P2"]), "scopes": ["rr_intervals"]},
            ),
            422,
            "body.scopes",
        )
        url = f"/v1/studies/hiit-2027/participants/{P['P1']}/consents"
        clock.advance(timedelta(minutes=5))
        widened = await http.post(
            url,
            json={"action": "give", "consent_version": "v3", "scopes": ["derived_metrics", "raw_samples"]},
        )
        assert widened.status_code == 201, widened.text
        back = await http.post(url, json={"action": "withdraw", "at": iso(SNAPSHOT)})
        assert_problem(back, 409, "body.at")  # before the newest record
        withdrawn = await http.post(url, json={"action": "withdraw"})
        assert withdrawn.status_code == 201
        assert withdrawn.json()["withdrawn_at"] == iso(clock.now)
        assert (await http.post(url, json={"action": "withdraw"})).status_code == 200
        assert_problem(await http.post(url, json={"action": "withdraw", "scopes": ["raw_samples"]}), 422)

        listed = await http.get("/v1/studies/hiit-2027/enrolments")
        assert listed.status_code == 200
        (row,) = listed.json()
        assert set(row) == {"pseudonym", "enrolled_at", "consenting", "consent_version", "scopes", "since"}
        assert row["consenting"] is False
        assert str(P["P1"]) not in listed.text
        history = await http.get(f"/v1/studies/hiit-2027/enrolments/{row['pseudonym']}/consents")
        assert [h["consent_version"] for h in history.json()] == ["v2", "v3", None]
        assert str(P["P1"]) not in history.text
        assert_problem(
            await http.get(f"/v1/studies/hiit-2027/enrolments/{'0' * 32}/consents"), 404, "path.pseudonym"
        )
    with psycopg.connect(database_url) as conn:
        for statement in (
            "UPDATE study_consents SET scopes = '{raw_samples}'",
            "DELETE FROM study_consents",
            "TRUNCATE study_consents CASCADE",
        ):
            with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="append-only"):
                conn.execute(statement)
            conn.rollback()
        assert conn.execute(
            "SELECT count(*) FROM study_consents WHERE study_id = 'hiit-2027'"
        ).fetchone() == (3,)


async def test_export_through_the_api_with_range_downloads(database_url: str, tmp_path: Path) -> None:
    seed(database_url)
    app = app_at(database_url, SNAPSHOT, export_worker=False, export_dir=tmp_path)
    async with serve(app) as http:
        bad = {"datasets": ["rr"], "format": "fhir-r4"}
        assert_problem(await http.post("/v1/studies/s-a/exports", json=bad), 422, "body.datasets")
        assert_problem(
            await http.post(
                "/v1/studies/s-a/exports",
                json={"datasets": ["samples"], "format": "csv", "pseudonyms": ["f" * 32]},
            ),
            422,
            "body.pseudonyms",
        )
        assert_problem(
            await http.post("/v1/studies/s-b/exports", json={"datasets": ["rr"], "format": "csv"}),
            422,
            "body.datasets",
        )
        assert_problem(
            await http.post("/v1/studies/nope/exports", json={"datasets": ["rr"], "format": "csv"}), 404
        )
        asked = await http.post(
            "/v1/studies/s-a/exports", json={"datasets": ["samples", "sessions"], "format": "csv"}
        )
        assert asked.status_code == 202, asked.text
        job = asked.json()
        assert asked.headers["location"] == f"/v1/studies/s-a/exports/{job['export_id']}"
        assert job["status"] == "queued"
        assert job["requested_by"] == "local"
        assert job["files"] == []
        early = await http.get(f"/v1/studies/s-a/exports/{job['export_id']}/files/manifest.json")
        assert_problem(early, 409)

        outcome = Worker(database_url, tmp_path, clock=lambda: SNAPSHOT).run_one()
        assert outcome is not None
        assert outcome.status == "succeeded"

        done = (await http.get(asked.headers["location"])).json()
        assert done["status"] == "succeeded"
        assert done["progress"] == 1.0
        assert done["rows_done"] == done["rows_total"] > 0
        samples = next(f for f in done["files"] if f["name"] == "samples.csv")
        whole = await http.get(samples["url"])
        assert whole.status_code == 200
        assert hashlib.sha256(whole.content).hexdigest() == samples["sha256"]
        assert whole.headers["accept-ranges"] == "bytes"
        part = await http.get(samples["url"], headers={"Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.content == whole.content[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(whole.content)}"
        tail = await http.get(samples["url"], headers={"Range": f"bytes={len(whole.content) - 10}-"})
        assert tail.content == whole.content[-10:]
        manifest = (await http.get(f"/v1/studies/s-a/exports/{job['export_id']}/files/manifest.json")).json()
        assert manifest["export_id"] == job["export_id"]
        assert manifest["requested_by"] == "local"
        assert manifest["parameters"]["datasets"] == ["sessions", "samples"]
        assert pseudonym(KEY_A, P["P1"]) in whole.text
        assert_problem(await http.get(f"/v1/studies/s-a/exports/{job['export_id']}/files/other.csv"), 404)
        listed = await http.get("/v1/studies/s-a/exports")
        assert [j["export_id"] for j in listed.json()] == [job["export_id"]]
        assert_problem(await http.get(f"/v1/studies/s-a/exports/{uuid.uuid4()}"), 404, "path.export_id")
    assert T0 < SNAPSHOT
