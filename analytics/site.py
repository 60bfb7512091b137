"""Per-site analytics: equipment utilisation, occupancy over the day, sessions per member, vitality aggregates
with small groups suppressed. Pure NumPy, no I/O; times are seconds since the Unix epoch.

Utilisation (per device and bin, usually an hour): seconds of the bin covered by the device's *sessions*
(first to last active sample; :mod:`analytics.sessions`), divided by the bin length. A device's overlapping
intervals count once: the union of its intervals is measured (:func:`union_intervals`), never their sum.
Session time, not sample time, is the definition: a machine left running without anybody on it sends samples
but is not in use; ``device_hourly.minutes_with_data`` (minutes with any sample, from ``samples_1m``) is
stored beside it for that other view.

Occupancy (per slot, 15 minutes by default): the time-weighted mean number of machines in use in the slot
(in-session seconds of all devices / slot length) and the number of distinct participants with a session
overlapping the slot. :func:`weekly_profile` averages slots by (local weekday, slot of the day) over the days
of the range, counting empty slots as 0.

Sessions per member (per site and week): sessions / distinct participants with at least one session.

Vitality (per site and ISO week, optionally broken down by a group such as sex or age band): members (with a
session that week), median weekly load (TRIMP), median MVPA minutes, mean WHO moderate-equivalent minutes and
the share meeting 150 min, sessions per member.

Suppression (k-anonymity threshold ``k``, default :data:`K_ANONYMITY` = 5). A cell with fewer than ``k``
members is suppressed: every figure, including its member count, is returned as null with
``suppressed = True``; no figure is ever derived from fewer than ``k`` members. Differencing guard: a
published total minus the published cells of its breakdown would reveal the suppressed cells together, so
within each total the smallest further cells are suppressed until the suppressed cells hold at least ``k``
members between them (or none at all, or every cell is suppressed). Suppressed cells are therefore always
the smallest cells of their total. Limits: only one breakdown dimension is published at a time; combining
several published breakdowns of the same total (sex and age band) is not protected against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from analytics.errors import SessionInputError
from analytics.sessions import concat_ranges, count_le

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
B = NDArray[np.bool_]

K_ANONYMITY: Final[int] = 5
SLOT_S: Final[float] = 900.0
WHO_TARGET_MIN: Final[float] = 150.0


# ---------------------------------------------------------------------------------------------- time


def union_intervals(group: I64, start_s: F64, end_s: F64) -> tuple[I64, F64, F64]:
    """The union of the intervals ``[start, end)`` of each group as disjoint, sorted intervals
    ``(group, start, end)`` (sorted by group, then start). Empty intervals (``end <= start``) are dropped;
    intervals that overlap or touch merge. Vectorised: one sort by (group, start), then a running maximum of
    the ends within each group (exact: the maximum runs over integer ranks offset by group, so it never
    carries over from one group into the next); an interval starts a new run where it begins after every
    earlier end of its group."""
    ok = end_s > start_s
    g, s, e = group[ok].astype(np.int64), start_s[ok], end_s[ok]
    if g.shape[0] == 0:
        return g, s, e
    order = np.lexsort((s, g))
    g, s, e = g[order], s[order], e[order]
    n = g.shape[0]
    ends_sorted = np.unique(e)
    rank = np.searchsorted(ends_sorted, e).astype(np.int64)
    group_code = np.concatenate(([0], np.cumsum(g[1:] != g[:-1]))).astype(np.int64)
    running = np.maximum.accumulate(group_code * n + rank) - group_code * n  # rank of the running max end
    reach = ends_sorted[running]  # furthest end of the group so far, this interval included
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (g[1:] != g[:-1]) | (s[1:] > reach[:-1])
    first = np.flatnonzero(new_run)
    last = np.concatenate((first[1:], [n])) - 1
    return g[first], s[first], reach[last]


def covered_seconds(group: I64, start_s: F64, end_s: F64, edges_s: F64, n_groups: int) -> F64:
    """Seconds of each bin ``[edges[j], edges[j+1])`` covered by the union of the intervals ``[start, end)``
    of each group, ``(n_groups, len(edges) - 1)``: a second covered by several intervals of one group counts
    once. Exact: the intervals are first merged into disjoint ones (:func:`union_intervals`), then
    ``F(x) = Σ clip(x - s, 0, e - s)`` per group is evaluated at every edge from sorted prefix sums (no loop
    over intervals or bins); times are taken relative to the first edge so that epoch magnitudes do not cost
    precision. The final clip to ``[0, bin length]`` only absorbs rounding."""
    if edges_s.ndim != 1 or edges_s.shape[0] < 1 or bool(np.any(np.diff(edges_s) <= 0)):
        raise SessionInputError("edges_s", "must be a strictly increasing 1-D array")
    if not (group.shape == start_s.shape == end_s.shape):
        raise SessionInputError("start_s/end_s", "group, start and end must have the same shape")
    m = edges_s.shape[0]
    if n_groups == 0:
        return np.zeros((0, m - 1))
    origin = float(edges_s[0])
    g, s, e = union_intervals(group, start_s - origin, end_s - origin)
    qg = np.repeat(np.arange(n_groups, dtype=np.int64), m)
    qx = np.tile(edges_s - origin, n_groups)
    f = _ramp_sum(g, s, qg, qx) - _ramp_sum(g, e, qg, qx)
    per_edge = f.reshape(n_groups, m)
    covered = np.diff(per_edge, axis=1)
    return np.clip(covered, 0.0, np.diff(edges_s)[None, :])


def _ramp_sum(g: I64, v: F64, qg: I64, qx: F64) -> F64:
    """``Σ_{items of group qg with v < qx} (qx - v)`` for every query."""
    if v.shape[0] == 0:
        return np.zeros(qx.shape[0])
    order = np.lexsort((v, g))
    gs, vs = g[order], v[order]
    prefix = np.concatenate(([0.0], np.cumsum(vs)))
    first = np.searchsorted(gs, qg, side="left")
    cnt = count_le(gs, vs, qg, qx, strict=True)
    total_v = prefix[first + cnt] - prefix[first]
    return np.asarray(cnt * qx - total_v, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Occupancy:
    machines_in_use: F64  # (n_slots,) time-weighted mean number of devices in a session
    participants: I64  # (n_slots,) distinct participants with a session overlapping the slot


def occupancy(
    device: I64,
    participant: I64,
    start_s: F64,
    end_s: F64,
    edges_s: F64,
    n_devices: int,
) -> Occupancy:
    """Occupancy of each slot between consecutive ``edges_s`` (participant -1: unknown, not counted)."""
    cov = covered_seconds(device, start_s, end_s, edges_s, n_devices)
    machines = cov.sum(axis=0) / np.diff(edges_s) if n_devices else np.zeros(edges_s.shape[0] - 1)
    n_slots = edges_s.shape[0] - 1
    known = (participant >= 0) & (end_s > start_s)
    p, s, e = participant[known], start_s[known], end_s[known]
    first = np.searchsorted(edges_s, s, side="right") - 1
    last = np.searchsorted(edges_s, e, side="left") - 1  # slot holding the end (exclusive)
    first = np.clip(first, 0, n_slots)
    last = np.clip(last, -1, n_slots - 1)
    n = np.maximum(last - first + 1, 0).astype(np.int64)
    slots = concat_ranges(first.astype(np.int64), n)
    who = np.repeat(p, n)
    if slots.size:
        key = np.unique(who * (n_slots + 1) + slots)
        counts = np.bincount((key % (n_slots + 1)).astype(np.int64), minlength=n_slots)[:n_slots]
    else:
        counts = np.zeros(n_slots, dtype=np.int64)
    return Occupancy(np.asarray(machines, dtype=np.float64), counts.astype(np.int64))


def weekly_profile(values: F64, weekday: I64, slot_of_day: I64, slots_per_day: int) -> F64:
    """Mean of ``values`` per (weekday 0=Monday..6, slot of the day), ``(7, slots_per_day)``; NaN for a
    (weekday, slot) the range does not contain."""
    total = np.zeros((7, slots_per_day))
    cnt = np.zeros((7, slots_per_day))
    np.add.at(total, (weekday, slot_of_day), values)
    np.add.at(cnt, (weekday, slot_of_day), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, total / np.maximum(cnt, 1.0), np.nan)


# ---------------------------------------------------------------------------------------------- suppression


def segment_median(cell: I64, values: F64, n_cells: int) -> F64:
    """Median of the finite values of each cell (NaN for none), one lexsort."""
    ok = np.isfinite(values)
    c, v = cell[ok], values[ok]
    order = np.lexsort((v, c))
    c, v = c[order], v[order]
    count = np.bincount(c, minlength=n_cells)
    first = np.concatenate(([0], np.cumsum(count)[:-1]))
    out = np.full(n_cells, np.nan)
    has = count > 0
    lo = first + (count - 1) // 2
    hi = first + count // 2
    out[has] = 0.5 * (v[lo[has]] + v[hi[has]])
    return out


def suppress(n: I64, parent: I64, k: int = K_ANONYMITY) -> B:
    """Suppressed cells: fewer than ``k`` members, plus (complementary) the smallest further cells of the same
    parent until the suppressed cells of each parent hold at least ``k`` members (or none), or all of them
    are suppressed (rules in the module docstring). ``parent`` is a group label: the cells of one breakdown
    of one total share it; a total published beside its breakdown needs a label of its own."""
    if k < 1:
        raise SessionInputError("k", f"must be >= 1, got {k}")
    m = n.shape[0]
    out = np.zeros(m, dtype=bool)
    if m == 0:
        return out
    order = np.lexsort((np.arange(m), n, parent))
    ps, ns = parent[order], n[order]
    new_parent = np.ones(m, dtype=bool)
    new_parent[1:] = ps[1:] != ps[:-1]
    group_start = np.maximum.accumulate(np.where(new_parent, np.arange(m), 0))
    pos = np.arange(m) - group_start + 1  # 1-based position within the parent, ascending n
    cum = np.cumsum(ns)
    cum_in = cum - np.concatenate(([0], cum))[group_start]
    size = np.bincount(np.cumsum(new_parent) - 1)[np.cumsum(new_parent) - 1]
    primary = np.bincount(np.cumsum(new_parent) - 1, weights=(ns < k))[np.cumsum(new_parent) - 1]
    ok = (pos >= primary) & ((cum_in >= k) | (cum_in == 0) | (pos == size))
    cand = np.where(ok, pos, m + 1)
    gid = np.cumsum(new_parent) - 1
    length = np.full(int(gid[-1]) + 1, m + 1)
    np.minimum.at(length, gid, cand)
    length = np.where(np.bincount(gid, weights=(ns < k)) > 0, length, 0)
    out[order] = pos <= length[gid]
    return out


@dataclass(frozen=True, slots=True)
class Vitality:
    """Per cell, ``(n_cells,)``; every figure is NaN where ``suppressed``."""

    members: F64
    sessions_per_member: F64
    median_load: F64
    median_mvpa_min: F64
    mean_who_min: F64
    who_share: F64
    suppressed: B


def vitality(
    cell: I64,
    parent: I64,
    sessions: F64,
    load: F64,
    mvpa_min: F64,
    who_min: F64,
    n_cells: int,
    k: int = K_ANONYMITY,
) -> Vitality:
    """Aggregate member-weeks into cells and suppress small ones. Inputs are per member-week (one row per
    participant with at least one session that week): its ``cell`` (e.g. site x week x group), and per cell
    its ``parent`` (``(n_cells,)``: the total the breakdown belongs to; a cell that is its own total is its
    own parent)."""
    if parent.shape != (n_cells,):
        raise SessionInputError("parent", f"must have one entry per cell ({n_cells})")
    members = np.bincount(cell, minlength=n_cells).astype(np.int64)
    hidden = suppress(members, parent, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        spm = np.bincount(cell, weights=sessions, minlength=n_cells) / members
        who_mean = np.bincount(cell, weights=np.nan_to_num(who_min), minlength=n_cells) / members
        share = np.bincount(cell, weights=(who_min >= WHO_TARGET_MIN), minlength=n_cells) / members
    med_load = segment_median(cell, load, n_cells)
    med_mvpa = segment_median(cell, mvpa_min, n_cells)

    def hide(x: F64) -> F64:
        return np.where(hidden | (members == 0), np.nan, x).astype(np.float64)

    return Vitality(
        members=hide(members.astype(np.float64)),
        sessions_per_member=hide(spm),
        median_load=hide(med_load),
        median_mvpa_min=hide(med_mvpa),
        mean_who_min=hide(who_mean),
        who_share=hide(share),
        suppressed=hidden,
    )
