"""Participants and check-ins through the HTTP API (a kiosk's calls) over a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.api.support import PinnedClock, app_at, assert_problem, serve

pytestmark = pytest.mark.asyncio

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=6)  # the API's clock in these tests
PROFILE: dict[str, Any] = {
    "site_id": "gym-a",
    "external_ref": "m0007",
    "birth_year": 1990,
    "sex": "female",
    "weight_kg": 64.5,
    "hr_rest_bpm": 55,
    "hr_max_bpm": 188,
    "consent_given_at": "2026-11-01T10:00:00Z",
}


def seed(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO sites (site_id) VALUES ('gym-a'), ('gym-b')")
        conn.execute(
            "INSERT INTO devices (device_id, site_id, kind) VALUES "
            "('bike-1', 'gym-a', 'bike'), ('strap-m0007', 'gym-a', 'hr_strap'), "
            "('tread-9', 'gym-b', 'treadmill')"
        )


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def expect(r: httpx.Response, status: int, text: str = "") -> None:
    assert r.status_code == status, r.text
    assert text in r.text


def rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT device_id, participant_id::text, started_at, ended_at FROM device_assignments "
            "ORDER BY device_id, started_at"
        ).fetchall()


async def test_register_participants_idempotently_by_reference(database_url: str) -> None:
    seed(database_url)
    async with serve(app_at(database_url, NOW)) as http:
        first = await http.post("/v1/participants", json=PROFILE)
        assert first.status_code == 201, first.text
        pid = first.json()["participant_id"]
        again = await http.post("/v1/participants", json=PROFILE | {"weight_kg": 70})
        assert again.status_code == 200
        assert again.json()["participant_id"] == pid
        assert again.json()["weight_kg"] == 64.5  # the profile registered first is kept
        other_site = await http.post("/v1/participants", json=PROFILE | {"site_id": "gym-b"})
        assert other_site.status_code == 201  # references are per site
        assert other_site.json()["participant_id"] != pid
        anonymous = [
            await http.post("/v1/participants", json={"site_id": "gym-a", "birth_year": 1980})
            for _ in range(2)
        ]
        assert [r.status_code for r in anonymous] == [201, 201]  # no reference: a new participant each time

        got = (await http.get(f"/v1/participants/{pid}")).json()
        assert got == first.json()
        assert (got["external_ref"], got["sex"], got["hr_max_bpm"]) == ("m0007", "female", 188)
        assert got["consent_given_at"] == "2026-11-01T10:00:00Z"
        assert (await http.get("/v1/participants/8f0e2a9c-0000-4000-8000-000000000000")).status_code == 404
        assert (await http.get("/v1/participants/not-a-uuid")).status_code == 422

        bad = {
            "site_id": ("gym a", "site_id"),
            "external_ref": ("Jane Doe", "external_ref"),
            "weight_kg": (5, "weight_kg"),
            "hr_rest_bpm": (190, "hr_rest_bpm"),
            "sex": ("x", "sex"),
            "birth_year": (2999, "birth_year"),
            "consent_given_at": ("2026-11-01T10:00:00", "consent_given_at"),  # no timezone
            "name": ("Jane", "name"),  # no personal fields
        }
        for field, (value, where) in bad.items():
            r = await http.post("/v1/participants", json=PROFILE | {field: value})
            assert r.status_code == 422, (field, r.text)
            assert where in r.text, r.text
        r = await http.post("/v1/participants", json=PROFILE | {"hr_rest_bpm": 120, "hr_max_bpm": 110})
        expect(r, 422, "must be below hr_max_bpm")
        r = await http.post("/v1/participants", json=PROFILE | {"site_id": "nowhere"})
        expect(r, 404, "nowhere")


async def test_check_in_and_out(database_url: str) -> None:
    seed(database_url)
    clock = PinnedClock(NOW)
    async with serve(app_at(database_url, clock)) as http:
        ann = (await http.post("/v1/participants", json=PROFILE)).json()["participant_id"]
        bob = (await http.post("/v1/participants", json=PROFILE | {"external_ref": "m0008"})).json()[
            "participant_id"
        ]
        gym_b = (await http.post("/v1/participants", json=PROFILE | {"site_id": "gym-b"})).json()[
            "participant_id"
        ]

        def body(pid: str, start: datetime, **extra: Any) -> dict[str, Any]:
            return {"device_id": "bike-1", "participant_id": pid, "started_at": iso(start), **extra}

        r = await http.post("/v1/check-ins", json=body(ann, T0))
        assert r.status_code == 201, r.text
        assert r.json() == {
            "device_id": "bike-1",
            "participant_id": ann,
            "started_at": iso(T0),
            "ended_at": None,
        }
        # retried after a lost answer, or the member scanning twice: nothing changes
        assert (await http.post("/v1/check-ins", json=body(ann, T0))).status_code == 200
        r = await http.post("/v1/check-ins", json=body(ann, T0 + timedelta(minutes=3)))
        expect(r, 200)
        assert r.json()["started_at"] == iso(T0)  # already checked in
        # the next member takes the machine without the first checking out: the open check-in closes then
        r = await http.post("/v1/check-ins", json=body(bob, T0 + timedelta(minutes=30)))
        assert r.status_code == 201
        assert rows(database_url) == [
            ("bike-1", ann, T0, T0 + timedelta(minutes=30)),
            ("bike-1", bob, T0 + timedelta(minutes=30), None),
        ]
        end = {"ended_at": iso(T0 + timedelta(minutes=70)), "participant_id": bob}
        r = await http.post("/v1/check-ins/bike-1/end", json=end)
        expect(r, 200, iso(T0 + timedelta(minutes=70)))
        assert (await http.post("/v1/check-ins/bike-1/end", json=end)).status_code == 200  # retried
        r = await http.post("/v1/check-ins/bike-1/end", json={"ended_at": iso(T0 + timedelta(minutes=80))})
        expect(r, 409, "no open check-in")

        # a check-in that is already over (a kiosk syncing its log), then the same again
        over = body(ann, T0 + timedelta(hours=2), ended_at=iso(T0 + timedelta(hours=2, minutes=40)))
        assert (await http.post("/v1/check-ins", json=over)).status_code == 201
        assert (await http.post("/v1/check-ins", json=over)).status_code == 200
        # overlapping one of them: a conflict, nothing written
        r = await http.post("/v1/check-ins", json=body(bob, T0 + timedelta(hours=2, minutes=10)))
        expect(r, 409, "overlapping")
        r = await http.post(
            "/v1/check-ins",
            json=body(bob, T0 + timedelta(minutes=50), ended_at=iso(T0 + timedelta(minutes=90))),
        )
        assert r.status_code == 409
        r = await http.post("/v1/check-ins", json=body(bob, T0 + timedelta(hours=2)))
        expect(r, 409, "another participant")
        assert len(rows(database_url)) == 3

        # a strap paired with its owner for good, and the owner on the bike meanwhile: both allowed
        strap = {"device_id": "strap-m0007", "participant_id": ann, "started_at": iso(T0 - timedelta(days=1))}
        assert (await http.post("/v1/check-ins", json=strap)).status_code == 201
        listed = (await http.get("/v1/check-ins", params={"participant": ann})).json()
        assert [(c["device_id"], c["ended_at"]) for c in listed] == [
            ("strap-m0007", None),
            ("bike-1", iso(T0 + timedelta(minutes=30))),
            ("bike-1", iso(T0 + timedelta(hours=2, minutes=40))),
        ]
        window = {
            "device": "bike-1",
            "since": iso(T0 + timedelta(hours=1)),
            "until": iso(T0 + timedelta(hours=3)),
        }
        assert [c["participant_id"] for c in (await http.get("/v1/check-ins", params=window)).json()] == [
            bob,
            ann,
        ]

        # errors: unknown device or participant 404, bad input 422 with the field named
        r = await http.post("/v1/check-ins", json=body(ann, T0) | {"device_id": "rower-9"})
        expect(r, 404, "rower-9")
        r = await http.post("/v1/check-ins", json=body("8f0e2a9c-0000-4000-8000-000000000000", T0))
        expect(r, 404, "no participant")
        assert (await http.post("/v1/check-ins/rower-9/end", json={})).status_code == 404
        r = await http.post("/v1/check-ins", json=body(gym_b, T0 + timedelta(hours=5)))
        expect(r, 422, "gym-b")
        r = await http.post("/v1/check-ins", json=body(ann, T0, ended_at=iso(T0 - timedelta(minutes=1))))
        expect(r, 422, "ended_at must be after started_at")
        r = await http.post("/v1/check-ins", json=body(ann, NOW + timedelta(hours=1)))
        expect(r, 422, "in the future")
        # a check-in dated year 1 (or before 2000) is refused at the edge, and so is one far ahead
        stored = rows(database_url)
        for bad in ("0001-01-01T00:00:00Z", "1999-12-31T23:59:59Z", "9999-12-31T00:00:00Z"):
            r = await http.post("/v1/check-ins", json=body(ann, T0) | {"started_at": bad})
            assert_problem(r, 422, "body.started_at")
        assert rows(database_url) == stored
        r = await http.post("/v1/check-ins", json={"device_id": "bike-1", "participant_id": ann, "seat": 3})
        expect(r, 422, "seat")
        r = await http.post("/v1/check-ins", json=body(ann, T0) | {"started_at": "yesterday"})
        expect(r, 422, "started_at")

        # without times: now; ending before the start is refused
        r = await http.post("/v1/check-ins", json={"device_id": "bike-1", "participant_id": bob})
        assert r.status_code == 201
        started = datetime.fromisoformat(r.json()["started_at"])
        assert started == NOW  # the API's clock
        r = await http.post(
            "/v1/check-ins/bike-1/end", json={"ended_at": iso(started - timedelta(seconds=5))}
        )
        expect(r, 422, "not after")
        r = await http.post("/v1/check-ins/bike-1/end", json={"participant_id": ann})
        expect(r, 409, bob)
        clock.advance(timedelta(minutes=20))
        r = await http.post("/v1/check-ins/bike-1/end")  # no body: now
        expect(r, 200)
        assert r.json()["ended_at"] == iso(NOW + timedelta(minutes=20))
    with psycopg.connect(database_url) as conn:
        dirty = conn.execute("SELECT count(*) FROM analytics_dirty WHERE reason = 'check_in'").fetchone()
    assert dirty is not None
    assert dirty[0] > 0  # the analytics job will look at these ranges again
