"""Cursor pagination: following ``Link`` headers returns every row exactly once, in order, also when many
rows share one timestamp; lists are never silently capped; responses are compressed."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import psycopg
import pytest

from analytics.version import ALGORITHM_VERSION
from tests.api.support import app_at, assert_problem, serve

pytestmark = pytest.mark.asyncio

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=1)
SHARED = 25  # rows sharing one timestamp, more than three pages of PAGE
PAGE = 7


def seed(url: str) -> dict[str, Any]:
    """25 devices; 25 check-ins and 25 sessions starting at the same instant (plus a few others);
    23 dead letters received in one transaction (one received_at); 57 samples; RR intervals 3 per instant."""
    devices = [f"bike-{i:02d}" for i in range(SHARED)]
    pids = [uuid4() for _ in devices]
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO sites (site_id) VALUES ('gym-a')")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO devices (device_id, site_id, kind) VALUES (%s, 'gym-a', 'bike')",
                [(d,) for d in devices],
            )
            cur.executemany(
                "INSERT INTO participants (participant_id, site_id) VALUES (%s, 'gym-a')",
                [(p,) for p in pids],
            )
            cur.executemany(
                "INSERT INTO device_assignments (device_id, participant_id, started_at, ended_at) "
                "VALUES (%s, %s, %s, %s)",
                [(d, p, T0, T0 + timedelta(minutes=30)) for d, p in zip(devices, pids, strict=True)]
                + [(devices[0], pids[1], T0 + timedelta(hours=h), None) for h in (1,)]
                + [(devices[1], pids[2], T0 - timedelta(hours=h), T0 - timedelta(minutes=1)) for h in (1,)],
            )
            cur.executemany(
                "INSERT INTO sessions (site_id, device_ids, started_at, ended_at, source, algorithm_version) "
                "VALUES ('gym-a', %s, %s, %s, 'activity_gap', %s)",
                [([d], T0, T0 + timedelta(minutes=30), ALGORITHM_VERSION) for d in devices]
                + [
                    (
                        [devices[0]],
                        T0 + timedelta(hours=h),
                        T0 + timedelta(hours=h, minutes=5),
                        ALGORITHM_VERSION,
                    )
                    for h in (1, 2, 3)
                ],
            )
            cur.executemany(
                "INSERT INTO samples (device_id, t, site_id, seq, power_w) VALUES (%s, %s, 'gym-a', %s, %s)",
                [(devices[0], T0 + timedelta(seconds=i), i, float(i)) for i in range(57)]
                + [(d, T0, 0, 1.0) for d in devices[1:]],
            )
            cur.executemany(
                "INSERT INTO rr_intervals (device_id, t, idx, rr_ms) VALUES (%s, %s, %s, %s)",
                [(devices[0], T0 + timedelta(seconds=i // 3), i % 3, 600.0 + i) for i in range(31)],
            )
        conn.execute(
            "INSERT INTO dead_letters (topic, reason, detail, payload, payload_size) "
            "SELECT 'vitalab/v1/gym-a/dev/x/telemetry', 'schema', 'letter ' || i, '\\x7b7d'::bytea, 2 "
            "FROM generate_series(1, 23) i"
        )
    return {"devices": devices, "pids": pids}


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


async def walk(
    http: httpx.AsyncClient, path: str, params: dict[str, Any], rel: str = "next"
) -> tuple[list[dict[str, Any]], int]:
    """Every row of a list by following ``rel`` links; ``rel="prev"`` pages are put before the ones read."""
    r = await http.get(path, params=params)
    assert r.status_code == 200, r.text
    got: list[dict[str, Any]] = r.json()
    pages = 1
    while rel in r.links:
        assert len(r.json()) == params["limit"]  # only a full page says that more may follow
        r = await http.get(r.links[rel]["url"])
        assert r.status_code == 200, r.text
        got = got + r.json() if rel == "next" else r.json() + got
        pages += 1
    return got, pages


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def pages_for(n: int) -> int:
    return math.ceil(n / PAGE)


async def test_paging_returns_every_row_once_in_key_order(database_url: str) -> None:
    seeded = seed(database_url)
    url = database_url
    async with serve(app_at(url, NOW)) as http:
        # check-ins: 25 share started_at; ordered by (started_at, device_id)
        got, pages = await walk(http, "/v1/check-ins", {"limit": PAGE})
        want = rows(
            url, "SELECT device_id, participant_id FROM device_assignments ORDER BY started_at, device_id"
        )
        assert [(c["device_id"], UUID(c["participant_id"])) for c in got] == want
        assert len(want) == SHARED + 2
        assert pages == pages_for(len(want))

        # sessions in a window: 25 share started_at; by (started_at, session_id)
        window = {"since": iso(T0 - timedelta(hours=1)), "until": iso(T0 + timedelta(hours=5)), "limit": PAGE}
        got, pages = await walk(http, "/v1/sessions", window)
        want = rows(url, "SELECT session_id FROM sessions ORDER BY started_at, session_id")
        assert [(s["session_id"],) for s in got] == want
        assert pages == pages_for(SHARED + 3)
        # without a window: the newest page first, older ones by rel="prev"; the same rows in the same order
        got, pages = await walk(http, "/v1/sessions", {"limit": PAGE}, rel="prev")
        assert [(s["session_id"],) for s in got] == want
        newest = (await http.get("/v1/sessions", params={"limit": PAGE})).json()
        assert [(s["session_id"],) for s in newest] == want[-PAGE:]

        # dead letters: 23 received in one transaction, newest first by (received_at, id)
        got, pages = await walk(http, "/v1/dead-letters", {"limit": PAGE})
        want = rows(url, "SELECT id FROM dead_letters ORDER BY received_at DESC, id DESC")
        assert len({d["received_at"] for d in got}) == 1
        assert [(d["id"],) for d in got] == want
        assert pages == pages_for(23)

        # one device's samples, forward from since and backward from the newest
        got, pages = await walk(http, "/v1/devices/bike-00/samples", {"since": iso(T0), "limit": PAGE})
        assert [s["seq"] for s in got] == list(range(57))
        assert pages == pages_for(57)
        got, pages = await walk(http, "/v1/devices/bike-00/samples", {"limit": PAGE}, rel="prev")
        assert [s["seq"] for s in got] == list(range(57))

        # RR intervals: three per instant, by (t, idx)
        got, pages = await walk(http, "/v1/devices/bike-00/rr", {"since": iso(T0), "limit": PAGE})
        assert [r["rr_ms"] for r in got] == [600.0 + i for i in range(31)]

        # devices and the newest sample of each, by device id
        got, _ = await walk(http, "/v1/devices", {"limit": PAGE})
        assert [d["device_id"] for d in got] == seeded["devices"]
        got, _ = await walk(http, "/v1/samples/latest", {"limit": PAGE})
        assert [(s["device_id"], s["seq"]) for s in got] == [("bike-00", 56)] + [
            (d, 0) for d in seeded["devices"][1:]
        ]


async def test_no_silent_caps_and_bad_cursors(database_url: str) -> None:
    seed(database_url)
    async with serve(app_at(database_url, NOW)) as http:
        # everything fits the default page: no Link; one row more than a page: a Link
        r = await http.get("/v1/dead-letters")
        assert len(r.json()) == 23
        assert "link" not in r.headers
        r = await http.get("/v1/dead-letters", params={"limit": 22})
        assert len(r.json()) == 22
        assert r.links["next"]["url"].startswith("/v1/dead-letters?")
        last = await http.get(r.links["next"]["url"])
        assert len(last.json()) == 1
        assert "next" not in last.links
        assert "prev" in last.links  # and back
        back = await http.get(last.links["prev"]["url"])
        assert [d["id"] for d in back.json()] == [d["id"] for d in r.json()]

        # a page size, documented with its maximum
        schema = (await http.get("/openapi.json")).json()
        limit = next(
            p
            for p in schema["paths"]["/v1/devices/{device_id}/samples"]["get"]["parameters"]
            if p["name"] == "limit"
        )
        assert limit["schema"]["maximum"] == 10_000
        assert_problem(
            await http.get("/v1/devices/bike-00/samples", params={"limit": 10_001}), 422, "query.limit"
        )

        # cursors are checked: garbage, and a cursor of another list
        for bad in ("garbage", "", "W10", "WyJuIl0", "eyJhIjoxfQ"):
            r = await http.get("/v1/sessions", params={"cursor": bad})
            assert_problem(r, 422, "query.cursor")
        devices_page = await http.get("/v1/devices", params={"limit": 2})
        other = httpx.URL(devices_page.links["next"]["url"]).params["cursor"]
        assert_problem(await http.get("/v1/sessions", params={"cursor": other}), 422, "query.cursor")


async def test_responses_are_compressed(database_url: str) -> None:
    seed(database_url)
    async with serve(app_at(database_url, NOW)) as http:
        r = await http.get(
            "/v1/devices/bike-00/samples", params={"since": iso(T0)}, headers={"Accept-Encoding": "gzip"}
        )
        assert r.headers["content-encoding"] == "gzip"
        assert len(r.json()) == 57  # httpx decompressed it
        plain = await http.get(
            "/v1/devices/bike-00/samples", params={"since": iso(T0)}, headers={"Accept-Encoding": "identity"}
        )
        assert "content-encoding" not in plain.headers
        assert plain.json() == r.json()
