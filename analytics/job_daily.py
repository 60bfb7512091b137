"""The job's per-day outputs: each changed participant's daily series (``participant_daily``, from the first
changed day on) and each device-day's data quality (``device_quality_daily``, complete UTC days only).

Both are computed for many participants / device-days at once, and each participant's series and each
device-day's figures depend on their own rows only, so a subset gives the same rows as the whole: the job
runs them under :func:`analytics.job_runs.isolated`, which narrows a failure down to the participant or
device-day that caused it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final
from uuid import UUID
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
from numpy.typing import NDArray

from analytics import store
from analytics.device_quality import DeviceDayQuality, device_day_quality
from analytics.job_sessions import none_if_nan, sex_code
from analytics.participant import WHO_STATUS, DailyInputs, DailySeries, daily_series, hunt_hr_max, to_grid
from vitalab.db.columns import DAILY_VALUES, QUALITY_COLUMNS

_FILLED_BY_STORE = ("device_id", "day", "site_id", "samples_received", "duplicates")
COMPUTED_QUALITY_COLUMNS: Final[tuple[str, ...]] = tuple(
    c for c in QUALITY_COLUMNS if c not in _FILLED_BY_STORE
)
"""The columns of ``device_quality_daily`` computed from the samples (the store fills in the others)."""

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

DAILY_SERIES: tuple[str, ...] = tuple(c for c in DAILY_VALUES if c != "who_status")
"""The numeric daily series (``who_status`` is put in its place from the status codes)."""
_NULLABLE = {"acwr_ewma", "acwr_rolling", "pai_7d", "rhr_bpm", "rhr_7d_bpm", "rhr_28d_bpm", "rmssd_ms"}
_NULLABLE |= {"ln_rmssd_7d", "vo2max_ml_kg_min"}


@dataclass(frozen=True, slots=True)
class DailyGrid:
    """Participants (columns) by days from ``day0`` (rows), with each participant's today and first row."""

    participants: list[str]
    day0: date
    n_days: int
    today: dict[str, date]
    start: I64


# ---------------------------------------------------------------------------------------------- participants


def participant_daily(
    conn: psycopg.Connection[Any], changed: dict[str, datetime], now: datetime, version: str
) -> int:
    """Rewrite the daily rows of the ``changed`` participants (id -> earliest changed session start) from
    their first changed local day through today; participants left without sessions lose their rows.
    Returns the rows inserted, changed or deleted."""
    if not changed:
        return 0
    pids = sorted(changed)
    days = store.session_days(conn, pids, version)
    with_sessions = sorted(set(days.participant))
    gone = [p for p in pids if p not in set(with_sessions)]
    written = store.delete_participant_daily(conn, gone) if gone else 0
    if not with_sessions:
        return written
    profiles = store.load_participants(conn, with_sessions)
    grid, x = daily_inputs(days, profiles, with_sessions, now)
    rows, first_day = daily_rows(grid, x, daily_series(x), profiles, changed, version)
    return written + store.upsert_participant_daily(conn, rows, first_day)


def daily_inputs(
    days: store.SessionDays, profiles: dict[str, store.Participant], participants: list[str], now: datetime
) -> tuple[DailyGrid, DailyInputs]:
    """The session-day aggregates on a (day, participant) grid, with each participant's profile."""
    col_of = {p: i for i, p in enumerate(participants)}
    today = {p: now.astimezone(ZoneInfo(profiles[p].timezone)).date() for p in participants}
    day0 = min(days.day)
    n_days = (max(max(today.values()), max(days.day)) - day0).days + 1
    col = np.array([col_of[p] for p in days.participant], dtype=np.int64)
    row = np.array([(d - day0).days for d in days.day], dtype=np.int64)
    shape = (n_days, len(participants))
    start = np.full(len(participants), n_days, dtype=np.int64)
    np.minimum.at(start, col, row)
    age = np.array(
        [
            math.nan if (by := profiles[p].birth_year) is None else float(today[p].year - by)
            for p in participants
        ]
    )
    hr_max_profile = _profile_values(profiles, participants, "hr_max_bpm")
    x = DailyInputs(
        sessions=to_grid(col, row, days.sessions, shape, "sum"),
        load=to_grid(col, row, days.load, shape, "sum"),
        moderate_min=to_grid(col, row, days.moderate_min, shape, "sum"),
        vigorous_min=to_grid(col, row, days.vigorous_min, shape, "sum"),
        pai_as=to_grid(col, row, days.pai_as, shape, "sum"),
        rhr_bpm=to_grid(col, row, days.rhr_bpm, shape, "min"),
        rmssd_ms=to_grid(col, row, days.rmssd_ms, shape, "mean"),
        start=start,
        sex=np.array([sex_code(profiles[p].sex) for p in participants], dtype=np.int8),
        hr_max_bpm=np.where(np.isfinite(hr_max_profile), hr_max_profile, hunt_hr_max(age)),
        hr_rest_profile_bpm=_profile_values(profiles, participants, "hr_rest_bpm"),
    )
    return DailyGrid(participants, day0, n_days, today, start), x


def _profile_values(profiles: dict[str, store.Participant], participants: list[str], name: str) -> F64:
    values = [getattr(profiles[p], name) for p in participants]
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def daily_rows(
    grid: DailyGrid,
    x: DailyInputs,
    s: DailySeries,
    profiles: dict[str, store.Participant],
    changed: dict[str, datetime],
    version: str,
) -> tuple[list[tuple[Any, ...]], dict[str, date]]:
    """``DAILY_COLUMNS`` rows from each participant's first changed local day through today, and each
    participant's first day (rows before it are deleted)."""
    inputs = {"sessions": x.sessions, "load": x.load, "moderate_min": x.moderate_min}
    inputs |= {
        "vigorous_min": x.vigorous_min,
        "pai_as": x.pai_as,
        "rhr_bpm": x.rhr_bpm,
        "rmssd_ms": x.rmssd_ms,
    }
    lists = {k: (inputs[k] if k in inputs else getattr(s, k)).tolist() for k in DAILY_SERIES}
    status = s.who_status.tolist()
    rows: list[tuple[Any, ...]] = []
    first_day: dict[str, date] = {}
    for c, p in enumerate(grid.participants):
        local_from = changed[p].astimezone(ZoneInfo(profiles[p].timezone)).date()
        r0 = max(int(grid.start[c]), (local_from - grid.day0).days, 0)
        r1 = min((grid.today[p] - grid.day0).days, grid.n_days - 1)
        first_day[p] = grid.day0 + timedelta(days=int(grid.start[c]))
        for r in range(r0, r1 + 1):
            v = {k: lists[k][r][c] for k in DAILY_SERIES}
            values = [none_if_nan(v[k]) if k in _NULLABLE else v[k] for k in DAILY_SERIES]
            values[0] = int(v["sessions"])
            values.insert(DAILY_SERIES.index("who_min_7d") + 1, WHO_STATUS[status[r][c]])
            rows.append((UUID(p), grid.day0 + timedelta(days=r), *values, version))
    return rows, first_day


# ---------------------------------------------------------------------------------------------- quality


def device_quality(
    conn: psycopg.Connection[Any], keys: list[tuple[str, date]], site_of: dict[str, str]
) -> int:
    """Compute and upsert the quality of the device-days ``keys`` (devices without a site are skipped)."""
    keys = [k for k in keys if k[0] in site_of]
    if not keys:
        return 0
    rows_in = store.load_quality_rows(conn, keys)
    q = device_day_quality(
        rows_in.t_s, rows_in.received_s, rows_in.hr_valid, rows_in.offsets, seq=rows_in.seq
    )
    return store.upsert_device_quality(conn, quality_rows(keys, q, site_of))


def quality_rows(
    keys: list[tuple[str, date]], q: DeviceDayQuality, site_of: dict[str, str]
) -> list[tuple[Any, ...]]:
    """``QUALITY_COLUMNS`` rows of the device-days with samples (received and duplicates are filled in
    by the store)."""
    cols = {name: getattr(q, name).tolist() for name in COMPUTED_QUALITY_COLUMNS}
    out: list[tuple[Any, ...]] = []
    for i, (dev, day) in enumerate(keys):
        v = {k: c[i] for k, c in cols.items()}
        if v["samples"] == 0:
            continue
        out.append(
            (
                dev,
                day,
                site_of[dev],
                v["samples"],
                None,
                None,
                v["late_samples"],
                v["backfill_samples"],
                none_if_nan(v["lag_p05_s"]),
                none_if_nan(v["lag_p50_s"]),
                none_if_nan(v["lag_p95_s"]),
                none_if_nan(v["clock_skew_s"]),
                none_if_nan(v["period_s"]),
                v["on_s"],
                v["expected_samples"],
                none_if_nan(v["received_ratio"]),
                v["dropouts"],
                v["gaps"],
                v["gap_s"],
                none_if_nan(v["hr_valid_share"]),
            )
        )
    return out
