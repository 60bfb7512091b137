"""compute(), the vectorised and blocked computation of every session metric, checked three ways:

1. against published worked examples (tests/data/analytics/session_references.json: Banister TRIMP, Keytel,
   Karvonen and ACSM intensity bands, ACSM walking and cycling, Coggan NP/IF/TSS, Cole's heart-rate
   recovery), each value with its source, run through compute() as sessions;
2. against peer libraries run in throwaway environments (hrv_references.json: neurokit2 and hrv-analysis
   for HRV time domain; power_references.json: sweat for NP, TSS and W′ balance; make_references.py), and
   SciPy's CubicSpline and Welch for the HRV spectrum;
3. against the straightforward per-session loop of tests/analytics/naive.py (its constants written out from
   their sources, not imported) on random CSR layouts including empty sessions, gaps, NaNs and values
   exactly on zone edges: the vectorisation and blocking, not the science;

plus the row() contract and the blocking."""

from __future__ import annotations

import json
import math
import platform
import resource
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.interpolate import CubicSpline
from scipy.signal import welch

from analytics.batch import KINDS, SessionBatch, SessionInput
from analytics.session_metrics import ALGORITHM_VERSION, SessionMetrics, compute, keep_block_memory
from tests.analytics import naive

DATA = Path(__file__).resolve().parents[1] / "data" / "analytics"
PUBLISHED: dict[str, Any] = json.loads((DATA / "session_references.json").read_text())
HRV_REFS: dict[str, Any] = json.loads((DATA / "hrv_references.json").read_text())
POWER_REFS: dict[str, Any] = json.loads((DATA / "power_references.json").read_text())
SEX = {"male": 1, "female": 0}


def _from_recipe(recipe: dict[str, Any]) -> SessionInput:
    """A 1 Hz session from constant (or linear, ``[from, to]``) segments of a reference case."""
    channels: dict[str, list[np.ndarray]] = {}
    n = sum(seg["seconds"] for seg in recipe["segments"])
    for seg in recipe["segments"]:
        for name in ("hr_bpm", "power_w", "speed_kmh", "incline_pct"):
            value = seg.get(name)
            part = (
                np.full(seg["seconds"], math.nan)
                if value is None
                else np.linspace(value[0], value[1], seg["seconds"])
                if isinstance(value, list)
                else np.full(seg["seconds"], float(value))
            )
            channels.setdefault(name, []).append(part)
    arrays = {k: np.concatenate(v) for k, v in channels.items() if not np.isnan(np.concatenate(v)).all()}
    return SessionInput(
        t_s=1.7e9 + np.arange(n, dtype=np.float64),
        kind=recipe["kind"],
        sex=SEX.get(recipe.get("sex", ""), -1),
        age_y=recipe.get("age_y", math.nan),
        weight_kg=recipe.get("weight_kg", math.nan),
        hr_rest_bpm=recipe.get("hr_rest_bpm", math.nan),
        hr_max_bpm=recipe.get("hr_max_bpm", math.nan),
        ftp_w=recipe.get("ftp_w", math.nan),
        **arrays,
    )


def test_published_worked_examples() -> None:
    """Every case of session_references.json through compute() in one batch (blocks of a few sessions, so
    the examples also cross block edges), each expected value within its source's tolerance."""
    cases = PUBLISHED["cases"]
    batch = SessionBatch.from_sessions([_from_recipe(c["session"]) for c in cases])
    metrics = compute(batch, block_samples=4000)
    checked = 0
    for i, case in enumerate(cases):
        for name, want in case["expected"].items():
            got = getattr(metrics, name)[i]
            where = f"{case['name']}: {name} ({want['source']})"
            if want["value"] is None:
                assert np.isnan(got).all(), where
            else:
                np.testing.assert_allclose(
                    got, want["value"], rtol=want.get("rel", 0.0), atol=want.get("abs", 0.0), err_msg=where
                )
            checked += 1
    assert checked >= 50


def _strap_with_rr(rr_ms: list[float]) -> SessionInput:
    """A strap session carrying ``rr_ms``: one sample per second with the beats that ended in it."""
    beat_end_s = np.cumsum(rr_ms) / 1000.0
    seconds = math.ceil(beat_end_s[-1])
    return SessionInput(
        t_s=1.7e9 + np.arange(seconds, dtype=np.float64),
        hr_bpm=np.full(seconds, 60000.0 / float(np.mean(rr_ms))),
        rr_ms=np.asarray(rr_ms, dtype=np.float64),
        kind="hr_strap",
        sex=1,
        age_y=40.0,
        weight_kg=80.0,
    )


def test_hrv_against_neurokit2_hrv_analysis_and_scipy() -> None:
    """The clean RR series of hrv_references.json as strap sessions through compute(): time domain equals
    neurokit2 0.2.13 and hrv-analysis 1.0.6 (their pNN50 and SDSD conventions converted as in test_hrv.py);
    the spectrum equals SciPy's CubicSpline at 4 Hz and Welch (Hann, 1024 points) with Task Force bands."""
    series = HRV_REFS["inputs"]["clean_rr_ms"]
    nk = HRV_REFS["references"]["neurokit2"]["clean"]
    ha = HRV_REFS["references"]["hrv-analysis"]["clean_time"]
    metrics = compute(SessionBatch.from_sessions([_strap_with_rr(rr) for rr in series]))
    for i, rr in enumerate(series):
        n = len(rr)
        assert metrics.rr_corrected_pct[i] == 0.0
        assert metrics.hrv_beats[i] == n
        assert metrics.hrv_mean_nn_ms[i] == pytest.approx(nk[i]["MeanNN"], rel=1e-12)
        assert metrics.hrv_sdnn_ms[i] == pytest.approx(nk[i]["SDNN"], rel=1e-9)
        assert metrics.hrv_rmssd_ms[i] == pytest.approx(ha[i]["rmssd"], rel=1e-9)
        assert metrics.hrv_sdsd_ms[i] == pytest.approx(nk[i]["SDSD"], rel=1e-9)
        assert metrics.hrv_pnn50_pct[i] == pytest.approx(ha[i]["pnni_50"], rel=1e-12)
        x = np.cumsum(np.asarray(rr) / 1000.0)
        grid = np.arange(0.0, x[-1] - x[0], 0.25)
        if grid.size < 1024:
            assert math.isnan(metrics.hrv_lf_ms2[i])  # shorter than one Welch segment
            continue
        f, psd = welch(CubicSpline(x - x[0], rr)(grid), fs=4.0, window="hann", nperseg=1024)
        bands = [np.trapezoid(psd[(f >= lo) & (f < hi)], f[(f >= lo) & (f < hi)]) for lo, hi in TASK_FORCE]
        assert metrics.hrv_vlf_ms2[i] == pytest.approx(bands[0], rel=1e-9)
        assert metrics.hrv_lf_ms2[i] == pytest.approx(bands[1], rel=1e-9)
        assert metrics.hrv_hf_ms2[i] == pytest.approx(bands[2], rel=1e-9)
        assert metrics.hrv_lf_hf[i] == pytest.approx(bands[1] / bands[2], rel=1e-9)
        assert metrics.hrv_total_ms2[i] == pytest.approx(sum(bands), rel=1e-9)


TASK_FORCE = ((0.0033, 0.04), (0.04, 0.15), (0.15, 0.40))  # VLF, LF, HF in Hz (Task Force 1996)


def test_power_against_sweat() -> None:
    """The power series of power_references.json as bike sessions through compute(): NP and TSS equal sweat
    0.25.0 (NP over full 30-s windows); W′ balance with CP = FTP within 0.1 % of W′ of sweat's Euler-step
    form (test_power.py explains the difference)."""
    inputs, refs = POWER_REFS["inputs"], POWER_REFS["references"]["sweat"]
    assert (inputs["cp_w"], inputs["ftp_w"], inputs["w_prime_j"]) == (250.0, 250.0, 20000.0)
    sessions = [
        SessionInput(
            t_s=1.7e9 + np.arange(len(p), dtype=np.float64), power_w=np.asarray(p), kind="bike", ftp_w=250.0
        )
        for p in inputs["power_w"]
    ]
    metrics = compute(SessionBatch.from_sessions(sessions))
    for i, ref in enumerate(refs["series"]):
        p = np.asarray(inputs["power_w"][i])
        assert metrics.avg_power_w[i] == pytest.approx(float(np.mean(p)), rel=1e-12)
        assert metrics.max_power_w[i] == float(np.max(p))
        assert metrics.np_w[i] == pytest.approx(ref["np_full_windows_w"], rel=1e-12)
        assert metrics.if_[i] == pytest.approx(ref["np_full_windows_w"] / 250.0, rel=1e-12)
        assert metrics.tss[i] == pytest.approx(ref["tss_for_np_full"], rel=1e-12)
        assert metrics.wbal_min_j[i] == pytest.approx(ref["wbal_min_j"], abs=0.001 * 20000.0)
        assert metrics.moving_s[i] == float(np.count_nonzero(p > 0))


def _assert_same(metrics: SessionMetrics, batch: SessionBatch) -> None:
    for i in range(batch.n):
        expected = naive.session_metrics(batch.session(i))
        for name in metrics.names():
            got = getattr(metrics, name)[i]
            want = expected[name]
            np.testing.assert_allclose(
                got, want, rtol=1e-9, atol=1e-7, equal_nan=True, err_msg=f"session {i} metric {name}"
            )


@st.composite
def _session(draw: st.DrawFn) -> SessionInput:
    n = draw(st.integers(0, 70))
    steps = draw(st.lists(st.sampled_from([1.0, 1.0, 1.0, 0.5, 2.0, 7.0, 90.0]), min_size=n, max_size=n))
    t = 1.7e9 + np.cumsum(np.asarray(steps, dtype=np.float64))
    # heart rates include values exactly on zone edges for HRmax 190 (95, 114, 133, 152, 171) and invalid ones
    hr_pool = st.sampled_from([95.0, 114.0, 133.0, 152.0, 171.0, 159.6, 25.0, 250.0, math.nan])
    hr_vals = draw(st.lists(st.one_of(hr_pool, st.floats(40, 200)), min_size=n, max_size=n))
    kind = draw(st.sampled_from([*KINDS, None]))
    power = draw(st.lists(st.one_of(st.floats(0, 600), st.just(math.nan)), min_size=n, max_size=n))
    speed = draw(st.lists(st.one_of(st.floats(0, 16), st.just(math.nan)), min_size=n, max_size=n))
    with_power = draw(st.booleans())
    with_speed = draw(st.booleans())
    counter = np.cumsum(draw(st.lists(st.floats(-5, 10), min_size=n, max_size=n)))
    rr_n = draw(st.integers(0, 60))
    rr = draw(
        st.lists(
            st.one_of(st.floats(350, 1100), st.sampled_from([200.0, 2500.0, 1500.0, math.nan])),
            min_size=rr_n,
            max_size=rr_n,
        )
    )
    return SessionInput(
        t_s=t,
        hr_bpm=np.asarray(hr_vals),
        power_w=np.asarray(power) if with_power else None,
        speed_kmh=np.asarray(speed) if with_speed else None,
        incline_pct=np.full(n, draw(st.sampled_from([-2.0, 0.0, 5.0, math.nan]))),
        cadence_rpm=None,
        distance_m=counter if draw(st.booleans()) else None,
        energy_kcal=counter / 10 if draw(st.booleans()) else None,
        rr_ms=np.asarray(rr),
        kind=kind,
        hr_rest_bpm=draw(st.sampled_from([60.0, 45.0, math.nan])),
        hr_max_bpm=draw(st.sampled_from([190.0, math.nan])),
        age_y=draw(st.sampled_from([35.0, 62.0, math.nan])),
        sex=draw(st.sampled_from([0, 1, -1])),
        weight_kg=draw(st.sampled_from([70.0, 95.5, math.nan])),
        ftp_w=draw(st.sampled_from([250.0, math.nan])),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_session(), min_size=0, max_size=6))
def test_vectorised_equals_per_session_loop(sessions: list[SessionInput]) -> None:
    batch = SessionBatch.from_sessions(sessions)
    _assert_same(compute(batch), batch)


def _long_session(rng: np.random.Generator, seconds: int, kind: str, artifacts: bool) -> SessionInput:
    t = 1.7e9 + np.arange(seconds, dtype=np.float64)
    hr_bpm = 110 + 35 * np.sin(np.arange(seconds) / 400) + rng.normal(0, 2, seconds)
    beats = int(seconds * 1.9)
    i = np.arange(beats)
    rr = 60000 / (110 + 30 * np.sin(i / 700)) * (1 + 0.04 * np.sin(2 * np.pi * i / 4.3))
    rr += rng.normal(0, 8, beats)
    if artifacts:
        bad = rng.choice(beats, beats // 200, replace=False)
        rr[bad] *= rng.choice([0.6, 1.5, 3.0], bad.size)
    power = np.clip(200 + 80 * np.sin(np.arange(seconds) / 60), 0, None)
    power[-150:] = 0.0
    return SessionInput(
        t_s=t,
        hr_bpm=hr_bpm,
        power_w=power if kind == "bike" else None,
        speed_kmh=np.where(power > 0, 9.0, 0.0) if kind == "treadmill" else None,
        incline_pct=np.full(seconds, 2.0) if kind == "treadmill" else None,
        rr_ms=rr,
        kind=kind,
        hr_rest_bpm=55.0,
        age_y=40.0,
        sex=1,
        weight_kg=80.0,
        ftp_w=230.0,
    )


def test_long_sessions_with_spectrum_match_the_loop() -> None:
    rng = np.random.default_rng(5)
    sessions = [
        _long_session(rng, 900, "bike", artifacts=True),
        SessionInput(t_s=[]),
        _long_session(rng, 600, "treadmill", artifacts=False),
        _long_session(rng, 100, "hr_strap", artifacts=False),  # too short for a spectrum
        _long_session(rng, 1200, "rower", artifacts=True),
    ]
    batch = SessionBatch.from_sessions(sessions)
    metrics = compute(batch)
    _assert_same(metrics, batch)
    assert np.isfinite(metrics.hrv_lf_ms2[[0, 2, 4]]).all()
    assert np.isnan(metrics.hrv_lf_ms2[[1, 3]]).all()
    assert np.isfinite(metrics.hrr60_bpm[0])
    # end of exercise = last sample with power > 0 (150 zero-power samples follow); HR 60 s later
    hr0 = np.asarray(sessions[0].hr_bpm, dtype=np.float64)
    assert metrics.hrr60_bpm[0] == pytest.approx(hr0[-151] - hr0[-91])
    assert metrics.hrr120_bpm[0] == pytest.approx(hr0[-151] - hr0[-31])


def test_row_is_json_ready() -> None:
    rng = np.random.default_rng(1)
    batch = SessionBatch.from_sessions([_long_session(rng, 400, "bike", False), SessionInput(t_s=[])])
    metrics = compute(batch)
    row = metrics.row(0)
    assert set(row) == set(metrics.names())
    assert isinstance(row["zone5_s"], list)
    assert len(row["zone5_s"]) == 5
    json.dumps(row, allow_nan=False)
    empty = metrics.row(1)
    assert empty["duration_s"] == 0.0
    assert empty["hr_avg_bpm"] is None
    assert empty["zone5_s"] is None
    json.dumps(empty, allow_nan=False)
    assert ALGORITHM_VERSION.count(".") == 2


def test_empty_batch() -> None:
    metrics = compute(SessionBatch.from_sessions([]))
    assert metrics.n == 0
    assert metrics.zone5_s.shape == (0, 5)


def test_blocks_and_threads_do_not_change_results() -> None:
    rng = np.random.default_rng(9)
    sessions = [
        _long_session(rng, 300 + 50 * i, ("bike", "treadmill", "rower")[i % 3], i % 2 == 0) for i in range(7)
    ]
    sessions.insert(3, SessionInput(t_s=[]))
    batch = SessionBatch.from_sessions(sessions)
    whole = compute(batch, block_samples=1 << 30)
    for block, workers in ((500, 1), (2000, 2), (1, 1)):
        timings: dict[str, float] = {}
        part = compute(batch, timings, block_samples=block, workers=workers)
        assert set(timings) >= {"quality", "hr", "energy", "power", "hrv_time", "hrv_frequency"}
        for name in whole.names():
            np.testing.assert_allclose(
                getattr(part, name), getattr(whole, name), rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=name
            )


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc thresholds are a glibc setting")
def test_block_temporaries_reuse_memory_without_page_faults() -> None:
    """keep_block_memory(): 100 MiB of freed temporaries (1 MiB arrays, like a block's) are reused by the
    next round instead of being returned to the kernel and faulted in again (glibc's own thresholds trim
    above 64 MiB at most: about 25,000 page faults per round, measured 33,000–51,000 for two rounds)."""
    assert keep_block_memory()

    def one_round() -> None:
        arrays = [np.ones((1 << 20) // 8) for _ in range(100)]
        assert sum(float(a[-1]) for a in arrays) == 100.0

    one_round()  # the heap grows to hold them once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    one_round()
    one_round()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 1000
