"""Energy and distance per session, from three sources kept apart: the machine, heart rate, and work.

Units: kcal, kJ/min, ml·kg⁻¹·min⁻¹, W, km/h, m. Sums are time-weighted with the capped weights of
:mod:`analytics.quality` (gaps count at most 5 s).

Machine counters (``energy_machine_kcal``, ``distance_m``)
    ``energy_kcal`` and ``distance_m`` are the machine's cumulative counters. The session value is the sum of
    the positive increments between consecutive finite readings, so a counter reset mid-session (device
    restart to 0) loses only the step across the reset instead of making the total negative. Without a
    distance counter, distance is ``Σ speed/3.6 · w`` over samples with finite speed (``distance_source``:
    0 counter, 1 integrated speed, NaN none).

Heart rate — Keytel et al. 2005 (J Sports Sci 23:289), the equations without VO2max, in kJ/min:
    men    ``EE = −55.0969 + 0.6309·HR + 0.1988·W + 0.2017·A``
    women  ``EE = −20.4022 + 0.4472·HR − 0.1263·W + 0.0740·A``
    with HR in bpm, W body mass in kg, A age in years; ``kcal = kJ / 4.184``. The equations were fitted on
    steady-state exercise at 57–90 % HRmax; vitalab applies them to samples with HR ≥ ``KEYTEL_MIN_PCT_HRMAX``
    (55 %) of HRmax (HRmax measured or HUNT-estimated; ≥ 90 bpm when HRmax is unknown) and counts nothing
    for lower heart rates (not exercise, where the equation is invalid and can go negative); negative
    per-minute values are clipped to 0. NaN when sex, age or weight is unknown.

Work — ACSM metabolic equations (ACSM's Guidelines for Exercise Testing and Prescription, 10th ed.,
Table 6.3), gross VO2 in ml·kg⁻¹·min⁻¹, ``kcal/min = VO2 · W / 1000 · 5`` (5 kcal per litre O2):
    treadmill (speed S in m/min, grade G as a fraction, negative grades count as 0):
        walking (speed < ``RUN_THRESHOLD_KMH`` = 8 km/h, ACSM's 134 m/min)  ``VO2 = 3.5 + 0.1·S + 1.8·S·G``
        running                                                               ``VO2 = 3.5 + 0.2·S + 0.9·S·G``
    leg cycling (bike, power meter; work rate in kg·m/min = 6.12 · P[W]) ``VO2 = 7 + 1.8·6.12·P / W``
    Samples without motion (speed ≤ 0, power ≤ 0) count nothing; other machines (rower, cross-trainer)
    have no ACSM equation (NaN). ACSM energy is computed whether or not heart rate exists.

Best estimate (``energy_kcal``, ``energy_source``): heart rate when at least ``HR_BEST_COVERAGE`` (80 %) of
the recorded time has a valid HR and Keytel is computable (source 0), else ACSM (1), else the machine (2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from analytics.batch import KIND_CODE, SEX_FEMALE, SEX_MALE, segment_count, segment_sum

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

KJ_PER_KCAL: Final[float] = 4.184
KEYTEL_MALE: Final[tuple[float, float, float, float]] = (-55.0969, 0.6309, 0.1988, 0.2017)
KEYTEL_FEMALE: Final[tuple[float, float, float, float]] = (-20.4022, 0.4472, -0.1263, 0.0740)
KEYTEL_MIN_PCT_HRMAX: Final[float] = 55.0
KEYTEL_MIN_BPM_NO_HRMAX: Final[float] = 90.0
RUN_THRESHOLD_KMH: Final[float] = 8.0
KG_M_PER_MIN_PER_W: Final[float] = 6.12
KCAL_PER_L_O2: Final[float] = 5.0
HR_BEST_COVERAGE: Final[float] = 0.8


def keytel_kj_per_min(hr_bpm: F64, weight_kg: F64, age_y: F64, sex: NDArray[np.int8]) -> F64:
    """Keytel 2005 energy expenditure (kJ/min, unclipped); NaN for unknown sex."""
    male = KEYTEL_MALE[0] + KEYTEL_MALE[1] * hr_bpm + KEYTEL_MALE[2] * weight_kg + KEYTEL_MALE[3] * age_y
    female = (
        KEYTEL_FEMALE[0] + KEYTEL_FEMALE[1] * hr_bpm + KEYTEL_FEMALE[2] * weight_kg + KEYTEL_FEMALE[3] * age_y
    )
    return np.where(sex == SEX_MALE, male, np.where(sex == SEX_FEMALE, female, np.nan))


def acsm_treadmill_vo2(speed_kmh: F64, incline_pct: F64) -> F64:
    """ACSM walking/running gross VO2 (ml/kg/min); NaN where speed is missing, 0 when not moving."""
    s = speed_kmh * (1000.0 / 60.0)
    g = np.maximum(np.where(np.isfinite(incline_pct), incline_pct, 0.0), 0.0) / 100.0
    walk = 3.5 + 0.1 * s + 1.8 * s * g
    run = 3.5 + 0.2 * s + 0.9 * s * g
    vo2 = np.where(speed_kmh < RUN_THRESHOLD_KMH, walk, run)
    return np.where(speed_kmh > 0, vo2, np.where(np.isfinite(speed_kmh), 0.0, np.nan))


def acsm_cycling_vo2(power_w: F64, weight_kg: F64) -> F64:
    """ACSM leg-cycling gross VO2 (ml/kg/min); NaN where power is missing, 0 when not pedalling."""
    vo2 = 7.0 + 1.8 * KG_M_PER_MIN_PER_W * power_w / weight_kg
    return np.where(power_w > 0, vo2, np.where(np.isfinite(power_w), 0.0, np.nan))


def counter_total(counter: F64, offsets: I64) -> F64:
    """Sum of the positive increments between consecutive finite readings of a cumulative counter; NaN for
    sessions with fewer than one finite reading."""
    n = offsets.shape[0] - 1
    finite = np.isfinite(counter)
    rows = np.flatnonzero(finite)
    counts = segment_count(finite, offsets)
    out = np.full(n, np.nan)
    if rows.size == 0:
        return out
    values = counter[rows]
    sub_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=sub_offsets[1:])
    inc = np.zeros(values.shape[0])
    inc[1:] = np.diff(values)
    inc[sub_offsets[:-1][counts > 0]] = 0.0
    total = segment_sum(np.maximum(inc, 0.0), sub_offsets)
    return np.where(counts > 0, total, np.nan)


@dataclass(frozen=True)
class EnergyMetrics:
    energy_machine_kcal: F64
    energy_hr_kcal: F64
    energy_acsm_kcal: F64
    energy_kcal: F64
    energy_source: F64
    distance_m: F64
    distance_source: F64


def energy_metrics(
    hr_bpm: F64,
    hr_ok: NDArray[np.bool_],
    power_w: F64,
    speed_kmh: F64,
    incline_pct: F64,
    distance_counter_m: F64,
    energy_counter_kcal: F64,
    weights: F64,
    offsets: I64,
    kind: NDArray[np.int8],
    sex: NDArray[np.int8],
    age_y: F64,
    weight_kg: F64,
    hr_max_bpm: F64,
    hr_coverage: F64,
) -> EnergyMetrics:
    """Energy and distance of every session (see the module docstring)."""
    lengths = np.diff(offsets)
    minutes = weights / 60.0

    machine = counter_total(energy_counter_kcal, offsets)

    threshold = np.where(
        np.isfinite(hr_max_bpm), KEYTEL_MIN_PCT_HRMAX / 100.0 * hr_max_bpm, KEYTEL_MIN_BPM_NO_HRMAX
    )
    exercising = hr_ok & (hr_bpm >= np.repeat(threshold, lengths))
    kj = keytel_kj_per_min(
        hr_bpm, np.repeat(weight_kg, lengths), np.repeat(age_y, lengths), np.repeat(sex, lengths)
    )
    kcal_hr = np.where(exercising, np.maximum(kj, 0.0) / KJ_PER_KCAL * minutes, 0.0)
    hr_known = np.isfinite(weight_kg) & np.isfinite(age_y) & ((sex == SEX_MALE) | (sex == SEX_FEMALE))
    has_hr = segment_count(hr_ok, offsets) > 0
    energy_hr = np.where(
        hr_known & has_hr, segment_sum(np.where(np.isfinite(kcal_hr), kcal_hr, 0.0), offsets), np.nan
    )

    treadmill = kind == KIND_CODE["treadmill"]
    cycling = (kind == KIND_CODE["bike"]) | (kind == KIND_CODE["power_meter"])
    weight_rows = np.repeat(weight_kg, lengths)
    vo2 = np.where(
        np.repeat(treadmill, lengths),
        acsm_treadmill_vo2(speed_kmh, incline_pct),
        np.where(np.repeat(cycling, lengths), acsm_cycling_vo2(power_w, weight_rows), np.nan),
    )
    kcal_acsm = vo2 * weight_rows / 1000.0 * KCAL_PER_L_O2 * minutes
    has_acsm = segment_count(np.isfinite(kcal_acsm), offsets) > 0
    acsm = np.where(
        (treadmill | cycling) & np.isfinite(weight_kg) & (weight_kg > 0) & has_acsm,
        segment_sum(np.where(np.isfinite(kcal_acsm), kcal_acsm, 0.0), offsets),
        np.nan,
    )

    use_hr = np.isfinite(energy_hr) & (hr_coverage >= HR_BEST_COVERAGE)
    use_acsm = ~use_hr & np.isfinite(acsm)
    use_machine = ~use_hr & ~use_acsm & np.isfinite(machine)
    best = np.where(use_hr, energy_hr, np.where(use_acsm, acsm, np.where(use_machine, machine, np.nan)))
    source = np.where(use_hr, 0.0, np.where(use_acsm, 1.0, np.where(use_machine, 2.0, np.nan)))

    dist_counter = counter_total(distance_counter_m, offsets)
    speed_ok = np.isfinite(speed_kmh)
    dist_speed = segment_sum(np.where(speed_ok, np.maximum(speed_kmh, 0.0) / 3.6 * weights, 0.0), offsets)
    has_speed = segment_count(speed_ok, offsets) > 0
    distance = np.where(np.isfinite(dist_counter), dist_counter, np.where(has_speed, dist_speed, np.nan))
    dist_source = np.where(np.isfinite(dist_counter), 0.0, np.where(has_speed, 1.0, np.nan))

    return EnergyMetrics(
        energy_machine_kcal=machine,
        energy_hr_kcal=energy_hr,
        energy_acsm_kcal=acsm,
        energy_kcal=best,
        energy_source=source,
        distance_m=distance,
        distance_source=dist_source,
    )
