"""One rule for bad input, walked over every operation of the OpenAPI schema against a real server.

For each operation a valid request is built (it must answer 2xx), then one input at a time is spoiled: a NUL
byte in each path and query parameter, times outside the accepted window or without an offset, days outside
it, reversed ranges, unknown devices, sites, participants and sessions, and bad times in request bodies. Each
spoiled request must answer 422 (or 404 for an unknown resource) as RFC 9457 problem details naming the
input, never a 500, and must change nothing. The walk fails when an operation appears that it does not know
how to call, so new routes join it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest

from tests.api.seed import NOW, PARTICIPANT, T0, seed
from tests.api.seed_study import ERASABLE, SITE_EXPORT, seed_study
from tests.api.support import app_at, assert_problem, serve
from tests.support.helpers import make_key
from vitalab.broker import MosquittoAuth, NoReload

pytestmark = pytest.mark.asyncio

UNKNOWN = {
    "device_id": "no-such-device",
    "site_id": "no-such-site",
    "participant_id": "8f0e2a9c-0000-4000-8000-000000000000",
    "session_id": "999999999",
    "key_id": "0000000000000000",
    "gateway_id": "no-such-gateway",
}
FILTERS = {
    "site": "site_id",
    "device": "device_id",
    "device_id": "device_id",
    "participant": "participant_id",
}
BAD_TIMES = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-05:00",
    "1999-12-31T23:59:59Z",
    "2026-11-25T09:00:00",  # no offset
    "2026-11-25",  # a day is not a time
]
BAD_DAYS = ["0001-01-01", "9999-12-31", "1999-12-31"]
BODY_TIMES = {
    "/v1/studies": [],
    "/v1/studies/{study_id}": [],
    "/v1/studies/{study_id}/enrolments": ["given_at"],
    "/v1/studies/{study_id}/participants/{participant_id}/consents": ["at"],
    "/v1/studies/{study_id}/exports": [],  # since/until select data: any time in the query window
    "/v1/sites/{site_id}/exports": [],  # since/until are days (spoiled with a NUL like every string)
    "/v1/participants": ["consent_given_at"],
    "/v1/check-ins": ["started_at", "ended_at"],
    "/v1/check-ins/{device_id}/end": ["ended_at"],
    "/v1/contract/validate": [],  # its payload's times are judged, not refused (tests/api/test_contract.py)
    "/v1/keys": ["expires_at"],
    # sites and registration: no times in their bodies
    "/v1/sites": [],
    "/v1/sites/{site_id}": [],
    "/v1/sites/{site_id}/devices": [],
    "/v1/sites/{site_id}/gateways": [],
    "/v1/sites/{site_id}/gateways/{gateway_id}/devices": [],
    # fleet health and maintenance
    "/v1/devices/{device_id}/serviced": ["serviced_at"],
    "/v1/service-thresholds": [],
    "/v1/sites/{site_id}/opening-hours": [],
    "/v1/sites/{site_id}/webhook": [],
}
FUTURE_TIMES = {"expires_at"}
"""Times that must lie ahead (not behind) of the server's clock."""


def iso(t: Any) -> str:
    return str(t.isoformat().replace("+00:00", "Z"))


def bodies() -> dict[tuple[str, str], dict[str, Any]]:
    """A valid body per operation that takes one (each call of it is a harmless repeat)."""
    return {
        ("post", "/v1/participants"): {"site_id": "gym-a", "external_ref": "m0001", "birth_year": 1990},
        ("post", "/v1/check-ins"): {
            "device_id": "bike-1",
            "participant_id": str(PARTICIPANT),
            "started_at": iso(T0),
        },
        ("post", "/v1/check-ins/{device_id}/end"): {"ended_at": iso(T0 + timedelta(hours=1))},
        ("post", "/v1/contract/validate"): {
            "topic": "vitalab/v1/gym-a/dev/bike-1/telemetry",
            "payload": {"v": 1, "device": "bike-1", "seq": 0, "samples": [{"t": iso(NOW), "hr_bpm": 90}]},
        },
        ("post", "/v1/keys"): {"name": "walk", "owner": "tests", "role": "operator", "scope": ["site:gym-a"]},
        # research: a draft study (deleted by the DELETE call), the seeded enrolment again, a withdrawal
        ("post", "/v1/studies"): {
            "study_id": "walk-draft",
            "title": "T",
            "starts_on": "2026-01-01",
            "sites": ["gym-a"],
            "scopes": ["derived_metrics"],
        },
        ("patch", "/v1/studies/{study_id}"): {"title": "T2"},
        ("post", "/v1/studies/{study_id}/enrolments"): {
            "participant_id": str(PARTICIPANT),
            "consent_version": "v1",
            "scopes": ["derived_metrics"],
            "given_at": iso(NOW),
        },
        ("post", "/v1/studies/{study_id}/participants/{participant_id}/consents"): {
            "action": "withdraw",
            "at": iso(NOW),
        },
        ("post", "/v1/studies/{study_id}/exports"): {"datasets": ["sessions"], "format": "csv"},
        ("post", "/v1/sites/{site_id}/exports"): {
            "datasets": ["utilisation"],
            "format": "csv",
            "since": "2026-11-24",
            "until": "2026-11-25",
        },
        # sites and registration, walked in the schema's order: bike-1 (heard of) is registered, gw-1
        # registered and given bike-1, rotated and retired, then bike-1 rotated and retired
        ("post", "/v1/sites"): {"id": "gym-new", "timezone": "Europe/Oslo"},
        ("patch", "/v1/sites/{site_id}"): {"name": "Gym A"},
        ("post", "/v1/sites/{site_id}/devices"): {"id": "bike-1", "kind": "bike"},
        ("post", "/v1/sites/{site_id}/gateways"): {"id": "gw-1"},
        ("post", "/v1/sites/{site_id}/gateways/{gateway_id}/devices"): {"devices": ["bike-1"]},
        # fleet health and maintenance
        ("post", "/v1/devices/{device_id}/serviced"): {"serviced_at": iso(NOW - timedelta(hours=1))},
        ("put", "/v1/service-thresholds"): {"kind": "treadmill", "km": 5000, "hours": 1000},
        ("put", "/v1/sites/{site_id}/opening-hours"): {
            "periods": [{"weekday": 1, "opens": "06:00", "closes": "22:00"}]
        },
        ("put", "/v1/sites/{site_id}/webhook"): {"url": "http://127.0.0.1:9/alerts"},
    }


OVERRIDES = {
    ("delete", "/v1/studies/{study_id}"): {"study_id": "walk-draft"},
    ("post", "/v1/participants/{participant_id}/erase"): {"participant_id": str(ERASABLE)},
    ("get", "/v1/sites/{site_id}/exports/{export_id}"): {"export_id": str(SITE_EXPORT)},
    ("get", "/v1/sites/{site_id}/exports/{export_id}/files/{name}"): {"export_id": str(SITE_EXPORT)},
}
"""Path parameters of operations that need another resource than ``known`` names."""


def is_kind(param: dict[str, Any], fmt: str) -> bool:
    schema = param["schema"]
    options = schema.get("anyOf", [schema])
    return any(o.get("format") == fmt for o in options)


class Call:
    def __init__(self, method: str, template: str, path: dict[str, str], query: dict[str, str]) -> None:
        self.method, self.template, self.path, self.query = method, template, path, query

    def url(self, path: dict[str, str] | None = None, query: dict[str, str] | None = None) -> str:
        """The URL with values already percent-encoded (a raw ``%00`` stays as it is)."""
        url = self.template
        for name, value in {**self.path, **(path or {})}.items():
            url = url.replace("{" + name + "}", value)
        q = {**self.query, **(query or {})}
        return url + ("?" + "&".join(f"{k}={v}" for k, v in q.items()) if q else "")


def enc(value: str) -> str:
    return quote(value, safe="")


async def send(http: httpx.AsyncClient, call: Call, url: str, body: dict[str, Any] | None) -> httpx.Response:
    return await http.request(call.method.upper(), url, json=body)


def check_in_rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT device_id, participant_id, started_at, ended_at FROM device_assignments ORDER BY 1, 3"
        ).fetchall()


async def test_every_operation_follows_the_one_rule_for_bad_input(database_url: str, tmp_path: Path) -> None:
    seeded = seed(database_url)
    known = {
        "gateway_id": "gw-1",
        "device_id": "bike-1",
        "site_id": "gym-a",
        "participant_id": str(PARTICIPANT),
        "session_id": str(seeded.session_id),
        "key_id": (await make_key(database_url, "operator", name="to revoke"))[3:19],
        **seed_study(database_url, tmp_path),
    }
    required_query = {"since": enc(iso(T0))}
    store = MosquittoAuth(tmp_path / "broker", NoReload())  # registration issues broker logins here
    app = app_at(database_url, NOW, export_worker=False, export_dir=tmp_path, broker_auth=store)
    async with serve(app) as http:
        schema = (await http.get("/openapi.json")).json()
        walked = 0
        for template, item in schema["paths"].items():
            for method, op in item.items():
                params = op.get("parameters", [])
                values = {**known, **OVERRIDES.get((method, template), {})}
                path = {p["name"]: enc(values[p["name"]]) for p in params if p["in"] == "path"}
                query = {
                    p["name"]: required_query[p["name"]]
                    for p in params
                    if p["in"] == "query" and p["required"]
                }
                body = bodies().get((method, template)) if "requestBody" in op else None
                assert "requestBody" not in op or body is not None, (
                    f"no valid body known for {method} {template}"
                )
                call = Call(method, template, path, query)

                if op.get("x-vitalab-stream"):  # an endless answer (the live floor): its start is enough
                    async with http.stream(method.upper(), call.url()) as r:
                        assert r.is_success, (method, template, r.status_code, await r.aread())
                else:
                    ok = await send(http, call, call.url(), body)
                    assert ok.is_success, (method, template, ok.status_code, ok.text)
                await _spoil_parameters(http, call, params, body)
                if body is not None:
                    await _spoil_body(http, call, body)
                walked += 1
        assert walked == sum(len(item) for item in schema["paths"].values())
        assert walked >= 17

        # outside the schema: unknown routes, methods and static files answer problems too
        assert_problem(await http.get("/v1/nothing-here"), 404)
        assert_problem(await http.delete("/v1/devices"), 405)
        assert_problem(await http.get("/static/docs/swagger%00ui.js"), 422, "path")
    # nothing spoiled was written: the only check-in is the seeded one, ended by the valid calls
    assert check_in_rows(database_url) == [("bike-1", PARTICIPANT, T0, T0 + timedelta(hours=1))]


async def _spoil_parameters(
    http: httpx.AsyncClient, call: Call, params: list[dict[str, Any]], body: dict[str, Any] | None
) -> None:
    names = {p["name"] for p in params}
    for p in params:
        name, where = p["name"], p["in"]
        field = f"{where}.{name}"

        def url(value: str, name: str = name, where: str = where) -> str:
            return call.url(path={name: value}) if where == "path" else call.url(query={name: value})

        for nul in ("%00", "bike-1%00", "2026-11-25T09%3A00%3A00Z%00"):
            assert_problem(await send(http, call, url(nul), body), 422, field)
        if is_kind(p, "date-time"):
            for bad in BAD_TIMES:
                assert_problem(await send(http, call, url(enc(bad)), body), 422, field)
        if is_kind(p, "date"):
            for bad in BAD_DAYS:
                assert_problem(await send(http, call, url(enc(bad)), body), 422, field)
        if where == "path" and name in UNKNOWN:
            assert_problem(await send(http, call, url(enc(UNKNOWN[name])), body), 404, field)
        if where == "query" and name in FILTERS:
            assert_problem(await send(http, call, url(enc(UNKNOWN[FILTERS[name]])), body), 404, field)
    if {"since", "until"} <= names:
        kind = next(p for p in params if p["name"] == "since")
        if is_kind(kind, "date"):
            reversed_range = {"since": "2026-11-25", "until": "2026-11-24"}
        else:
            reversed_range = {"since": enc(iso(T0 + timedelta(hours=1))), "until": enc(iso(T0))}
        assert_problem(await send(http, call, call.url(query=reversed_range), body), 422, "query.since")


async def _spoil_body(http: httpx.AsyncClient, call: Call, body: dict[str, Any]) -> None:
    url = call.url()
    for name in BODY_TIMES[call.template]:
        for bad in BAD_TIMES:
            r = await send(http, call, url, body | {name: bad})
            assert_problem(r, 422, f"body.{name}")
        wrong = iso(NOW - timedelta(days=2)) if name in FUTURE_TIMES else iso(NOW + timedelta(days=2))
        assert_problem(await send(http, call, url, body | {name: wrong}), 422, f"body.{name}")
    for name, value in body.items():
        if isinstance(value, str):
            assert_problem(await send(http, call, url, body | {name: value + "\x00"}), 422, f"body.{name}")
    if "device_id" in body:
        r = await send(http, call, url, body | {"device_id": UNKNOWN["device_id"]})
        assert_problem(r, 404, "body.device_id")
    if "site_id" in body:
        assert_problem(
            await send(http, call, url, body | {"site_id": UNKNOWN["site_id"]}), 404, "body.site_id"
        )
    if "participant_id" in body:
        r = await send(http, call, url, body | {"participant_id": UNKNOWN["participant_id"]})
        assert_problem(r, 404, "body.participant_id")
