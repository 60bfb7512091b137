"""Energy and distance: published Keytel and ACSM worked examples, counters, sources, edge cases.

Published worked examples used here:
- Keytel 2005, men: 35 y, 80 kg, 150 bpm, 30 min → 14.94 kcal/min, ≈ 448 kcal (calculatorlib.com cardio
  calorie calculator); 30 y, 75 kg, 140 bpm, 30 min → 388.55 kcal and women 30 y, 65 kg, 140 bpm,
  30 min → 259.68 kcal (webtoolsguru.com heart-rate calorie calculator).
- ACSM walking: 3.5 mph (93.8 m/min), 10 % grade → 29.76 ml/kg/min ("ACSM Metabolic Equations" course
  slides); 2.5 mph (67 m/min), 3 % → 13.8 ml/kg/min and, for 50 kg over 30 min, 103.5 kcal
  (jjarmstrong.com, metabolic equations); leg cycling: 62 kg at 450 kg·m/min → (1.8·450)/62 + 7 ≈ 20
  ml/kg/min (same slides).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from analytics import energy
from analytics.batch import KIND_CODE, SessionBatch, SessionInput
from analytics.hr import effective_hr_max
from analytics.quality import session_quality, time_weights, valid_hr


def _energy(batch: SessionBatch) -> energy.EnergyMetrics:
    w = time_weights(batch.t_s, batch.offsets)
    ok = valid_hr(batch.hr_bpm)
    q = session_quality(batch.t_s, batch.hr_bpm, batch.offsets, batch.kind, w, ok)
    return energy.energy_metrics(
        batch.hr_bpm,
        ok,
        batch.power_w,
        batch.speed_kmh,
        batch.incline_pct,
        batch.distance_m,
        batch.energy_kcal,
        w,
        batch.offsets,
        batch.kind,
        batch.sex,
        batch.age_y,
        batch.weight_kg,
        effective_hr_max(batch.hr_max_bpm, batch.age_y),
        q.hr_coverage,
    )


def _steady(minutes: int, **fields: object) -> SessionInput:
    n = minutes * 60
    arrays = {
        k: np.full(n, v) for k, v in fields.items() if k in ("hr_bpm", "power_w", "speed_kmh", "incline_pct")
    }
    context = {k: v for k, v in fields.items() if k not in arrays}
    return SessionInput(t_s=np.arange(n, dtype=np.float64), **arrays, **context)  # type: ignore[arg-type]


def test_keytel_published_examples() -> None:
    batch = SessionBatch.from_sessions(
        [
            _steady(30, hr_bpm=150.0, age_y=35.0, weight_kg=80.0, sex=1),
            _steady(30, hr_bpm=140.0, age_y=30.0, weight_kg=75.0, sex=1),
            _steady(30, hr_bpm=140.0, age_y=30.0, weight_kg=65.0, sex=0),
            _steady(30, hr_bpm=140.0, age_y=30.0, weight_kg=65.0, sex=-1),
            _steady(30, hr_bpm=140.0, weight_kg=65.0, sex=0),
        ]
    )
    e = _energy(batch)
    assert e.energy_hr_kcal[0] == pytest.approx(448.2, abs=0.2)  # 14.94 kcal/min × 30 (rounded in the source)
    assert e.energy_hr_kcal[1] == pytest.approx(388.55, abs=0.01)
    assert e.energy_hr_kcal[2] == pytest.approx(259.68, abs=0.01)
    assert np.isnan(e.energy_hr_kcal[3:]).all()  # unknown sex, unknown age
    assert e.energy_source[1] == 0.0
    assert e.energy_kcal[1] == e.energy_hr_kcal[1]


def test_keytel_counts_only_exercise_heart_rates() -> None:
    """55 % of HRmax 190 is 104.5 bpm: 10 min at 104 bpm count nothing, 10 min at 105 bpm count."""
    bpm = np.repeat([104.0, 105.0], 600)
    batch = SessionBatch.from_sessions(
        [SessionInput(t_s=np.arange(1200.0), hr_bpm=bpm, hr_max_bpm=190, age_y=40, weight_kg=70, sex=1)]
    )
    expected = (-55.0969 + 0.6309 * 105 + 0.1988 * 70 + 0.2017 * 40) / 4.184 * 10
    assert _energy(batch).energy_hr_kcal[0] == pytest.approx(expected, rel=1e-12)


def test_acsm_walking_running_and_cycling_examples() -> None:
    vo2 = energy.acsm_treadmill_vo2(
        np.array([93.8 * 60 / 1000, 67 * 60 / 1000, 0.0, math.nan]), np.array([10.0, 3.0, 5.0, 0.0])
    )
    assert vo2[0] == pytest.approx(29.76, abs=0.01)
    assert vo2[1] == pytest.approx(13.8, abs=0.05)
    assert vo2[2] == 0.0  # standing on a stopped belt
    assert math.isnan(vo2[3])
    # running (≥ 8 km/h): 160.8 m/min (6 mph) level → 3.5 + 0.2·160.8
    assert energy.acsm_treadmill_vo2(np.array([160.8 * 0.06]), np.array([0.0]))[0] == pytest.approx(35.66)
    # negative grade counts as level
    assert energy.acsm_treadmill_vo2(np.array([5.0]), np.array([-4.0]))[0] == pytest.approx(
        3.5 + 0.1 * 5000 / 60
    )
    cyc = energy.acsm_cycling_vo2(np.array([450 / 6.12, 0.0]), np.array([62.0, 62.0]))
    assert cyc[0] == pytest.approx(1.8 * 450 / 62 + 7, rel=1e-12)
    assert cyc[0] == pytest.approx(20.0, abs=0.1)
    assert cyc[1] == 0.0

    batch = SessionBatch.from_sessions(
        [
            _steady(30, speed_kmh=67 * 0.06, incline_pct=3.0, weight_kg=50.0, kind="treadmill"),
            _steady(10, power_w=450 / 6.12, weight_kg=62.0, kind="bike"),
            _steady(10, power_w=100.0, weight_kg=62.0, kind="rower"),
        ]
    )
    e = _energy(batch)
    assert e.energy_acsm_kcal[0] == pytest.approx(103.5, rel=0.005)  # the source rounds VO2 to 13.8
    assert e.energy_acsm_kcal[1] == pytest.approx((1.8 * 450 / 62 + 7) * 62 / 1000 * 5 * 10, rel=1e-12)
    assert math.isnan(e.energy_acsm_kcal[2])  # no ACSM equation for rowing
    assert e.energy_source[0] == 1.0  # no heart rate: the ACSM estimate is the best one
    assert e.distance_m[0] == pytest.approx(67 * 30, rel=1e-9)  # integrated speed, no counter
    assert e.distance_source[0] == 1.0


def test_machine_counters_survive_a_reset_and_stay_apart() -> None:
    kcal = np.array([10.0, 11.0, math.nan, 12.5, 0.0, 0.5, 2.0])  # device restarted after 12.5
    dist = np.array([100.0, 104.0, 108.0, 112.0, 0.0, 4.0, 8.0])
    batch = SessionBatch.from_sessions(
        [
            SessionInput(
                t_s=np.arange(7.0),
                energy_kcal=kcal,
                distance_m=dist,
                speed_kmh=np.full(7, 14.4),
                kind="rower",
            ),
            SessionInput(t_s=np.arange(3.0), kind="rower"),
        ]
    )
    e = _energy(batch)
    assert e.energy_machine_kcal[0] == pytest.approx(2.5 + 2.0)
    assert e.energy_kcal[0] == e.energy_machine_kcal[0]
    assert e.energy_source[0] == 2.0
    assert e.distance_m[0] == pytest.approx(12.0 + 8.0)  # counter wins over integrated speed
    assert e.distance_source[0] == 0.0
    assert np.isnan([e.energy_machine_kcal[1], e.distance_m[1], e.energy_kcal[1], e.energy_source[1]]).all()


def test_counter_total_edge_cases() -> None:
    offsets = np.array([0, 0, 1, 3], dtype=np.int64)
    total = energy.counter_total(np.array([5.0, math.nan, math.nan]), offsets)
    assert math.isnan(total[0])
    assert total[1] == 0.0  # one reading: no increment
    assert math.isnan(total[2])
    assert KIND_CODE["treadmill"] == 0
