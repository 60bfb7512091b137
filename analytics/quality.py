"""Data quality per session, and the time weights every time-weighted metric uses.

Time weights ("gaps never count as effort")
    Sample ``k`` of a session stands for the interval up to the next sample: its weight is
    ``w_k = min(t_{k+1} - t_k, WEIGHT_CAP_S)`` seconds; the last sample of a session gets
    ``min(EXPECTED_INTERVAL_S, WEIGHT_CAP_S)``. A full hour of 1 Hz samples therefore weighs 3,600 s and a
    10-minute hole in the data adds at most ``WEIGHT_CAP_S`` (5 s) to the sample before it. Every
    time-weighted metric (time in zones, TRIMP, energy, MVPA minutes ...) sums these weights, so a gap
    contributes nothing beyond the cap. The cap (5 s) tolerates the occasional lost BLE notification at
    1–4 Hz without treating a dropout as exercise.

Quality figures (per session, :class:`SessionQuality`)
    ``duration_s``          ``t_last - t_first + EXPECTED_INTERVAL_S`` (0 for a session without samples)
    ``recorded_s``          sum of the time weights (time covered by data)
    ``samples_received``    rows in the session
    ``samples_expected``    ``round((t_last - t_first) / EXPECTED_INTERVAL_S) + 1`` at the nominal 1 Hz
    ``received_pct``        ``100 · received / expected`` (NaN without samples)
    ``gap_count``           steps ``Δt > GAP_FACTOR · EXPECTED_INTERVAL_S`` (1.5 s)
    ``gap_s``               missing time in those gaps, ``Σ (Δt - EXPECTED_INTERVAL_S)``
    ``max_gap_s``           longest such step (0 when there is no gap)
    ``hr_coverage``         share of the recorded time with a valid heart rate (NaN without samples)
    ``hr_dropouts``         number of runs of samples without a valid heart rate that start after a valid one
    ``wear_fraction``       ``hr_coverage`` for heart-rate strap sessions (``kind == "hr_strap"``), else NaN

A heart rate is *valid* when finite and within ``[HR_VALID_MIN_BPM, HR_VALID_MAX_BPM]`` = [30, 240] bpm
(the wire contract accepts 20–250; the extremes are kept in storage but not used as physiology).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from analytics.batch import KIND_CODE, segment_count, segment_max, segment_sum

EXPECTED_INTERVAL_S: Final[float] = 1.0
GAP_FACTOR: Final[float] = 1.5
WEIGHT_CAP_S: Final[float] = 5.0
HR_VALID_MIN_BPM: Final[float] = 30.0
HR_VALID_MAX_BPM: Final[float] = 240.0

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


def last_rows(offsets: I64) -> NDArray[np.int64]:
    """Row index of the last sample of every non-empty session (in session order)."""
    ends = offsets[1:]
    return ends[ends > offsets[:-1]] - 1


def sample_steps(t_s: F64, offsets: I64) -> F64:
    """``t_{k+1} - t_k`` for every sample; NaN for the last sample of each session."""
    step = np.empty_like(t_s)
    if t_s.shape[0]:
        np.subtract(t_s[1:], t_s[:-1], out=step[:-1])
        step[last_rows(offsets)] = np.nan
    return step


def time_weights(
    t_s: F64,
    offsets: I64,
    cap_s: float = WEIGHT_CAP_S,
    interval_s: float = EXPECTED_INTERVAL_S,
) -> F64:
    """Seconds each sample stands for: ``min(Δt to the next sample, cap_s)``; the last sample of a session
    ``min(interval_s, cap_s)``."""
    weights = sample_steps(t_s, offsets)
    if weights.shape[0]:
        weights[last_rows(offsets)] = interval_s
        np.minimum(weights, cap_s, out=weights)
    return weights


def valid_hr(hr_bpm: F64) -> NDArray[np.bool_]:
    """``True`` where the heart rate is finite and physiologically plausible (30–240 bpm)."""
    return (hr_bpm >= HR_VALID_MIN_BPM) & (hr_bpm <= HR_VALID_MAX_BPM)


@dataclass(frozen=True)
class SessionQuality:
    """Per-session data-quality figures, each ``(n,)`` float64 (see the module docstring)."""

    duration_s: F64
    recorded_s: F64
    samples_received: F64
    samples_expected: F64
    received_pct: F64
    gap_count: F64
    gap_s: F64
    max_gap_s: F64
    hr_coverage: F64
    hr_dropouts: F64
    wear_fraction: F64


def session_quality(
    t_s: F64,
    hr_bpm: F64,
    offsets: I64,
    kind: NDArray[np.int8],
    weights: F64 | None = None,
    hr_ok: NDArray[np.bool_] | None = None,
) -> SessionQuality:
    """Quality figures of every session. ``weights``/``hr_ok`` may be passed when already computed."""
    n = offsets.shape[0] - 1
    lengths = np.diff(offsets)
    nonempty = lengths > 0
    w = time_weights(t_s, offsets) if weights is None else weights
    ok = valid_hr(hr_bpm) if hr_ok is None else hr_ok

    span = np.zeros(n)
    if t_s.shape[0]:
        first = t_s[offsets[:-1][nonempty]]
        last = t_s[offsets[1:][nonempty] - 1]
        span[nonempty] = last - first
    duration = np.where(nonempty, span + EXPECTED_INTERVAL_S, 0.0)
    expected = np.where(nonempty, np.round(span / EXPECTED_INTERVAL_S) + 1.0, 0.0)
    received = lengths.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        received_pct = np.where(nonempty, 100.0 * received / np.maximum(expected, 1.0), np.nan)

    step = sample_steps(t_s, offsets)
    is_gap = step > GAP_FACTOR * EXPECTED_INTERVAL_S  # NaN (last sample) compares False
    gap_count = segment_count(is_gap, offsets).astype(np.float64)
    gap_s = segment_sum(np.where(is_gap, step - EXPECTED_INTERVAL_S, 0.0), offsets)
    max_gap = segment_max(np.where(is_gap, step, np.nan), offsets)
    max_gap = np.where(gap_count > 0, max_gap, 0.0)

    recorded = segment_sum(w, offsets)
    hr_time = segment_sum(np.where(ok, w, 0.0), offsets)
    with np.errstate(invalid="ignore", divide="ignore"):
        coverage = np.where(recorded > 0, hr_time / recorded, np.nan)

    # a dropout starts at a sample without valid HR whose predecessor (same session) had one
    starts = np.zeros(ok.shape[0], dtype=bool)
    if ok.shape[0] > 1:
        starts[1:] = ~ok[1:] & ok[:-1]
        first_rows = offsets[:-1][nonempty]
        starts[first_rows] = False
    dropouts = segment_count(starts, offsets).astype(np.float64)

    wear = np.where(kind == KIND_CODE["hr_strap"], coverage, np.nan)
    return SessionQuality(
        duration_s=duration,
        recorded_s=recorded,
        samples_received=received,
        samples_expected=expected,
        received_pct=received_pct,
        gap_count=gap_count,
        gap_s=gap_s,
        max_gap_s=max_gap,
        hr_coverage=coverage,
        hr_dropouts=dropouts,
        wear_fraction=wear,
    )
