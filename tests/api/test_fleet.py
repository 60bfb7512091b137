"""Fleet health and maintenance through the API: data written through the ingester's writer, counted by the
analytics job, read by an operator of the site (and refused, as unknown, to one of another site)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from analytics.jobs import run_once
from api.security import Scope
from tests.analytics import dbdata as d
from tests.api.support import PinnedClock, app_at, assert_problem, serve
from tests.support.helpers import make_key
from vitalab.wire import DeviceMeta, DeviceState, Sample

pytestmark = pytest.mark.asyncio

S = timedelta(seconds=1)
M = timedelta(minutes=1)
H = timedelta(hours=1)
T0 = d.T0  # Monday 2026-11-23 08:00 UTC


def treadmill(device: str, start: datetime, n: int, mps: float) -> list[Sample]:
    """A treadmill at ``mps`` for ``n`` samples at 1 Hz, its distance from 0: (n - 1) * mps metres."""
    return [
        Sample(t=start + i * S, speed_kmh=mps * 3.6, distance_m=i * mps, elapsed_s=float(i)) for i in range(n)
    ]


def seed(url: str) -> None:
    """gym-a: a treadmill (firmware, a workout of 2000 m over 1000 s, an error code), a strap reporting its
    battery; gym-b: a treadmill of its own. Counted by the analytics job at T0 + 2 h."""
    d.setup_site(url, [("strap-1", "hr_strap")])
    d.setup_site(url, [("tm-b", "treadmill")], site="gym-b")
    d.write(
        url,
        [
            DeviceMeta(v=1, device="tm-1", kind="treadmill", vendor="Acme", model="T9", firmware="4.2.1"),
            DeviceState(v=1, device="tm-1", t=T0, online=True, training="manual"),
            DeviceState(v=1, device="strap-1", t=T0, online=True, battery_pct=64.0),
        ],
    )
    d.write(url, [d.telemetry("tm-1", c) for c in d.chunks(treadmill("tm-1", T0, 1001, 2.0), 100)])
    d.write(
        url, [d.telemetry("tm-b", c) for c in d.chunks(treadmill("tm-b", T0, 101, 2.0), 100)], site="gym-b"
    )
    d.write(
        url, [DeviceState(v=1, device="tm-1", t=T0 + 1000 * S, online=True, training="idle", errors=["E42"])]
    )
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE service_thresholds SET km = 2, hours = NULL WHERE kind = 'treadmill' AND model = '*'"
        )
    run_once(url, now=T0 + 2 * H)


async def get(http: httpx.AsyncClient, path: str, **params: Any) -> Any:
    r = await http.get(path, params=params)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


async def test_an_operator_sees_the_health_of_the_fleet_and_records_a_service(database_url: str) -> None:
    await asyncio.to_thread(seed, database_url)
    clock = PinnedClock(T0 + 2 * H)
    operator = await make_key(database_url, "operator", Scope.parse(["site:gym-a"]), name="desk")
    async with serve(app_at(database_url, clock), key=operator) as http:
        fleet = await get(http, "/v1/sites/gym-a/fleet")
        assert fleet["site_id"] == "gym-a"
        by_id = {dev["device_id"]: dev for dev in fleet["devices"]}
        assert set(by_id) == {"tm-1", "strap-1"}
        tm = by_id["tm-1"]
        assert (tm["kind"], tm["vendor"], tm["model"], tm["firmware"]) == ("treadmill", "Acme", "T9", "4.2.1")
        assert (tm["training"], tm["errors"]) == ("idle", ["E42"])
        assert tm["last_seen"] == "2026-11-23T08:16:40Z"  # the last of 1001 samples
        assert tm["status"] == "offline"  # silent for more than the 300 s the API allows
        assert tm["odometer_km"] == pytest.approx(2.0)
        assert tm["running_h"] == pytest.approx(1000 / 3600)
        assert (tm["km_since_service"], tm["hours_since_service"]) == (tm["odometer_km"], tm["running_h"])
        assert (tm["service_km"], tm["service_hours"]) == (2.0, None)
        assert tm["service_due"] is True  # 2 km reached
        assert tm["alerts"] == ["service_due"]
        assert tm["battery_pct"] is None  # the treadmill reports none
        strap = by_id["strap-1"]
        assert strap["battery_pct"] == 64.0
        assert strap["odometer_km"] is None  # not a machine
        assert strap["service_due"] is False
        assert strap["alerts"] == ["silent"]  # worn (online) and quiet since T0

        active = await get(http, "/v1/sites/gym-a/alerts", active="true")
        assert {(a["subject_id"], a["kind"]) for a in active} == {
            ("tm-1", "service_due"),
            ("strap-1", "silent"),
        }
        assert all(a["ended_at"] is None and a["site_id"] == "gym-a" for a in active)
        assert await get(http, "/v1/sites/gym-a/alerts", active="false") == []

        # serviced: the counters since the service start again at once, the flag goes
        r = await http.post("/v1/devices/tm-1/serviced", json={"note": "belt replaced"})
        assert r.status_code == 201, r.text
        service = r.json()
        assert (service["device_id"], service["serviced_at"], service["note"]) == (
            "tm-1",
            "2026-11-23T10:00:00Z",
            "belt replaced",
        )
        assert service["recorded_by"] == "tests"  # the key's owner (tests/support/helpers.make_key)
        tm = {dev["device_id"]: dev for dev in (await get(http, "/v1/sites/gym-a/fleet"))["devices"]}["tm-1"]
        assert (tm["km_since_service"], tm["hours_since_service"], tm["service_due"]) == (0, 0, False)
        assert tm["odometer_km"] == pytest.approx(2.0)  # the odometer never resets
        assert tm["last_service_at"] == "2026-11-23T10:00:00Z"

        # the job agrees, and closes the alert: nothing ran after the service
        await asyncio.to_thread(run_once, database_url, now=T0 + 3 * H)
        tm = {dev["device_id"]: dev for dev in (await get(http, "/v1/sites/gym-a/fleet"))["devices"]}["tm-1"]
        assert (tm["km_since_service"], tm["service_due"], tm["alerts"]) == (0, False, [])
        ended = await get(http, "/v1/sites/gym-a/alerts", active="false")
        assert [(a["subject_id"], a["kind"], a["ended_at"]) for a in ended] == [
            ("tm-1", "service_due", "2026-11-23T11:00:00Z")
        ]
        # alerts active during a range: the service-due alert was, until 11:00
        during = await get(
            http, "/v1/sites/gym-a/alerts", since="2026-11-23T10:30:00Z", until="2026-11-23T10:40:00Z"
        )
        assert {a["kind"] for a in during} == {"service_due", "silent"}
        after = await get(http, "/v1/sites/gym-a/alerts", since="2026-11-23T11:00:00Z")
        assert {a["kind"] for a in after} == {"silent"}

        # another site's fleet, alerts and devices are unknown to this operator (404 as for a missing one)
        for path in ("/v1/sites/gym-b/fleet", "/v1/sites/gym-b/alerts", "/v1/sites/gym-b/opening-hours"):
            body = assert_problem(await http.get(path), 404, "path.site_id")
            missing = assert_problem(await http.get(path.replace("gym-b", "gym-z")), 404, "path.site_id")
            assert body["detail"] == missing["detail"].replace("gym-z", "gym-b")
        assert_problem(await http.post("/v1/devices/tm-b/serviced", json={}), 404, "path.device_id")
        # the admin's settings are not the operator's
        assert (
            await http.put("/v1/sites/gym-a/webhook", json={"url": "http://x.invalid/"})
        ).status_code == 403
        assert (
            await http.put("/v1/service-thresholds", json={"kind": "bike", "hours": 5})
        ).status_code == 403


async def test_the_battery_is_stored_with_the_state(database_url: str) -> None:
    def go() -> list[tuple[Any, ...]]:
        d.setup_site(database_url, [("strap-1", "hr_strap")])
        d.write(database_url, [DeviceState(v=1, device="strap-1", t=T0, online=True, battery_pct=81.5)])
        d.write(database_url, [DeviceState(v=1, device="strap-1", t=T0 + M, online=True, battery_pct=81.0)])
        return d.rows(
            database_url,
            "SELECT d.battery_pct, e.t, e.detail->'battery_pct' FROM devices d "
            "JOIN device_events e USING (device_id) WHERE e.kind = 'state' ORDER BY e.t",
        )

    assert await asyncio.to_thread(go) == [(81.0, T0, 81.5), (81.0, T0 + M, 81.0)]


async def test_settings_opening_hours_thresholds_and_webhook(database_url: str) -> None:
    def site() -> None:
        d.setup_site(database_url, [("tm-1", "treadmill")], timezone="Europe/Oslo")

    await asyncio.to_thread(site)
    async with serve(app_at(database_url, T0)) as http:
        assert await get(http, "/v1/sites/gym-a/opening-hours") == {
            "site_id": "gym-a",
            "timezone": "Europe/Oslo",
            "always_open": True,
            "periods": [],
        }
        week = [{"weekday": w, "opens": "06:00", "closes": "22:00"} for w in range(1, 6)]
        night = [
            {"weekday": 6, "opens": "20:00", "closes": "24:00"},
            {"weekday": 7, "opens": "00:00", "closes": "02:30"},
        ]
        r = await http.put("/v1/sites/gym-a/opening-hours", json={"periods": night[::-1] + week})
        assert r.status_code == 200, r.text
        assert r.json()["periods"] == week + night  # in weekday order
        assert r.json()["always_open"] is False
        assert (await get(http, "/v1/sites/gym-a/opening-hours"))["periods"] == week + night
        # one place: the site's own opening_hours, as GET /v1/sites/gym-a shows them
        as_site = {day: [["06:00", "22:00"]] for day in ("mon", "tue", "wed", "thu", "fri")}
        as_site |= {"sat": [["20:00", "24:00"]], "sun": [["00:00", "02:30"]]}
        assert d.rows(database_url, "SELECT opening_hours FROM sites WHERE site_id = 'gym-a'") == [(as_site,)]
        assert (await get(http, "/v1/sites/gym-a"))["opening_hours"] == as_site
        bad = {"periods": [{"weekday": 1, "opens": "22:00", "closes": "06:00"}]}
        assert_problem(await http.put("/v1/sites/gym-a/opening-hours", json=bad), 422)
        twice = {"periods": [week[0], week[0]]}
        assert_problem(await http.put("/v1/sites/gym-a/opening-hours", json=twice), 422, "body.periods.1")
        overlap = {"periods": [week[1], {"weekday": 1, "opens": "07:00", "closes": "23:00"}, week[0]]}
        assert_problem(await http.put("/v1/sites/gym-a/opening-hours", json=overlap), 422, "body.periods.1")
        for clock in ("6:00", "24:30", "12:60"):
            wrong = {"periods": [{"weekday": 1, "opens": clock, "closes": "23:00"}]}
            assert_problem(await http.put("/v1/sites/gym-a/opening-hours", json=wrong), 422)
        assert (await get(http, "/v1/sites/gym-a/opening-hours"))["periods"] == week + night  # unchanged
        # PATCH /v1/sites sets the same hours: the view shows them
        r = await http.patch("/v1/sites/gym-a", json={"opening_hours": {"sun": [["10:00", "16:00"]]}})
        assert r.status_code == 200, r.text
        assert (await get(http, "/v1/sites/gym-a/opening-hours"))["periods"] == [
            {"weekday": 7, "opens": "10:00", "closes": "16:00"}
        ]
        # no day named: closed all week, which is not "always open"
        await http.patch("/v1/sites/gym-a", json={"opening_hours": {}})
        closed = await get(http, "/v1/sites/gym-a/opening-hours")
        assert (closed["periods"], closed["always_open"]) == ([], False)
        r = await http.put("/v1/sites/gym-a/opening-hours", json={"periods": []})
        assert (r.json()["periods"], r.json()["always_open"]) == ([], True)
        assert (await get(http, "/v1/sites/gym-a"))["opening_hours"] is None
        assert_problem(
            await http.put("/v1/sites/gym-z/opening-hours", json={"periods": []}), 404, "path.site_id"
        )

        r = await http.put("/v1/service-thresholds", json={"kind": "treadmill", "model": "T9", "km": 800})
        assert r.json() == {"kind": "treadmill", "model": "T9", "km": 800.0, "hours": None}
        rows = await get(http, "/v1/service-thresholds")
        assert {"kind": "treadmill", "model": "T9", "km": 800.0, "hours": None} in rows
        assert {"kind": "treadmill", "model": "*", "km": 5000.0, "hours": 1000.0} in rows  # the default
        r = await http.put("/v1/service-thresholds", json={"kind": "treadmill", "model": "T9"})
        assert r.status_code == 200
        assert all(t["model"] != "T9" for t in await get(http, "/v1/service-thresholds"))
        assert_problem(await http.put("/v1/service-thresholds", json={"kind": "sofa", "km": 1}), 422)
        assert_problem(await http.put("/v1/service-thresholds", json={"kind": "bike", "km": -1}), 422)

        assert (await get(http, "/v1/sites/gym-a/webhook"))["url"] is None
        r = await http.put("/v1/sites/gym-a/webhook", json={"url": "https://alerts.example/gym-a"})
        assert r.json()["url"] == "https://alerts.example/gym-a"
        assert (await get(http, "/v1/sites/gym-a/webhook"))["url"] == "https://alerts.example/gym-a"
        assert_problem(await http.put("/v1/sites/gym-a/webhook", json={"url": "ftp://x"}), 422, "body.url")
        r = await http.put("/v1/sites/gym-a/webhook", json={"url": None})
        assert r.status_code == 200, r.text
        assert (await get(http, "/v1/sites/gym-a/webhook"))["url"] is None

        # a service in the future or before 2000 is refused, and nothing is recorded
        future = (T0 + timedelta(days=1)).isoformat()
        assert_problem(await http.post("/v1/devices/tm-1/serviced", json={"serviced_at": future}), 422)
        assert d.rows(database_url, "SELECT count(*) FROM device_services") == [(0,)]


async def test_paged_alerts_newest_first(database_url: str) -> None:
    def go() -> None:
        d.setup_site(database_url, [("tm-1", "treadmill")])
        with psycopg.connect(database_url) as conn:
            conn.execute(
                "INSERT INTO alerts (site_id, subject, subject_id, kind, started_at, ended_at, updated_at) "
                "SELECT 'gym-a', 'device', 'tm-1', 'silent', %s + g * interval '1 hour', "
                "%s + g * interval '1 hour' + interval '5 minutes', %s FROM generate_series(0, 4) g",
                (T0, T0, T0),
            )

    await asyncio.to_thread(go)
    async with serve(app_at(database_url, T0 + 10 * H)) as http:
        r = await http.get("/v1/sites/gym-a/alerts", params={"limit": 2})
        first = r.json()
        assert [a["started_at"] for a in first] == ["2026-11-23T12:00:00Z", "2026-11-23T11:00:00Z"]
        seen = [a["alert_id"] for a in first]
        while "next" in r.links:
            r = await http.get(r.links["next"]["url"])
            seen += [a["alert_id"] for a in r.json()]
        assert len(seen) == len(set(seen)) == 5
        assert_problem(
            await http.get("/v1/sites/gym-a/alerts", params={"cursor": "nonsense"}), 422, "query.cursor"
        )


async def test_occupancy_is_served_again_until_its_sessions_change(database_url: str) -> None:
    """The occupancy kept by the report cache equals a fresh computation, for every range with the same slot
    edges, and is recomputed once a session changes (here: deleted, as an erasure does, without the job);
    the vitality aggregates likewise once a member's daily series changes (k = 5: six members, then five)."""

    pids: list[str] = []

    def go() -> None:
        d.setup_site(database_url, [(f"bike-{i}", "bike") for i in range(6)])
        pids.extend(d.participant(database_url) for _ in range(6))
        for i, pid in enumerate(pids):
            start = T0 + i * 25 * M
            d.check_in(database_url, f"bike-{i}", pid, start - M, start + 40 * M)
            d.write(database_url, d.bike(f"bike-{i}", start, 1800))
        run_once(database_url, now=T0 + 6 * H)

    await asyncio.to_thread(go)
    params = {"since": "2026-11-23T00:00:00Z", "until": "2026-11-24T00:00:00Z", "slot_min": "15"}
    shifted = {"since": "2026-11-23T00:05:00Z", "until": "2026-11-23T23:50:00Z", "slot_min": "15"}
    app = app_at(database_url, T0 + 6 * H)
    async with serve(app) as http, serve(app_at(database_url, T0 + 6 * H)) as fresh:
        first = await get(http, "/v1/sites/gym-a/occupancy", **params)
        again = await get(http, "/v1/sites/gym-a/occupancy", **shifted)  # the same edges: served again
        assert app.state.report_cache.hits == 1
        assert (again["since"], again["until"]) == ("2026-11-23T00:05:00Z", "2026-11-23T23:50:00Z")
        assert {**again, "since": first["since"], "until": first["until"]} == first
        assert await get(fresh, "/v1/sites/gym-a/occupancy", **shifted) == again
        monday = first["participants"][0]
        assert max(v for v in monday if v is not None) == 2  # two members overlap in some slot

        with psycopg.connect(database_url) as conn:
            conn.execute("DELETE FROM sessions WHERE device_ids = ARRAY['bike-1']")
        changed = await get(http, "/v1/sites/gym-a/occupancy", **params)
        assert changed != first
        assert app.state.report_cache.hits == 1  # recomputed
        assert changed == await get(fresh, "/v1/sites/gym-a/occupancy", **params)

        # vitality: the same, until a member is erased (their daily series goes with them)
        week = {"since": "2026-11-23", "until": "2026-11-29", "k": "2"}
        members = await get(http, "/v1/sites/gym-a/vitality", **week)
        assert await get(http, "/v1/sites/gym-a/vitality", **week) == members
        assert app.state.report_cache.hits == 2
        [cell] = [c for c in members["cells"] if c["group"] == "all"]
        assert cell["members"] == 6
        with psycopg.connect(database_url) as conn:
            conn.execute("DELETE FROM participants WHERE participant_id = %s", (pids[0],))
        [cell] = [
            c for c in (await get(http, "/v1/sites/gym-a/vitality", **week))["cells"] if c["group"] == "all"
        ]
        assert cell["members"] == 5
        assert app.state.report_cache.hits == 2
