"""The finished sessions of a window as rows of ``sessions``: participant context, metrics, summary.

Per session: its participant's profile (age at the session's year, sex, weight, resting and maximal heart
rate), every metric of :func:`analytics.session_metrics.compute`, the PAI activity score and resting-HR proxy
of :mod:`analytics.participant`, where its heart rate came from (strap or machine), its devices and source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import numpy as np
import psycopg
from numpy.typing import NDArray

from analytics import hr as hr_metrics
from analytics import quality, session_metrics, store
from analytics.batch import SEX_FEMALE, SEX_MALE, SEX_UNKNOWN
from analytics.participant import lowest_rolling_hr, pai_session_score
from analytics.sessions import (
    SOURCES,
    AssemblyParams,
    Joined,
    Segments,
    SessionContext,
    build_batch,
    device_ids_of,
)

F64 = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class WindowData:
    """A window's data once every session's edges are proven, and its final bounds."""

    lo_s: float
    hi_s: float
    devices: store.DeviceTable
    loaded: store.Loaded
    check_ins: store.LoadedCheckIns
    seg: Segments


def session_rows(
    conn: psycopg.Connection[Any],
    site_id: str,
    data: WindowData,
    joined: Joined,
    version: str,
    params: AssemblyParams,
    *,
    now_s: float,
) -> list[tuple[Any, ...]]:
    """One ``store.SESSION_COLUMNS`` row per session of ``joined`` (all finished), with its metrics."""
    if joined.n == 0:
        return []
    pids = [data.check_ins.participants[int(p)] if p >= 0 else None for p in joined.participant.tolist()]
    profiles = store.load_participants(conn, sorted({p for p in pids if p is not None}))
    ctx = session_context(profiles, pids, data.seg.start_s[joined.primary])
    n = data.devices.n
    rr = store.load_rr(conn, data.devices, np.full(n, data.lo_s), np.full(n, min(data.hi_s, now_s)))
    batch, strap_hr = build_batch(
        data.loaded.samples, rr, data.seg, joined, kind=data.devices.kind, context=ctx, params=params
    )
    m = session_metrics.compute(batch)
    weights = quality.time_weights(batch.t_s, batch.offsets)
    hr_max_used = hr_metrics.effective_hr_max(batch.hr_max_bpm, batch.age_y)
    pai = pai_session_score(batch.hr_bpm, weights, batch.offsets, batch.hr_rest_bpm, hr_max_used, batch.sex)
    rest = lowest_rolling_hr(batch.t_s, batch.hr_bpm, batch.offsets)
    ids = device_ids_of(joined, data.seg, data.devices.ids)
    return [
        _row(
            site_id,
            data,
            joined,
            i,
            m,
            pids[i],
            ids[i],
            bool(strap_hr[i]),
            float(pai[i]),
            float(rest[i]),
            version,
        )
        for i in range(joined.n)
    ]


def session_context(
    profiles: dict[str, store.Participant], pids: list[str | None], start_s: F64
) -> SessionContext:
    """Per session: its participant's profile, age in the (UTC) year the session starts."""
    year = start_s.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970.0
    return SessionContext(
        hr_rest_bpm=_profile(profiles, pids, "hr_rest_bpm"),
        hr_max_bpm=_profile(profiles, pids, "hr_max_bpm"),
        age_y=year - _profile(profiles, pids, "birth_year"),
        sex=np.array([sex_code(profiles[p].sex if p in profiles else None) for p in pids], dtype=np.int8),
        weight_kg=_profile(profiles, pids, "weight_kg"),
        ftp_w=np.full(len(pids), np.nan),
    )


def _row(
    site_id: str,
    data: WindowData,
    joined: Joined,
    i: int,
    m: session_metrics.SessionMetrics,
    pid: str | None,
    device_ids: list[str],
    strap_hr: bool,
    pai: float,
    rest: float,
    version: str,
) -> tuple[Any, ...]:
    """The ``sessions`` row of session ``i``."""
    seg, devices = data.seg, data.devices
    p, s = int(joined.primary[i]), int(joined.strap[i])
    has_hr = math.isfinite(float(m.hr_avg_bpm[i]))
    hr_source = None if not has_hr else ("strap" if strap_hr else "machine")
    source = SOURCES[int(seg.source[p])]
    if s >= 0 and seg.participant[p] < 0 and seg.participant[s] >= 0:
        source = "check_in"  # the participant comes from the strap's check-in
    machine_is_strap = bool(devices.is_strap[seg.device[p]])
    summary = m.row(i) | {
        "pai_as": none_if_nan(pai),
        "hr_rest_est_bpm": none_if_nan(rest),
        "hr_source": hr_source,
        "machine_id": None if machine_is_strap else devices.ids[int(seg.device[p])],
        "strap_id": devices.ids[int(seg.device[s])]
        if s >= 0
        else (devices.ids[int(seg.device[p])] if machine_is_strap else None),
        "active_samples": int(seg.n_active[p]),
    }
    typed = (
        m.duration_s[i],
        m.hr_avg_bpm[i],
        m.trimp_banister[i],
        m.moderate_min[i],
        m.vigorous_min[i],
        pai,
        rest,
        m.hrv_rmssd_ms[i],
        m.energy_kcal[i],
        m.distance_m[i],
    )
    return (
        site_id,
        None if pid is None else UUID(pid),
        device_ids,
        store.us_to_datetime(int(data.loaded.t_us[seg.first_row[p]])),
        store.us_to_datetime(int(data.loaded.t_us[seg.last_row[p]])),
        source,
        summary,
        version,
        hr_source,
        *(none_if_nan(float(v)) for v in typed),
    )


def none_if_nan(x: float) -> float | None:
    return None if not math.isfinite(float(x)) else float(x)


def sex_code(s: str | None) -> int:
    return SEX_MALE if s == "male" else SEX_FEMALE if s == "female" else SEX_UNKNOWN


def _profile(profiles: dict[str, store.Participant], pids: list[str | None], name: str) -> F64:
    out = []
    for p in pids:
        v = getattr(profiles[p], name) if p in profiles else None
        out.append(math.nan if v is None else float(v))
    return np.array(out, dtype=np.float64)
