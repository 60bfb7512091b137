"""Per-participant series against independent references (tests/data/analytics/participant_*.json, each with
its provenance), plus edge cases: empty, constant, all-NaN, one day, guideline boundaries."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analytics.batch import SEX_FEMALE, SEX_MALE, SEX_UNKNOWN
from analytics.errors import SessionInputError
from analytics.participant import (
    PAI_COEFFICIENTS,
    WHO_STATUS,
    DailyInputs,
    acwr_ewma,
    acwr_rolling,
    daily_series,
    ewma_seeded,
    lowest_rolling_hr,
    pai_activity_rate,
    pai_score,
    pai_session_score,
    pmc,
    rolling_nanmean,
    rolling_sum,
    to_grid,
    vo2max_uth,
    who_weekly,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "analytics"


def load_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    assert data["provenance"]  # every reference file says where its numbers come from
    return data


def as_array(values: list[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


@pytest.fixture(scope="module")
def ref() -> dict[str, Any]:
    return load_json("participant_load_reference.json")


def grid(ref: dict[str, Any], key: str, shift: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each reference participant as a column, starting on day ``shift[p]`` (NaN before)."""
    parts = ref["participants"]
    days = len(parts[0][key]) + max(shift)
    out = np.full((days, len(parts)), math.nan)
    for p, s in enumerate(shift):
        col = as_array(parts[p][key])
        out[s : s + col.size, p] = col
    return out, np.array(shift, dtype=np.int64)


SHIFT = [0, 5, 11]


def compare(got: np.ndarray, ref: dict[str, Any], key: str) -> None:
    want, _ = grid(ref, key, SHIFT)
    n_ref = len(ref["participants"][0][key])
    rows = np.arange(got.shape[0])[:, None]
    past_ref = rows >= np.array(SHIFT)[None, :] + n_ref  # the grid runs on after a shorter column ends
    np.testing.assert_allclose(np.where(past_ref, np.nan, got), want, rtol=1e-9, atol=1e-9, equal_nan=True)


def test_pmc_matches_pandas_goldencheetah_convention(ref: dict[str, Any]) -> None:
    load, start = grid(ref, "load", SHIFT)
    load = np.where(np.isnan(load), 0.0, load)  # days before a participant's start carry no load
    p = pmc(load, start)
    compare(p.ctl, ref, "ctl")
    compare(p.atl, ref, "atl")
    compare(p.tsb, ref, "tsb")


def test_acwr_matches_pandas_ewm_and_rolling(ref: dict[str, Any]) -> None:
    load, start = grid(ref, "load", SHIFT)
    acute, chronic, ratio = acwr_ewma(load, start)
    compare(acute, ref, "acute_ewma")
    compare(chronic, ref, "chronic_ewma")
    compare(ratio, ref, "acwr_ewma")
    compare(acwr_rolling(load, start), ref, "acwr_rolling")
    compare(rolling_sum(load, 7, start), ref, "load_7d")


def test_who_minutes_match_and_status_boundaries(ref: dict[str, Any]) -> None:
    mod, start = grid(ref, "moderate_min", SHIFT)
    vig, _ = grid(ref, "vigorous_min", SHIFT)
    minutes, _ = who_weekly(mod, vig, start)
    compare(minutes, ref, "who_min_7d")
    # boundaries: 150 and 300 are within the guideline, just outside are not
    m = np.array([[149.9, 150.0, 300.0, 300.5]])
    _, status = who_weekly(m, np.zeros_like(m))
    assert [WHO_STATUS[s] for s in status[0]] == ["below", "within", "within", "above"]
    _, st2 = who_weekly(np.zeros((1, 1)), np.array([[75.0]]))  # 75 vigorous minutes = 150 moderate
    assert WHO_STATUS[st2[0, 0]] == "within"


def test_edge_cases_empty_constant_nan_one_day() -> None:
    empty = np.zeros((0, 3))
    assert pmc(empty).ctl.shape == (0, 3)
    assert acwr_rolling(empty).shape == (0, 3)
    # constant load: CTL and ATL approach it, ACWR approaches 1, TSB approaches 0
    const = np.full((2000, 1), 100.0)
    p = pmc(const)
    assert p.ctl[-1, 0] == pytest.approx(100.0, rel=1e-9)
    assert p.tsb[-1, 0] == pytest.approx(0.0, abs=1e-6)
    assert acwr_ewma(const)[2][-1, 0] == pytest.approx(1.0)
    assert acwr_rolling(const)[27, 0] == pytest.approx(1.0)
    assert math.isnan(acwr_rolling(const)[26, 0])  # not 28 days yet
    # all-NaN load is no load (NaN stress is skipped, as in GoldenCheetah)
    nan = np.full((10, 2), math.nan)
    assert np.all(pmc(nan).ctl == 0.0)
    assert np.all(np.isnan(acwr_ewma(nan)[2]))  # chronic 0 -> ratio undefined
    # one day
    one = np.array([[60.0]])
    p1 = pmc(one)
    assert p1.ctl[0, 0] == pytest.approx(60.0 * (1 - math.exp(-1 / 42)))
    assert p1.tsb[0, 0] == 0.0
    assert ewma_seeded(one, 7)[0, 0] == 60.0  # seeded with the first day's load
    with pytest.raises(SessionInputError):
        pmc(np.zeros(5))
    with pytest.raises(SessionInputError):
        rolling_sum(one, 0)


def test_start_hides_days_before_the_first_session() -> None:
    load = np.array([[0.0], [0.0], [50.0], [0.0]])
    p = pmc(load, np.array([2]))
    assert np.isnan(p.ctl[:2, 0]).all()
    assert p.ctl[2, 0] == pytest.approx(50 * (1 - math.exp(-1 / 42)))


def test_pai_matches_the_published_algorithm_reference() -> None:
    data = load_json("participant_pai_reference.json")
    for case in data["cases"]:
        sex = SEX_MALE if case["sex"] == "male" else SEX_FEMALE
        x = np.array([case["intensity"]])
        as_week = pai_activity_rate(x, np.array([sex], np.int8))[0] * case["minutes_per_week"]
        assert as_week == pytest.approx(case["activity_score"], rel=1e-9, abs=1e-12)
        assert pai_score(np.array([as_week]), np.array([sex], np.int8))[0] == pytest.approx(
            case["pai"], abs=1e-6
        )


def test_pai_shape_zero_saturation_and_unknown_sex() -> None:
    sex = np.array([SEX_MALE, SEX_FEMALE, SEX_UNKNOWN], np.int8)
    assert np.allclose(pai_score(np.zeros(3), sex)[:2], 0.0)
    assert math.isnan(pai_score(np.zeros(3), sex)[2])
    a, _, c0, c1, c100 = PAI_COEFFICIENTS[SEX_MALE]
    assert pai_score(np.array([1e6]), np.array([SEX_MALE], np.int8))[0] == pytest.approx(
        100 * c1 / (c100 - c0)
    )
    # below rest counts as rest (0), above HRmax as HRmax
    rate = pai_activity_rate(np.array([-0.5, 0.0, 1.0, 1.5]), np.full(4, SEX_MALE, np.int8))
    assert rate[0] == 0.0
    assert rate[1] == 0.0
    assert rate[2] == rate[3] == pytest.approx(1e-5 * a * math.expm1(PAI_COEFFICIENTS[SEX_MALE][1]))
    # per session: 10 min at 60 % HRR from 1 Hz samples equals 10 x the per-minute rate
    hr = np.full(600, 60 + 0.6 * 130.0)
    got = pai_session_score(
        hr,
        np.ones(600),
        np.array([0, 600]),
        np.array([60.0]),
        np.array([190.0]),
        np.array([SEX_MALE], np.int8),
    )
    assert got[0] == pytest.approx(10 * pai_activity_rate(np.array([0.6]), np.array([SEX_MALE], np.int8))[0])


def brute_lowest(t: np.ndarray, hr: np.ndarray, w: int, min_samples: int) -> float:
    minutes: dict[int, list[float]] = {}
    for tt, h in zip(t, hr, strict=True):
        if 30 <= h <= 240:
            minutes.setdefault(int((tt - t[0]) // 60), []).append(float(h))
    meds = {m: float(np.median(v)) for m, v in minutes.items() if len(v) >= min_samples}
    best = math.inf
    for m in meds:
        window = [meds.get(m + i) for i in range(w)]
        if all(v is not None for v in window):
            best = min(best, float(np.median(np.array(window, dtype=float))))
    return best if best < math.inf else math.nan


def test_lowest_rolling_hr_against_a_loop() -> None:
    rng = np.random.default_rng(3)
    t1 = np.arange(0.0, 1800.0)
    hr1 = 140 + 10 * np.sin(t1 / 200) + rng.normal(0, 2, t1.size)
    hr1[600:960] = 95 + rng.normal(0, 1, 360)  # six calm minutes
    hr1[700:710] = np.nan  # a short dropout inside them
    t2 = np.arange(0.0, 200.0)  # shorter than five minutes
    hr2 = np.full(200, 90.0)
    t3 = np.arange(0.0, 900.0, 3.0)  # 20 samples per minute: never enough
    hr3 = np.full(t3.size, 80.0)
    t = np.concatenate((t1, t2, t3))
    hr = np.concatenate((hr1, hr2, hr3))
    offsets = np.array([0, t1.size, t1.size + t2.size, t.size])
    got = lowest_rolling_hr(t, hr, offsets)
    assert got[0] == pytest.approx(brute_lowest(t1, hr1, 5, 30))
    assert 93 < got[0] < 97
    assert math.isnan(got[1])
    assert math.isnan(got[2])
    assert lowest_rolling_hr(np.zeros(0), np.zeros(0), np.array([0])).shape == (0,)
    assert math.isnan(lowest_rolling_hr(np.zeros(0), np.zeros(0), np.array([0, 0]))[0])


def test_vo2max_uth_and_grid_and_trends() -> None:
    # Uth et al. 2004: VO2max = 15.3 x HRmax/HRrest, e.g. 190/60 -> 48.45 ml/kg/min
    assert vo2max_uth(np.array([190.0]), np.array([60.0]))[0] == pytest.approx(48.45)
    assert math.isnan(vo2max_uth(np.array([190.0]), np.array([math.nan]))[0])
    g = to_grid(np.array([0, 0, 1]), np.array([1, 1, 0]), np.array([2.0, 3.0, math.nan]), (2, 2), "sum")
    assert g.tolist() == [[0.0, 0.0], [5.0, 0.0]]
    gm = to_grid(np.array([0, 0]), np.array([1, 1]), np.array([2.0, 3.0]), (2, 1), "min")
    assert math.isnan(gm[0, 0])
    assert gm[1, 0] == 2.0
    x = np.array([[1.0], [math.nan], [3.0], [math.nan]])
    assert rolling_nanmean(x, 2).ravel().tolist()[2:] == [3.0, 3.0]
    assert math.isnan(rolling_nanmean(x, 7, min_count=3)[3, 0])


def test_daily_series_is_consistent_with_the_parts() -> None:
    days, n = 40, 2
    rng = np.random.default_rng(9)
    load = np.where(rng.random((days, n)) < 0.5, rng.uniform(20, 150, (days, n)), 0.0)
    zeros = np.zeros((days, n))
    rhr = np.where(load > 0, 70.0, math.nan)
    x = DailyInputs(
        sessions=(load > 0).astype(float),
        load=load,
        moderate_min=zeros + 10,
        vigorous_min=zeros,
        pai_as=zeros + 0.01,
        rhr_bpm=rhr,
        rmssd_ms=np.where(np.arange(days)[:, None] % 2 == 0, zeros + 20.0, math.nan),  # 4 of 7 days
        start=np.array([0, 3]),
        sex=np.array([SEX_MALE, SEX_UNKNOWN], np.int8),
        hr_max_bpm=np.array([190.0, 180.0]),
        hr_rest_profile_bpm=np.array([55.0, math.nan]),
    )
    s = daily_series(x)
    np.testing.assert_allclose(s.ctl, pmc(load, x.start).ctl, equal_nan=True)
    assert s.vo2max_ml_kg_min[10, 0] == pytest.approx(15.3 * 190 / 55)  # profile HRrest wins
    assert s.vo2max_ml_kg_min[39, 1] == pytest.approx(15.3 * 180 / 70)  # else the resting-HR proxy
    assert np.isnan(s.pai_7d[:, 1]).all()  # unknown sex
    assert np.isnan(s.ctl[:3, 1]).all()
    assert s.ln_rmssd_7d[39, 0] == pytest.approx(math.log(20.0))
