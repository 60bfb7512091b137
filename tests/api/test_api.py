"""The HTTP API over a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from tests.conftest import SCHEMA_TIMESCALE
from tests.support.helpers import make_settings, running_api

pytestmark = pytest.mark.asyncio

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def seed(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO sites (site_id) VALUES ('gym-a'), ('gym-b')")
        conn.execute(
            "INSERT INTO devices (device_id, site_id, kind, online) VALUES "
            "('bike-1', 'gym-a', 'bike', true), ('tread-1', 'gym-b', 'treadmill', false)"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO samples (device_id, t, site_id, seq, power_w, hr_bpm) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                [("bike-1", T0 + timedelta(seconds=i), "gym-a", i, 100 + i, 120) for i in range(30)],
            )
            cur.executemany(
                "INSERT INTO rr_intervals (device_id, t, idx, rr_ms) VALUES (%s, %s, %s, %s)",
                [
                    ("bike-1", T0, 0, 500.0),
                    ("bike-1", T0, 1, 505.0),
                    ("bike-1", T0 + timedelta(seconds=1), 0, 498.0),
                ],
            )
        conn.execute(
            "INSERT INTO dead_letters (topic, reason, detail, path, device_id, payload, payload_size) VALUES "
            "('vitalab/v1/gym-a/dev/bike-1/telemetry', 'implausible_value', 'Expected `float` <= 250.0', "
            "'$.samples[0].hr_bpm', 'bike-1', '\\xff7b'::bytea, 2)"
        )


async def test_devices_samples_rr_and_dead_letters(database_url: str) -> None:
    seed(database_url)
    async with (
        running_api(make_settings(), database_url) as api,
        httpx.AsyncClient(base_url=api.url, headers=api.headers) as http,
    ):
        devices = (await http.get("/v1/devices")).json()
        assert [d["device_id"] for d in devices] == ["bike-1", "tread-1"]
        assert [d["device_id"] for d in (await http.get("/v1/devices", params={"site": "gym-b"})).json()] == [
            "tread-1"
        ]
        assert (await http.get("/v1/devices/bike-1")).json()["kind"] == "bike"
        missing = await http.get("/v1/devices/nope")
        assert missing.status_code == 404

        newest = (await http.get("/v1/devices/bike-1/samples", params={"limit": 5})).json()
        assert [s["power_w"] for s in newest] == [
            125.0,
            126.0,
            127.0,
            128.0,
            129.0,
        ]  # newest 5, in time order
        window = (
            await http.get(
                "/v1/devices/bike-1/samples",
                params={
                    "since": (T0 + timedelta(seconds=10)).isoformat(),
                    "until": (T0 + timedelta(seconds=13)).isoformat(),
                },
            )
        ).json()
        assert [s["seq"] for s in window] == [10, 11, 12]  # [since, until)
        bad_limit = await http.get("/v1/devices/bike-1/samples", params={"limit": 0})
        assert bad_limit.status_code == 422

        latest = (await http.get("/v1/samples/latest")).json()
        assert [(s["device_id"], s["seq"]) for s in latest] == [("bike-1", 29)]

        rr = (await http.get("/v1/devices/bike-1/rr", params={"since": T0.isoformat()})).json()
        assert [(r["idx"], r["rr_ms"]) for r in rr] == [(0, 500.0), (1, 505.0), (0, 498.0)]

        (dl,) = (await http.get("/v1/dead-letters", params={"reason": "implausible_value"})).json()
        assert dl["path"] == "$.samples[0].hr_bpm"
        assert dl["payload_preview"] == "\ufffd{"  # undecodable byte replaced, never a 500
        assert (await http.get("/v1/dead-letters", params={"reason": "schema"})).json() == []

        health = await http.get("/health")
        assert health.status_code == 200
        assert health.json() == {
            "status": "ok",
            "database": True,
            "timescale": SCHEMA_TIMESCALE == "require",
            "checks": [],
        }


async def test_health_says_503_when_the_database_is_gone(empty_database: str) -> None:
    url = psycopg.conninfo.make_conninfo(empty_database, dbname="vitalab_does_not_exist")
    async with (
        running_api(make_settings(), url, with_key=False) as api,
        httpx.AsyncClient(base_url=api.url, headers=api.headers) as http,
    ):
        r = await http.get("/health")
    assert r.status_code == 503
    assert r.json()["database"] is False
