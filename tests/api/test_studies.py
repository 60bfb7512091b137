"""Studies, enrolment and consent, and exports through the HTTP API over a real database (pinned clock)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from api.exports.jobs import Worker
from api.security import Scope
from tests.api.seed import NOW
from tests.api.support import PinnedClock, app_at, assert_problem, serve
from tests.api.test_oidc import AUDIENCE, identity_provider, key_pair, token
from tests.exports.world import KEY_A, SNAPSHOT, T0, P, pseudonym, seed
from tests.support.helpers import make_key

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
    researcher = await make_key(database_url, "researcher", Scope.parse(["study:s-a", "study:s-b"]), name="r")
    key_id = researcher[3:19]
    app = app_at(database_url, SNAPSHOT, export_worker=False, export_dir=tmp_path)
    async with serve(app, key=researcher) as http:
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
        assert job["requested_by"] == key_id
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
        assert manifest["requested_by"] == key_id
        assert manifest["parameters"]["datasets"] == ["sessions", "samples"]
        assert pseudonym(KEY_A, P["P1"]) in whole.text
        assert_problem(await http.get(f"/v1/studies/s-a/exports/{job['export_id']}/files/other.csv"), 404)
        listed = await http.get("/v1/studies/s-a/exports")
        assert [j["export_id"] for j in listed.json()] == [job["export_id"]]
        assert_problem(await http.get(f"/v1/studies/s-a/exports/{uuid.uuid4()}"), 404, "path.export_id")
        # an export of another study is not found through this one
        assert_problem(await http.get(f"/v1/studies/s-b/exports/{job['export_id']}"), 404, "path.export_id")
        # a study outside the key's scope: as if it did not exist
        outside = await http.get(f"/v1/studies/s-c/exports/{job['export_id']}")
        unknown = await http.get(f"/v1/studies/s-z/exports/{job['export_id']}")
        assert_problem(outside, 404, "path.study_id")
        assert outside.json() == json.loads(unknown.text.replace("s-z", "s-c"))
    assert T0 < SNAPSHOT
    # the request and every download are in the audit log, under the researcher's key
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT key_id, role, action, resource, outcome FROM audit_log WHERE action LIKE '%%/exports%%' "
            "ORDER BY id"
        ).fetchall()
    files = "GET /v1/studies/{study_id}/exports/{export_id}/files/{name}"
    base = f"/v1/studies/s-a/exports/{job['export_id']}/files/"
    assert [r[2:] for r in rows if r[4] in ("202", "200", "206", "409") and r[1] == "researcher"] == [
        ("POST /v1/studies/{study_id}/exports", "/v1/studies/s-a/exports", "202"),
        (files, base + "manifest.json", "409"),
        (files, base + "samples.csv", "200"),
        (files, base + "samples.csv", "206"),
        (files, base + "samples.csv", "206"),
        (files, base + "manifest.json", "200"),
    ]
    assert {r[0] for r in rows} == {key_id}
    # status reads are not participant-level: not audited
    assert not [r for r in rows if r[2] == "GET /v1/studies/{study_id}/exports/{export_id}"]


async def test_who_asked_is_the_key_id_or_the_token_subject(database_url: str, tmp_path: Path) -> None:
    seed(database_url)
    private, jwk = key_pair()
    with identity_provider(jwk) as issuer:
        app = app_at(
            database_url,
            NOW,
            export_worker=False,
            export_dir=tmp_path,
            oidc_issuer=issuer,
            oidc_audience=AUDIENCE,
        )
        signed_in = token(
            private, issuer, sub="rita@uni.example", vitalab_role="researcher", vitalab_scope=["study:s-a"]
        )
        async with serve(app, key=signed_in) as http:
            asked = await http.post(
                "/v1/studies/s-a/exports", json={"datasets": ["sessions"], "format": "csv"}
            )
            assert asked.status_code == 202, asked.text
            assert asked.json()["requested_by"] == "rita@uni.example"
            assert_problem(
                await http.post("/v1/studies/s-b/exports", json={"datasets": ["sessions"], "format": "csv"}),
                404,
                "path.study_id",
            )
    outcome = Worker(database_url, tmp_path, clock=lambda: SNAPSHOT).run_one()
    assert outcome is not None
    assert outcome.status == "succeeded"
    with psycopg.connect(database_url) as conn:
        manifest = conn.execute("SELECT manifest->>'requested_by' FROM export_jobs").fetchall()
        audited = conn.execute(
            "SELECT subject, role, outcome FROM audit_log "
            "WHERE action = 'POST /v1/studies/{study_id}/exports' ORDER BY id"
        ).fetchall()
    assert manifest == [("rita@uni.example",)]
    assert audited == [("rita@uni.example", "researcher", "202"), ("rita@uni.example", "researcher", "404")]


async def test_a_desk_sees_the_studies_at_its_site_and_its_participants_only(database_url: str) -> None:
    seed(database_url)
    desk = await make_key(database_url, "kiosk", Scope.parse(["site:gym-a"]), name="desk")
    async with serve(app_at(database_url, SNAPSHOT, export_worker=False), key=desk) as http:
        enrol = {"participant_id": str(P["P4"]), "consent_version": "v1", "scopes": ["derived_metrics"]}
        # s-b runs at gym-b only: the desk at gym-a is told what it would be told of an unknown study
        outside = await http.post("/v1/studies/s-b/enrolments", json=enrol)
        unknown = await http.post("/v1/studies/s-z/enrolments", json=enrol)
        assert_problem(outside, 404, "path.study_id")
        assert outside.json() == json.loads(unknown.text.replace("s-z", "s-b"))
        withdraw = {"action": "withdraw"}
        outside = await http.post(f"/v1/studies/s-b/participants/{P['P5']}/consents", json=withdraw)
        assert_problem(outside, 404, "path.study_id")
        # a participant of gym-b (P5), in a study at gym-a: as an unknown participant
        stranger = {**enrol, "participant_id": str(P["P5"])}
        nobody_id = str(uuid.UUID(int=7))
        nobody = {**enrol, "participant_id": nobody_id}
        outside = await http.post("/v1/studies/s-a/enrolments", json=stranger)
        unknown = await http.post("/v1/studies/s-a/enrolments", json=nobody)
        assert_problem(outside, 404, "body.participant_id")
        assert outside.json() == json.loads(unknown.text.replace(nobody_id, str(P["P5"])))
        # its own site's participant in a study at its site: enrolled, recorded by the desk's key
        r = await http.post("/v1/studies/s-c/enrolments", json=enrol)
        assert r.status_code == 201, r.text
        assert r.json()["recorded_by"] == desk[3:19]
        # but the desk reads nothing of the study
        assert_problem(await http.get("/v1/studies/s-c/enrolments"), 403)
