"""Per-participant daily series: load, fitness/fatigue, workload ratios, WHO minutes, PAI, resting-HR and HRV
trends, VO2max. Pure NumPy over 2-D ``(days, participants)`` arrays: every function works on all participants
at once (a loop over days for the recursive filters, never over participants). No I/O.

Day axis. Row ``d`` is one calendar day (the job uses the participant's site-local day); column ``p`` one
participant. ``start[p]`` is the row of participant ``p``'s first day (their first session); outputs before it
are NaN. Load on a day without sessions is 0; a session whose TRIMP is NaN (no heart rate, or unknown
HRrest/sex) adds nothing, as GoldenCheetah skips NaN stress values.

Daily load (arbitrary units): sum of the sessions' Banister TRIMP that day. Weekly load: rolling 7-day sum.

PMC (performance manager chart, GoldenCheetah ``PMCData.cpp``): ``CTL_d = CTL_{d-1} + k·(L_d - CTL_{d-1})``,
``k = 1 - e^(-1/N)``, N = 42 days for CTL (chronic training load, "fitness") and 7 for ATL (acute, "fatigue");
both are 0 on the day before the first day. ``TSB_d = CTL_{d-1} - ATL_{d-1}`` (stress balance shown on the
following day, GoldenCheetah's default), 0 on the first day.

ACWR (acute:chronic workload ratio). EWMA (Williams et al. 2017, Br J Sports Med 51:209): ``E_d = λ·L_d +
(1-λ)·E_{d-1}``, ``λ = 2/(N+1)``, N = 7 (acute) and 28 (chronic), seeded with the first day's load
(``E_start = L_start``); ratio = acute/chronic, NaN while the chronic EWMA is 0. Rolling, coupled: mean load
of the last 7 days / mean load of the last 28 days (the acute week inside the chronic month), NaN until 28
days of history exist.

WHO 2020 guideline: rolling 7-day moderate-equivalent minutes ``Σ moderate + 2·Σ vigorous`` (vigorous
includes near-maximal %HRR minutes) against 150–300 min: status ``below`` (< 150), ``within``
(150 ≤ m ≤ 300), ``above`` (> 300).

PAI (Personal Activity Intelligence; Nes et al. 2017, Am J Med 130:328, supplementary algorithm). What is
implemented is the published four-step algorithm, in the form NTNU's HUNT analyses apply it (open R script
``PAI.R`` in github.com/fridentnu/masterthesis, "based on Nes et al."):

1. activity score per minute at intensity ``x``: ``AS = 1e-5 · a · (e^(b·x) - 1)`` per minute, with ``x``
   the fraction of heart-rate reserve (the script rescales %HRmax f by ``(f - 0.2)/0.8``, i.e. Karvonen with
   HRrest = 0.2·HRmax; vitalab uses the measured or profile HRrest), clipped to [0, 1]; men a = 10.1817,
   b = 5.7808; women a = 9.8556, b = 5.0167. Summed over the samples' capped time weights (gaps add nothing).
2. ``AS_7d`` = sum over the rolling 7 days (points expire after 7 days).
3. health-predictive score ``HPS = c0 + c1·(1 - e^(-AS_7d))``; men c0 = 41.9374, c1 = 9.8382; women
   c0 = 34.2325, c1 = 9.7581.
4. ``PAI = 100·(HPS - c0)/(c100 - c0)`` with c100 = 44 (men), 35.4 (women): 100 PAI is the weekly target.

The commercial PAI apps add undisclosed adaptations (e.g. to previous scores) and will differ; unknown sex
gives NaN.

Resting heart rate. There is no supine morning measurement in a gym, so vitalab uses a proxy:
:func:`lowest_rolling_hr` per session = the lowest median of five consecutive 1-minute medians of valid heart
rate (each minute needs ``min_samples`` valid samples), and per day the lowest of the day's sessions. It is
an upper bound of the true resting HR (sessions contain exercise). Trends: mean of the available daily values
over the last 7 and 28 days.

HRV trend: daily mean of ln(session RMSSD in ms), and its rolling 7-day mean when at least 3 of the 7 days
have a value (Plews et al. 2012). Exercise RMSSD is far lower than resting RMSSD; compare a participant with
themself only.

VO2max (Uth et al. 2004): ``15.3 · HRmax/HRrest`` ml/kg/min. HRmax: measured, else HUNT 211 - 0.64·age;
HRrest: the profile value when set, else the 28-day resting-HR proxy (which makes the estimate low).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from analytics.batch import SEX_FEMALE, SEX_MALE, segment_min
from analytics.errors import SessionInputError

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

CTL_DAYS: Final[int] = 42
ATL_DAYS: Final[int] = 7
ACWR_ACUTE_DAYS: Final[int] = 7
ACWR_CHRONIC_DAYS: Final[int] = 28
WHO_LOW_MIN: Final[float] = 150.0
WHO_HIGH_MIN: Final[float] = 300.0
WHO_STATUS: Final[tuple[str, ...]] = ("below", "within", "above")
PAI_WINDOW_DAYS: Final[int] = 7
HRV_MIN_DAYS: Final[int] = 3
UTH_FACTOR: Final[float] = 15.3

# PAI coefficients by sex code: (a, b, c0, c1, c100)
PAI_COEFFICIENTS: Final[dict[int, tuple[float, float, float, float, float]]] = {
    SEX_MALE: (10.1817, 5.7808, 41.9374, 9.8382, 44.0),
    SEX_FEMALE: (9.8556, 5.0167, 34.2325, 9.7581, 35.4),
}


def _check_grid(name: str, x: F64) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise SessionInputError(name, "must be a 2-D (days, participants) array")


def _before_start(shape: tuple[int, int], start: I64) -> NDArray[np.bool_]:
    days = np.arange(shape[0])[:, None]
    return np.asarray(days < start[None, :], dtype=bool)


def _start_of(load: F64, start: I64 | None) -> I64:
    _check_grid("load", load)
    if start is None:
        return np.zeros(load.shape[1], dtype=np.int64)
    if start.shape != (load.shape[1],):
        raise SessionInputError("start", f"must have one entry per participant ({load.shape[1]})")
    return start.astype(np.int64)


def _clean_load(load: F64) -> F64:
    return np.where(np.isfinite(load), load, 0.0)


# ---------------------------------------------------------------------------------------------- load


@dataclass(frozen=True, slots=True)
class Pmc:
    ctl: F64
    atl: F64
    tsb: F64


def ewm_from_zero(load: F64, k: float, start: I64 | None = None) -> F64:
    """``y_d = y_{d-1} + k·(x_d - y_{d-1})`` with ``y = 0`` the day before ``start``; NaN before it."""
    _check_grid("load", load)
    if not 0 < k <= 1:
        raise SessionInputError("k", f"must be in (0, 1], got {k}")
    st = _start_of(load, start)
    x = _clean_load(load)
    out = np.empty_like(x, dtype=np.float64)
    prev = np.zeros(x.shape[1])
    for d in range(x.shape[0]):
        prev = np.where(d >= st, prev + k * (x[d] - prev), 0.0)
        out[d] = prev
    out[_before_start(x.shape, st)] = np.nan
    return out


def pmc(load: F64, start: I64 | None = None, ctl_days: int = CTL_DAYS, atl_days: int = ATL_DAYS) -> Pmc:
    """CTL, ATL and TSB (GoldenCheetah convention, see the module docstring)."""
    if ctl_days < 1 or atl_days < 1:
        raise SessionInputError("ctl_days/atl_days", "time constants must be >= 1 day")
    st = _start_of(load, start)
    ctl = ewm_from_zero(load, 1.0 - float(np.exp(-1.0 / ctl_days)), st)
    atl = ewm_from_zero(load, 1.0 - float(np.exp(-1.0 / atl_days)), st)
    tsb = np.full_like(ctl, np.nan)
    if ctl.shape[0]:
        tsb[1:] = ctl[:-1] - atl[:-1]
        days = np.arange(ctl.shape[0])[:, None]
        tsb = np.where(days == st[None, :], 0.0, tsb)
        tsb[_before_start(ctl.shape, st)] = np.nan
    return Pmc(ctl, atl, tsb)


def ewma_seeded(load: F64, n_days: int, start: I64 | None = None) -> F64:
    """Williams 2017 EWMA, ``λ = 2/(N+1)``, seeded with the load of the first day; NaN before it."""
    _check_grid("load", load)
    if n_days < 1:
        raise SessionInputError("n_days", f"must be >= 1, got {n_days}")
    lam = 2.0 / (n_days + 1)
    st = _start_of(load, start)
    x = _clean_load(load)
    out = np.empty_like(x, dtype=np.float64)
    prev = np.zeros(x.shape[1])
    for d in range(x.shape[0]):
        prev = np.where(d == st, x[d], np.where(d > st, lam * x[d] + (1 - lam) * prev, 0.0))
        out[d] = prev
    out[_before_start(x.shape, st)] = np.nan
    return out


def acwr_ewma(
    load: F64,
    start: I64 | None = None,
    acute_days: int = ACWR_ACUTE_DAYS,
    chronic_days: int = ACWR_CHRONIC_DAYS,
) -> tuple[F64, F64, F64]:
    """(acute EWMA, chronic EWMA, acute/chronic); the ratio is NaN where the chronic EWMA is 0."""
    acute = ewma_seeded(load, acute_days, start)
    chronic = ewma_seeded(load, chronic_days, start)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(chronic > 0, acute / np.where(chronic > 0, chronic, 1.0), np.nan)
    return acute, chronic, ratio


def rolling_sum(x: F64, n_days: int, start: I64 | None = None) -> F64:
    """Sum over the last ``n_days`` rows including today; NaN counts as 0, days before ``start`` as 0; the
    result is NaN before ``start``."""
    _check_grid("x", x)
    if n_days < 1:
        raise SessionInputError("n_days", f"must be >= 1, got {n_days}")
    st = _start_of(x, start)
    v = np.where(_before_start(x.shape, st), 0.0, _clean_load(x))
    c = np.concatenate((np.zeros((1, v.shape[1])), np.cumsum(v, axis=0)), axis=0)
    d = np.arange(v.shape[0])
    out = c[d + 1] - c[np.maximum(d + 1 - n_days, 0)]
    out[_before_start(v.shape, st)] = np.nan
    return np.asarray(out, dtype=np.float64)


def acwr_rolling(
    load: F64,
    start: I64 | None = None,
    acute_days: int = ACWR_ACUTE_DAYS,
    chronic_days: int = ACWR_CHRONIC_DAYS,
) -> F64:
    """Coupled rolling ratio: mean of the last ``acute_days`` / mean of the last ``chronic_days`` (including
    the acute days); NaN until ``chronic_days`` days of history exist or while the chronic mean is 0."""
    st = _start_of(load, start)
    acute = rolling_sum(load, acute_days, st) / acute_days
    chronic = rolling_sum(load, chronic_days, st) / chronic_days
    days = np.arange(load.shape[0])[:, None]
    enough = days >= st[None, :] + chronic_days - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(enough & (chronic > 0), acute / np.where(chronic > 0, chronic, 1.0), np.nan)
    return np.asarray(ratio, dtype=np.float64)


# ---------------------------------------------------------------------------------------------- WHO, PAI


def who_weekly(
    moderate_min: F64, vigorous_min: F64, start: I64 | None = None
) -> tuple[F64, NDArray[np.int8]]:
    """Rolling 7-day moderate-equivalent minutes and status codes (index into :data:`WHO_STATUS`)."""
    minutes = rolling_sum(_clean_load(moderate_min) + 2.0 * _clean_load(vigorous_min), 7, start)
    status = np.where(minutes < WHO_LOW_MIN, 0, np.where(minutes <= WHO_HIGH_MIN, 1, 2)).astype(np.int8)
    return minutes, status


def pai_activity_rate(hrr_fraction: F64, sex: NDArray[np.int8]) -> F64:
    """PAI step 1 per minute at ``x`` = fraction of heart-rate reserve (clipped to [0, 1]); NaN for an unknown
    sex or ``x``. ``hrr_fraction`` and ``sex`` broadcast together."""
    x = np.clip(hrr_fraction, 0.0, 1.0)
    a = np.full(np.shape(sex), np.nan)
    b = np.full(np.shape(sex), np.nan)
    for code, (ca, cb, *_rest) in PAI_COEFFICIENTS.items():
        a = np.where(sex == code, ca, a)
        b = np.where(sex == code, cb, b)
    return np.asarray(1e-5 * a * np.expm1(b * x), dtype=np.float64)


def pai_session_score(
    hr_bpm: F64, weight_s: F64, offsets: I64, hr_rest_bpm: F64, hr_max_bpm: F64, sex: NDArray[np.int8]
) -> F64:
    """PAI activity score of each session (CSR ``offsets``): ``Σ rate(x_k) · w_k/60`` over samples with a
    valid heart rate (30–240 bpm); ``w_k`` are the capped time weights (seconds). NaN when the session's sex,
    HRrest or HRmax is unknown; 0 without valid heart rate."""
    n = offsets.shape[0] - 1
    sess = np.repeat(np.arange(n), np.diff(offsets))
    reserve = hr_max_bpm - hr_rest_bpm
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (hr_bpm - hr_rest_bpm[sess]) / reserve[sess]
    valid = (hr_bpm >= 30) & (hr_bpm <= 240) & np.isfinite(x)
    rate = pai_activity_rate(np.where(valid, x, 0.0), sex[sess])
    contrib = np.where(valid, rate * weight_s / 60.0, 0.0)
    total = np.bincount(sess, weights=np.nan_to_num(contrib, nan=0.0), minlength=n) if n else np.zeros(0)
    known = np.isin(sex, list(PAI_COEFFICIENTS)) & (reserve > 0)
    return np.where(known, total, np.nan).astype(np.float64)


def pai_score(as_7d: F64, sex: NDArray[np.int8]) -> F64:
    """PAI steps 3–4 from the 7-day activity score; ``sex`` broadcasts (e.g. shape ``(participants,)``)."""
    c0 = np.full(np.shape(sex), np.nan)
    c1 = np.full(np.shape(sex), np.nan)
    c100 = np.full(np.shape(sex), np.nan)
    for code, (_a, _b, k0, k1, k100) in PAI_COEFFICIENTS.items():
        c0 = np.where(sex == code, k0, c0)
        c1 = np.where(sex == code, k1, c1)
        c100 = np.where(sex == code, k100, c100)
    hps = c0 + c1 * -np.expm1(-np.asarray(as_7d, dtype=np.float64))
    return np.asarray(100.0 * (hps - c0) / (c100 - c0), dtype=np.float64)


# ---------------------------------------------------------------------------------------------- trends


def rolling_nanmean(x: F64, n_days: int, min_count: int = 1) -> F64:
    """Mean of the finite values among the last ``n_days`` rows; NaN with fewer than ``min_count`` of them."""
    _check_grid("x", x)
    if n_days < 1 or min_count < 1:
        raise SessionInputError("n_days/min_count", "must be >= 1")
    finite = np.isfinite(x)
    v = np.where(finite, x, 0.0)
    cs = np.concatenate((np.zeros((1, x.shape[1])), np.cumsum(v, axis=0)), axis=0)
    cc = np.concatenate((np.zeros((1, x.shape[1])), np.cumsum(finite, axis=0)), axis=0)
    d = np.arange(x.shape[0])
    lo = np.maximum(d + 1 - n_days, 0)
    s, c = cs[d + 1] - cs[lo], cc[d + 1] - cc[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.where(c >= min_count, s / np.maximum(c, 1), np.nan), dtype=np.float64)


def lowest_rolling_hr(
    t_s: F64, hr_bpm: F64, offsets: I64, *, window_min: int = 5, min_samples: int = 30
) -> F64:
    """Per session: the lowest median of ``window_min`` consecutive 1-minute medians of valid HR (30–240 bpm),
    minutes counted from the session's first sample, each needing ``min_samples`` valid samples; NaN when no
    full window exists. Vectorised: minute medians by one lexsort, windows by a sliding view."""
    if window_min < 1 or min_samples < 1:
        raise SessionInputError("window_min/min_samples", "must be >= 1")
    n = offsets.shape[0] - 1
    out = np.full(n, np.nan)
    if n == 0 or t_s.shape[0] == 0:
        return out
    lengths = np.diff(offsets)
    sess = np.repeat(np.arange(n), lengths)
    first_t = np.where(lengths > 0, t_s[np.minimum(offsets[:-1], t_s.shape[0] - 1)], 0.0)
    last_t = np.where(lengths > 0, t_s[np.maximum(offsets[1:] - 1, 0)], 0.0)
    n_bins = np.where(lengths > 0, np.floor((last_t - first_t) / 60.0).astype(np.int64) + 1, 0)
    bin_off = np.concatenate(([0], np.cumsum(n_bins)))
    row_bin = bin_off[sess] + np.floor((t_s - first_t[sess]) / 60.0).astype(np.int64)
    valid = (hr_bpm >= 30) & (hr_bpm <= 240)
    b, h = row_bin[valid], hr_bpm[valid]
    total = int(bin_off[-1])
    order = np.lexsort((h, b))
    b, h = b[order], h[order]
    count = np.bincount(b, minlength=total)
    first = np.concatenate(([0], np.cumsum(count)[:-1]))
    lo_i = first + (count - 1) // 2
    hi_i = first + count // 2
    med = np.full(total, np.nan)
    ok = count >= min_samples
    med[ok] = 0.5 * (h[lo_i[ok]] + h[hi_i[ok]])
    if total < window_min:
        return out
    win = np.lib.stride_tricks.sliding_window_view(med, window_min)  # (total - w + 1, w)
    start_bin = np.arange(win.shape[0])
    bin_sess = np.repeat(np.arange(n), n_bins)
    inside = start_bin + window_min - 1 < bin_off[bin_sess[start_bin] + 1]
    full = inside & np.all(np.isfinite(win), axis=1)
    wmed = np.full(total, np.nan)
    wmed[: win.shape[0]] = np.where(full, np.median(np.where(np.isfinite(win), win, 0.0), axis=1), np.nan)
    return segment_min(wmed, bin_off.astype(np.int64))


def vo2max_uth(hr_max_bpm: F64, hr_rest_bpm: F64) -> F64:
    """Uth–Sørensen 2004: ``15.3 · HRmax/HRrest`` ml/kg/min; NaN unless both are positive."""
    with np.errstate(invalid="ignore", divide="ignore"):
        v = UTH_FACTOR * hr_max_bpm / hr_rest_bpm
    return np.asarray(np.where((hr_max_bpm > 0) & (hr_rest_bpm > 0), v, np.nan), dtype=np.float64)


def hunt_hr_max(age_y: F64) -> F64:
    """HUNT (Nes et al. 2013): ``211 - 0.64·age`` bpm."""
    return np.asarray(211.0 - 0.64 * age_y, dtype=np.float64)


# ---------------------------------------------------------------------------------------------- grid


def to_grid(column: I64, row: I64, values: F64, shape: tuple[int, int], how: str = "sum") -> F64:
    """Scatter per-record values into a ``(days, participants)`` grid: ``sum`` (empty cells 0), ``min`` or
    ``mean`` (empty cells NaN); NaN values are ignored."""
    if how not in ("sum", "min", "mean"):
        raise SessionInputError("how", f"must be sum, min or mean, got {how!r}")
    ok = np.isfinite(values)
    r, c, v = row[ok], column[ok], values[ok]
    if how == "sum":
        out = np.zeros(shape)
        np.add.at(out, (r, c), v)
        return out
    if how == "min":
        out = np.full(shape, np.inf)
        np.minimum.at(out, (r, c), v)
        return np.where(np.isinf(out), np.nan, out)
    total = np.zeros(shape)
    cnt = np.zeros(shape)
    np.add.at(total, (r, c), v)
    np.add.at(cnt, (r, c), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, total / np.maximum(cnt, 1.0), np.nan)


@dataclass(frozen=True, slots=True)
class DailyInputs:
    """Per participant and day, ``(days, participants)``; NaN where no session has the value."""

    sessions: F64
    load: F64
    moderate_min: F64
    vigorous_min: F64
    pai_as: F64
    rhr_bpm: F64
    rmssd_ms: F64
    start: I64
    sex: NDArray[np.int8]  # (participants,)
    hr_max_bpm: F64  # (participants,) measured or estimated; NaN unknown
    hr_rest_profile_bpm: F64  # (participants,) NaN unknown


@dataclass(frozen=True, slots=True)
class DailySeries:
    load_7d: F64
    ctl: F64
    atl: F64
    tsb: F64
    acwr_ewma: F64
    acwr_rolling: F64
    who_min_7d: F64
    who_status: NDArray[np.int8]
    pai_7d: F64
    rhr_7d_bpm: F64
    rhr_28d_bpm: F64
    ln_rmssd_7d: F64
    vo2max_ml_kg_min: F64


def daily_series(x: DailyInputs) -> DailySeries:
    """Every derived daily series of :class:`DailyInputs` (definitions in the module docstring)."""
    st = x.start
    for name in ("sessions", "moderate_min", "vigorous_min", "pai_as", "rhr_bpm", "rmssd_ms"):
        if getattr(x, name).shape != x.load.shape:
            raise SessionInputError(name, f"shape {getattr(x, name).shape}, expected {x.load.shape}")
    p = pmc(x.load, st)
    _, _, ew = acwr_ewma(x.load, st)
    who, status = who_weekly(x.moderate_min, x.vigorous_min, st)
    as_7d = rolling_sum(x.pai_as, PAI_WINDOW_DAYS, st)
    pai = pai_score(as_7d, x.sex[None, :])
    rhr7 = rolling_nanmean(x.rhr_bpm, 7)
    rhr28 = rolling_nanmean(x.rhr_bpm, 28)
    with np.errstate(invalid="ignore", divide="ignore"):
        ln = np.where(x.rmssd_ms > 0, np.log(np.where(x.rmssd_ms > 0, x.rmssd_ms, 1.0)), np.nan)
    ln7 = rolling_nanmean(ln, 7, HRV_MIN_DAYS)
    hr_rest = np.where(np.isfinite(x.hr_rest_profile_bpm)[None, :], x.hr_rest_profile_bpm[None, :], rhr28)
    vo2 = vo2max_uth(np.broadcast_to(x.hr_max_bpm[None, :], hr_rest.shape), hr_rest)
    before = _before_start(x.load.shape, st)
    for arr in (rhr7, rhr28, ln7, vo2, pai):
        arr[before] = np.nan
    return DailySeries(
        load_7d=rolling_sum(x.load, 7, st),
        ctl=p.ctl,
        atl=p.atl,
        tsb=p.tsb,
        acwr_ewma=ew,
        acwr_rolling=acwr_rolling(x.load, st),
        who_min_7d=who,
        who_status=status,
        pai_7d=pai,
        rhr_7d_bpm=rhr7,
        rhr_28d_bpm=rhr28,
        ln_rmssd_7d=ln7,
        vo2max_ml_kg_min=vo2,
    )
