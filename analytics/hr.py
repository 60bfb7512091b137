"""Heart-rate metrics per session: HRmax estimates, zones, TRIMP, effort points, MVPA, HR recovery.

All sums are time-weighted with the capped weights of :mod:`analytics.quality` (``w_k`` seconds per sample,
gaps count at most 5 s) and use only *valid* heart rates (finite, 30–240 bpm). Units: bpm, seconds,
minutes where the name says so.

HRmax (bpm) — a measured value (``SessionBatch.hr_max_bpm``) always wins; otherwise HUNT (Nes et al. 2013):
    ``211 − 0.64·age``. Also available: Tanaka 2001 ``208 − 0.7·age``, Fox ``220 − age``,
    Gulati 2010 (women) ``206 − 0.88·age``.
%HRmax = ``100·HR/HRmax``;  %HRR (Karvonen 1957) = ``100·(HR − HRrest)/(HRmax − HRrest)``.
    Every band is lower-inclusive ``[lo, hi)``. Edges are turned into per-session heart-rate thresholds
    (``lo/100·HRmax``, or ``HRrest + lo/100·(HRmax − HRrest)``) and compared with a tolerance of
    ``EDGE_TOLERANCE_BPM`` (1e-9 bpm), so a heart rate exactly on an edge (114 bpm of HRmax 190 = 60 %)
    falls into the upper zone despite floating-point noise in the threshold.
5-zone model (%HRmax): Z1 [50, 60), Z2 [60, 70), Z3 [70, 80), Z4 [80, 90), Z5 [90, ∞) → ``zone5_s (n, 5)``.
    Below 50 % counts in no zone.
ACSM bands (Garber et al. 2011, Table 4): by %HRR light [30, 40), moderate [40, 60), vigorous [60, 90),
    near-maximal [90, ∞) → ``acsm_band_s (n, 4)``. When HRrest is unknown the same table's %HRmax columns
    are used instead: light [57, 64), moderate [64, 77), vigorous [77, 96), near-maximal [96, ∞);
    ``intensity_basis`` says which (0 = %HRR, 1 = %HRmax, NaN = no HRmax).
moderate_min = minutes in the moderate band; vigorous_min = minutes vigorous or near-maximal;
    mvpa_min = moderate_min + vigorous_min (WHO 2020 moderate-to-vigorous physical activity).
Banister TRIMP (Banister 1991; Morton et al. 1990): ``Σ (w_k/60) · x_k · a · e^(b·x_k)`` with
    ``x = %HRR/100`` clipped to [0, 1] (below rest is no load; above HRmax counts as HRmax),
    men a = 0.64, b = 1.92; women a = 0.86, b = 1.67. NaN when sex or HRrest is unknown.
    With a constant heart rate this equals the session form ``minutes · x · a · e^(b·x)``.
Edwards TRIMP (Edwards 1993): ``Σ_z minutes in Z_z · z`` over the 5-zone model.
Effort points (public descriptions of Myzone MEPs): points per minute by %HRmax zone
    [50, 60) 1, [60, 70) 2, [70, 80) 3, [80, 90) 4, [90, ∞) 4; fractional minutes count pro rata.
min_ge_84pct_hrmax: minutes with HR ≥ 84 % HRmax (the public "splat point" threshold).
HR recovery (Cole et al. 1999): ``HRR60 = HR(t_end) − HR(t_end + 60 s)``, ``HRR120`` likewise with 120 s.
    End of exercise ``t_end`` = time of the session's last sample with work (power > 0 W, speed > 0 km/h or
    cadence > 0 rpm) that is followed by at least one sample without work. Sessions without any work
    channel (a strap alone) have no defined end of exercise: HRR is NaN there. ``HR(τ)`` = the last valid
    heart rate at or before ``τ``, at most ``HR_LOOKUP_TOLERANCE_S`` (2 s) old; NaN otherwise (e.g. the
    recording stopped before ``t_end + 60``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from analytics.batch import SEX_FEMALE, SEX_MALE, segment_max, segment_searchsorted, segment_sum
from analytics.errors import MetricParameterError

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

HrMaxFormula = Literal["hunt", "tanaka", "fox", "gulati"]

ZONE5_EDGES_PCT_HRMAX: Final[tuple[float, ...]] = (50.0, 60.0, 70.0, 80.0, 90.0)
ACSM_EDGES_PCT_HRR: Final[tuple[float, ...]] = (30.0, 40.0, 60.0, 90.0)
ACSM_EDGES_PCT_HRMAX: Final[tuple[float, ...]] = (57.0, 64.0, 77.0, 96.0)
EDWARDS_WEIGHTS: Final[tuple[float, ...]] = (1.0, 2.0, 3.0, 4.0, 5.0)
EFFORT_POINTS_PER_MIN: Final[tuple[float, ...]] = (1.0, 2.0, 3.0, 4.0, 4.0)
SPLAT_PCT_HRMAX: Final[float] = 84.0
BANISTER_MALE: Final[tuple[float, float]] = (0.64, 1.92)
BANISTER_FEMALE: Final[tuple[float, float]] = (0.86, 1.67)
HR_LOOKUP_TOLERANCE_S: Final[float] = 2.0
_LOOKBACK_ROWS: Final[int] = 8
EDGE_TOLERANCE_BPM: Final[float] = 1e-9


def hrmax_estimate(age_y: F64, sex: NDArray[np.int8] | None = None, formula: HrMaxFormula = "hunt") -> F64:
    """Age-predicted HRmax in bpm (NaN where age is unknown; Gulati is for women only, NaN for others)."""
    age = np.asarray(age_y, dtype=np.float64)
    if formula == "hunt":
        return 211.0 - 0.64 * age
    if formula == "tanaka":
        return 208.0 - 0.7 * age
    if formula == "fox":
        return 220.0 - age
    if formula == "gulati":
        estimate = 206.0 - 0.88 * age
        if sex is None:
            return estimate
        return np.where(sex == SEX_FEMALE, estimate, np.nan)
    raise MetricParameterError("formula", formula, "expected hunt, tanaka, fox or gulati")


def effective_hr_max(hr_max_bpm: F64, age_y: F64) -> F64:
    """Measured HRmax where known, else the HUNT estimate from age, else NaN."""
    return np.where(np.isfinite(hr_max_bpm), hr_max_bpm, hrmax_estimate(age_y))


def thresholds_bpm(edges_pct: tuple[float, ...], hr_max_bpm: F64, hr_rest_bpm: F64 | None = None) -> F64:
    """``(n, k)`` heart rates of the band edges: ``e/100·HRmax``, or with ``hr_rest_bpm`` the Karvonen
    ``HRrest + e/100·(HRmax − HRrest)``, lowered by :data:`EDGE_TOLERANCE_BPM`; NaN where undefined."""
    e = np.asarray(edges_pct, dtype=np.float64)[None, :] / 100.0
    mx = hr_max_bpm[:, None]
    if hr_rest_bpm is None:
        thr = e * mx
    else:
        rest = hr_rest_bpm[:, None]
        thr = rest + e * (mx - rest)
    return thr - EDGE_TOLERANCE_BPM


def band_index(hr_bpm: F64, thresholds: F64, lengths: I64) -> NDArray[np.int8]:
    """Lower-inclusive band of every sample: ``i`` where ``thr[i] <= hr < thr[i+1]`` (last band open), ``-1``
    below the first threshold or for NaN (``thresholds`` is ``(n, k)`` per session)."""
    band = np.full(hr_bpm.shape[0], -1, dtype=np.int8)
    for j in range(thresholds.shape[1]):
        band += hr_bpm >= np.repeat(thresholds[:, j], lengths)
    return band


def band_seconds(band: NDArray[np.int8], weights: F64, ids: NDArray[np.intp], n: int, k: int) -> F64:
    """``(n, k)`` seconds per session and band (``band == -1`` rows count nowhere)."""
    slots = ids * (k + 1)
    slots += band
    slots += 1
    counts = np.bincount(slots, weights=weights, minlength=n * (k + 1)).reshape(n, k + 1)
    return np.ascontiguousarray(counts[:, 1:], dtype=np.float64)


def banister_weights(sex: NDArray[np.int8]) -> tuple[F64, F64]:
    """Per-session Banister constants (a, b); NaN for unknown sex."""
    a = np.where(sex == SEX_MALE, BANISTER_MALE[0], np.where(sex == SEX_FEMALE, BANISTER_FEMALE[0], np.nan))
    b = np.where(sex == SEX_MALE, BANISTER_MALE[1], np.where(sex == SEX_FEMALE, BANISTER_FEMALE[1], np.nan))
    return a, b


def exercise_end(
    t_s: F64, power_w: F64, speed_kmh: F64, cadence_rpm: F64, offsets: I64
) -> tuple[F64, NDArray[np.bool_]]:
    """(``t_end`` per session, whether the session has any work channel); see the module docstring."""
    n = offsets.shape[0] - 1
    work = (power_w > 0) | (speed_kmh > 0) | (cadence_rpm > 0)
    channel = np.isfinite(power_w) | np.isfinite(speed_kmh) | np.isfinite(cadence_rpm)
    has_channel = segment_max(np.where(channel, 1.0, np.nan), offsets) == 1.0
    rows = np.arange(t_s.shape[0], dtype=np.float64)
    last_work = segment_max(np.where(work, rows, np.nan), offsets)
    last_row = offsets[1:] - 1
    ok = np.isfinite(last_work) & (last_work < last_row)
    t_end = np.full(n, np.nan)
    t_end[ok] = t_s[last_work[ok].astype(np.int64)]
    return t_end, has_channel


def hr_at(
    t_s: F64,
    hr_bpm: F64,
    hr_ok: NDArray[np.bool_],
    offsets: I64,
    when_s: F64,
    tolerance_s: float = HR_LOOKUP_TOLERANCE_S,
) -> F64:
    """Last valid heart rate at or before ``when_s[i]`` in session ``i``, at most ``tolerance_s`` old."""
    n = offsets.shape[0] - 1
    out = np.full(n, np.nan)
    sessions = np.flatnonzero(np.isfinite(when_s))
    if sessions.size == 0:
        return out
    when = when_s[sessions]
    row = segment_searchsorted(t_s, offsets, sessions, when)
    start = offsets[sessions]
    found = np.full(sessions.shape[0], np.nan)
    for back in range(_LOOKBACK_ROWS):
        cand = row - back
        inside = (row >= 0) & (cand >= start)
        cand_c = np.where(inside, cand, 0)
        good = inside & np.isnan(found) & hr_ok[cand_c] & (t_s[cand_c] >= when - tolerance_s)
        found = np.where(good, hr_bpm[cand_c], found)
    out[sessions] = found
    return out


@dataclass(frozen=True)
class HrMetrics:
    """Heart-rate metrics, ``(n,)`` float64 unless noted (see the module docstring)."""

    hr_avg_bpm: F64
    hr_max_bpm: F64
    hr_max_used_bpm: F64
    intensity_basis: F64
    zone5_s: F64  # (n, 5)
    acsm_band_s: F64  # (n, 4)
    trimp_banister: F64
    trimp_edwards: F64
    effort_points: F64
    min_ge_84pct_hrmax: F64
    moderate_min: F64
    vigorous_min: F64
    mvpa_min: F64
    hrr60_bpm: F64
    hrr120_bpm: F64


def hr_metrics(
    t_s: F64,
    hr_bpm: F64,
    offsets: I64,
    ids: NDArray[np.intp],
    weights: F64,
    hr_ok: NDArray[np.bool_],
    hr_rest_bpm: F64,
    hr_max_bpm: F64,
    sex: NDArray[np.int8],
    t_end_s: F64,
) -> HrMetrics:
    """All heart-rate metrics of every session.

    ``hr_max_bpm`` is the HRmax to use per session (measured or estimated, see :func:`effective_hr_max`),
    ``ids`` the session of every row (:func:`analytics.batch.segment_ids`), ``weights`` the capped time
    weights, ``hr_ok`` the valid-HR mask and ``t_end_s`` the end of exercise (:func:`exercise_end`).
    """
    n = offsets.shape[0] - 1
    lengths = np.diff(offsets)
    w_hr = np.where(hr_ok, weights, 0.0)
    hr0 = np.where(hr_ok, hr_bpm, 0.0)
    hr_time_s = segment_sum(w_hr, offsets)
    with np.errstate(invalid="ignore", divide="ignore"):
        hr_avg = np.where(hr_time_s > 0, segment_sum(w_hr * hr0, offsets) / hr_time_s, np.nan)
    hr_max_obs = segment_max(np.where(hr_ok, hr_bpm, np.nan), offsets)

    hr = np.where(hr_ok, hr_bpm, np.nan)
    hrmax_s = np.where(hr_max_bpm > 0, hr_max_bpm, np.nan)
    rest_ok = np.isfinite(hr_rest_bpm) & (hr_rest_bpm > 0) & (hr_rest_bpm < hrmax_s)
    basis = np.where(np.isfinite(hrmax_s), np.where(rest_ok, 0.0, 1.0), np.nan)
    rest = np.where(rest_ok, hr_rest_bpm, np.nan)

    zone = band_index(hr, thresholds_bpm(ZONE5_EDGES_PCT_HRMAX, hrmax_s), lengths)
    zone5_s = band_seconds(zone, weights, ids, n, 5)
    acsm_thr = np.where(
        rest_ok[:, None],
        thresholds_bpm(ACSM_EDGES_PCT_HRR, hrmax_s, np.where(rest_ok, rest, 0.0)),
        thresholds_bpm(ACSM_EDGES_PCT_HRMAX, hrmax_s),
    )
    acsm_band_s = band_seconds(band_index(hr, acsm_thr, lengths), weights, ids, n, 4)
    no_hrmax = ~np.isfinite(hrmax_s) | (hr_time_s <= 0)  # no HRmax, or no valid heart rate at all
    zone5_s[no_hrmax] = np.nan
    acsm_band_s[no_hrmax] = np.nan

    zone_min = zone5_s / 60.0
    trimp_edwards = zone_min @ np.asarray(EDWARDS_WEIGHTS)
    effort_points = zone_min @ np.asarray(EFFORT_POINTS_PER_MIN)
    splat_thr = np.repeat(thresholds_bpm((SPLAT_PCT_HRMAX,), hrmax_s)[:, 0], lengths)
    splat = segment_sum(np.where(hr >= splat_thr, weights, 0.0), offsets) / 60.0
    splat[no_hrmax] = np.nan
    moderate = acsm_band_s[:, 1] / 60.0
    vigorous = (acsm_band_s[:, 2] + acsm_band_s[:, 3]) / 60.0

    a, b = banister_weights(sex)
    banister_ok = rest_ok & np.isfinite(a) & ~no_hrmax
    with np.errstate(invalid="ignore", divide="ignore"):
        inv_range = np.where(banister_ok, 1.0 / (hrmax_s - rest), np.nan)
    x = hr - np.repeat(np.where(banister_ok, rest, np.nan), lengths)
    x *= np.repeat(inv_range, lengths)
    np.clip(x, 0.0, 1.0, out=x)
    term = np.exp(np.repeat(b, lengths) * x)
    term *= x
    term *= weights
    term = np.where(np.isfinite(term), term, 0.0)
    trimp_banister = segment_sum(term, offsets) * (a / 60.0)
    trimp_banister[~banister_ok] = np.nan

    hr_end = hr_at(t_s, hr_bpm, hr_ok, offsets, t_end_s)
    hrr60 = hr_end - hr_at(t_s, hr_bpm, hr_ok, offsets, t_end_s + 60.0)
    hrr120 = hr_end - hr_at(t_s, hr_bpm, hr_ok, offsets, t_end_s + 120.0)

    return HrMetrics(
        hr_avg_bpm=hr_avg,
        hr_max_bpm=hr_max_obs,
        hr_max_used_bpm=hrmax_s,
        intensity_basis=basis,
        zone5_s=zone5_s,
        acsm_band_s=acsm_band_s,
        trimp_banister=trimp_banister,
        trimp_edwards=trimp_edwards,
        effort_points=effort_points,
        min_ge_84pct_hrmax=splat,
        moderate_min=moderate,
        vigorous_min=vigorous,
        mvpa_min=moderate + vigorous,
        hrr60_bpm=hrr60,
        hrr120_bpm=hrr120,
    )
