"""One window of one site: read its data, assemble sessions (widening the window until every session's
edges are proven), compute the finished ones and write sessions and hourly utilisation.

Reading. Samples, device events and check-ins of the site's devices in ``[lo, hi)`` (binary COPY into
NumPy). While a session touches a window edge without a proven boundary, the window widens (doubling, up to
``max_extend_s``, never past a local midnight: no session spans one). Check-ins outside the job's time
domain (:data:`analytics.job_plan.EARLIEST`) are set aside, not used.

Writing. The stored sessions of the site's devices that start in the window are made equal to the finished
ones (:func:`analytics.store.replace_sessions`); open sessions are not stored, their ranges are returned to
be queued for the next run; ``device_hourly`` is recomputed for the window's hours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from numpy.typing import NDArray

from analytics import store
from analytics.job_plan import EARLIEST_S, iso, local_midnights
from analytics.job_runs import Reject
from analytics.job_sessions import WindowData, session_rows
from analytics.sessions import (
    AssemblyParams,
    CheckIns,
    Joined,
    Segments,
    active_mask,
    assemble,
    join_straps,
    status_breaks,
)
from analytics.site import covered_seconds

F64 = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class GrowConfig:
    pad_s: float = 3600.0
    """First step by which a window grows (doubling from there, at least twice the session gap)."""
    max_extend_s: float = 2 * 86_400.0
    """A window grows at most this far beyond its chunk to find a session's boundary."""


@dataclass
class WindowResult:
    sessions_written: int = 0
    sessions_deleted: int = 0
    sessions_final: int = 0
    sessions_open: int = 0
    samples_read: int = 0
    hourly_rows: int = 0
    participants: dict[str, datetime] = field(default_factory=dict)
    """participant id -> earliest start among its changed or deleted sessions"""
    open_ranges: list[tuple[str, datetime, datetime]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def process_window(
    conn: psycopg.Connection[Any],
    site_id: str,
    lo_s: float,
    hi_s: float,
    *,
    tz: Any,
    now: datetime,
    version: str,
    params: AssemblyParams,
    grow: GrowConfig,
) -> WindowResult:
    """Read, assemble, compute and write one window (see the module docstring)."""
    result = WindowResult()
    devices = store.site_devices(conn, site_id)
    if devices.n == 0:
        return result
    data = read_window(conn, devices, lo_s, hi_s, tz=tz, now_s=now.timestamp(), params=params, grow=grow)
    result.samples_read = data.loaded.samples.n
    result.rejects = data_rejects(data.check_ins, devices, site_id)
    joined = join_straps(
        data.seg,
        is_strap=devices.is_strap,
        site=devices.site_codes(),
        params=params,
        samples=data.loaded.samples,
    )
    result.open_ranges = open_ranges(joined, data.seg, devices)
    result.sessions_open = int((~joined.final).sum())
    final = finished(joined)
    result.sessions_final = final.n
    rows = session_rows(conn, site_id, data, final, version, params, now_s=now.timestamp())
    changes = write_sessions(conn, rows, data, now_s=now.timestamp(), version=version)
    result.sessions_written, result.sessions_deleted = changes.written, changes.deleted
    result.participants = changes.participants
    result.hourly_rows = device_hourly(
        conn, site_id, devices, data.lo_s, min(data.hi_s, now.timestamp()), version
    )
    return result


# ---------------------------------------------------------------------------------------------- reading


def read_window(
    conn: psycopg.Connection[Any],
    devices: store.DeviceTable,
    lo: float,
    hi: float,
    *,
    tz: Any,
    now_s: float,
    params: AssemblyParams,
    grow: GrowConfig,
) -> WindowData:
    """Load and assemble ``[lo, hi)``, widening it until no session's edge is in doubt (module docstring)."""
    step = max(grow.pad_s, 2 * params.gap_s)
    left_limit, right_limit = lo - grow.max_extend_s, min(hi + grow.max_extend_s, now_s)
    midnights = local_midnights(left_limit, right_limit, tz)
    while True:
        loaded, checkins, seg = _load_and_assemble(
            conn, devices, lo, hi, now_s, midnights, left_limit, right_limit, params
        )
        wider_left, wider_right = seg.needs_wider(devices.n)
        grow_left = bool(wider_left.any()) and not _left_proven(lo, left_limit, midnights)
        grow_right = bool(wider_right.any()) and not _right_proven(hi, right_limit, now_s, midnights)
        if not grow_left and not grow_right:
            return WindowData(lo, hi, devices, loaded, checkins, seg)
        # grow, but never past a local midnight: on a site where some machine is always busy the window
        # would otherwise grow to the extension limit on every run
        if grow_left:
            new_lo = max(lo - step, left_limit)
            crossed = midnights[(midnights >= new_lo) & (midnights < lo)]
            lo = float(crossed.max()) if crossed.size else new_lo
        if grow_right:
            new_hi = min(hi + step, right_limit)
            crossed = midnights[(midnights > hi) & (midnights <= new_hi)]
            hi = float(crossed.min()) if crossed.size else new_hi
        step *= 2


def _left_proven(lo: float, left_limit: float, midnights: F64) -> bool:
    """A window edge at the extension limit, or on a local midnight (no session spans one), is a boundary."""
    return lo <= left_limit or bool(np.any(midnights == lo))


def _right_proven(hi: float, right_limit: float, now_s: float, midnights: F64) -> bool:
    return hi < now_s and (hi >= right_limit or bool(np.any(midnights == hi)))


def _load_and_assemble(
    conn: psycopg.Connection[Any],
    devices: store.DeviceTable,
    lo: float,
    hi: float,
    now_s: float,
    midnights: F64,
    left_limit: float,
    right_limit: float,
    params: AssemblyParams,
) -> tuple[store.Loaded, store.LoadedCheckIns, Segments]:
    n = devices.n
    lo_arr, hi_arr = np.full(n, lo), np.full(n, min(hi, now_s))
    loaded = store.load_samples(conn, devices, lo_arr, hi_arr)
    events = store.load_events(conn, devices, lo_arr, hi_arr)
    checkins = store.load_check_ins(conn, devices, lo_arr, hi_arr)
    bd, bt = status_breaks(events.device, events.t_s, events.kind, events.training, events.n_errors)
    md_dev = np.repeat(np.arange(n, dtype=np.int64), midnights.size)
    bd = np.concatenate((bd, md_dev))
    bt = np.concatenate((bt, np.tile(midnights, n)))  # a session never spans midnight
    # a proven edge is passed as -inf/+inf: "nothing beyond matters"
    wlo = np.full(n, -math.inf if _left_proven(lo, left_limit, midnights) else lo)
    whi = np.full(n, math.inf if _right_proven(hi, right_limit, now_s, midnights) else min(hi, now_s))
    seg = assemble(
        loaded.samples,
        active_mask(loaded.samples, devices.is_strap),
        window_lo_s=wlo,
        window_hi_s=whi,
        now_s=now_s,
        breaks_device=bd,
        breaks_t_s=bt,
        check_ins=usable_check_ins(checkins.check_ins),
        params=params,
    )
    return loaded, checkins, seg


def usable_check_ins(ci: CheckIns) -> CheckIns:
    """The check-ins inside the job's time domain (the others are set aside by :func:`data_rejects`)."""
    ok = _check_in_ok(ci)
    return CheckIns(ci.device[ok], ci.participant[ok], ci.start_s[ok], ci.end_s[ok])


def _check_in_ok(ci: CheckIns) -> NDArray[np.bool_]:
    return np.asarray((ci.start_s >= EARLIEST_S) & np.isfinite(ci.start_s), dtype=bool)


def data_rejects(checkins: store.LoadedCheckIns, devices: store.DeviceTable, site_id: str) -> list[Reject]:
    """A reject for every check-in of the window outside the job's time domain."""
    ci = checkins.check_ins
    out = []
    for i in np.flatnonzero(~_check_in_ok(ci)).tolist():
        device = devices.ids[int(ci.device[i])]
        pid = checkins.participants[int(ci.participant[i])]
        out.append(
            Reject(
                "device_assignments",
                f"{device}/{iso(float(ci.start_s[i]))}",
                "check-in starts before the job's time domain (2000-01-01): not used",
                {
                    "site_id": site_id,
                    "device_id": device,
                    "participant_id": pid,
                    "started_at_s": ci.start_s[i],
                },
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- sessions


def open_ranges(
    joined: Joined, seg: Segments, devices: store.DeviceTable
) -> list[tuple[str, datetime, datetime]]:
    """Device ranges of the sessions still open (to be looked at again next run)."""
    out = []
    for i in np.flatnonzero(~joined.final).tolist():
        p, s = int(joined.primary[i]), int(joined.strap[i])
        for k in (p, s) if s >= 0 else (p,):
            out.append(
                (
                    devices.ids[int(seg.device[k])],
                    store.to_datetime(seg.start_s[k]),
                    store.to_datetime(seg.end_s[k]),
                )
            )
    return out


def finished(joined: Joined) -> Joined:
    """The sessions whose every segment is final."""
    keep = np.flatnonzero(joined.final)
    return Joined(joined.primary[keep], joined.strap[keep], joined.participant[keep], joined.final[keep])


def write_sessions(
    conn: psycopg.Connection[Any],
    rows: list[tuple[Any, ...]],
    data: WindowData,
    *,
    now_s: float,
    version: str,
) -> store.SessionChanges:
    """Replace the stored sessions of the window's devices that start in the window by ``rows``. Sessions are
    replaced only from the first sample still stored: raw data dropped by retention (or never loaded) does
    not take the sessions computed from it along."""
    samples = data.loaded.samples
    hi = min(data.hi_s, now_s)
    first_sample = float(samples.t_s.min()) if samples.n else math.inf
    win_lo = store.to_datetime(max(data.lo_s, first_sample) if samples.n else hi)
    return store.replace_sessions(
        conn, rows, devices=data.devices.ids, lo=win_lo, hi=store.to_datetime(hi), version=version
    )


# ---------------------------------------------------------------------------------------------- hourly


def device_hourly(
    conn: psycopg.Connection[Any],
    site_id: str,
    devices: store.DeviceTable,
    lo: float,
    hi: float,
    version: str,
) -> int:
    """Recompute ``device_hourly`` for the UTC hours of ``[lo, hi)`` from the stored sessions: in-session
    seconds (the union of each device's sessions, :func:`analytics.site.covered_seconds`), minutes with
    data and sessions started."""
    h0 = math.floor(lo / 3600) * 3600.0
    h1 = max(math.ceil(hi / 3600) * 3600.0, h0 + 3600.0)
    lo_dt, hi_dt = store.to_datetime(h0), store.to_datetime(h1)
    stored = store.sessions_overlapping(conn, devices, lo_dt, hi_dt, version)
    edges = np.arange(h0, h1 + 1.0, 3600.0)
    covered = covered_seconds(stored.device, stored.start_s, stored.end_s, edges, devices.n)
    started = np.zeros_like(covered)
    inside = (stored.start_s >= h0) & (stored.start_s < h1)
    np.add.at(started, (stored.device[inside], ((stored.start_s[inside] - h0) // 3600).astype(np.int64)), 1)
    minutes = store.minutes_with_data(conn, devices, lo_dt, hi_dt)
    rows: list[tuple[Any, ...]] = []
    cov_l, start_l = covered.tolist(), started.tolist()
    for d in range(devices.n):
        for j in range(edges.size - 1):
            hour = store.to_datetime(float(edges[j]))
            mins = minutes.get((d, hour), 0)
            if cov_l[d][j] > 0 or mins > 0 or start_l[d][j] > 0:
                rows.append((devices.ids[d], hour, site_id, cov_l[d][j], mins, int(start_l[d][j])))
    return store.replace_device_hourly(conn, site_id, lo_dt, hi_dt, rows)
