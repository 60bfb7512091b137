"""`vitalab analytics run`: compute what is new since the last run, in one transaction, idempotently.

What is new. With every batch, in the same transaction as its rows, the ingester appends one row to
``ingest_batches``: per device and UTC day, the samples it received and the device-time range they cover.
Triggers queue in ``analytics_dirty`` the ranges of new device events (training status, errors, offline) and
of check-ins that were added, changed or removed. A run deletes (consumes) the ``ingest_batches`` and
``analytics_dirty`` rows it can see, inside its own transaction, and recomputes the ranges they name; rows
that commit while it works are invisible to it and stay for the next run. Nothing depends on clocks or on
commit order (a batch that waited out a database outage is still seen), and late data, however old its
device time, re-opens the sessions and days it falls into. If the run fails, its transaction rolls back and
the rows are consumed again next time. Rows written without the ingester (manual SQL, imports) are not
counted: ``vitalab analytics run --full`` recomputes everything, as do the first run and a run after
:data:`~analytics.session_metrics.ALGORITHM_VERSION` changed.

What a run does, per site and merged window of dirty time (padded by an hour):

1. load the site's samples, RR intervals, device events and check-ins in the window (binary COPY into
   NumPy) and assemble sessions (:mod:`analytics.sessions`); while a session touches a window edge without
   a proven boundary, widen the window (doubling, up to ``max_extend_s``, beyond which the edge is taken as a
   boundary);
2. compute the finished sessions' metrics (:func:`analytics.session_metrics.compute`, plus PAI activity and
   the resting-HR proxy of :mod:`analytics.participant`) and make the stored sessions of the site that start
   in the window equal to them (stale ones deleted, changed ones updated, unchanged ones untouched);
   **open** sessions (activity less than ``gap_s`` before ``now``) are not stored: their range is queued in
   ``analytics_dirty`` so the next run looks again, and they are stored once ``gap_s`` has passed without
   activity;
3. recompute ``device_hourly`` (utilisation) for the window's hours;

then, for every participant whose sessions changed, the whole daily series (``participant_daily``, written
from the first changed day on), and ``device_quality_daily`` for the complete UTC days (before today) whose
samples changed. When the UTC day changes, every participant's series is extended to today and yesterday's
device quality is computed.

Concurrency. The run holds a transaction-level advisory lock: a second run waits (``wait=True``) or returns
at once with ``skipped`` (``wait=False``, what the periodic trigger uses), and then finds nothing new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final
from uuid import UUID
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from analytics import hr as hr_metrics
from analytics import quality, session_metrics, store
from analytics.batch import SEX_FEMALE, SEX_MALE, SEX_UNKNOWN
from analytics.device_quality import device_day_quality
from analytics.errors import AnalyticsJobError
from analytics.participant import (
    WHO_STATUS,
    DailyInputs,
    daily_series,
    hunt_hr_max,
    lowest_rolling_hr,
    pai_session_score,
    to_grid,
)
from analytics.sessions import (
    SOURCES,
    AssemblyParams,
    Joined,
    Segments,
    SessionContext,
    active_mask,
    assemble,
    build_batch,
    device_ids_of,
    join_straps,
    status_breaks,
)
from analytics.site import covered_seconds

logger = logging.getLogger(__name__)

LOCK_KEY: Final[int] = 0x7669_7461_6E61  # "vitana"
JOB: Final[str] = "default"


@dataclass(frozen=True, slots=True)
class JobConfig:
    assembly: AssemblyParams = field(default_factory=AssemblyParams)
    pad_s: float = 3600.0
    """Margin loaded around every dirty range before assembling."""
    merge_s: float = 6 * 3600.0
    """Dirty ranges of one site closer than this are processed as one window."""
    chunk_s: float = 86_400.0
    """Longer windows are processed in chunks of this length (bounded memory on a full run)."""
    max_extend_s: float = 2 * 86_400.0
    """A window grows at most this far beyond its chunk to find a session's boundary."""


@dataclass
class RunReport:
    skipped: bool = False
    full: bool = False
    windows: int = 0
    samples_read: int = 0
    sessions_written: int = 0
    sessions_deleted: int = 0
    sessions_final: int = 0
    sessions_open: int = 0
    participants: int = 0
    daily_rows: int = 0
    hourly_rows: int = 0
    quality_rows: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _connection(conn_or_url: psycopg.Connection[Any] | str) -> Iterator[psycopg.Connection[Any]]:
    if isinstance(conn_or_url, str):
        with psycopg.connect(conn_or_url) as conn:
            yield conn
    else:
        yield conn_or_url


def run_once(
    conn_or_url: psycopg.Connection[Any] | str,
    *,
    now: datetime | None = None,
    full: bool = False,
    wait: bool = True,
    config: JobConfig = JobConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> RunReport:
    """One incremental run (see the module docstring). Commits on success; on error nothing is changed.
    ``progress`` is told (windows done, windows in this run) after each window."""
    t0 = time.perf_counter()
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise AnalyticsJobError("now", "must be timezone-aware")
    with _connection(conn_or_url) as conn:
        if conn.autocommit:
            raise AnalyticsJobError("connection", "needs a connection with autocommit off (one transaction)")
        try:
            report = _run(conn, now, full, wait, config, progress)
        except BaseException:
            conn.rollback()
            raise
        if report.skipped:
            conn.rollback()
        else:
            report.seconds = time.perf_counter() - t0
            conn.execute(
                "UPDATE analytics_state SET last_run_s = %s, last_result = %s WHERE job = %s",
                (report.seconds, Jsonb(report.as_dict()), JOB),
            )
            conn.commit()
    logger.info("analytics run: %s", report.as_dict())
    return report


DEFAULT_INTERVAL_S: Final[float] = 60.0


def interval_of(configured: float | None, *, default: float | None) -> float | None:
    """The periodic trigger's interval: the configured one (0 = off), else ``default`` (None = off)."""
    if configured is None:
        return default
    return configured if configured > 0 else None


async def run_periodically(database_url: str, interval_s: float) -> None:
    """Run the job every ``interval_s`` seconds until cancelled (``vitalab up``, ``vitalab ingest``). A run
    that finds another one in progress skips; a failed run is logged and the next one tries again, so the
    service carrying the trigger never stops because of it."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            report = await asyncio.to_thread(run_once, database_url, wait=False)
        except Exception:  # a failed run must not stop the service that triggers it
            logger.exception("analytics run failed; retrying in %.0f s", interval_s)
            continue
        if report.skipped:
            logger.info("analytics run skipped: another run is in progress")


def _run(
    conn: psycopg.Connection[Any],
    now: datetime,
    full: bool,
    wait: bool,
    cfg: JobConfig,
    progress: Callable[[int, int], None] | None = None,
) -> RunReport:
    report = RunReport()
    if wait:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
    else:
        got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_KEY,)).fetchone()
        if not got or not got[0]:
            report.skipped = True
            return report
    version = session_metrics.ALGORITHM_VERSION
    state = conn.execute(
        "SELECT algorithm_version, daily_through FROM analytics_state WHERE job = %s", (JOB,)
    ).fetchone()
    if state is None or state[0] != version:
        full = True
    report.full = full
    today = now.astimezone(UTC).date()
    daily_through: date | None = state[1] if state else None

    received = store.fold_ingest_batches(conn)
    notes = store.dirty_notes(conn)
    ranges: list[tuple[str, float, float]] = [
        (r.device_id, r.t_from.timestamp(), r.t_to.timestamp()) for r in received
    ] + [(n.device_id, n.t_from.timestamp(), n.t_to.timestamp()) for n in notes]
    quality_keys = {(r.device_id, r.day) for r in received if r.day < today}
    if full:
        extents = conn.execute(
            "SELECT d.device_id, extract(epoch FROM f.t)::float8, extract(epoch FROM l.t)::float8 "
            "FROM devices d "
            "CROSS JOIN LATERAL (SELECT t FROM samples WHERE device_id = d.device_id ORDER BY t LIMIT 1) f "
            "CROSS JOIN LATERAL (SELECT t FROM samples WHERE device_id = d.device_id "
            "ORDER BY t DESC LIMIT 1) l"
        ).fetchall()
        ranges += [(r[0], r[1], r[2]) for r in extents]
        for dev, a, b in extents:
            d0, d1 = datetime.fromtimestamp(a, UTC).date(), datetime.fromtimestamp(b, UTC).date()
            quality_keys |= {(dev, d0 + timedelta(days=i)) for i in range((d1 - d0).days + 1)}
        quality_keys = {k for k in quality_keys if k[1] < today}

    site_of = dict(conn.execute("SELECT device_id, site_id FROM devices").fetchall())
    tz_of = {
        site: ZoneInfo(tz) for site, tz in conn.execute("SELECT site_id, timezone FROM sites").fetchall()
    }
    participants: dict[str, datetime] = {}
    open_notes: list[tuple[str, datetime, datetime]] = []
    windows = _windows(ranges, site_of, tz_of, now.timestamp(), cfg)
    for site_id, lo, hi in windows:
        report.windows += 1
        changed = _process_window(conn, site_id, lo, hi, now, version, cfg, report, open_notes)
        if progress is not None:
            progress(report.windows, len(windows))
        for pid, started in changed.items():
            if pid not in participants or started < participants[pid]:
                participants[pid] = started

    rollover = daily_through is None or daily_through < today
    if rollover and daily_through is not None:
        rows = conn.execute(
            "SELECT device_id, day FROM ingest_device_stats WHERE day >= %s AND day < %s",
            (daily_through, today),
        ).fetchall()
        quality_keys |= {(r[0], r[1]) for r in rows}
    if rollover:
        for (pid,) in conn.execute("SELECT DISTINCT participant_id::text FROM participant_daily").fetchall():
            participants.setdefault(pid, datetime.combine(daily_through or today, datetime.min.time(), UTC))
    if full:
        for (pid,) in conn.execute(
            "SELECT DISTINCT participant_id::text FROM sessions WHERE participant_id IS NOT NULL "
            "UNION SELECT DISTINCT participant_id::text FROM participant_daily"
        ).fetchall():
            participants[pid] = datetime(1970, 1, 1, tzinfo=UTC)
    report.participants = len(participants)
    report.daily_rows = _participant_daily(conn, participants, now, version)
    report.quality_rows = _device_quality(conn, sorted(quality_keys), site_of)

    store.delete_notes(conn, notes)
    store.note_dirty(conn, open_notes, "open")
    conn.execute(
        "INSERT INTO analytics_state (job, algorithm_version, daily_through, last_run_at) "
        "VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (job) DO UPDATE SET algorithm_version = EXCLUDED.algorithm_version, "
        "daily_through = EXCLUDED.daily_through, last_run_at = EXCLUDED.last_run_at",
        (JOB, version, today, now),
    )
    return report


def _windows(
    ranges: list[tuple[str, float, float]],
    site_of: dict[str, str],
    tz_of: dict[str, ZoneInfo],
    now_s: float,
    cfg: JobConfig,
) -> list[tuple[str, float, float]]:
    """Per site: padded ranges merged when closer than ``merge_s``, cut into ``chunk_s`` chunks, ending
    at ``now`` at the latest. The padding stops at the site's local midnights around a range: no session
    spans one, so nothing beyond them can change a session of the range."""
    by_site: dict[str, list[tuple[float, float]]] = {}
    for dev, a, b in ranges:
        site = site_of.get(dev)
        if site is None:
            logger.warning("samples of %s, which has no devices row: not analysed", dev)
            continue
        tz = tz_of.get(site, ZoneInfo("UTC"))
        day_a = datetime.fromtimestamp(a, tz).date()
        floor_a = datetime.combine(day_a, datetime.min.time(), tz).timestamp()
        ceil_b = datetime.combine(
            datetime.fromtimestamp(b, tz).date() + timedelta(days=1), datetime.min.time(), tz
        ).timestamp()
        by_site.setdefault(site, []).append((max(a - cfg.pad_s, floor_a), min(b + cfg.pad_s, ceil_b, now_s)))
    out: list[tuple[str, float, float]] = []
    for site in sorted(by_site):
        spans = sorted(by_site[site])
        merged: list[list[float]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + cfg.merge_s:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        for a, b in merged:
            start = a
            while start < b:
                end = min(start + cfg.chunk_s, b)
                out.append((site, start, end))
                start = end
    return out


# ---------------------------------------------------------------------------------------------- one window


def _process_window(
    conn: psycopg.Connection[Any],
    site_id: str,
    lo: float,
    hi: float,
    now: datetime,
    version: str,
    cfg: JobConfig,
    report: RunReport,
    open_notes: list[tuple[str, datetime, datetime]],
) -> dict[str, datetime]:
    devices = store.site_devices(conn, site_id)
    if devices.n == 0:
        return {}
    now_s = now.timestamp()
    params = cfg.assembly
    step = max(cfg.pad_s, 2 * params.gap_s)
    left_limit, right_limit = lo - cfg.max_extend_s, min(hi + cfg.max_extend_s, now_s)
    tz_row = conn.execute("SELECT timezone FROM sites WHERE site_id = %s", (site_id,)).fetchone()
    midnights = local_midnights(left_limit, right_limit, ZoneInfo(tz_row[0] if tz_row else "UTC"))
    md_dev = np.repeat(np.arange(devices.n, dtype=np.int64), midnights.size)
    md_t = np.tile(midnights, devices.n)
    midnight_set = set(midnights.tolist())
    while True:
        n = devices.n
        lo_arr, hi_arr = np.full(n, lo), np.full(n, min(hi, now_s))
        loaded = store.load_samples(conn, devices, lo_arr, hi_arr)
        events = store.load_events(conn, devices, lo_arr, hi_arr)
        checkins = store.load_check_ins(conn, devices, lo_arr, hi_arr)
        bd, bt = status_breaks(events.device, events.t_s, events.kind, events.training, events.n_errors)
        bd, bt = np.concatenate((bd, md_dev)), np.concatenate((bt, md_t))  # a session never spans midnight
        active = active_mask(loaded.samples, devices.is_strap)
        # a window edge at the extension limit, or on a local midnight (no session spans one), is taken
        # as a boundary (-inf/+inf: "nothing beyond matters")
        left_proven = lo <= left_limit or lo in midnight_set
        right_proven = hi < now_s and (hi >= right_limit or hi in midnight_set)
        wlo = np.full(n, -math.inf if left_proven else lo)
        whi = np.full(n, math.inf if right_proven else min(hi, now_s))
        seg = assemble(
            loaded.samples,
            active,
            window_lo_s=wlo,
            window_hi_s=whi,
            now_s=now_s,
            breaks_device=bd,
            breaks_t_s=bt,
            check_ins=checkins.check_ins,
            params=params,
        )
        wider_left, wider_right = seg.needs_wider(n)
        grow_left = bool(wider_left.any()) and not left_proven
        grow_right = bool(wider_right.any()) and not right_proven
        if not grow_left and not grow_right:
            break
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
    report.samples_read += loaded.samples.n

    joined = join_straps(seg, is_strap=devices.is_strap, site=devices.site_codes(), params=params)
    for i in np.flatnonzero(~joined.final).tolist():
        p, s = int(joined.primary[i]), int(joined.strap[i])
        for k in (p, s) if s >= 0 else (p,):
            open_notes.append(
                (
                    devices.ids[int(seg.device[k])],
                    store.to_datetime(seg.start_s[k]),
                    store.to_datetime(seg.end_s[k]),
                )
            )
    report.sessions_open += int((~joined.final).sum())
    final = np.flatnonzero(joined.final)
    jf = Joined(joined.primary[final], joined.strap[final], joined.participant[final], joined.final[final])
    report.sessions_final += jf.n
    rows = _session_rows(
        conn, site_id, devices, loaded, seg, jf, checkins.participants, version, params, lo_arr, hi_arr
    )
    # sessions are replaced only from the first sample still stored: raw data dropped by retention (or
    # never loaded) does not take the sessions computed from it along
    first_sample = float(loaded.samples.t_s.min()) if loaded.samples.n else math.inf
    win_lo = (
        store.to_datetime(max(lo, first_sample)) if loaded.samples.n else store.to_datetime(min(hi, now_s))
    )
    win_hi = store.to_datetime(min(hi, now_s))
    changes = store.replace_sessions(conn, rows, devices=devices.ids, lo=win_lo, hi=win_hi, version=version)
    report.sessions_written += changes.written
    report.sessions_deleted += changes.deleted
    report.hourly_rows += _device_hourly(conn, site_id, devices, lo, min(hi, now_s), version)
    return changes.participants


def local_midnights(lo_s: float, hi_s: float, tz: ZoneInfo) -> np.ndarray:
    """Epoch seconds of every local midnight of ``tz`` in ``[lo_s, hi_s]``."""
    first = datetime.fromtimestamp(lo_s, tz).date()
    last = datetime.fromtimestamp(hi_s, tz).date()
    days = (last - first).days + 1
    out = [
        datetime.combine(first + timedelta(days=i), datetime.min.time(), tz).timestamp() for i in range(days)
    ]
    return np.array([x for x in out if lo_s <= x <= hi_s], dtype=np.float64)


def _session_rows(
    conn: psycopg.Connection[Any],
    site_id: str,
    devices: store.DeviceTable,
    loaded: store.Loaded,
    seg: Segments,
    joined: Joined,
    participant_names: list[str],
    version: str,
    params: AssemblyParams,
    lo_s: np.ndarray,
    hi_s: np.ndarray,
) -> list[tuple[Any, ...]]:
    """One ``store.SESSION_COLUMNS`` row per finished session, with its metrics."""
    n = joined.n
    if n == 0:
        return []
    pids = [participant_names[int(p)] if p >= 0 else None for p in joined.participant.tolist()]
    profiles = store.load_participants(conn, sorted({p for p in pids if p is not None}))
    start = seg.start_s[joined.primary]
    year = start.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970.0
    ctx = SessionContext(
        hr_rest_bpm=_profile(profiles, pids, "hr_rest_bpm"),
        hr_max_bpm=_profile(profiles, pids, "hr_max_bpm"),
        age_y=year - _profile(profiles, pids, "birth_year"),
        sex=np.array([_sex(profiles[p].sex if p in profiles else None) for p in pids], dtype=np.int8),
        weight_kg=_profile(profiles, pids, "weight_kg"),
        ftp_w=np.full(n, np.nan),
    )
    rr = store.load_rr(conn, devices, lo_s, hi_s)
    batch, strap_hr = build_batch(
        loaded.samples, rr, seg, joined, kind=devices.kind, context=ctx, params=params
    )
    m = session_metrics.compute(batch)
    weights = quality.time_weights(batch.t_s, batch.offsets)
    hr_max_used = hr_metrics.effective_hr_max(batch.hr_max_bpm, batch.age_y)
    pai = pai_session_score(batch.hr_bpm, weights, batch.offsets, batch.hr_rest_bpm, hr_max_used, batch.sex)
    rest = lowest_rolling_hr(batch.t_s, batch.hr_bpm, batch.offsets)
    ids = device_ids_of(joined, seg, devices.ids)
    first_us = loaded.t_us[seg.first_row[joined.primary]].tolist()
    last_us = loaded.t_us[seg.last_row[joined.primary]].tolist()
    has_hr = np.isfinite(m.hr_avg_bpm)
    rows: list[tuple[Any, ...]] = []
    for i in range(n):
        p, s = int(joined.primary[i]), int(joined.strap[i])
        hr_source = None if not has_hr[i] else ("strap" if strap_hr[i] else "machine")
        source = SOURCES[int(seg.source[p])]
        if s >= 0 and seg.participant[p] < 0 and seg.participant[s] >= 0:
            source = "check_in"  # the participant comes from the strap's check-in
        summary = m.row(i) | {
            "pai_as": _none(pai[i]),
            "hr_rest_est_bpm": _none(rest[i]),
            "hr_source": hr_source,
            "machine_id": None if devices.is_strap[seg.device[p]] else devices.ids[int(seg.device[p])],
            "strap_id": devices.ids[int(seg.device[s])]
            if s >= 0
            else (devices.ids[int(seg.device[p])] if devices.is_strap[seg.device[p]] else None),
            "active_samples": int(seg.n_active[p]),
        }
        typed = (
            m.duration_s[i],
            m.hr_avg_bpm[i],
            m.trimp_banister[i],
            m.moderate_min[i],
            m.vigorous_min[i],
            pai[i],
            rest[i],
            m.hrv_rmssd_ms[i],
            m.energy_kcal[i],
            m.distance_m[i],
        )
        rows.append(
            (
                site_id,
                None if pids[i] is None else UUID(pids[i]),
                ids[i],
                store.us_to_datetime(first_us[i]),
                store.us_to_datetime(last_us[i]),
                source,
                summary,
                version,
                hr_source,
                *(_none(float(v)) for v in typed),
            )
        )
    return rows


def _none(x: float) -> float | None:
    return None if not math.isfinite(float(x)) else float(x)


def _sex(s: str | None) -> int:
    return SEX_MALE if s == "male" else SEX_FEMALE if s == "female" else SEX_UNKNOWN


def _profile(profiles: dict[str, store.Participant], pids: list[str | None], name: str) -> np.ndarray:
    out = []
    for p in pids:
        v = getattr(profiles[p], name) if p in profiles else None
        out.append(math.nan if v is None else float(v))
    return np.array(out, dtype=np.float64)


def _device_hourly(
    conn: psycopg.Connection[Any],
    site_id: str,
    devices: store.DeviceTable,
    lo: float,
    hi: float,
    version: str,
) -> int:
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


# ---------------------------------------------------------------------------------------------- daily


def _participant_daily(
    conn: psycopg.Connection[Any], changed: dict[str, datetime], now: datetime, version: str
) -> int:
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
    col_of = {p: i for i, p in enumerate(with_sessions)}
    today = {p: now.astimezone(ZoneInfo(profiles[p].timezone)).date() for p in with_sessions}
    day0 = min(days.day)
    day_end = max(max(today.values()), max(days.day))
    n_days, n_p = (day_end - day0).days + 1, len(with_sessions)
    col = np.array([col_of[p] for p in days.participant], dtype=np.int64)
    row = np.array([(d - day0).days for d in days.day], dtype=np.int64)
    shape = (n_days, n_p)

    def grid(values: np.ndarray, how: str = "sum") -> np.ndarray:
        return to_grid(col, row, values, shape, how)

    start = np.full(n_p, n_days, dtype=np.int64)
    np.minimum.at(start, col, row)
    sex = np.array([_sex(profiles[p].sex) for p in with_sessions], dtype=np.int8)
    age = np.array(
        [
            math.nan if (by := profiles[p].birth_year) is None else float(today[p].year - by)
            for p in with_sessions
        ]
    )
    hr_max_profile = np.array(
        [math.nan if profiles[p].hr_max_bpm is None else profiles[p].hr_max_bpm for p in with_sessions]
    )
    hr_max = np.where(np.isfinite(hr_max_profile), hr_max_profile, hunt_hr_max(age))
    hr_rest = np.array(
        [math.nan if profiles[p].hr_rest_bpm is None else profiles[p].hr_rest_bpm for p in with_sessions]
    )
    x = DailyInputs(
        sessions=grid(days.sessions),
        load=grid(days.load),
        moderate_min=grid(days.moderate_min),
        vigorous_min=grid(days.vigorous_min),
        pai_as=grid(days.pai_as),
        rhr_bpm=grid(days.rhr_bpm, "min"),
        rmssd_ms=grid(days.rmssd_ms, "mean"),
        start=start,
        sex=sex,
        hr_max_bpm=hr_max,
        hr_rest_profile_bpm=hr_rest,
    )
    s = daily_series(x)
    table = {
        "sessions": x.sessions,
        "load": x.load,
        "load_7d": s.load_7d,
        "ctl": s.ctl,
        "atl": s.atl,
        "tsb": s.tsb,
        "acwr_ewma": s.acwr_ewma,
        "acwr_rolling": s.acwr_rolling,
        "moderate_min": x.moderate_min,
        "vigorous_min": x.vigorous_min,
        "who_min_7d": s.who_min_7d,
        "pai_as": x.pai_as,
        "pai_7d": s.pai_7d,
        "rhr_bpm": x.rhr_bpm,
        "rhr_7d_bpm": s.rhr_7d_bpm,
        "rhr_28d_bpm": s.rhr_28d_bpm,
        "rmssd_ms": x.rmssd_ms,
        "ln_rmssd_7d": s.ln_rmssd_7d,
        "vo2max_ml_kg_min": s.vo2max_ml_kg_min,
    }
    lists = {k: v.tolist() for k, v in table.items()}
    status = s.who_status.tolist()
    rows: list[tuple[Any, ...]] = []
    first_day: dict[str, date] = {}
    for p in with_sessions:
        c = col_of[p]
        local_from = changed[p].astimezone(ZoneInfo(profiles[p].timezone)).date()
        r0 = max(int(start[c]), (local_from - day0).days)
        r1 = (today[p] - day0).days
        first_day[p] = day0 + timedelta(days=int(start[c]))
        for r in range(max(r0, 0), min(r1, n_days - 1) + 1):
            v = {k: lists[k][r][c] for k in lists}
            rows.append(
                (
                    UUID(p),
                    day0 + timedelta(days=r),
                    int(v["sessions"]),
                    v["load"],
                    v["load_7d"],
                    v["ctl"],
                    v["atl"],
                    v["tsb"],
                    _none(v["acwr_ewma"]),
                    _none(v["acwr_rolling"]),
                    v["moderate_min"],
                    v["vigorous_min"],
                    v["who_min_7d"],
                    WHO_STATUS[status[r][c]],
                    v["pai_as"],
                    _none(v["pai_7d"]),
                    _none(v["rhr_bpm"]),
                    _none(v["rhr_7d_bpm"]),
                    _none(v["rhr_28d_bpm"]),
                    _none(v["rmssd_ms"]),
                    _none(v["ln_rmssd_7d"]),
                    _none(v["vo2max_ml_kg_min"]),
                    version,
                )
            )
    return written + store.upsert_participant_daily(conn, rows, first_day)


# ---------------------------------------------------------------------------------------------- quality


def _device_quality(
    conn: psycopg.Connection[Any], keys: list[tuple[str, date]], site_of: dict[str, str]
) -> int:
    keys = [k for k in keys if k[0] in site_of]
    if not keys:
        return 0
    rows_in = store.load_quality_rows(conn, keys)
    q = device_day_quality(rows_in.t_s, rows_in.received_s, rows_in.hr_valid, rows_in.offsets)
    out: list[tuple[Any, ...]] = []
    cols = [
        q.samples.tolist(),
        q.late_samples.tolist(),
        q.lag_p05_s.tolist(),
        q.lag_p50_s.tolist(),
        q.lag_p95_s.tolist(),
        q.clock_skew_s.tolist(),
        q.period_s.tolist(),
        q.on_s.tolist(),
        q.expected_samples.tolist(),
        q.received_ratio.tolist(),
        q.dropouts.tolist(),
        q.gaps.tolist(),
        q.gap_s.tolist(),
        q.hr_valid_share.tolist(),
    ]
    for i, (dev, day) in enumerate(keys):
        if cols[0][i] == 0:
            continue
        (n, late, p05, p50, p95, skew, period, on, exp_, ratio, drop, gaps, gap_s, hr_share) = (
            c[i] for c in cols
        )
        out.append(
            (
                dev,
                day,
                site_of[dev],
                n,
                None,
                None,
                late,
                _none(p05),
                _none(p50),
                _none(p95),
                _none(skew),
                _none(period),
                on,
                exp_,
                _none(ratio),
                drop,
                gaps,
                gap_s,
                _none(hr_share),
            )
        )
    return store.upsert_device_quality(conn, out)
