"""Per-site analytics for operators: equipment utilisation, occupancy over the day, vitality aggregates with
small groups suppressed (definitions in analytics/site.py)."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

import numpy as np
from fastapi import APIRouter, HTTPException, Query
from psycopg import AsyncConnection

from analytics import site as site_metrics
from analytics.session_metrics import ALGORITHM_VERSION
from api.deps import ConnDep, SettingsDep
from api.models import DeviceUtilisation, SiteOccupancy, SiteUtilisation, SiteVitality, VitalityCell

router = APIRouter(prefix="/v1/sites", tags=["analytics"])

MAX_HOURS = 31 * 24
MAX_OCCUPANCY_DAYS = 366
AGE_BANDS = ((0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 200, "60+"))
Breakdown = Literal["none", "sex", "age_band"]


async def _site_timezone(conn: AsyncConnection, site_id: str) -> str:
    cur = await conn.execute("SELECT timezone FROM sites WHERE site_id = %s", (site_id,))
    row = await cur.fetchone()
    if row is None:
        raise HTTPException(status_code=404, detail=f"no site {site_id!r}")
    return str(row[0])


def _range(since: datetime | None, until: datetime | None, default: timedelta) -> tuple[datetime, datetime]:
    until = until or datetime.now(UTC)
    since = since or until - default
    if since.tzinfo is None or until.tzinfo is None:
        raise HTTPException(status_code=422, detail="since/until need a time zone (e.g. ...Z)")
    if since >= until:
        raise HTTPException(status_code=422, detail="since must be before until")
    return since, until


@router.get("/{site_id}/utilisation", response_model=SiteUtilisation)
async def utilisation(
    conn: ConnDep, site_id: str, since: datetime | None = None, until: datetime | None = None
) -> SiteUtilisation:
    """Per device and UTC hour of ``[since, until)`` (default: the last 24 h; at most 31 days): seconds in a
    session, the share of the hour, and minutes with any sample. Hours without activity are 0."""
    await _site_timezone(conn, site_id)
    since, until = _range(since, until, timedelta(hours=24))
    h0 = datetime.fromtimestamp(math.floor(since.timestamp() / 3600) * 3600, UTC)
    h1 = datetime.fromtimestamp(math.ceil(until.timestamp() / 3600) * 3600, UTC)
    n_hours = int((h1 - h0).total_seconds() // 3600)
    if n_hours > MAX_HOURS:
        raise HTTPException(status_code=422, detail=f"at most {MAX_HOURS} hours per request")
    cur = await conn.execute(
        "SELECT device_id, kind FROM devices WHERE site_id = %s ORDER BY device_id", (site_id,)
    )
    devices = await cur.fetchall()
    index = {d: i for i, (d, _) in enumerate(devices)}
    cur = await conn.execute(
        "SELECT device_id, hour, in_session_s, minutes_with_data FROM device_hourly "
        "WHERE site_id = %s AND hour >= %s AND hour < %s",
        (site_id, h0, h1),
    )
    in_session = np.zeros((len(devices), n_hours))
    minutes = np.zeros((len(devices), n_hours), dtype=np.int64)
    for device_id, hour, secs, mins in await cur.fetchall():
        if device_id in index:
            j = int((hour - h0).total_seconds() // 3600)
            in_session[index[device_id], j] = secs
            minutes[index[device_id], j] = mins
    return SiteUtilisation(
        site_id=site_id,
        hours=[h0 + timedelta(hours=j) for j in range(n_hours)],
        devices=[
            DeviceUtilisation(
                device_id=d,
                kind=kind,
                in_session_s=in_session[i].tolist(),
                utilisation=(in_session[i] / 3600.0).tolist(),
                minutes_with_data=minutes[i].tolist(),
            )
            for i, (d, kind) in enumerate(devices)
        ],
    )


@router.get("/{site_id}/occupancy", response_model=SiteOccupancy)
async def occupancy(
    conn: ConnDep,
    site_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    slot_min: Annotated[int, Query(ge=5, le=60, description="5, 10, 15, 20, 30 or 60")] = 15,
) -> SiteOccupancy:
    """Occupancy over the day in the site's local time, averaged per weekday over ``[since, until)``
    (default: the last 28 days): machines in a session (time-weighted) and distinct participants per slot."""
    if 60 % slot_min:
        raise HTTPException(status_code=422, detail="slot_min must divide an hour (5, 10, 15, 20, 30 or 60)")
    tz_name = await _site_timezone(conn, site_id)
    tz = ZoneInfo(tz_name)
    since, until = _range(since, until, timedelta(days=28))
    if until - since > timedelta(days=MAX_OCCUPANCY_DAYS):
        raise HTTPException(status_code=422, detail=f"at most {MAX_OCCUPANCY_DAYS} days per request")
    slot_s = slot_min * 60.0
    e0 = math.floor(since.timestamp() / slot_s) * slot_s
    e1 = math.ceil(until.timestamp() / slot_s) * slot_s
    edges = np.arange(e0, e1 + 1.0, slot_s)
    cur = await conn.execute(
        "SELECT device_id, kind FROM devices WHERE site_id = %s ORDER BY device_id", (site_id,)
    )
    machines = {d: i for i, (d, kind) in enumerate(await cur.fetchall()) if kind != "hr_strap"}
    cur = await conn.execute(
        "SELECT device_ids, participant_id::text, extract(epoch FROM started_at)::float8, "
        "extract(epoch FROM ended_at)::float8 FROM sessions WHERE site_id = %s AND algorithm_version = %s "
        "AND started_at < %s AND ended_at >= %s",
        (site_id, ALGORITHM_VERSION, datetime.fromtimestamp(e1, UTC), datetime.fromtimestamp(e0, UTC)),
    )
    sessions = await cur.fetchall()
    people: dict[str, int] = {}
    dev, dev_s, dev_e, who, who_s, who_e = [], [], [], [], [], []
    for ids, pid, a, b in sessions:
        for d in ids:
            if d in machines:
                dev.append(machines[d])
                dev_s.append(a)
                dev_e.append(b)
        who.append(-1 if pid is None else people.setdefault(pid, len(people)))
        who_s.append(a)
        who_e.append(b)
    occ_m = site_metrics.occupancy(
        np.array(dev, dtype=np.int64),
        np.full(len(dev), -1, dtype=np.int64),
        np.array(dev_s, dtype=np.float64),
        np.array(dev_e, dtype=np.float64),
        edges,
        max(len(machines), 1),
    )
    occ_p = site_metrics.occupancy(
        np.zeros(len(who), dtype=np.int64),
        np.array(who, dtype=np.int64),
        np.array(who_s, dtype=np.float64),
        np.array(who_e, dtype=np.float64),
        edges,
        1,
    )
    slots_per_day = int(86400 // slot_s)
    local = [datetime.fromtimestamp(float(x), tz) for x in edges[:-1]]
    weekday = np.array([t.weekday() for t in local], dtype=np.int64)
    slot = np.array([(t.hour * 3600 + t.minute * 60) // int(slot_s) for t in local], dtype=np.int64)
    m = site_metrics.weekly_profile(occ_m.machines_in_use, weekday, slot, slots_per_day)
    p = site_metrics.weekly_profile(occ_p.participants.astype(np.float64), weekday, slot, slots_per_day)

    def nulls(x: np.ndarray) -> list[list[float | None]]:
        return [[None if math.isnan(v) else float(v) for v in row] for row in x.tolist()]

    return SiteOccupancy(
        site_id=site_id,
        timezone=tz_name,
        since=since,
        until=until,
        slot_min=slot_min,
        machines_in_use=nulls(m),
        participants=nulls(p),
    )


def _group(breakdown: Breakdown, sex: str | None, birth_year: int | None, week: date) -> str:
    if breakdown == "sex":
        return sex or "unknown"
    if breakdown == "age_band":
        if birth_year is None:
            return "unknown"
        age = week.year - birth_year
        return next(label for lo, hi, label in AGE_BANDS if lo <= age < hi)
    return "all"


@router.get("/{site_id}/vitality", response_model=SiteVitality)
async def vitality(
    conn: ConnDep,
    settings: SettingsDep,
    site_id: str,
    since: date | None = None,
    until: date | None = None,
    breakdown: Breakdown = "none",
    k: Annotated[int | None, Query(ge=2)] = None,
) -> SiteVitality:
    """Per ISO week (Monday) of ``[since, until]`` (default: the last 8 weeks) over the site's members with at
    least one session that week: sessions per member, median weekly load (TRIMP), median MVPA minutes, mean
    WHO moderate-equivalent minutes and the share reaching 150. A cell of fewer than ``k`` members (the
    configured minimum unless a larger ``k`` is asked for) is suppressed, and so are the smallest other cells
    of its week until the suppressed ones hold at least ``k`` members together (no differencing against the
    week's total, which is always returned as group ``all``)."""
    await _site_timezone(conn, site_id)
    k_used = max(settings.analytics_k_anonymity, k or 0)
    until = until or datetime.now(UTC).date()
    since = since or until - timedelta(weeks=8)
    cur = await conn.execute(
        "SELECT p.participant_id, p.sex, p.birth_year, date_trunc('week', d.day)::date AS week, "
        "sum(d.sessions)::float8, sum(d.load)::float8, sum(d.moderate_min + d.vigorous_min)::float8, "
        "(sum(d.moderate_min) + 2 * sum(d.vigorous_min))::float8 "
        "FROM participant_daily d JOIN participants p USING (participant_id) "
        "WHERE p.site_id = %s AND d.day >= %s AND d.day <= %s "
        "GROUP BY 1, 2, 3, 4 HAVING sum(d.sessions) > 0 ORDER BY 4",
        (site_id, since, until),
    )
    rows = await cur.fetchall()
    keys: dict[tuple[date, str], int] = {}
    parent: list[int] = []
    week_of: dict[date, int] = {}
    cell_rows: list[tuple[int, float, float, float, float]] = []
    for _pid, sex, birth_year, week, sessions, load, mvpa, who in rows:
        if week not in week_of:
            week_of[week] = len(week_of)
        labels = ["all"] if breakdown == "none" else ["all", _group(breakdown, sex, birth_year, week)]
        for label in labels:
            key = (week, label)
            if key not in keys:
                keys[key] = len(keys)
                # the week's total is a group of its own; the breakdown cells of a week share one label
                parent.append(-1 - week_of[week] if label == "all" else week_of[week])
            cell_rows.append((keys[key], sessions, load, mvpa, who))
    arr = np.array(cell_rows, dtype=np.float64).reshape(-1, 5)
    v = site_metrics.vitality(
        arr[:, 0].astype(np.int64),
        np.array(parent, dtype=np.int64),
        arr[:, 1],
        arr[:, 2],
        arr[:, 3],
        arr[:, 4],
        len(keys),
        k_used,
    )

    def num(x: float) -> float | None:
        return None if math.isnan(x) else float(x)

    cells = [
        VitalityCell(
            week=week,
            group=label,
            suppressed=bool(v.suppressed[i]),
            members=None if math.isnan(v.members[i]) else int(v.members[i]),
            sessions_per_member=num(v.sessions_per_member[i]),
            median_load=num(v.median_load[i]),
            median_mvpa_min=num(v.median_mvpa_min[i]),
            mean_who_min=num(v.mean_who_min[i]),
            who_share=num(v.who_share[i]),
        )
        for (week, label), i in sorted(keys.items(), key=lambda kv: (kv[0][0], kv[0][1] != "all", kv[0][1]))
    ]
    return SiteVitality(site_id=site_id, k_anonymity=k_used, breakdown=breakdown, cells=cells)
