"""Keys, the audit log, failed-authentication throttling, the policy table's coverage, the documented security
scheme and a database outage, over a real database and server."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from api import keys, policy
from api.access import keys_for_up
from api.main import create_app
from api.security import Scope
from tests.api.seed import NOW, PARTICIPANT, seed
from tests.api.support import PinnedClock, app_at, assert_problem, bearer, serve
from tests.support.helpers import make_key, make_settings

pytestmark = pytest.mark.asyncio


def audit_rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT key_id, role, action, resource, outcome, address FROM audit_log ORDER BY id"
        ).fetchall()


async def test_a_key_is_shown_once_stored_as_a_hash_and_revoked_at_once(database_url: str) -> None:
    seed(database_url)
    clock = PinnedClock(NOW)
    async with serve(app_at(database_url, clock)) as admin:
        r = await admin.post(
            "/v1/keys",
            json={"name": "floor screen", "owner": "ops@gym-a", "role": "operator", "scope": ["site:gym-a"]},
        )
        assert r.status_code == 201, r.text
        made = r.json()
        token = made["key"]
        assert token.startswith(f"vl_{made['key_id']}_")
        assert len(token.split("_", 2)[2]) >= 22  # >= 128 bits of base64url
        assert made["scope"] == ["site:gym-a"]
        listed = (await admin.get("/v1/keys", params={"role": "operator"})).json()
        assert [k["key_id"] for k in listed] == [made["key_id"]]
        assert "key" not in listed[0]  # never shown again
        with psycopg.connect(database_url) as conn:
            stored = conn.execute(
                "SELECT secret_sha256 FROM api_keys WHERE key_id = %s", (made["key_id"],)
            ).fetchone()
        assert stored is not None
        secret = token.split("_", 2)[2]
        assert bytes(stored[0]) == keys.digest(made["key_id"], secret)
        assert secret.encode() not in bytes(stored[0])

        operator = {"Authorization": f"Bearer {token}"}
        assert (await admin.get("/v1/devices", headers=operator)).status_code == 200
        # X-API-Key works as well
        assert (await admin.get("/v1/devices", headers={"X-API-Key": token})).status_code == 200
        # last use: recorded, and moved at most once a minute
        first = (await admin.get(f"/v1/keys/{made['key_id']}")).json()["last_used_at"]
        assert first == NOW.isoformat().replace("+00:00", "Z")
        clock.advance(timedelta(seconds=30))
        await admin.get("/v1/devices", headers=operator)
        assert (await admin.get(f"/v1/keys/{made['key_id']}")).json()["last_used_at"] == first
        clock.advance(timedelta(seconds=31))
        await admin.get("/v1/devices", headers=operator)
        later = (await admin.get(f"/v1/keys/{made['key_id']}")).json()["last_used_at"]
        assert later > first

        revoked = await admin.post(f"/v1/keys/{made['key_id']}/revoke")
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        r = await admin.get("/v1/devices", headers=operator)
        assert_problem(r, 401)
        assert r.headers["www-authenticate"] == 'Bearer realm="vitalab", error="invalid_token"'
        assert (await admin.get("/v1/keys", params={"active": "true", "role": "operator"})).json() == []
        assert_problem(await admin.post("/v1/keys/0123456789abcdef/revoke"), 404, "path.key_id")


async def test_key_rules_role_scope_and_expiry(database_url: str) -> None:
    async with serve(app_at(database_url, NOW)) as admin:
        base: dict[str, object] = {"name": "k", "owner": "o"}
        cases: list[tuple[dict[str, object], str]] = [
            ({"role": "admin", "scope": ["site:gym-a"]}, "body.scope"),
            ({"role": "kiosk", "scope": ["site:gym-a", "site:gym-b"]}, "body.scope"),
            ({"role": "kiosk", "scope": ["*"]}, "body.scope"),
            ({"role": "operator", "scope": ["town:x"]}, "body.scope"),
            ({"role": "operator", "scope": ["site:"]}, "body.scope"),
            ({"role": "operator", "expires_at": (NOW - timedelta(seconds=1)).isoformat()}, "body.expires_at"),
            ({"role": "root"}, "body.role"),
        ]
        for extra, field in cases:
            assert_problem(await admin.post("/v1/keys", json=base | extra), 422, field)
        r = await admin.post(
            "/v1/keys",
            json=base
            | {"role": "operator", "scope": [], "expires_at": (NOW + timedelta(hours=1)).isoformat()},
        )
        assert r.status_code == 201
        token = r.json()["key"]
    # an operator with an empty scope sees no site at all
    async with serve(app_at(database_url, NOW), key=token) as http:
        assert (await http.get("/v1/devices")).json() == []
    # ... and after its expiry nothing
    async with serve(app_at(database_url, NOW + timedelta(hours=1)), key=token) as http:
        assert_problem(await http.get("/v1/devices"), 401)


async def test_scope_entries_round_trip() -> None:
    for entries in (["*"], ["site:a", "study:s"], ["site:*", "study:s"], ["site:a", "study:*"], ["site:a"]):
        scope = Scope.parse(entries)
        assert Scope.parse(scope.entries()) == scope
    assert Scope.parse(["site:a"]).studies == frozenset()
    assert Scope.parse(["*"]) == Scope.everything()


async def test_the_audit_log_records_writes_personal_reads_and_failures(database_url: str) -> None:
    seed(database_url)
    kiosk = await make_key(database_url, "kiosk", Scope.parse(["site:gym-a"]), name="desk")
    kiosk_id = kiosk[3:19]
    async with serve(app_at(database_url, NOW)) as admin:
        desk = bearer(kiosk)
        r = await admin.post(
            "/v1/participants", json={"site_id": "gym-a", "external_ref": "m9"}, headers=desk
        )
        assert r.status_code == 201
        assert (await admin.get(f"/v1/participants/{PARTICIPANT}", headers=desk)).status_code == 200
        assert (
            await admin.get("/v1/devices/bike-1")
        ).status_code == 200  # not participant-level: not audited
        assert (await admin.get("/v1/devices", headers=desk)).status_code == 403
        assert (
            await admin.get("/v1/devices", headers=bearer(kiosk[:-1] + ("y" if kiosk.endswith("x") else "x")))
        ).status_code == 401
        assert (await admin.get("/v1/devices")).status_code == 200
        rows = audit_rows(database_url)
        assert [(k, role, action, resource, outcome) for k, role, action, resource, outcome, _ in rows] == [
            (kiosk_id, "kiosk", "POST /v1/participants", "/v1/participants", "201"),
            (
                kiosk_id,
                "kiosk",
                "GET /v1/participants/{participant_id}",
                f"/v1/participants/{PARTICIPANT}",
                "200",
            ),
            (kiosk_id, "kiosk", "GET /v1/devices", "/v1/devices", "403"),
            (kiosk_id, None, "authenticate", "/v1/devices", "401 wrong secret"),
        ]
        assert {address for *_, address in rows} == {"127.0.0.1"}
        # admins read it, newest first, filtered and in pages
        page = await admin.get("/v1/audit", params={"limit": 2})
        assert [e["action"] for e in page.json()] == ["authenticate", "GET /v1/devices"]
        nxt = page.headers["link"].split(";")[0].strip("<>")
        assert [e["outcome"] for e in (await admin.get(nxt)).json()] == ["200", "201"]
        refused = (await admin.get("/v1/audit", params={"outcome": "401"})).json()
        assert [(e["key_id"], e["outcome"]) for e in refused] == [(kiosk_id, "401 wrong secret")]
        assert (await admin.get("/v1/audit", headers=desk)).status_code == 403
    # append-only: the table refuses changes and deletions
    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in (
            "UPDATE audit_log SET outcome = 'x'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
    assert len(audit_rows(database_url)) >= 5


async def test_failed_authentications_are_slowed_down_per_address(database_url: str) -> None:
    clock = PinnedClock(NOW)
    good = await make_key(database_url)
    app = app_at(database_url, clock, auth_failures_max=3, auth_failures_window_s=60)
    async with serve(app, key=None) as http:
        for _ in range(3):
            assert_problem(
                await http.get("/v1/devices", headers=bearer("vl_0123456789abcdef_" + "B" * 43)), 401
            )
        clock.advance(timedelta(seconds=20))
        r = await http.get("/v1/devices", headers=bearer(good))  # even a good key waits now
        assert_problem(r, 429)
        assert r.headers["retry-after"] == "40"
        assert (await http.get("/health")).status_code == 200  # open routes stay open
        clock.advance(timedelta(seconds=40))  # the oldest failures leave the window
        assert (await http.get("/v1/devices", headers=bearer(good))).status_code == 200


async def test_every_route_has_a_policy_entry_and_the_docs_show_the_scheme(database_url: str) -> None:
    app = app_at(database_url, NOW)
    assert policy.missing(app.routes) == []
    templates = {(m, t) for m, t, _ in policy.endpoints(app.routes)}
    assert set(policy.POLICY) == templates, "a policy entry for a route that does not exist"
    async with serve(app, key=None) as http:
        schema = (await http.get("/openapi.json")).json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] == schemes["bearer"] | {"type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == schemes["apiKey"] | {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for template, item in schema["paths"].items():
        for method, operation in item.items():
            if template == "/health":
                assert "security" not in operation
            else:
                assert operation["security"] == [{"bearer": []}, {"apiKey": []}], (method, template)
                assert {"401", "403"} <= operation["responses"].keys(), (method, template)


async def test_a_route_without_a_policy_entry_answers_403_to_everyone(database_url: str) -> None:
    app = app_at(database_url, NOW)

    @app.get("/v1/forgotten")
    async def forgotten() -> dict[str, str]:
        return {"secret": "s"}

    assert policy.missing(app.routes) == ["GET /v1/forgotten"]
    async with serve(app) as admin:
        assert_problem(await admin.get("/v1/forgotten"), 403)
        assert_problem(await admin.get("/v1/forgotten", headers={"Authorization": ""}), 401)


async def test_a_database_outage_answers_503_quickly(empty_database: str) -> None:
    gone = psycopg.conninfo.make_conninfo(empty_database, dbname="vitalab_no_such_database")
    app = create_app(make_settings(api_db_timeout_s=0.5), gone, clock=PinnedClock(NOW))
    app.state.test_database_url = gone
    async with serve(app, key=None) as http:
        for path in ("/v1/devices", "/v1/sessions"):
            started = time.monotonic()
            r = await http.get(path, headers=bearer("vl_0123456789abcdef_" + "C" * 43))
            assert time.monotonic() - started < 10  # the pool's 0.5 s, not the default 30 s
            body = assert_problem(r, 503)
            assert body["instance"] == path
            assert r.headers["retry-after"] == "5"


async def test_keys_for_up_make_the_first_admin_key_once_and_a_fresh_kiosk_key(
    database_url: str, tmp_path: Path
) -> None:
    first = await keys_for_up(database_url, tmp_path, "demo", NOW)
    assert first.admin is not None
    assert first.admin_file.read_text().strip() == first.admin
    assert first.admin_file.stat().st_mode & 0o777 == 0o600
    again = await keys_for_up(database_url, tmp_path, "demo", NOW + timedelta(hours=1))
    assert again.admin is None  # never made (nor shown) twice
    assert first.admin_file.read_text().strip() == first.admin
    async with serve(app_at(database_url, NOW + timedelta(hours=1)), key=None) as http:
        assert (await http.get("/v1/keys", headers=bearer(first.admin))).status_code == 200
        # the previous run's kiosk key is revoked, the new one works (and only as a kiosk of its site)
        assert_problem(await http.get("/v1/check-ins", headers=bearer(first.kiosk)), 401)
        assert (await http.get("/v1/check-ins", headers=bearer(again.kiosk))).status_code == 200
        assert_problem(await http.get("/v1/devices", headers=bearer(again.kiosk)), 403)
