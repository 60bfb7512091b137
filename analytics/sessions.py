"""Sessions from samples: pure NumPy, no I/O.

A **session** is one person on one machine (and/or wearing one heart-rate strap) over a time interval.
vitalab assembles sessions from four sources, all vectorised over every device at once (one sort, then
boundary flags and segment reductions; no Python loop per session or per device):

Activity. A sample is *active* when it carries an effort signal: speed > 0, power > 0, cadence > 0 or stroke
rate > 0; on a heart-rate strap, any valid heart rate (:func:`active_mask`). Only active samples open, extend
and close sessions; the inactive samples between a session's first and last active sample belong to it.

Boundaries between two consecutive active samples ``a`` (earlier) and ``b`` of one device start a new session:

* **gap**: ``t_b - t_a > gap_s`` (default 300 s, :data:`GAP_S`);
* **machine status**: a device event at ``e`` with ``t_a < e <= t_b`` that is a training-status change
  (inactive ``idle``/``pre_workout``/``post_workout`` <-> active, i.e. stopped/started), an error, or offline
  (:func:`status_breaks` turns ``device_events`` rows into break times);
* **counter reset**: the machine's workout counters restart (``elapsed_s`` falls by more than
  :data:`COUNTER_RESET_S` or ``distance_m`` by more than :data:`DISTANCE_RESET_M`): FTMS machines zero them
  when a new workout starts, which separates two members who follow each other within ``gap_s``;
* **check-in**: the start or end of a ``device_assignments`` row of that device (a participant checked in on
  the device from ``started_at`` to ``ended_at``). The segment's participant is the check-in that contains its
  start (the latest-starting one if check-ins of one device overlap).

A break at exactly ``t_b`` separates ``t < e`` from ``t >= e``. Activity that goes on without any of these is
cut every ``max_session_s`` (default 4 h, :data:`MAX_SESSION_S`) counted from its start, and the job adds a
break at every local midnight of the site (a session never spans it), which bounds how far back a run must
read to find where uninterrupted activity began. Segments whose first-to-last active sample span is shorter
than ``min_active_s`` (default 120 s, :data:`MIN_ACTIVE_S`) are not sessions.

Windows and certainty. The caller loads a time window per device. A segment's start is *certain* when
something before it inside the window proves it is a start (a previous active sample with a boundary in
between, more than ``gap_s`` of window without activity before it, or a break after the window start); its end
is certain likewise. A segment whose end is uncertain because the window reaches ``now`` is **open**: its
device may still be in use, so it is not finalised (the job re-queues its range and looks again on the next
run; it closes once ``gap_s`` passes without activity, or a break arrives). Any other uncertain edge means the
caller must widen that window and assemble again (:attr:`Segments.needs_wider`).

Strap + machine. :func:`join_straps` gives each machine segment at most one strap segment of the same site,
the one it coincides with best, in one globally consistent assignment. Candidates are the pairs that overlap
by at least ``min_join_overlap`` (default 0.5) of the shorter of the two, whose strap is checked in for a
participant (a member's own strap is checked in to them for good) and whose machine segment is checked in for
the same participant or has no check-in: a strap never joins a machine another participant is checked in on.
Each candidate gets a score (:func:`join_scores`): the share of the machine segment the strap covers times the
share of the strap segment the machine covers, discounted by how far apart their starts and ends are; when the
samples are given, times a heart-rate factor ``exp(-d / HR_AGREEMENT_BPM)`` with ``d`` the median difference
between the heart rate the machine reports and the strap's (:func:`hr_disagreement`), or 0.5 when the machine
reports none (no evidence ranks between agreement and disagreement). Pairs are then taken greedily, those
whose machine the strap's participant is checked in on first, then by descending score: a machine takes its
best remaining strap; a strap may serve several machine segments one after the other (a member switching
machines) but not two at once (their overlap at most ``switch_overlap_s``). So a strap worn only during a
five-minute visit joins that visit, not a half-hour session on another machine covering the same minutes, and
straps of a class that starts and ends together go to the machines whose heart rate they match. A joined
session spans the machine segment and lists both devices; its participant is the strap's (which equals the
machine's check-in when there is one), else the machine's check-in; its heart rate and RR intervals come from
the strap (machine heart rate only without a strap). Strap time outside every joined machine segment is not a
session of its own when the strap joined at least one machine; a strap segment joined to none is a session of
its own.

Identity. A session is identified by its sorted device ids, its start (first active sample of its primary
device) and the algorithm version: the unique index of ``sessions`` in 0001; re-running on the same data
gives the same identities, so the job UPSERTs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from analytics.batch import KIND_CODE, SessionBatch
from analytics.errors import SessionInputError

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
B = NDArray[np.bool_]

GAP_S: Final[float] = 300.0
"""A pause in activity longer than this (s) ends a session."""
MIN_ACTIVE_S: Final[float] = 120.0
"""Shortest session (s from the first to the last active sample)."""
COUNTER_RESET_S: Final[float] = 1.0
"""``elapsed_s`` falling by more than this between two active samples means a new workout."""
DISTANCE_RESET_M: Final[float] = 1.0
"""``distance_m`` falling by more than this between two active samples means a new workout."""
MAX_SESSION_S: Final[float] = 4 * 3600.0
"""Uninterrupted activity is cut into sessions of at most this length, counted from its start."""
MIN_JOIN_OVERLAP: Final[float] = 0.5
"""Share of the shorter session a strap and a machine without check-in must overlap to be joined."""
JOIN_EDGE_S: Final[float] = 60.0
"""Scale of the start and end differences in :func:`join_scores` (s)."""
SWITCH_OVERLAP_S: Final[float] = 60.0
"""Two machine segments one strap serves may overlap by this much (s): a member switching machines."""
HR_AGREEMENT_BPM: Final[float] = 10.0
"""Scale of the heart-rate disagreement between a machine and a strap in the join score (bpm)."""
STRAP_HR_TOLERANCE_S: Final[float] = 1.0
"""A machine row takes the strap heart rate of the nearest strap sample within this many seconds."""

INACTIVE_STATUSES: Final[frozenset[str]] = frozenset({"idle", "pre_workout", "post_workout"})
"""FTMS training statuses in which nobody is working out on the machine."""

SOURCE_MACHINE_STATUS: Final[int] = 0
SOURCE_CHECK_IN: Final[int] = 1
SOURCE_ACTIVITY_GAP: Final[int] = 2
SOURCES: Final[tuple[str, ...]] = ("machine_status", "check_in", "activity_gap")
"""``sessions.source`` by code: check-in when a check-in names the participant, machine status when a device
event or counter reset delimits the session, activity gap otherwise."""

_CAUSE_FIRST, _CAUSE_GAP, _CAUSE_EVENT, _CAUSE_RESET, _CAUSE_CHECKIN, _CAUSE_DEVICE, _CAUSE_LENGTH = range(7)
STRAP: Final[int] = KIND_CODE["hr_strap"]


@dataclass(frozen=True, slots=True)
class AssemblyParams:
    gap_s: float = GAP_S
    min_active_s: float = MIN_ACTIVE_S
    min_join_overlap: float = MIN_JOIN_OVERLAP
    max_session_s: float = MAX_SESSION_S
    switch_overlap_s: float = SWITCH_OVERLAP_S
    strap_hr_tolerance_s: float = STRAP_HR_TOLERANCE_S

    def __post_init__(self) -> None:
        if not self.gap_s > 0:
            raise SessionInputError("gap_s", f"must be > 0, got {self.gap_s}")
        if not self.min_active_s >= 0:
            raise SessionInputError("min_active_s", f"must be >= 0, got {self.min_active_s}")
        if not self.max_session_s > self.min_active_s:
            raise SessionInputError("max_session_s", f"must be > min_active_s, got {self.max_session_s}")
        if not self.switch_overlap_s >= 0:
            raise SessionInputError("switch_overlap_s", f"must be >= 0, got {self.switch_overlap_s}")
        if not 0 < self.min_join_overlap <= 1:
            raise SessionInputError("min_join_overlap", f"must be in (0, 1], got {self.min_join_overlap}")


@dataclass(frozen=True, slots=True)
class DeviceSamples:
    """Samples of many devices, sorted by (device, t) with t strictly increasing within a device.

    ``device`` is a code into the caller's device table (0..n_devices-1). NaN marks a missing value."""

    device: I64
    t_s: F64
    hr_bpm: F64
    power_w: F64
    speed_kmh: F64
    incline_pct: F64
    cadence_rpm: F64
    stroke_rate_spm: F64
    distance_m: F64
    energy_kcal: F64
    elapsed_s: F64

    @property
    def n(self) -> int:
        return int(self.t_s.shape[0])

    def validate(self) -> None:
        n = self.n
        for name in DeviceSamples.__slots__:
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.shape != (n,):
                raise SessionInputError(name, f"must be a ({n},) array")
        if n > 1:
            dd = np.diff(self.device)
            same = dd == 0
            if bool(np.any(dd < 0)) or bool(np.any(same & ~(np.diff(self.t_s) > 0))):
                raise SessionInputError("t_s", "samples must be sorted by device, then strictly by time")

    @classmethod
    def empty(cls) -> DeviceSamples:
        z = np.zeros(0)
        return cls(np.zeros(0, dtype=np.int64), z, z, z, z, z, z, z, z, z, z)


@dataclass(frozen=True, slots=True)
class RrIntervals:
    """RR intervals of many devices, sorted by (device, t, beat order)."""

    device: I64
    t_s: F64
    rr_ms: F64

    @classmethod
    def empty(cls) -> RrIntervals:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0))


@dataclass(frozen=True, slots=True)
class CheckIns:
    """Check-ins (``device_assignments``): participant code on device code from start to end (inf: open)."""

    device: I64
    participant: I64
    start_s: F64
    end_s: F64

    @classmethod
    def empty(cls) -> CheckIns:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0))


@dataclass(frozen=True, slots=True)
class Segments:
    """Per-device sessions before joining: ``(n,)`` arrays; rows index :class:`DeviceSamples`."""

    device: I64
    first_row: I64  # first active sample
    last_row: I64  # last active sample
    start_s: F64
    end_s: F64
    n_active: I64
    participant: I64  # -1: no check-in
    source: NDArray[np.int8]
    left_certain: B
    right_certain: B
    open: B  # end uncertain because the window reaches `now`
    long_enough: B

    @property
    def n(self) -> int:
        return int(self.device.shape[0])

    @property
    def final(self) -> B:
        """Finished sessions: both edges certain and at least ``min_active_s`` long."""
        return self.left_certain & self.right_certain & self.long_enough

    def needs_wider(self, n_devices: int) -> tuple[B, B]:
        """Devices whose window must grow to the left / to the right (not open, edge uncertain)."""
        left = np.zeros(n_devices, dtype=bool)
        right = np.zeros(n_devices, dtype=bool)
        left[self.device[~self.left_certain]] = True
        right[self.device[~self.right_certain & ~self.open]] = True
        return left, right


@dataclass(frozen=True, slots=True)
class Joined:
    """Sessions after joining straps and machines, ``(n,)`` arrays of indices into :class:`Segments`."""

    primary: I64  # the machine segment (or the strap segment of a strap-only session)
    strap: I64  # the strap segment joined to a machine segment; -1 none
    participant: I64
    final: B  # every segment involved is final (store it); otherwise the session is still open

    @property
    def n(self) -> int:
        return int(self.primary.shape[0])


# ---------------------------------------------------------------------------------------------- activity


def active_mask(samples: DeviceSamples, is_strap: B) -> B:
    """Effort signal per sample: speed, power, cadence or stroke rate > 0; on a strap (``is_strap`` indexed by
    device code) a valid heart rate (20–250 bpm, the wire contract's range). NaN is no signal."""
    with np.errstate(invalid="ignore"):
        effort = (
            (samples.speed_kmh > 0)
            | (samples.power_w > 0)
            | (samples.cadence_rpm > 0)
            | (samples.stroke_rate_spm > 0)
        )
        hr_ok = (samples.hr_bpm >= 20) & (samples.hr_bpm <= 250)
    strap = is_strap[samples.device] if samples.n else np.zeros(0, dtype=bool)
    return np.asarray(effort | (strap & hr_ok), dtype=bool)


def status_breaks(
    device: I64, t_s: F64, kind: list[str], training: list[str | None], n_errors: I64
) -> tuple[I64, F64]:
    """Break times from device events sorted by (device, t): offline events, events reporting errors, and
    training-status changes between inactive (:data:`INACTIVE_STATUSES`) and active statuses. An event without
    a training status changes nothing; the first known status of each device in the list is a break (a
    workout starting or stopping). Pass the device's last event before the window first to avoid that."""
    n = int(t_s.shape[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    cls = np.array(
        [-1 if s is None else (0 if s in INACTIVE_STATUSES else 1) for s in training], dtype=np.int64
    )
    offline = np.array([k in ("offline", "error") for k in kind], dtype=bool)
    known = cls >= 0
    # previous known class within the device: forward-fill the class over unknown rows
    idx = np.where(known, np.arange(n), -1)
    np.maximum.accumulate(idx, out=idx)
    prev_idx = np.concatenate(([-1], idx[:-1]))
    prev_cls = np.where(prev_idx >= 0, cls[np.maximum(prev_idx, 0)], -1)
    prev_dev = np.where(prev_idx >= 0, device[np.maximum(prev_idx, 0)], -1)
    changed = known & ((prev_dev != device) | (prev_cls != cls))
    brk = offline | (n_errors > 0) | changed
    return device[brk].astype(np.int64), t_s[brk].astype(np.float64)


# ---------------------------------------------------------------------------------------------- assembly


def assemble(
    samples: DeviceSamples,
    active: B,
    *,
    window_lo_s: F64,
    window_hi_s: F64,
    now_s: float,
    breaks_device: I64 | None = None,
    breaks_t_s: F64 | None = None,
    check_ins: CheckIns | None = None,
    params: AssemblyParams = AssemblyParams(),
) -> Segments:
    """Split every device's active samples into segments (see the module docstring for the rules).

    ``window_lo_s``/``window_hi_s`` (indexed by device code) are the loaded time range of each device; a
    window whose ``hi`` is at or after ``now_s`` reaches the present."""
    samples.validate()
    if active.shape != (samples.n,):
        raise SessionInputError("active", f"must be a ({samples.n},) boolean array")
    bd = np.zeros(0, dtype=np.int64) if breaks_device is None else breaks_device.astype(np.int64)
    bt = np.zeros(0) if breaks_t_s is None else breaks_t_s.astype(np.float64)
    ci = CheckIns.empty() if check_ins is None else check_ins
    gap = params.gap_s

    rows = np.flatnonzero(active).astype(np.int64)
    if rows.size == 0:
        return _empty_segments()
    dev = samples.device[rows]
    t = samples.t_s[rows]
    lo = window_lo_s[dev]
    hi = window_hi_s[dev]

    ci_dev = np.concatenate((ci.device, ci.device))
    ci_t = np.concatenate((ci.start_s, ci.end_s))
    ci_keep = np.isfinite(ci_t)
    ci_dev, ci_t = ci_dev[ci_keep], ci_t[ci_keep]
    ev_at = count_le(bd, bt, dev, t)
    ci_at = count_le(ci_dev, ci_t, dev, t)

    n = rows.size
    cause = np.full(n, _CAUSE_FIRST, dtype=np.int64)
    new = np.ones(n, dtype=bool)
    if n > 1:
        same = dev[1:] == dev[:-1]
        el = samples.elapsed_s[rows]
        dist = samples.distance_m[rows]
        with np.errstate(invalid="ignore"):
            reset = (el[1:] < el[:-1] - COUNTER_RESET_S) | (dist[1:] < dist[:-1] - DISTANCE_RESET_M)
        gap_b = (t[1:] - t[:-1]) > gap
        ev_b = ev_at[1:] != ev_at[:-1]
        ci_b = ci_at[1:] != ci_at[:-1]
        # the cause recorded: a check-in, else a device event, else the gap, else the counter reset (a reset
        # after a pause longer than gap_s does not make the next session "machine status")
        c = np.where(
            ci_b, _CAUSE_CHECKIN, np.where(ev_b, _CAUSE_EVENT, np.where(gap_b, _CAUSE_GAP, _CAUSE_RESET))
        )
        inner = same & (gap_b | ev_b | ci_b | reset)
        new[1:] = ~same | inner
        cause[1:] = np.where(same, np.where(inner, c, -1), _CAUSE_FIRST)
    # longest session: activity without any boundary is cut every max_session_s from its start
    seg_t0 = t[np.flatnonzero(new)][np.cumsum(new) - 1]
    piece = np.floor((t - seg_t0) / params.max_session_s)
    cut = np.zeros(n, dtype=bool)
    cut[1:] = (piece[1:] != piece[:-1]) & ~new[1:]
    new |= cut
    cause[cut] = _CAUSE_LENGTH
    starts = np.flatnonzero(new)
    ends = np.concatenate((starts[1:] - 1, [n - 1]))
    seg_dev = dev[starts]
    start_s, end_s = t[starts], t[ends]
    start_cause = cause[starts]
    last_of_device = np.ones(starts.size, dtype=bool)
    last_of_device[:-1] = seg_dev[1:] != seg_dev[:-1]
    end_cause = np.full(starts.size, _CAUSE_DEVICE, dtype=np.int64)
    end_cause[:-1] = np.where(last_of_device[:-1], _CAUSE_DEVICE, start_cause[1:])

    # certainty of the window edges
    seg_lo, seg_hi = lo[starts], hi[ends]
    brk_before = (ev_at[starts] - count_le(bd, bt, seg_dev, seg_lo)) + (
        ci_at[starts] - count_le(ci_dev, ci_t, seg_dev, seg_lo)
    )
    left_certain = (start_cause != _CAUSE_FIRST) | (start_s - seg_lo > gap) | (brk_before > 0)
    ev_after = count_le(bd, bt, seg_dev, seg_hi) - ev_at[ends]
    ci_after = count_le(ci_dev, ci_t, seg_dev, seg_hi) - ci_at[ends]
    right_certain = ~last_of_device | (seg_hi - end_s > gap) | (ev_after + ci_after > 0)
    open_ = ~right_certain & (seg_hi >= now_s)
    end_cause = np.where(last_of_device & (ev_after > 0), _CAUSE_EVENT, end_cause)

    # participant from the check-in containing the start
    k = last_le(ci.device, ci.start_s, seg_dev, start_s)
    has = k >= 0
    kk = np.maximum(k, 0)
    inside = has & (start_s < (ci.end_s[kk] if ci.device.size else np.zeros(starts.size)))
    participant = np.where(inside, ci.participant[kk] if ci.device.size else -1, -1).astype(np.int64)

    status = np.isin(start_cause, (_CAUSE_EVENT, _CAUSE_RESET)) | np.isin(
        end_cause, (_CAUSE_EVENT, _CAUSE_RESET)
    )
    source = np.where(
        participant >= 0, SOURCE_CHECK_IN, np.where(status, SOURCE_MACHINE_STATUS, SOURCE_ACTIVITY_GAP)
    ).astype(np.int8)
    return Segments(
        device=seg_dev.astype(np.int64),
        first_row=rows[starts],
        last_row=rows[ends],
        start_s=start_s,
        end_s=end_s,
        n_active=(ends - starts + 1).astype(np.int64),
        participant=participant,
        source=source,
        left_certain=left_certain,
        right_certain=right_certain,
        open=open_,
        long_enough=(end_s - start_s) >= params.min_active_s,
    )


def join_scores(seg: Segments, pm: I64, ps: I64) -> F64:
    """How well machine segments ``pm`` and strap segments ``ps`` coincide, pairwise, in [0, 1]: the share
    of the machine segment the strap covers, times the share of the strap segment the machine covers, times
    ``1 / (1 + (|start difference| + |end difference|) / JOIN_EDGE_S)``. 1 for identical intervals; a strap
    worn only during a short visit scores far higher with that visit than with a long session around it."""
    m0, m1, s0, s1 = seg.start_s[pm], seg.end_s[pm], seg.start_s[ps], seg.end_s[ps]
    ov = np.maximum(np.minimum(m1, s1) - np.maximum(m0, s0), 0.0)
    # an instant segment (one active sample) counts as one second long
    m_len = np.maximum(m1 - m0, 1.0)
    s_len = np.maximum(s1 - s0, 1.0)
    cover = np.minimum(ov / m_len, 1.0) * np.minimum(ov / s_len, 1.0)
    edges = np.abs(m0 - s0) + np.abs(m1 - s1)
    return np.asarray(cover / (1.0 + edges / JOIN_EDGE_S), dtype=np.float64)


def hr_disagreement(samples: DeviceSamples, seg: Segments, pm: I64, ps: I64, tolerance_s: float) -> F64:
    """Per (machine segment, strap segment) pair: the median absolute difference (bpm) between the heart rate
    the machine reports and the strap's nearest sample within ``tolerance_s`` (the earlier one on a tie),
    over the machine's samples inside both segments; NaN where they have no such pair of valid values
    (20–250 bpm)."""
    n = int(pm.shape[0])
    if n == 0:
        return np.zeros(0)
    first, last = seg.first_row[pm], seg.last_row[pm]
    lengths = last - first + 1
    rows = concat_ranges(first, lengths)
    pair = np.repeat(np.arange(n), lengths)
    t = samples.t_s[rows]
    inside = (t >= seg.start_s[ps][pair]) & (t <= seg.end_s[ps][pair])
    rows, pair, t = rows[inside], pair[inside], t[inside]
    strap_dev = seg.device[ps][pair]
    hr_s = _nearest_value(samples.device, samples.t_s, samples.hr_bpm, strap_dev, t, tolerance_s)
    hr_m = samples.hr_bpm[rows]
    with np.errstate(invalid="ignore"):
        ok = (hr_m >= 20) & (hr_m <= 250) & (hr_s >= 20) & (hr_s <= 250)
    d, g = np.abs(hr_m[ok] - hr_s[ok]), pair[ok]
    order = np.lexsort((d, g))
    d, g = d[order], g[order]
    count = np.bincount(g, minlength=n)
    start = np.concatenate(([0], np.cumsum(count)[:-1]))
    lo, hi = start + (count - 1) // 2, start + count // 2
    out = np.full(n, np.nan)
    has = count > 0
    out[has] = 0.5 * (d[lo[has]] + d[hi[has]])
    return out


def join_straps(
    seg: Segments,
    *,
    is_strap: B,
    site: I64,
    params: AssemblyParams = AssemblyParams(),
    samples: DeviceSamples | None = None,
) -> Joined:
    """Pair strap segments with machine segments (rules in the module docstring); ``is_strap`` and ``site``
    are indexed by device code. Segments that are too short and not open are left out."""
    usable = (seg.long_enough | seg.open) if seg.n else np.zeros(0, dtype=bool)
    strap_seg = is_strap[seg.device] & usable if seg.n else np.zeros(0, dtype=bool)
    mach_seg = ~is_strap[seg.device] & usable if seg.n else np.zeros(0, dtype=bool)
    m_idx = np.flatnonzero(mach_seg).astype(np.int64)
    s_idx = np.flatnonzero(strap_seg & (seg.participant >= 0)).astype(np.int64)

    pm, ps = _overlapping_pairs(seg, m_idx, s_idx, site)
    strap_of = np.full(seg.n, -1, dtype=np.int64)
    strap_used = np.zeros(seg.n, dtype=bool)
    if pm.size:
        ov = np.minimum(seg.end_s[pm], seg.end_s[ps]) - np.maximum(seg.start_s[pm], seg.start_s[ps])
        shorter = np.minimum(seg.end_s[pm] - seg.start_s[pm], seg.end_s[ps] - seg.start_s[ps])
        checked_in = seg.participant[pm] == seg.participant[ps]
        enough = ov >= params.min_join_overlap * np.maximum(shorter, 1e-9)
        ok = np.flatnonzero((checked_in | (seg.participant[pm] < 0)) & enough)
        score = join_scores(seg, pm, ps)
        if samples is not None and ok.size:
            # heart-rate evidence: agreeing heart rates (machine and strap) count for the pair, disagreeing
            # ones against it, none is neutral (halfway)
            mad = np.full(pm.size, np.nan)
            mad[ok] = hr_disagreement(samples, seg, pm[ok], ps[ok], params.strap_hr_tolerance_s)
            score = score * np.where(np.isnan(mad), 0.5, np.exp(-np.nan_to_num(mad) / HR_AGREEMENT_BPM))
        # globally greedy: checked-in pairs first, then by how well the intervals coincide; a machine takes
        # one strap, a strap serves machines one after the other (not two at once). Few pairs: a short loop.
        order = ok[np.lexsort((ps[ok], pm[ok], -score[ok], ~checked_in[ok]))]
        served: dict[int, list[tuple[float, float]]] = {}
        for j in order.tolist():
            m, s = int(pm[j]), int(ps[j])
            if strap_of[m] >= 0:
                continue
            m0, m1 = float(seg.start_s[m]), float(seg.end_s[m])
            busy = served.setdefault(s, [])
            if any(min(m1, b1) - max(m0, b0) > params.switch_overlap_s for b0, b1 in busy):
                continue
            busy.append((m0, m1))
            strap_of[m] = s
            strap_used[s] = True

    machines = m_idx
    straps_alone = np.flatnonzero(strap_seg & ~strap_used).astype(np.int64)
    primary = np.concatenate((machines, straps_alone))
    strap = np.concatenate((strap_of[machines], np.full(straps_alone.size, -1, dtype=np.int64)))
    participant = np.where(strap >= 0, seg.participant[np.maximum(strap, 0)], seg.participant[primary])
    seg_final = seg.final
    final = seg_final[primary] & np.where(strap >= 0, seg_final[np.maximum(strap, 0)], True)
    order = np.lexsort((seg.device[primary], seg.start_s[primary]))
    return Joined(primary[order], strap[order], participant[order].astype(np.int64), final[order])


def device_ids_of(joined: Joined, seg: Segments, device_names: list[str]) -> list[list[str]]:
    """Sorted device ids of each joined session: its identity (with the start and algorithm version)."""
    out: list[list[str]] = []
    for p, s in zip(joined.primary.tolist(), joined.strap.tolist(), strict=True):
        ids = [device_names[int(seg.device[p])]]
        if s >= 0:
            ids.append(device_names[int(seg.device[s])])
        out.append(sorted(ids))
    return out


# ---------------------------------------------------------------------------------------------- batch


@dataclass(frozen=True, slots=True)
class SessionContext:
    """Per-session context for the batch, ``(n,)`` each (NaN / -1 unknown)."""

    hr_rest_bpm: F64
    hr_max_bpm: F64
    age_y: F64
    sex: NDArray[np.int8]
    weight_kg: F64
    ftp_w: F64


def build_batch(
    samples: DeviceSamples,
    rr: RrIntervals,
    seg: Segments,
    joined: Joined,
    *,
    kind: NDArray[np.int8],
    context: SessionContext,
    params: AssemblyParams = AssemblyParams(),
) -> tuple[SessionBatch, NDArray[np.bool_]]:
    """The :class:`SessionBatch` of the joined sessions and whether each takes its heart rate from a strap.

    Rows: the primary device's samples from its first to its last active sample. A joined session's heart
    rate is the strap's nearest sample within ``strap_hr_tolerance_s`` of each row (NaN if none), its RR
    intervals the strap's within the session; otherwise the primary device's own heart rate and RR.
    ``kind`` is indexed by device code."""
    p, s = joined.primary, joined.strap
    first, last = seg.first_row[p], seg.last_row[p]
    lengths = (last - first + 1) if p.size else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(p.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rows = concat_ranges(first, lengths)
    t = samples.t_s[rows]
    hr = samples.hr_bpm[rows].copy()
    sess_of_row = np.repeat(np.arange(p.size), lengths)

    has_strap = s >= 0
    strap_dev = np.where(has_strap, seg.device[np.maximum(s, 0)], -1) if p.size else np.zeros(0, np.int64)
    row_strap = strap_dev[sess_of_row]
    on = row_strap >= 0
    if bool(on.any()):
        hr[on] = _nearest_value(
            samples.device, samples.t_s, samples.hr_bpm, row_strap[on], t[on], params.strap_hr_tolerance_s
        )

    # RR: the strap's (or the primary device's) intervals with t in [start, end]
    rr_dev = np.where(has_strap, strap_dev, seg.device[p]) if p.size else np.zeros(0, np.int64)
    t0, t1 = seg.start_s[p], seg.end_s[p]
    rr_first = count_le(rr.device, rr.t_s, rr_dev, t0, strict=True) + _group_start(rr.device, rr_dev)
    rr_after = count_le(rr.device, rr.t_s, rr_dev, t1) + _group_start(rr.device, rr_dev)
    rr_len = np.maximum(rr_after - rr_first, 0)
    rr_offsets = np.zeros(p.size + 1, dtype=np.int64)
    np.cumsum(rr_len, out=rr_offsets[1:])
    rr_ms = rr.rr_ms[concat_ranges(rr_first, rr_len)].astype(np.float64)

    batch = SessionBatch(
        offsets=offsets,
        t_s=t.astype(np.float64),
        hr_bpm=hr.astype(np.float64),
        power_w=samples.power_w[rows].astype(np.float64),
        speed_kmh=samples.speed_kmh[rows].astype(np.float64),
        incline_pct=samples.incline_pct[rows].astype(np.float64),
        cadence_rpm=samples.cadence_rpm[rows].astype(np.float64),
        distance_m=samples.distance_m[rows].astype(np.float64),
        energy_kcal=samples.energy_kcal[rows].astype(np.float64),
        rr_offsets=rr_offsets,
        rr_ms=rr_ms,
        kind=kind[seg.device[p]].astype(np.int8) if p.size else np.zeros(0, dtype=np.int8),
        hr_rest_bpm=context.hr_rest_bpm.astype(np.float64),
        hr_max_bpm=context.hr_max_bpm.astype(np.float64),
        age_y=context.age_y.astype(np.float64),
        sex=context.sex.astype(np.int8),
        weight_kg=context.weight_kg.astype(np.float64),
        ftp_w=context.ftp_w.astype(np.float64),
    )
    batch.validate()
    strap_hr = has_strap | (kind[seg.device[p]] == STRAP) if p.size else np.zeros(0, dtype=bool)
    return batch, np.asarray(strap_hr, dtype=bool)


# ---------------------------------------------------------------------------------------------- helpers


def count_le(item_group: I64, item_value: F64, q_group: I64, q_value: F64, *, strict: bool = False) -> I64:
    """For each query: how many items of the same group have value <= q (``strict``: < q). Exact (one
    lexsort of items and queries together), for any number of groups."""
    nq = int(q_value.shape[0])
    if item_value.shape[0] == 0 or nq == 0:
        return np.zeros(nq, dtype=np.int64)
    le = _merged_rank(item_group, item_value, q_group, q_value, strict)
    before_group = np.searchsorted(np.sort(item_group), q_group, side="left")
    return (le - before_group).astype(np.int64)


def last_le(item_group: I64, item_value: F64, q_group: I64, q_value: F64) -> I64:
    """For each query: the index (into the item arrays) of the item of the same group with the largest value
    <= q (ties: the last in input order), or -1."""
    nq = int(q_value.shape[0])
    if item_value.shape[0] == 0 or nq == 0:
        return np.full(nq, -1, dtype=np.int64)
    le = _merged_rank(item_group, item_value, q_group, q_value, False)
    item_order = np.lexsort((item_value, item_group))
    cand = item_order[np.maximum(le - 1, 0)]
    ok = (le > 0) & (item_group[cand] == q_group)
    return np.where(ok, cand, -1).astype(np.int64)


def _merged_rank(item_group: I64, item_value: F64, q_group: I64, q_value: F64, strict: bool) -> I64:
    """Number of items lexicographically <= (or < when strict) each query's (group, value)."""
    ni = int(item_value.shape[0])
    g = np.concatenate((item_group.astype(np.int64), q_group.astype(np.int64)))
    v = np.concatenate((item_value.astype(np.float64), q_value.astype(np.float64)))
    # on ties items sort before queries (counted as <=), or after them when strict
    tie = np.concatenate((np.full(ni, 1 if strict else 0), np.full(q_value.shape[0], 0 if strict else 1)))
    order = np.lexsort((tie, v, g))
    is_item = order < ni
    cum = np.cumsum(is_item)
    pos = np.empty(order.size, dtype=np.int64)
    pos[order] = np.arange(order.size)
    return np.asarray(cum[pos[ni:]], dtype=np.int64)


def _group_start(item_group: I64, q_group: I64) -> I64:
    """Index of the first item of each query's group in the group-sorted item arrays."""
    return np.searchsorted(item_group, q_group, side="left").astype(np.int64)


def concat_ranges(first: I64, lengths: I64) -> I64:
    """Concatenated ``arange(first[i], first[i] + lengths[i])`` without a Python loop."""
    total = int(lengths.sum()) if lengths.size else 0
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.repeat(first - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return (starts + np.arange(total)).astype(np.int64)


def _nearest_value(device: I64, t_s: F64, values: F64, q_device: I64, q_t: F64, tolerance_s: float) -> F64:
    """Value of the sample of ``q_device`` nearest to ``q_t`` within the tolerance (NaN if none); the
    samples are sorted by (device, t)."""
    before = last_le(device, t_s, q_device, q_t)
    # samples are sorted by (device, t), so the item index is the row and the next row is the next sample
    after = np.where(before >= 0, before + 1, _group_start(device, q_device))
    after_ok = (after < device.shape[0]) & (device[np.minimum(after, device.shape[0] - 1)] == q_device)
    d_before = np.where(before >= 0, q_t - t_s[np.maximum(before, 0)], np.inf)
    d_after = np.where(after_ok, t_s[np.minimum(after, device.shape[0] - 1)] - q_t, np.inf)
    pick = np.where(d_after < d_before, after, before)
    best = np.minimum(d_before, d_after)
    out = np.where(best <= tolerance_s, values[np.clip(pick, 0, device.shape[0] - 1)], np.nan)
    return np.asarray(out, dtype=np.float64)


def _overlapping_pairs(seg: Segments, m_idx: I64, s_idx: I64, site: I64) -> tuple[I64, I64]:
    """(machine, strap) segment index pairs of the same site whose intervals overlap (> 0 s)."""
    if m_idx.size == 0 or s_idx.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    m_site = site[seg.device[m_idx]]
    order = np.lexsort((seg.start_s[m_idx], m_site))
    m_sorted = m_idx[order]
    ms, mstart = m_site[order], seg.start_s[m_sorted]
    longest = float(np.max(seg.end_s[m_idx] - seg.start_s[m_idx]))
    s_site = site[seg.device[s_idx]]
    # machine segments of the strap's site that start in [strap start - longest machine, strap end)
    lo = count_le(ms, mstart, s_site, seg.start_s[s_idx] - longest, strict=True)
    hi = count_le(ms, mstart, s_site, seg.end_s[s_idx], strict=True)
    base = np.searchsorted(ms, s_site, side="left")
    n = np.maximum(hi - lo, 0)
    cand = concat_ranges((base + lo).astype(np.int64), n.astype(np.int64))
    pm = m_sorted[cand]
    ps = np.repeat(s_idx, n)
    ov = np.minimum(seg.end_s[pm], seg.end_s[ps]) - np.maximum(seg.start_s[pm], seg.start_s[ps])
    keep = ov > 0
    return pm[keep].astype(np.int64), ps[keep].astype(np.int64)


def _empty_segments() -> Segments:
    zi = np.zeros(0, dtype=np.int64)
    zf = np.zeros(0)
    zb = np.zeros(0, dtype=bool)
    return Segments(zi, zi, zi, zf, zf, zi, zi, np.zeros(0, dtype=np.int8), zb, zb, zb, zb)
