"""HRV: RR cleaning, time and frequency domain against stored peer references (neurokit2, hrv-analysis),
scipy's spline and Welch, and edge cases.

References: tests/data/analytics/hrv_references.json (inputs stored as values; regenerate with
tests/data/analytics/make_references.py in throwaway venvs). Convention differences to the peers are
converted explicitly below, never hidden in a tolerance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.interpolate import CubicSpline
from scipy.signal import welch

from analytics import hrv

REFS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "analytics" / "hrv_references.json").read_text()
)
CLEAN: list[list[float]] = REFS["inputs"]["clean_rr_ms"]
ARTIFACTS: list[list[float]] = REFS["inputs"]["artifact_rr_ms"]


def _csr(series: list[list[float]]) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    offsets = np.zeros(len(series) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in series])
    values = np.concatenate([np.asarray(s, dtype=np.float64) for s in series]) if series else np.zeros(0)
    return values, offsets


# ------------------------------------------------------------------------------------------------ cleaning


def test_cleaning_equals_hrv_analysis_get_nn_intervals() -> None:
    """hrv-analysis 1.0.6 get_nn_intervals(low_rri=300, high_rri=2000, linear, malik): same NN, abs 1e-9.
    An empty session in the middle checks that nothing leaks across sessions."""
    ref = REFS["references"]["hrv-analysis"]
    rr, offsets = _csr([ARTIFACTS[0], [], ARTIFACTS[1]])
    clean = hrv.clean_rr(rr, offsets)
    np.testing.assert_allclose(
        clean.nn_ms[offsets[0] : offsets[1]], ref["artifact_nn_ms"][0], rtol=0, atol=1e-9
    )
    np.testing.assert_allclose(
        clean.nn_ms[offsets[2] : offsets[3]], ref["artifact_nn_ms"][1], rtol=0, atol=1e-9
    )
    # every changed beat is reported as corrected, and the share is over all beats of the session
    changed = clean.nn_ms != rr
    assert not (changed & ~clean.corrected).any()
    assert clean.corrected_pct[0] == pytest.approx(
        100 * clean.corrected[: offsets[1]].sum() / len(ARTIFACTS[0])
    )
    assert math.isnan(clean.corrected_pct[1])
    assert 0 < clean.corrected_pct[2] < 5


def test_malik_rule_skips_the_beat_after_an_ectopic_one() -> None:
    # 500 fails against 800 (> 20 %) and is flagged; the 800 after it is not tested;
    # 1200 fails against 800 → flagged
    rr = np.array([800.0, 500.0, 800.0, 1200.0, 800.0, 790.0])
    flags = hrv.malik_flags(rr, np.array([0, 6], dtype=np.int64))
    assert flags.tolist() == [False, True, False, True, False, False]
    clean = hrv.clean_rr(rr, np.array([0, 6], dtype=np.int64))
    assert clean.nn_ms.tolist() == [800.0, 800.0, 800.0, 800.0, 800.0, 790.0]
    assert clean.corrected_pct[0] == pytest.approx(100 * 2 / 6)


def test_range_artifacts_at_both_ends_hold_the_nearest_value() -> None:
    rr = np.array([250.0, 800.0, 810.0, 2500.0])
    clean = hrv.clean_rr(rr, np.array([0, 4], dtype=np.int64))
    assert clean.nn_ms.tolist() == [800.0, 800.0, 810.0, 810.0]
    assert clean.corrected.tolist() == [True, False, False, True]


# ------------------------------------------------------------------------------------------------ time domain


def test_time_domain_against_neurokit2_and_hrv_analysis() -> None:
    nk = REFS["references"]["neurokit2"]
    ha = REFS["references"]["hrv-analysis"]
    assert nk["version"] == "0.2.13"
    assert ha["version"] == "1.0.6"
    rr, offsets = _csr(CLEAN)
    td = hrv.time_domain(rr, offsets)
    for i, series in enumerate(CLEAN):
        n = len(series)
        k, h = nk["clean"][i], ha["clean_time"][i]
        assert td.mean_nn_ms[i] == pytest.approx(k["MeanNN"], rel=1e-12)
        assert td.sdnn_ms[i] == pytest.approx(k["SDNN"], rel=1e-9)  # both ddof=1
        assert td.rmssd_ms[i] == pytest.approx(k["RMSSD"], rel=1e-9)
        assert td.sdsd_ms[i] == pytest.approx(k["SDSD"], rel=1e-9)  # neurokit2: ddof=1 as ours
        # neurokit2 divides pNN50 by N beats, metrics.md (and hrv-analysis) by the N − 1 differences
        assert td.pnn50_pct[i] == pytest.approx(k["pNN50"] * n / (n - 1), rel=1e-12)
        assert td.pnn50_pct[i] == pytest.approx(h["pnni_50"], rel=1e-12)
        assert td.sdnn_ms[i] == pytest.approx(h["sdnn"], rel=1e-9)
        assert td.rmssd_ms[i] == pytest.approx(h["rmssd"], rel=1e-9)
        # hrv-analysis's SDSD uses ddof=0 over the N − 1 differences
        assert td.sdsd_ms[i] == pytest.approx(h["sdsd"] * math.sqrt((n - 1) / (n - 2)), rel=1e-9)


def test_time_domain_edge_cases() -> None:
    sessions = [[], [800.0], [800.0, 860.0], [700.0] * 50, [800.0, 900.0, 760.0], [math.nan] * 3]
    rr, offsets = _csr(sessions)
    td = hrv.time_domain(rr, offsets)
    assert np.isnan([td.mean_nn_ms[0], td.sdnn_ms[0], td.rmssd_ms[0], td.pnn50_pct[0]]).all()
    assert td.mean_nn_ms[1] == 800.0
    assert np.isnan([td.sdnn_ms[1], td.rmssd_ms[1], td.sdsd_ms[1], td.pnn50_pct[1]]).all()
    assert td.sdnn_ms[2] == pytest.approx(np.std([800, 860], ddof=1))
    assert td.rmssd_ms[2] == 60.0
    assert td.pnn50_pct[2] == 100.0
    assert math.isnan(td.sdsd_ms[2])  # one difference: no ddof=1 spread
    assert (td.sdnn_ms[3], td.rmssd_ms[3], td.sdsd_ms[3], td.pnn50_pct[3]) == (0.0, 0.0, 0.0, 0.0)
    assert td.sdsd_ms[4] == pytest.approx(np.std([100.0, -140.0], ddof=1))
    assert td.pnn50_pct[4] == 100.0
    assert np.isnan(td.mean_nn_ms[5])


def test_all_artifacts_give_nan_and_full_correction() -> None:
    rr, offsets = _csr([[100.0, 5000.0, math.nan]])
    clean = hrv.clean_rr(rr, offsets)
    assert clean.corrected_pct[0] == 100.0
    assert np.isnan(clean.nn_ms).all()
    assert math.isnan(hrv.time_domain(clean.nn_ms, offsets).sdnn_ms[0])
    assert math.isnan(hrv.frequency_domain(clean.nn_ms, offsets).lf_ms2[0])


# ------------------------------------------------------------------------------------------------ frequency


def test_frequency_domain_against_hrv_analysis_welch_cubic() -> None:
    """hrv-analysis get_frequency_domain_features(welch, 4 Hz, cubic): scipy welch with its default
    nperseg=256 and nfft=4096, so we call ours with those settings (our default is 1024/1024)."""
    ref = REFS["references"]["hrv-analysis"]["clean_frequency"]
    rr, offsets = _csr(CLEAN)
    fd = hrv.frequency_domain(rr, offsets, nperseg=256, nfft=4096)
    for i in range(len(CLEAN)):
        assert fd.vlf_ms2[i] == pytest.approx(ref[i]["vlf"], rel=1e-9)
        assert fd.lf_ms2[i] == pytest.approx(ref[i]["lf"], rel=1e-9)
        assert fd.hf_ms2[i] == pytest.approx(ref[i]["hf"], rel=1e-9)
        assert fd.lf_hf[i] == pytest.approx(ref[i]["lf_hf_ratio"], rel=1e-9)
        assert fd.total_ms2[i] == pytest.approx(ref[i]["total_power"], rel=1e-9)


def test_default_spectrum_equals_scipy_cubicspline_and_welch() -> None:
    """Our defaults (256-s Hann windows, 50 % overlap) against scipy.interpolate.CubicSpline +
    scipy.signal.welch per session; 200 beats at 145 bpm (83 s) are shorter than one window → NaN."""
    rr, offsets = _csr([CLEAN[1], [], CLEAN[2][:200], CLEAN[2], CLEAN[0]])
    fd = hrv.frequency_domain(rr, offsets, chunk_beats=1000)  # small chunks: several solves
    for row, series in ((0, CLEAN[1]), (3, CLEAN[2]), (4, CLEAN[0])):
        y = np.asarray(series)
        x = np.cumsum(y) / 1000.0
        x -= x[0]
        grid = np.arange(0.0, x[-1], 0.25)
        f, psd = welch(CubicSpline(x, y)(grid), fs=4.0, window="hann", nperseg=1024)
        for value, (lo, hi) in zip(
            (fd.vlf_ms2[row], fd.lf_ms2[row], fd.hf_ms2[row]), hrv.BANDS_HZ, strict=True
        ):
            m = (f >= lo) & (f < hi)
            assert value == pytest.approx(float(np.trapezoid(psd[m], f[m])), rel=1e-9)
    assert np.isnan([fd.lf_ms2[1], fd.lf_ms2[2]]).all()


def _scipy_band_powers(series: list[float], fs_hz: float, nperseg: int, bands: hrv.Bands) -> list[float]:
    y = np.asarray(series)
    x = np.cumsum(y) / 1000.0
    x -= x[0]
    grid = np.arange(0.0, x[-1], 1.0 / fs_hz)
    f, psd = welch(CubicSpline(x, y)(grid), fs=fs_hz, window="hann", nperseg=nperseg)
    return [float(np.trapezoid(psd[(f >= lo) & (f < hi)], f[(f >= lo) & (f < hi)])) for lo, hi in bands]


@pytest.mark.parametrize(("fs_hz", "nperseg"), [(4.0, 256), (4.0, 255), (4.0, 1024), (10.0, 512)])
def test_spectrum_equals_scipy_for_odd_segments_knots_on_the_grid_and_bands_to_nyquist(
    fs_hz: float, nperseg: int
) -> None:
    """The strided-view Welch (segments on the session's rows, Hann and detrend applied to the spectrum)
    against scipy, for even and odd segment lengths, bands that reach the Nyquist bin (where the window needs
    the mirrored bin), a session whose beats all fall exactly on grid points, and a 10 Hz grid (up to 20
    grid points per beat interval)."""
    on_grid = [500.0 + 250.0 * (k % 3 == 0) for k in range(700)]  # 500/750 ms: every beat on a grid point
    sessions = [CLEAN[2], on_grid, CLEAN[0]]
    nyquist = fs_hz / 2.0
    bands: hrv.Bands = ((0.0, 0.15), (0.15, 1.0), (1.0, nyquist + 0.01))
    rr, offsets = _csr(sessions)
    fd = hrv.frequency_domain(rr, offsets, fs_hz=fs_hz, nperseg=nperseg, bands=bands, chunk_beats=1500)
    for row, series in enumerate(sessions):
        want = _scipy_band_powers(series, fs_hz, nperseg, bands)
        got = (fd.vlf_ms2[row], fd.lf_ms2[row], fd.hf_ms2[row])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=f"session {row}")


def test_batched_spline_equals_scipy_cubicspline() -> None:
    rng = np.random.default_rng(3)
    lengths = [4, 5, 37, 4]
    xs, ys = [], []
    for n in lengths:
        x = np.cumsum(rng.uniform(0.3, 1.2, n))
        xs.append(x - x[0])
        ys.append(rng.normal(800, 50, n))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    c0, c1, c2, c3 = hrv.spline_not_a_knot(np.concatenate(xs), np.concatenate(ys), offsets)
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        a, b = offsets[i], offsets[i + 1] - 1
        ref = CubicSpline(x, y).c
        np.testing.assert_allclose(np.stack([c0[a:b], c1[a:b], c2[a:b], c3[a:b]]), ref, rtol=1e-9, atol=1e-9)


def test_constant_series_has_zero_power_and_no_ratio() -> None:
    rr, offsets = _csr([[800.0] * 600])
    fd = hrv.frequency_domain(rr, offsets)
    assert fd.lf_ms2[0] == pytest.approx(0.0, abs=1e-18)
    assert fd.hf_ms2[0] == pytest.approx(0.0, abs=1e-18)
    assert math.isnan(fd.lf_hf[0])


def test_band_weights_are_the_trapezoid_over_lower_inclusive_bins() -> None:
    freq = np.arange(0, 0.5, 0.01)
    psd = np.random.default_rng(0).random(freq.size)
    m = (freq >= 0.04) & (freq < 0.15)
    assert psd @ hrv.band_weights(freq, (0.04, 0.15)) == pytest.approx(np.trapezoid(psd[m], freq[m]))
    assert hrv.band_weights(freq, (0.041, 0.049)).sum() == 0.0  # no bin or one bin: no area


def test_bad_parameters_are_refused() -> None:
    from analytics.errors import MetricParameterError

    rr, offsets = _csr([CLEAN[0]])
    with pytest.raises(MetricParameterError):
        hrv.frequency_domain(rr, offsets, nperseg=256, nfft=128)
    with pytest.raises(MetricParameterError):
        hrv.frequency_domain(rr, offsets, nperseg=4)
