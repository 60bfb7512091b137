"""Per-site reports for operators: the stored analytics read by :mod:`api.queries.sites`, turned into the
response models with the pure functions of :mod:`analytics.site` (equipment utilisation, occupancy over the
day, vitality aggregates with small groups suppressed; definitions there)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray
from psycopg import AsyncConnection

from analytics import site as site_metrics
from analytics.version import ALGORITHM_VERSION
from api.models import DeviceUtilisation, SiteOccupancy, SiteUtilisation, SiteVitality, VitalityCell
from api.queries import sites as q

I64 = NDArray[np.int64]
AGE_BANDS: Final = ((0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 200, "60+"))
Breakdown = Literal["none", "sex", "age_band"]


def hour_span(since: datetime, until: datetime) -> tuple[datetime, int]:
    """The first whole UTC hour at or before ``since`` and the number of hours to cover ``until``."""
    h0 = datetime.fromtimestamp(math.floor(since.timestamp() / 3600) * 3600, UTC)
    h1 = datetime.fromtimestamp(math.ceil(until.timestamp() / 3600) * 3600, UTC)
    return h0, int((h1 - h0).total_seconds() // 3600)


async def utilisation(
    conn: AsyncConnection, site_id: str, since: datetime, until: datetime
) -> SiteUtilisation:
    h0, n_hours = hour_span(since, until)
    devices = await q.devices(conn, site_id)
    index = {d.device_id: i for i, d in enumerate(devices)}
    in_session = np.zeros((len(devices), n_hours))
    minutes = np.zeros((len(devices), n_hours), dtype=np.int64)
    for row in await q.device_hours(conn, site_id, h0, h0 + timedelta(hours=n_hours)):
        if row.device_id in index:
            i = index[row.device_id]
            in_session[i, row.hours] = row.in_session_s
            minutes[i, row.hours] = row.minutes_with_data
    return SiteUtilisation(
        site_id=site_id,
        hours=[h0 + timedelta(hours=j) for j in range(n_hours)],
        devices=[
            DeviceUtilisation(
                device_id=d.device_id,
                kind=d.kind,
                in_session_s=in_session[i].tolist(),
                utilisation=(in_session[i] / 3600.0).tolist(),
                minutes_with_data=minutes[i].tolist(),
            )
            for i, d in enumerate(devices)
        ],
    )


def _nulls(x: NDArray[np.float64]) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in x.tolist()]


def slot_edges(since: datetime, until: datetime, slot_min: int) -> NDArray[np.float64]:
    """Edges (epoch seconds) of the whole UTC slots of ``slot_min`` minutes covering ``[since, until)``."""
    slot_s = slot_min * 60.0
    e0 = math.floor(since.timestamp() / slot_s) * slot_s
    e1 = math.ceil(until.timestamp() / slot_s) * slot_s
    return np.arange(e0, e1 + 1.0, slot_s)


def occupancy_series(
    devices: Sequence[q.SiteDevice], spans: Sequence[q.SessionSpan], edges: NDArray[np.float64]
) -> site_metrics.Occupancy:
    """Per slot between consecutive ``edges``: machines in a session (time-weighted mean; heart-rate straps
    are not machines) and distinct participants with a session overlapping it (one code for the API's
    profile and the site exports' series)."""
    machines = {d.device_id: i for i, d in enumerate(devices) if d.kind != "hr_strap"}
    people: dict[str, int] = {}
    dev: list[int] = []
    dev_s: list[float] = []
    dev_e: list[float] = []
    who: list[int] = []
    for span in spans:
        for d in span.device_ids:
            if d in machines:
                dev.append(machines[d])
                dev_s.append(span.start_s)
                dev_e.append(span.end_s)
        pid = span.participant_id
        who.append(-1 if pid is None else people.setdefault(str(pid), len(people)))
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
        np.array([s.start_s for s in spans], dtype=np.float64),
        np.array([s.end_s for s in spans], dtype=np.float64),
        edges,
        1,
    )
    return site_metrics.Occupancy(occ_m.machines_in_use, occ_p.participants)


def local_slots(edges: NDArray[np.float64], tz: ZoneInfo, slot_min: int) -> tuple[list[datetime], I64, I64]:
    """The local start of each slot, its weekday (0 = Monday) and its slot of the (local) day."""
    slot_s = slot_min * 60
    local = [datetime.fromtimestamp(float(x), tz) for x in edges[:-1]]
    weekday = np.array([t.weekday() for t in local], dtype=np.int64)
    slot = np.array([(t.hour * 3600 + t.minute * 60) // slot_s for t in local], dtype=np.int64)
    return local, weekday, slot


async def occupancy(
    conn: AsyncConnection, site_id: str, tz_name: str, since: datetime, until: datetime, slot_min: int
) -> SiteOccupancy:
    tz = ZoneInfo(tz_name)
    edges = slot_edges(since, until, slot_min)
    spans = await q.sessions_overlapping(
        conn,
        site_id,
        ALGORITHM_VERSION,
        datetime.fromtimestamp(float(edges[0]), UTC),
        datetime.fromtimestamp(float(edges[-1]), UTC),
    )
    occ = occupancy_series(await q.devices(conn, site_id), spans, edges)
    slots_per_day = 1440 // slot_min
    _, weekday, slot = local_slots(edges, tz, slot_min)
    m = site_metrics.weekly_profile(occ.machines_in_use, weekday, slot, slots_per_day)
    p = site_metrics.weekly_profile(occ.participants.astype(np.float64), weekday, slot, slots_per_day)
    return SiteOccupancy(
        site_id=site_id,
        timezone=tz_name,
        since=since,
        until=until,
        slot_min=slot_min,
        machines_in_use=_nulls(m),
        participants=_nulls(p),
    )


def _group(breakdown: Breakdown, sex: str | None, birth_year: int | None, week: date) -> str:
    if breakdown == "sex":
        return sex or "unknown"
    if breakdown == "age_band":
        if birth_year is None:
            return "unknown"
        age = week.year - birth_year
        return next((label for lo, hi, label in AGE_BANDS if lo <= age < hi), "unknown")
    return "all"


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def vitality_cells(rows: Sequence[q.MemberWeek], breakdown: Breakdown, k: int) -> list[VitalityCell]:
    """The cells (week x group) of member-weeks ``rows`` (in the order of
    :data:`api.queries.sites.MEMBER_WEEKS`) with small cells suppressed; one code for the API and the site
    exports (which pass one week at a time: cells of different weeks never depend on each other)."""
    keys: dict[tuple[date, str], int] = {}
    parent: list[int] = []
    week_of: dict[date, int] = {}
    cell_rows: list[tuple[int, float, float, float, float]] = []
    for r in rows:
        if r.week not in week_of:
            week_of[r.week] = len(week_of)
        labels = ["all"] if breakdown == "none" else ["all", _group(breakdown, r.sex, r.birth_year, r.week)]
        for label in labels:
            key = (r.week, label)
            if key not in keys:
                keys[key] = len(keys)
                # the week's total is a group of its own; the breakdown cells of a week share one label
                parent.append(-1 - week_of[r.week] if label == "all" else week_of[r.week])
            cell_rows.append((keys[key], r.sessions, r.load, r.mvpa_min, r.who_min))
    arr = np.array(cell_rows, dtype=np.float64).reshape(-1, 5)
    v = site_metrics.vitality(
        arr[:, 0].astype(np.int64),
        np.array(parent, dtype=np.int64),
        arr[:, 1],
        arr[:, 2],
        arr[:, 3],
        arr[:, 4],
        len(keys),
        k,
    )
    return [
        VitalityCell(
            week=week,
            group=label,
            suppressed=bool(v.suppressed[i]),
            members=None if math.isnan(v.members[i]) else int(v.members[i]),
            sessions_per_member=_num(v.sessions_per_member[i]),
            median_load=_num(v.median_load[i]),
            median_mvpa_min=_num(v.median_mvpa_min[i]),
            mean_who_min=_num(v.mean_who_min[i]),
            who_share=_num(v.who_share[i]),
        )
        for (week, label), i in sorted(keys.items(), key=lambda kv: (kv[0][0], kv[0][1] != "all", kv[0][1]))
    ]


async def vitality(
    conn: AsyncConnection, site_id: str, since: date, until: date, breakdown: Breakdown, k: int
) -> SiteVitality:
    rows = await q.member_weeks(conn, site_id, since, until)
    return SiteVitality(
        site_id=site_id, k_anonymity=k, breakdown=breakdown, cells=vitality_cells(rows, breakdown, k)
    )
