"""Heart-rate metrics: HRmax formulas, published TRIMP worked examples, zone edges, effort points, MVPA,
HR recovery and gaps.

Published worked examples (Banister TRIMP, male):
- calculatorhub.com TRIMP calculator: 45 min at 150 bpm, HRrest 60, HRmax 190 → reserve 0.6923, weighting
  2.4191, TRIMP 75.36 (the page's weighting is off in the 4th digit: 0.64·e^(1.92·0.6923) = 2.4180, which
  gives 75.33, hence a 0.05 tolerance; the closed form is checked exactly);
- afitpilot.com training lexicon: 60 min at 155 bpm, HRrest 55, HRmax 190 → ≈ 118 (intermediate values
  rounded to 2 digits in the source, hence the ±1 tolerance).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from analytics import hr
from analytics.batch import SessionBatch, SessionInput, segment_ids
from analytics.quality import time_weights, valid_hr


def _metrics(batch: SessionBatch) -> hr.HrMetrics:
    w = time_weights(batch.t_s, batch.offsets)
    t_end, _ = hr.exercise_end(batch.t_s, batch.power_w, batch.speed_kmh, batch.cadence_rpm, batch.offsets)
    return hr.hr_metrics(
        batch.t_s,
        batch.hr_bpm,
        batch.offsets,
        segment_ids(batch.offsets),
        w,
        valid_hr(batch.hr_bpm),
        batch.hr_rest_bpm,
        hr.effective_hr_max(batch.hr_max_bpm, batch.age_y),
        batch.sex,
        t_end,
    )


def _constant(bpm: float, minutes: float, **context: float) -> SessionInput:
    n = int(minutes * 60)
    sex = int(context.pop("sex", 1))
    return SessionInput(t_s=np.arange(n, dtype=np.float64), hr_bpm=np.full(n, bpm), sex=sex, **context)  # type: ignore[arg-type]


def test_hrmax_formulas() -> None:
    age = np.array([40.0, math.nan])
    assert hr.hrmax_estimate(age)[0] == pytest.approx(211 - 0.64 * 40)  # HUNT (Nes 2013)
    assert hr.hrmax_estimate(age, formula="tanaka")[0] == pytest.approx(180.0)
    assert hr.hrmax_estimate(age, formula="fox")[0] == pytest.approx(180.0)
    sex = np.array([0, 1], dtype=np.int8)
    gulati = hr.hrmax_estimate(np.array([40.0, 40.0]), sex, formula="gulati")
    assert gulati[0] == pytest.approx(206 - 0.88 * 40)
    assert math.isnan(gulati[1])  # women only
    assert math.isnan(hr.hrmax_estimate(age)[1])
    measured = hr.effective_hr_max(np.array([195.0, math.nan]), np.array([40.0, 40.0]))
    assert measured.tolist() == [195.0, pytest.approx(185.4)]


def test_banister_trimp_published_examples() -> None:
    batch = SessionBatch.from_sessions(
        [
            _constant(150, 45, hr_rest_bpm=60, hr_max_bpm=190),
            _constant(155, 60, hr_rest_bpm=55, hr_max_bpm=190),
            _constant(150, 45, hr_rest_bpm=60, hr_max_bpm=190, sex=0),
            _constant(150, 45, hr_max_bpm=190),  # HRrest unknown: no Banister TRIMP
            _constant(150, 45, hr_rest_bpm=60, hr_max_bpm=190, sex=-1),
        ]
    )
    m = _metrics(batch)
    assert m.trimp_banister[0] == pytest.approx(75.36, abs=0.05)
    assert m.trimp_banister[0] == pytest.approx(45 * (9 / 13) * 0.64 * math.exp(1.92 * 9 / 13), rel=1e-12)
    assert m.trimp_banister[1] == pytest.approx(118, abs=1)
    x = 90 / 130
    assert m.trimp_banister[2] == pytest.approx(45 * x * 0.86 * math.exp(1.67 * x), rel=1e-12)
    assert math.isnan(m.trimp_banister[3])
    assert math.isnan(m.trimp_banister[4])


def test_zone_edges_are_lower_inclusive() -> None:
    """HRmax 190: 95 bpm = 50 %, 114 = 60 %, 133 = 70 %, 152 = 80 %, 171 = 90 %; 159.6 = 84 %."""
    values = [94.999, 95.0, 113.999, 114.0, 133.0, 151.999, 152.0, 171.0, 230.0, 159.6, 159.599]
    n = len(values)
    batch = SessionBatch.from_sessions(
        [SessionInput(t_s=np.arange(n, dtype=np.float64), hr_bpm=values, hr_max_bpm=190.0, hr_rest_bpm=60.0)]
    )
    m = _metrics(batch)
    # seconds per zone: Z1 {95, 113.999}, Z2 {114}, Z3 {133, 151.999}, Z4 {152, 159.6, 159.599}, Z5 {171, 230}
    assert m.zone5_s[0].tolist() == [2.0, 1.0, 2.0, 3.0, 2.0]
    assert m.min_ge_84pct_hrmax[0] == pytest.approx(3 / 60)  # 159.6, 171 and 230 (159.599 is below)
    # ACSM %HRR with rest 60: 30 % = 99, 40 % = 112, 60 % = 138, 90 % = 177 bpm
    batch2 = SessionBatch.from_sessions(
        [
            SessionInput(
                t_s=np.arange(8, dtype=np.float64),
                hr_bpm=[98.999, 99.0, 111.999, 112.0, 137.999, 138.0, 176.999, 177.0],
                hr_max_bpm=190.0,
                hr_rest_bpm=60.0,
            )
        ]
    )
    m2 = _metrics(batch2)
    assert m2.acsm_band_s[0].tolist() == [2.0, 2.0, 2.0, 1.0]
    assert m2.intensity_basis[0] == 0.0
    assert m2.moderate_min[0] == pytest.approx(2 / 60)
    assert m2.vigorous_min[0] == pytest.approx(3 / 60)
    assert m2.mvpa_min[0] == pytest.approx(5 / 60)


def test_intensity_falls_back_to_percent_hrmax_without_hrrest() -> None:
    # ACSM %HRmax columns for HRmax 200: light 114, moderate 128, vigorous 154, near-max 192 bpm
    batch = SessionBatch.from_sessions(
        [
            SessionInput(
                t_s=np.arange(5, dtype=np.float64), hr_bpm=[113.0, 114.0, 128.0, 154.0, 192.0], hr_max_bpm=200
            )
        ]
    )
    m = _metrics(batch)
    assert m.intensity_basis[0] == 1.0
    assert m.acsm_band_s[0].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert math.isnan(m.trimp_banister[0])


def test_edwards_trimp_and_effort_points() -> None:
    # 10 minutes in each zone of HRmax 200 (105, 125, 145, 165, 185 bpm)
    bpm = np.repeat([105.0, 125.0, 145.0, 165.0, 185.0], 600)
    batch = SessionBatch.from_sessions(
        [SessionInput(t_s=np.arange(bpm.size, dtype=np.float64), hr_bpm=bpm, hr_max_bpm=200.0)]
    )
    m = _metrics(batch)
    assert m.zone5_s[0].tolist() == [600.0] * 5
    assert m.trimp_edwards[0] == pytest.approx(10 * (1 + 2 + 3 + 4 + 5))
    assert m.effort_points[0] == pytest.approx(10 * (1 + 2 + 3 + 4 + 4))
    assert m.min_ge_84pct_hrmax[0] == pytest.approx(10.0)  # 185 bpm only (165 < 168)
    assert m.hr_avg_bpm[0] == pytest.approx(145.0)
    assert m.hr_max_bpm[0] == 185.0


def test_gaps_never_count_as_effort() -> None:
    """Two samples at 180 bpm 10 minutes apart: the first stands for the 5-s cap, the last for 1 s."""
    batch = SessionBatch.from_sessions(
        [SessionInput(t_s=[0.0, 600.0], hr_bpm=[180.0, 180.0], hr_max_bpm=190.0, hr_rest_bpm=60.0, sex=1)]
    )
    m = _metrics(batch)
    assert np.nansum(m.zone5_s[0]) == 6.0
    assert m.vigorous_min[0] == pytest.approx(6 / 60)


def test_edge_sessions() -> None:
    batch = SessionBatch.from_sessions(
        [
            SessionInput(t_s=[], hr_max_bpm=190.0),
            SessionInput(t_s=[0.0], hr_bpm=[150.0], hr_max_bpm=190.0),
            SessionInput(t_s=[0.0, 1.0, 2.0], hr_bpm=[math.nan, 10.0, 260.0], hr_max_bpm=190.0),
            SessionInput(t_s=[0.0, 1.0], hr_bpm=[150.0, 150.0]),  # no HRmax, no age
        ]
    )
    m = _metrics(batch)
    assert np.isnan(m.zone5_s[0]).all()
    assert np.isnan(m.hr_avg_bpm[0])
    assert m.zone5_s[1].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]  # 150/190 = 79 %: one sample weighs 1 s
    assert m.hr_avg_bpm[1] == 150.0
    assert np.isnan(m.zone5_s[2]).all()  # no valid heart rate: nothing to bin
    assert np.isnan(m.hr_avg_bpm[2])
    assert np.isnan(m.zone5_s[3]).all()
    assert m.hr_avg_bpm[3] == 150.0


def test_heart_rate_recovery() -> None:
    t = np.arange(400, dtype=np.float64)
    bpm = np.where(t <= 200, 170.0, 170.0 - (t - 200) * 0.3)
    power_w = np.where(t <= 200, 250.0, 0.0)
    short = SessionInput(t_s=t[:230], hr_bpm=bpm[:230], power_w=power_w[:230])
    gappy_hr = bpm.copy()
    gappy_hr[255:265] = math.nan  # nothing within 2 s before t_end + 60 = 260
    batch = SessionBatch.from_sessions(
        [
            SessionInput(t_s=t, hr_bpm=bpm, power_w=power_w),
            SessionInput(t_s=t, hr_bpm=bpm),  # strap only: no end of exercise
            short,  # recording ends 30 s after the end of exercise
            SessionInput(t_s=t, hr_bpm=gappy_hr, power_w=power_w),
            SessionInput(t_s=t[:201], hr_bpm=bpm[:201], power_w=power_w[:201]),  # work until the last sample
        ]
    )
    m = _metrics(batch)
    assert m.hrr60_bpm[0] == pytest.approx(18.0)
    assert m.hrr120_bpm[0] == pytest.approx(36.0)
    assert np.isnan(m.hrr60_bpm[1:]).all()
