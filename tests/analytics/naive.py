"""A straightforward per-session implementation of the conventions of ``/work/shared/reference/metrics.md``
(test code, not installed with the package).

It handles one session at a time with plain NumPy / Python loops (sample-by-sample W′ recursion and Malik
rule, ``scipy.interpolate.CubicSpline`` and ``scipy.signal.welch`` for the spectrum). Its constants are
written out below from their published sources, not imported from the ``analytics`` modules, so a wrong
constant there makes the tests that compare the two fail. Two uses: tests/analytics/test_session_metrics.py
checks that the vectorised, blocked :func:`analytics.session_metrics.compute` equals this loop on random
batches (the science itself is checked there against published worked examples and peer libraries), and
``bench/bench_analytics.py`` times it as the naive baseline.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy.interpolate import CubicSpline
from scipy.signal import welch

from analytics.batch import KIND_CODE, SEX_FEMALE, SEX_MALE, SessionInput

F64 = NDArray[np.float64]

# --- conventions, from their sources (metrics.md)
EXPECTED_INTERVAL_S = 1.0  # nominal 1 Hz
WEIGHT_CAP_S = 5.0  # a gap counts at most 5 s ("never count gaps as effort", GoldenCheetah FixGaps)
GAP_FACTOR = 1.5  # a step over 1.5 nominal intervals is a gap
HR_VALID_MIN_BPM, HR_VALID_MAX_BPM = 30.0, 240.0  # physiologically plausible
BANISTER_MALE = (0.64, 1.92)  # Banister/Morton 1990
BANISTER_FEMALE = (0.86, 1.67)
EDGE_TOLERANCE_BPM = 1e-9  # zone edges lower-inclusive despite rounding
ZONE5_EDGES_PCT_HRMAX = (50.0, 60.0, 70.0, 80.0, 90.0)  # 5-zone model
SPLAT_PCT_HRMAX = 84.0  # minutes >= 84 % HRmax (Orangetheory)
ACSM_EDGES_PCT_HRR = (30.0, 40.0, 60.0, 90.0)  # ACSM (Garber 2011) light/moderate/vigorous/near-max, %HRR
ACSM_EDGES_PCT_HRMAX = (57.0, 64.0, 77.0, 96.0)  # the same bands in %HRmax (Garber 2011, table 4)
EDWARDS_WEIGHTS = (1.0, 2.0, 3.0, 4.0, 5.0)  # Edwards 1993
EFFORT_POINTS_PER_MIN = (1.0, 2.0, 3.0, 4.0, 4.0)  # Myzone MEPs as publicly described
HR_LOOKUP_TOLERANCE_S = 2.0  # HR "at" an instant: the nearest sample at most 2 s before it
KEYTEL_MALE = (-55.0969, 0.6309, 0.1988, 0.2017)  # Keytel 2005, kJ/min: const, HR, weight, age
KEYTEL_FEMALE = (-20.4022, 0.4472, -0.1263, 0.0740)
KEYTEL_MIN_BPM_NO_HRMAX = 90.0  # exercise heart rates only
KJ_PER_KCAL = 4.184
HR_BEST_COVERAGE = 0.8  # the HR energy estimate is preferred with >= 80 % heart-rate coverage
NP_WINDOW_SAMPLES = 30  # Coggan: 30-s rolling mean
W_PRIME_J = 20_000.0  # W′ when not measured
RR_MIN_MS, RR_MAX_MS = 300.0, 2000.0  # plausible RR
MALIK_FRACTION = 0.2  # Malik 1989: > 20 % change from the previous beat is ectopic
MAX_CORRECTED_PCT = 20.0  # no HRV from a series with more than 20 % of beats corrected
NN50_MS = 50.0  # Task Force 1996
RESAMPLE_HZ = 4.0  # Task Force / Kubios: 4 Hz cubic spline
NPERSEG = 1024  # Welch segment (256 s at 4 Hz)
BANDS_HZ = ((0.0033, 0.04), (0.04, 0.15), (0.15, 0.40))  # VLF, LF, HF (Task Force 1996)
POWER_FLOOR_MS2 = 1e-9  # no LF/HF ratio from an empty HF band


def _arr(x: object, like: F64) -> F64:
    return np.full(like.shape[0], np.nan) if x is None else np.asarray(x, dtype=np.float64)


def _nan() -> float:
    return math.nan


def session_metrics(s: SessionInput) -> dict[str, float | F64]:
    """Every metric of one session (same names as :class:`analytics.session_metrics.SessionMetrics`)."""
    t = np.asarray(s.t_s, dtype=np.float64)
    hr_bpm, p_w, v_kmh = _arr(s.hr_bpm, t), _arr(s.power_w, t), _arr(s.speed_kmh, t)
    inc, cad = _arr(s.incline_pct, t), _arr(s.cadence_rpm, t)
    dist_c, kcal_c = _arr(s.distance_m, t), _arr(s.energy_kcal, t)
    rr = np.zeros(0) if s.rr_ms is None else np.asarray(s.rr_ms, dtype=np.float64)
    n = t.shape[0]
    out: dict[str, float | F64] = {}
    kind = -1 if s.kind is None else KIND_CODE[s.kind]

    # --- time weights and quality
    w = np.empty(n)
    for k in range(n):
        dt = t[k + 1] - t[k] if k + 1 < n else EXPECTED_INTERVAL_S
        w[k] = min(dt, WEIGHT_CAP_S)
    ok = np.array([HR_VALID_MIN_BPM <= x <= HR_VALID_MAX_BPM for x in hr_bpm], dtype=bool)
    steps = np.diff(t)
    gaps = steps[steps > GAP_FACTOR * EXPECTED_INTERVAL_S]
    span = t[-1] - t[0] if n else 0.0
    out["duration_s"] = span + EXPECTED_INTERVAL_S if n else 0.0
    out["recorded_s"] = float(w.sum())
    out["quality_samples_received"] = float(n)
    out["quality_samples_expected"] = float(round(span) + 1) if n else 0.0
    out["quality_received_pct"] = 100.0 * n / (round(span) + 1) if n else _nan()
    out["quality_gap_count"] = float(gaps.size)
    out["quality_gap_s"] = float((gaps - EXPECTED_INTERVAL_S).sum())
    out["quality_max_gap_s"] = float(gaps.max()) if gaps.size else 0.0
    coverage = float(w[ok].sum() / w.sum()) if n else _nan()
    out["quality_hr_coverage"] = coverage
    out["quality_hr_dropouts"] = float(sum(1 for k in range(1, n) if ok[k - 1] and not ok[k]))
    out["quality_wear_fraction"] = coverage if kind == KIND_CODE["hr_strap"] else _nan()
    work = (p_w > 0) | (v_kmh > 0) | (cad > 0)
    channel = bool(np.any(np.isfinite(p_w) | np.isfinite(v_kmh) | np.isfinite(cad)))
    out["moving_s"] = float(w[work].sum()) if channel else _nan()

    # --- heart rate
    hrmax = s.hr_max_bpm if math.isfinite(s.hr_max_bpm) else 211.0 - 0.64 * s.age_y
    hrmax = hrmax if hrmax > 0 else _nan()
    rest = s.hr_rest_bpm
    rest_ok = math.isfinite(rest) and rest > 0 and (math.isfinite(hrmax) and rest < hrmax)
    out["hr_max_used_bpm"] = hrmax
    out["intensity_basis"] = (0.0 if rest_ok else 1.0) if math.isfinite(hrmax) else _nan()
    out["hr_avg_bpm"] = float(np.sum(w[ok] * hr_bpm[ok]) / w[ok].sum()) if ok.any() else _nan()
    out["hr_max_bpm"] = float(hr_bpm[ok].max()) if ok.any() else _nan()
    zone5 = np.zeros(5)
    acsm = np.zeros(4)
    splat = 0.0
    banister = 0.0
    if s.sex == SEX_MALE:
        a, b = BANISTER_MALE
    elif s.sex == SEX_FEMALE:
        a, b = BANISTER_FEMALE
    else:
        a, b = _nan(), _nan()
    for k in range(n):
        if not ok[k] or not math.isfinite(hrmax):
            continue
        h = float(hr_bpm[k])
        tol = EDGE_TOLERANCE_BPM
        for z in range(4, -1, -1):
            if h >= ZONE5_EDGES_PCT_HRMAX[z] / 100.0 * hrmax - tol:
                zone5[z] += w[k]
                break
        if h >= SPLAT_PCT_HRMAX / 100.0 * hrmax - tol:
            splat += w[k]
        if rest_ok:
            thresholds = [rest + e / 100.0 * (hrmax - rest) - tol for e in ACSM_EDGES_PCT_HRR]
            xc = min(max((h - rest) / (hrmax - rest), 0.0), 1.0)
            banister += w[k] / 60.0 * xc * a * math.exp(b * xc)
        else:
            thresholds = [e / 100.0 * hrmax - tol for e in ACSM_EDGES_PCT_HRMAX]
        for z in range(3, -1, -1):
            if h >= thresholds[z]:
                acsm[z] += w[k]
                break
    has_hr = bool(ok.any()) and math.isfinite(hrmax)
    out["zone5_s"] = zone5 if has_hr else np.full(5, np.nan)
    out["acsm_band_s"] = acsm if has_hr else np.full(4, np.nan)
    out["trimp_edwards"] = float(np.dot(zone5 / 60.0, EDWARDS_WEIGHTS)) if has_hr else _nan()
    out["effort_points"] = float(np.dot(zone5 / 60.0, EFFORT_POINTS_PER_MIN)) if has_hr else _nan()
    out["min_ge_84pct_hrmax"] = splat / 60.0 if has_hr else _nan()
    out["moderate_min"] = acsm[1] / 60.0 if has_hr else _nan()
    out["vigorous_min"] = (acsm[2] + acsm[3]) / 60.0 if has_hr else _nan()
    out["mvpa_min"] = (acsm[1] + acsm[2] + acsm[3]) / 60.0 if has_hr else _nan()
    out["trimp_banister"] = banister if has_hr and rest_ok and math.isfinite(a) else _nan()

    work_rows = np.flatnonzero(work)
    t_end = _nan()
    if work_rows.size and work_rows[-1] < n - 1:
        t_end = float(t[work_rows[-1]])

    def hr_at(when: float) -> float:
        if not math.isfinite(when):
            return _nan()
        for k in range(n - 1, -1, -1):
            if t[k] <= when:
                for j in range(k, max(k - 8, -1), -1):
                    if ok[j] and t[j] >= when - HR_LOOKUP_TOLERANCE_S:
                        return float(hr_bpm[j])
                return _nan()
        return _nan()

    out["hrr60_bpm"] = hr_at(t_end) - hr_at(t_end + 60.0)
    out["hrr120_bpm"] = hr_at(t_end) - hr_at(t_end + 120.0)

    # --- energy and distance
    def counter(c: F64) -> float:
        vals = c[np.isfinite(c)]
        if vals.size == 0:
            return _nan()
        return float(sum(max(vals[k] - vals[k - 1], 0.0) for k in range(1, vals.size)))

    machine = counter(kcal_c)
    out["energy_machine_kcal"] = machine
    thr = 0.55 * hrmax if math.isfinite(hrmax) else KEYTEL_MIN_BPM_NO_HRMAX
    known = math.isfinite(s.weight_kg) and math.isfinite(s.age_y) and s.sex in (SEX_MALE, SEX_FEMALE)
    if known and ok.any():
        c = KEYTEL_MALE if s.sex == SEX_MALE else KEYTEL_FEMALE
        e_hr = 0.0
        for k in range(n):
            if ok[k] and hr_bpm[k] >= thr:
                kj = c[0] + c[1] * hr_bpm[k] + c[2] * s.weight_kg + c[3] * s.age_y
                e_hr += max(kj, 0.0) / KJ_PER_KCAL * w[k] / 60.0
    else:
        e_hr = _nan()
    out["energy_hr_kcal"] = e_hr
    e_acsm = _nan()
    if kind == KIND_CODE["treadmill"] and math.isfinite(s.weight_kg) and np.isfinite(v_kmh).any():
        e_acsm = 0.0
        for k in range(n):
            if v_kmh[k] > 0:
                sp = v_kmh[k] * 1000.0 / 60.0
                g = max(inc[k] if math.isfinite(inc[k]) else 0.0, 0.0) / 100.0
                vo2 = 3.5 + (0.1 * sp + 1.8 * sp * g if v_kmh[k] < 8.0 else 0.2 * sp + 0.9 * sp * g)
                e_acsm += vo2 * s.weight_kg / 1000.0 * 5.0 * w[k] / 60.0
    cycling = kind in (KIND_CODE["bike"], KIND_CODE["power_meter"])
    if cycling and math.isfinite(s.weight_kg) and np.isfinite(p_w).any():
        e_acsm = 0.0
        for k in range(n):
            if p_w[k] > 0:
                vo2 = 7.0 + 1.8 * 6.12 * p_w[k] / s.weight_kg
                e_acsm += vo2 * s.weight_kg / 1000.0 * 5.0 * w[k] / 60.0
    out["energy_acsm_kcal"] = e_acsm
    if math.isfinite(e_hr) and coverage >= HR_BEST_COVERAGE:
        out["energy_kcal"], out["energy_source"] = e_hr, 0.0
    elif math.isfinite(e_acsm):
        out["energy_kcal"], out["energy_source"] = e_acsm, 1.0
    elif math.isfinite(machine):
        out["energy_kcal"], out["energy_source"] = machine, 2.0
    else:
        out["energy_kcal"], out["energy_source"] = _nan(), _nan()
    d = counter(dist_c)
    if math.isfinite(d):
        out["distance_m"], out["distance_source"] = d, 0.0
    elif np.isfinite(v_kmh).any():
        fin = np.isfinite(v_kmh)
        out["distance_m"] = float(np.sum(np.maximum(v_kmh[fin], 0.0) / 3.6 * w[fin]))
        out["distance_source"] = 1.0
    else:
        out["distance_m"], out["distance_source"] = _nan(), _nan()

    # --- power
    fin = np.isfinite(p_w)
    if fin.any():
        out["avg_power_w"] = float(np.sum(w[fin] * p_w[fin]) / w[fin].sum())
        out["max_power_w"] = float(p_w[fin].max())
        p0 = np.where(fin, p_w, 0.0)
        if n >= NP_WINDOW_SAMPLES:
            roll = np.convolve(p0, np.ones(NP_WINDOW_SAMPLES) / NP_WINDOW_SAMPLES, "valid")
            np_w = float(np.mean(roll**4) ** 0.25)
        else:
            np_w = _nan()
        out["np_w"] = np_w
        ftp = s.ftp_w if math.isfinite(s.ftp_w) and s.ftp_w > 0 else _nan()
        out["if_"] = np_w / ftp
        out["tss"] = float(w[fin].sum()) / 3600.0 * (np_w / ftp) ** 2 * 100.0
        if math.isfinite(ftp):
            bal = lowest = W_PRIME_J
            lowest = math.inf
            for k in range(n):
                if p0[k] >= ftp:
                    bal -= (p0[k] - ftp) * w[k]
                else:
                    step = max(-(ftp - p0[k]) * w[k] / W_PRIME_J, -2.0)
                    bal = W_PRIME_J - (W_PRIME_J - bal) * math.exp(step)
                lowest = min(lowest, bal)
            out["wbal_min_j"] = min(lowest, W_PRIME_J)
        else:
            out["wbal_min_j"] = _nan()
    else:
        for name in ("avg_power_w", "max_power_w", "np_w", "if_", "tss", "wbal_min_j"):
            out[name] = _nan()

    # --- HRV
    out.update(hrv_metrics(rr))
    return out


def clean_rr(rr: F64) -> tuple[F64, int]:
    """hrv-analysis's ``get_nn_intervals`` pipeline on one series; returns (NN, number corrected)."""

    def interp(values: F64, good: NDArray[np.bool_]) -> F64:
        if not good.any():
            return np.full(values.shape[0], np.nan)
        idx = np.arange(values.shape[0])
        return np.where(good, values, np.interp(idx, idx[good], values[good]))

    in_range = (rr >= RR_MIN_MS) & (rr <= RR_MAX_MS)
    step1 = interp(rr, in_range)
    ectopic = np.zeros(rr.shape[0], dtype=bool)
    previous_outlier = False
    for i in range(rr.shape[0] - 1):
        if previous_outlier:
            previous_outlier = False
            continue
        if not abs(step1[i] - step1[i + 1]) <= MALIK_FRACTION * step1[i]:
            ectopic[i + 1] = True
            previous_outlier = True
    nn = interp(step1, ~ectopic)
    return nn, int(np.count_nonzero(~in_range | ectopic))


def hrv_metrics(rr: F64) -> dict[str, float | F64]:
    """HRV of one RR series (NaN-gated like :func:`analytics.session_metrics.compute`)."""
    out: dict[str, float | F64] = {"hrv_beats": float(rr.shape[0])}
    names = ("hrv_mean_nn_ms", "hrv_sdnn_ms", "hrv_rmssd_ms", "hrv_sdsd_ms", "hrv_pnn50_pct")
    fnames = ("hrv_vlf_ms2", "hrv_lf_ms2", "hrv_hf_ms2", "hrv_lf_hf", "hrv_total_ms2")
    if rr.shape[0] == 0:
        out["rr_corrected_pct"] = _nan()
        out.update({k: _nan() for k in names + fnames})
        return out
    nn, corrected = clean_rr(rr)
    pct = 100.0 * corrected / rr.shape[0]
    out["rr_corrected_pct"] = pct
    if pct > MAX_CORRECTED_PCT:
        out.update({k: _nan() for k in names + fnames})
        return out
    n = nn.shape[0]
    d = np.diff(nn)
    out["hrv_mean_nn_ms"] = float(np.mean(nn))
    out["hrv_sdnn_ms"] = float(np.std(nn, ddof=1)) if n >= 2 else _nan()
    out["hrv_rmssd_ms"] = float(np.sqrt(np.mean(d**2))) if n >= 2 else _nan()
    out["hrv_sdsd_ms"] = float(np.std(d, ddof=1)) if n >= 3 else _nan()
    out["hrv_pnn50_pct"] = 100.0 * float(np.sum(np.abs(d) > NN50_MS)) / (n - 1) if n >= 2 else _nan()
    for k in fnames:
        out[k] = _nan()
    if n >= 4 and np.all(np.isfinite(nn)):
        x = np.cumsum(nn / 1000.0)
        x -= x[0]
        grid = np.arange(0.0, x[-1], 1.0 / RESAMPLE_HZ)
        if grid.shape[0] >= NPERSEG:
            series = CubicSpline(x, nn)(grid)
            f, psd = welch(series, fs=RESAMPLE_HZ, window="hann", nperseg=NPERSEG)
            powers = []
            for lo, hi in BANDS_HZ:
                m = (f >= lo) & (f < hi)
                powers.append(float(np.trapezoid(psd[m], f[m])))
            out["hrv_vlf_ms2"], out["hrv_lf_ms2"], out["hrv_hf_ms2"] = powers
            out["hrv_lf_hf"] = powers[1] / powers[2] if powers[2] > POWER_FLOOR_MS2 else _nan()
            out["hrv_total_ms2"] = sum(powers)
    return out
