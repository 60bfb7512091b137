"""Planning an analytics run: what is new (the work), which of it can be processed, and the windows.

Work comes from ``ingest_batches`` (per device and UTC day: the device-time range of new samples), from
``analytics_dirty`` (ranges of device events, check-ins, sessions left open) and, on a full run, from every
device's first to last sample. Each range is checked at this edge before any date arithmetic: its device
must be known, and it must lie in the job's time domain, :data:`EARLIEST` (no device data predates it: the
wire contract accepts device times within 400 days of the ingester's clock) up to :data:`FUTURE_LIMIT` after
``now``. A range that fails is set aside (:class:`analytics.job_runs.Reject`) instead of stopping the run;
the end of one that passes is clipped to ``now`` (the job never looks past its clock; an end at
PostgreSQL's ``infinity`` is fine). Times are read as epoch seconds, never as Python datetimes, so no stored
value can make the reading itself fail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import psycopg
from numpy.typing import NDArray

from analytics import store
from analytics.job_runs import Reject

logger = logging.getLogger(__name__)

EARLIEST: Final[datetime] = datetime(2000, 1, 1, tzinfo=UTC)
EARLIEST_S: Final[float] = EARLIEST.timestamp()
FUTURE_LIMIT: Final[timedelta] = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class WindowConfig:
    pad_s: float = 3600.0
    """Margin loaded around every dirty range before assembling."""
    merge_s: float = 6 * 3600.0
    """Dirty ranges of one site closer than this are processed as one window."""
    chunk_s: float = 86_400.0
    """Longer windows are processed in chunks of this length (bounded memory on a full run)."""


@dataclass(frozen=True, slots=True)
class Range:
    """A device-time range to recompute, with where it came from (for a reject)."""

    device_id: str
    t_from_s: float
    t_to_s: float
    source: str
    key: str


@dataclass
class Work:
    """What a run has to do: the ranges to recompute, the device-days whose quality to compute, and the
    dirty notes read (deleted at the end of the run)."""

    ranges: list[Range] = field(default_factory=list)
    quality_keys: set[tuple[str, date]] = field(default_factory=set)
    notes: list[store.DirtyNote] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Window:
    site_id: str
    lo_s: float
    hi_s: float


# ---------------------------------------------------------------------------------------------- reading


def collect_work(conn: psycopg.Connection[Any], now: datetime, *, full: bool) -> Work:
    """Consume the new ``ingest_batches`` rows, read the dirty notes and (``full``) every device's extent."""
    work = Work()
    today = now.astimezone(UTC).date()
    for r in store.fold_ingest_batches(conn):
        key = f"{r.device_id}/{r.day}"
        work.ranges.append(Range(r.device_id, r.t_from_s, r.t_to_s, "ingest_batches", key))
        if r.day is not None and r.day < today:
            work.quality_keys.add((r.device_id, r.day))
    work.notes = store.dirty_notes(conn)
    for n in work.notes:
        work.ranges.append(Range(n.device_id, n.t_from_s, n.t_to_s, "analytics_dirty", str(n.id)))
    if full:
        for dev, a, b in device_extents(conn):
            work.ranges.append(Range(dev, a, b, "samples", f"{dev}/extent"))
    return work


def device_extents(conn: psycopg.Connection[Any]) -> list[tuple[str, float, float]]:
    """Every device's first and last sample time (epoch seconds)."""
    rows = conn.execute(
        "SELECT d.device_id, extract(epoch FROM f.t)::float8, extract(epoch FROM l.t)::float8 "
        "FROM devices d "
        "CROSS JOIN LATERAL (SELECT t FROM samples WHERE device_id = d.device_id ORDER BY t LIMIT 1) f "
        "CROSS JOIN LATERAL (SELECT t FROM samples WHERE device_id = d.device_id ORDER BY t DESC LIMIT 1) l"
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def site_timezones(conn: psycopg.Connection[Any]) -> tuple[dict[str, ZoneInfo], list[Reject]]:
    """Each site's time zone; a site whose zone does not exist is set aside (its windows are not run)."""
    zones: dict[str, ZoneInfo] = {}
    rejects: list[Reject] = []
    for site, tz in conn.execute("SELECT site_id, timezone FROM sites").fetchall():
        try:
            zones[site] = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            rejects.append(Reject("sites", site, f"time zone {tz!r} does not exist ({type(exc).__name__})"))
    return zones, rejects


# ---------------------------------------------------------------------------------------------- checking


def check_range(r: Range, site_of: dict[str, str], tz_of: dict[str, ZoneInfo], now_s: float) -> str | None:
    """Why ``r`` cannot be processed, or None (see the module docstring)."""
    if r.device_id not in site_of:
        return "no devices row for this device"
    if site_of[r.device_id] not in tz_of:
        return f"site {site_of[r.device_id]} has no usable time zone"
    if not np.isfinite(r.t_from_s) or np.isnan(r.t_to_s):
        return "range does not start at a finite time"
    if r.t_to_s < r.t_from_s:
        return "range ends before it starts"
    if r.t_from_s < EARLIEST_S:
        return f"range starts before {EARLIEST.date()} (the job's time domain)"
    if r.t_from_s > now_s + FUTURE_LIMIT.total_seconds():
        return f"range starts more than {FUTURE_LIMIT} after the run's clock"
    return None


def accepted(
    work: Work, site_of: dict[str, str], tz_of: dict[str, ZoneInfo], now: datetime
) -> tuple[list[Range], list[Reject]]:
    """The ranges that can be processed, and a reject for each of the others."""
    ok: list[Range] = []
    rejects: list[Reject] = []
    now_s = now.timestamp()
    for r in work.ranges:
        why = check_range(r, site_of, tz_of, now_s)
        if why is None:  # the job never looks past its clock (an end at infinity included)
            ok.append(replace(r, t_to_s=min(r.t_to_s, now_s)))
        else:  # keyed by what it names: the same range queued again is the same reject, seen again
            key = f"{r.device_id}/{iso(r.t_from_s)}/{iso(r.t_to_s)}"
            rejects.append(Reject(r.source, key, why, _range_detail(r)))
    return ok, rejects


def _range_detail(r: Range) -> dict[str, Any]:
    return {"device_id": r.device_id, "t_from": iso(r.t_from_s), "t_to": iso(r.t_to_s), "row": r.key}


def iso(t_s: float) -> str:
    """ISO 8601 of an epoch time, or the number of seconds where no date can show it."""
    try:
        return datetime.fromtimestamp(t_s, UTC).isoformat()
    except (ValueError, OverflowError, OSError):
        return f"{t_s!r} s since 1970"


def quality_days(ranges: list[Range], today: date) -> set[tuple[str, date]]:
    """Every complete UTC day (before ``today``) of every range, per device."""
    out: set[tuple[str, date]] = set()
    for r in ranges:
        d0 = datetime.fromtimestamp(r.t_from_s, UTC).date()
        d1 = min(datetime.fromtimestamp(r.t_to_s, UTC).date(), today - timedelta(days=1))
        out |= {(r.device_id, d0 + timedelta(days=i)) for i in range((d1 - d0).days + 1)}
    return out


# ---------------------------------------------------------------------------------------------- windows


def plan_windows(
    ranges: list[Range],
    site_of: dict[str, str],
    tz_of: dict[str, ZoneInfo],
    now_s: float,
    cfg: WindowConfig,
) -> list[Window]:
    """Per site: padded ranges merged when closer than ``merge_s``, cut into ``chunk_s`` chunks, ending at
    ``now`` at the latest. The padding stops at the site's local midnights around a range: no session spans
    one, so nothing beyond them can change a session of the range. ``ranges`` must have passed
    :func:`check_range`."""
    by_site: dict[str, list[tuple[float, float]]] = {}
    for r in ranges:
        site = site_of[r.device_id]
        tz = tz_of[site]
        floor_a = local_midnight_before(r.t_from_s, tz)
        ceil_b = local_midnight_before(r.t_to_s, tz, days_after=1)
        span = (max(r.t_from_s - cfg.pad_s, floor_a), min(r.t_to_s + cfg.pad_s, ceil_b, now_s))
        by_site.setdefault(site, []).append(span)
    out: list[Window] = []
    for site in sorted(by_site):
        for a, b in merge_spans(by_site[site], cfg.merge_s):
            out += [Window(site, lo, hi) for lo, hi in chunks(a, b, cfg.chunk_s)]
    return out


def merge_spans(spans: list[tuple[float, float]], merge_s: float) -> list[tuple[float, float]]:
    """Sorted spans, merged where one starts at most ``merge_s`` after the previous one ends."""
    merged: list[list[float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1] + merge_s:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def chunks(a: float, b: float, chunk_s: float) -> list[tuple[float, float]]:
    """``[a, b)`` cut into consecutive pieces of at most ``chunk_s`` (none when ``b <= a``)."""
    out = []
    start = a
    while start < b:
        end = min(start + chunk_s, b)
        out.append((start, end))
        start = end
    return out


def local_midnight_before(t_s: float, tz: ZoneInfo, *, days_after: int = 0) -> float:
    """The local midnight of ``tz`` that starts the day of ``t_s`` (plus ``days_after`` days)."""
    day = datetime.fromtimestamp(t_s, tz).date() + timedelta(days=days_after)
    return datetime.combine(day, datetime.min.time(), tz).timestamp()


def local_midnights(lo_s: float, hi_s: float, tz: ZoneInfo) -> NDArray[np.float64]:
    """Epoch seconds of every local midnight of ``tz`` in ``[lo_s, hi_s]``."""
    first = datetime.fromtimestamp(lo_s, tz).date()
    last = datetime.fromtimestamp(hi_s, tz).date()
    days = (last - first).days + 1
    out = [
        datetime.combine(first + timedelta(days=i), datetime.min.time(), tz).timestamp() for i in range(days)
    ]
    return np.array([x for x in out if lo_s <= x <= hi_s], dtype=np.float64)
