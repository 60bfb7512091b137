"""The analytics endpoints over a real database filled by the ingester's writer and `analytics run`."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest

from analytics.jobs import run_once
from tests.analytics import dbdata as d
from tests.support.helpers import make_settings, running_api

pytestmark = pytest.mark.asyncio

M = timedelta(minutes=1)


def seed(url: str) -> list[str]:
    """8 members (6 men, 2 women) ride 8 bikes on Monday 2026-11-23, 30 minutes each, 20 minutes apart."""
    bikes = [f"bike-{i}" for i in range(1, 9)]
    d.setup_site(url, [(b, "bike") for b in bikes] + [("strap-1", "hr_strap")], timezone="Europe/Oslo")
    pids = [d.participant(url, sex="male" if i < 6 else "female") for i in range(8)]
    messages = []
    for i, (bike, pid) in enumerate(zip(bikes, pids, strict=True)):
        start = d.T0 + 20 * i * M
        d.check_in(url, bike, pid, start - M, start + 40 * M)
        messages += d.bike(bike, start, 1800, hr=120.0 + 5 * i)
    d.write(url, messages)
    run_once(url, now=d.T0 + timedelta(days=2))
    return pids


async def get(http: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await http.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_sessions_participants_sites_and_quality(database_url: str) -> None:
    pids = await asyncio.to_thread(seed, database_url)  # the writer runs its own event loop
    async with (
        running_api(make_settings(), database_url) as api,
        httpx.AsyncClient(base_url=api.url, headers=api.headers) as http,
    ):
        sessions = await get(http, "/v1/sessions", site=d.SITE)
        assert [s["device_ids"] for s in sessions] == [[f"bike-{i}"] for i in range(1, 9)]
        assert [s["participant_id"] for s in sessions] == pids
        assert {s["source"] for s in sessions} == {"check_in"}
        assert sessions[2]["hr_avg_bpm"] == 130.0
        assert (await get(http, "/v1/sessions", device="bike-3"))[0]["session_id"] == sessions[2][
            "session_id"
        ]
        assert len(await get(http, "/v1/sessions", participant=pids[7])) == 1
        window = await get(
            http, "/v1/sessions", since=(d.T0 + 30 * M).isoformat(), until=(d.T0 + 61 * M).isoformat()
        )
        assert [s["device_ids"][0] for s in window] == ["bike-3", "bike-4"]  # [since, until) by start
        elsewhere = await http.get("/v1/sessions", params={"site": "elsewhere"})
        assert (elsewhere.status_code, elsewhere.json()["field"]) == (404, "query.site")  # not 200 []
        one = await get(http, f"/v1/sessions/{sessions[0]['session_id']}")
        assert one["summary"]["hr_avg_bpm"] == 120.0
        assert one["summary"]["duration_s"] == 1800.0
        assert (await http.get("/v1/sessions/999999")).status_code == 404

        load = await get(http, f"/v1/participants/{pids[0]}/load")
        days = load["days"]
        assert [x["day"] for x in days] == ["2026-11-23", "2026-11-24", "2026-11-25"]  # rest days follow
        assert days[0]["sessions"] == 1
        assert days[0]["load"] > 0
        assert days[1]["ctl"] < days[0]["ctl"]  # fitness decays on rest days
        assert days[1]["tsb"] == pytest.approx(days[0]["ctl"] - days[0]["atl"], rel=1e-5)
        assert days[0]["who_status"] == "below"
        assert (
            await http.get("/v1/participants/00000000-0000-0000-0000-000000000000/load")
        ).status_code == 404

        util = await get(
            http,
            f"/v1/sites/{d.SITE}/utilisation",
            since=d.T0.isoformat(),
            until=(d.T0 + 4 * 60 * M).isoformat(),
        )
        assert len(util["hours"]) == 4
        bike1 = next(x for x in util["devices"] if x["device_id"] == "bike-1")
        assert bike1["in_session_s"][:2] == [1799.0, 0.0]
        assert bike1["utilisation"][0] == pytest.approx(1799 / 3600)
        assert bike1["minutes_with_data"][:2] == [30, 0]
        bike4 = next(x for x in util["devices"] if x["device_id"] == "bike-4")  # 09:00-09:30
        assert bike4["in_session_s"][:2] == [0.0, 1799.0]

        occ = await get(
            http,
            f"/v1/sites/{d.SITE}/occupancy",
            since=(d.T0 - 8 * 60 * M).isoformat(),
            until=(d.T0 + 16 * 60 * M).isoformat(),
            slot_min=60,
        )
        assert occ["timezone"] == "Europe/Oslo"
        monday = occ["machines_in_use"][0]
        # 08:00 UTC is 09:00 in Oslo: bikes 1-3 ride in that hour (30 + 30 + 20 minutes)
        assert monday[9] == pytest.approx((1799 + 1799 + 1199) / 3600, rel=1e-3)
        assert occ["participants"][0][9] == 3
        assert occ["machines_in_use"][1][9] is None  # Tuesday is not in the range
        assert (await http.get(f"/v1/sites/{d.SITE}/occupancy", params={"slot_min": 25})).status_code == 422

        vit = await get(http, f"/v1/sites/{d.SITE}/vitality", since="2026-11-23", until="2026-11-29")
        [total] = vit["cells"]
        assert (total["week"], total["group"], total["suppressed"], total["members"]) == (
            "2026-11-23",
            "all",
            False,
            8,
        )
        assert total["sessions_per_member"] == 1.0
        assert total["who_share"] == 0.0
        by_sex = await get(
            http, f"/v1/sites/{d.SITE}/vitality", since="2026-11-23", until="2026-11-29", breakdown="sex"
        )
        cells = {c["group"]: c for c in by_sex["cells"]}
        assert cells["all"]["members"] == 8
        # 2 women < 5: suppressed; 6 men would then reveal them (8 - 6), so they are suppressed too
        assert cells["female"]["suppressed"]
        assert cells["male"]["suppressed"]
        assert cells["male"]["members"] is None
        assert cells["male"]["median_load"] is None
        strict = await get(http, f"/v1/sites/{d.SITE}/vitality", since="2026-11-23", until="2026-11-29", k=10)
        assert strict["k_anonymity"] == 10
        assert strict["cells"][0]["suppressed"]
        assert strict["cells"][0]["mean_who_min"] is None
        lax = await get(http, f"/v1/sites/{d.SITE}/vitality", since="2026-11-23", until="2026-11-29", k=2)
        assert lax["k_anonymity"] == 5  # a request cannot go below the configured minimum
        assert (await http.get("/v1/sites/nope/vitality")).status_code == 404

        quality = await get(http, "/v1/devices/bike-1/quality")
        assert len(quality) == 1
        q = quality[0]
        assert (q["day"], q["samples"], q["samples_received"], q["duplicates"]) == (
            "2026-11-23",
            1800,
            1800,
            0,
        )
        assert q["received_ratio"] == pytest.approx(1.0)
        assert q["hr_valid_share"] == 1.0
        assert q["clock_skew_s"] == pytest.approx(1.0, abs=0.5)
        assert (await http.get("/v1/devices/nope/quality")).status_code == 404
