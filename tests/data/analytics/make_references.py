"""Regenerate the peer reference values in this folder (run by hand, never by the tests).

(session_references.json is not generated: it holds published worked examples typed in from their
sources, each value with its citation; the peer values here are used for sessions as well, by
tests/analytics/test_session_metrics.py.)

The inputs are made here with a seeded NumPy generator and stored *as values* in the JSON files, so the tests
do not depend on NumPy's random streams. Each peer runs in its own throwaway venv (the peers are not project
dependencies and do not install together); run this script once with each interpreter, it fills in the part
whose library it can import and keeps the rest:

    python3 -m venv /tmp/peers  && /tmp/peers/bin/pip install neurokit2==0.2.13
    python3 -m venv /tmp/peers2 && /tmp/peers2/bin/pip install hrv-analysis==1.0.6 "nolds<0.6"
    python3 -m venv /tmp/peers3 && /tmp/peers3/bin/pip install sweat==0.25.0 "numpy<2"

(nolds 0.6 fails to import on Python 3.11; sweat 0.25 pins pandas 1.5, built against NumPy 1.)
    for py in /tmp/peers/bin/python /tmp/peers2/bin/python /tmp/peers3/bin/python; do
        $py tests/data/analytics/make_references.py
    done
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
HRV_FILE = HERE / "hrv_references.json"
POWER_FILE = HERE / "power_references.json"


def rr_inputs() -> dict[str, Any]:
    rng = np.random.default_rng(20261125)
    clean: list[list[float]] = []
    for beats, hr in ((300, 62.0), (900, 118.0), (1500, 145.0)):
        i = np.arange(beats)
        base = 60000.0 / (hr + 8.0 * np.sin(2 * np.pi * i / 180.0))
        rsa = 1.0 + 0.05 * np.sin(2 * np.pi * i / 4.2) + 0.015 * rng.standard_normal(beats)
        clean.append(np.round(base * rsa).tolist())
    artifacts: list[list[float]] = []
    for beats, hr in ((600, 75.0), (1200, 132.0)):
        i = np.arange(beats)
        rr = np.round(
            60000.0 / hr * (1.0 + 0.04 * np.sin(2 * np.pi * i / 4.5) + 0.01 * rng.standard_normal(beats))
        )
        rr[[0, 5, 6, 400, beats - 1]] = [250.0, 2400.0, 180.0, 2600.0, 150.0]  # out of range, incl. both ends
        for j in (
            50,
            200,
            201,
            202,
            203,
            350,
            500,
        ):  # ectopic beats, a run of consecutive ones, a missed beat
            rr[j] = round(rr[j] * (0.62 if j % 2 else 1.45))
        rr[120] = rr[120] * 2.0
        artifacts.append(rr.tolist())
    return {
        "recipe": "numpy default_rng(20261125); clean: RR = round(60000/(HR + 8 sin(2πi/180)) · "
        "(1 + 0.05 sin(2πi/4.2)"
        " + 0.015 N(0,1))) for (beats, HR) = (300, 62), (900, 118), (1500, 145); artifacts: (600, 75), "
        "(1200, 132)"
        " with out-of-range values, ectopic beats (×0.62/×1.45), a run of 4 and a missed beat (×2)",
        "clean_rr_ms": clean,
        "artifact_rr_ms": artifacts,
    }


def power_inputs() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    series = []
    for seconds in (1800, 600):
        t = np.arange(seconds)
        p = 180 + 120 * (np.sin(2 * np.pi * t / 240) > 0.3) + 20 * rng.standard_normal(seconds)
        p[rng.random(seconds) < 0.03] = 0.0
        series.append(np.round(np.clip(p, 0, None)).tolist())
    return {
        "recipe": "numpy default_rng(7); P = round(clip(180 + 120·[sin(2πt/240) > 0.3] + 20 N(0,1), 0)), "
        "3 % zeros;"
        " 1 Hz, 1800 and 600 samples",
        "power_w": series,
        "cp_w": 250.0,
        "w_prime_j": 20000.0,
        "ftp_w": 250.0,
    }


def load(path: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        if data.get("inputs") != inputs:
            print(f"{path.name}: inputs changed, dropping the old references")
            data = {"inputs": inputs, "references": {}}
        return data
    return {"inputs": inputs, "references": {}}


def neurokit2_refs(inputs: dict[str, Any]) -> dict[str, Any] | None:
    try:
        import neurokit2 as nk  # type: ignore[import-not-found]
    except ImportError:
        return None
    out = []
    for rr in inputs["clean_rr_ms"]:
        peaks = np.concatenate(([0], np.cumsum(np.asarray(rr, dtype=np.int64))))
        r = nk.hrv_time(peaks, sampling_rate=1000)
        out.append({k: float(r[f"HRV_{k}"].iloc[0]) for k in ("MeanNN", "SDNN", "RMSSD", "SDSD", "pNN50")})
    return {
        "library": "neurokit2",
        "version": version("neurokit2"),
        "function": "neurokit2.hrv_time(peaks, sampling_rate=1000), peaks = [0, cumsum(RR)] in ms samples",
        "clean": out,
    }


def hrvanalysis_refs(inputs: dict[str, Any]) -> dict[str, Any] | None:
    try:
        import hrvanalysis as ha  # type: ignore[import-not-found]
    except ImportError:
        return None
    time_feats = []
    freq_feats = []
    for rr in inputs["clean_rr_ms"]:
        t = ha.get_time_domain_features(rr)
        time_feats.append({k: float(t[k]) for k in ("mean_nni", "sdnn", "rmssd", "sdsd", "pnni_50")})
        f = ha.get_frequency_domain_features(
            rr, method="welch", sampling_frequency=4, interpolation_method="cubic", vlf_band=(0.0033, 0.04)
        )
        freq_feats.append({k: float(f[k]) for k in ("vlf", "lf", "hf", "lf_hf_ratio", "total_power")})
    nn = []
    for rr in inputs["artifact_rr_ms"]:
        cleaned = ha.get_nn_intervals(
            rr,
            low_rri=300,
            high_rri=2000,
            interpolation_method="linear",
            ectopic_beats_removal_method="malik",
            verbose=False,
        )
        nn.append([float(x) for x in cleaned])
    return {
        "library": "hrv-analysis",
        "version": version("hrv-analysis"),
        "functions": {
            "time": "hrvanalysis.get_time_domain_features(rr)",
            "frequency": "hrvanalysis.get_frequency_domain_features(rr, method='welch', "
            "sampling_frequency=4, "
            "interpolation_method='cubic', vlf_band=(0.0033, 0.04)) -- scipy.signal.welch(window='hann', "
            "nperseg=256 default, nfft=4096) after removing the mean",
            "cleaning": "hrvanalysis.get_nn_intervals(rr, low_rri=300, high_rri=2000, "
            "interpolation_method='linear', "
            "ectopic_beats_removal_method='malik')",
        },
        "clean_time": time_feats,
        "clean_frequency": freq_feats,
        "artifact_nn_ms": nn,
    }


def sweat_refs(inputs: dict[str, Any]) -> dict[str, Any] | None:
    try:
        from sweat.metrics.core import rolling_mean  # type: ignore[import-not-found]
        from sweat.metrics.power import stress_score  # type: ignore[import-not-found]
        from sweat.pdm.w_prime_balance import w_prime_balance  # type: ignore[import-not-found]
    except ImportError:
        return None
    out = []
    for p in inputs["power_w"]:
        y = np.asarray(p, dtype=np.float64)
        roll = rolling_mean(y, window=30)  # pandas rolling(30, min_periods=1).mean()
        np_full = float(np.mean(roll[29:] ** 4) ** 0.25)
        wbal = w_prime_balance(y, inputs["cp_w"], inputs["w_prime_j"], algorithm="froncioni-skiba-clarke")
        out.append(
            {
                "np_full_windows_w": np_full,
                "tss_for_np_full": float(stress_score(np_full, inputs["ftp_w"], y.shape[0])),
                "wbal_min_j": float(np.min(wbal)),
            }
        )
    return {
        "library": "sweat",
        "version": version("sweat"),
        "functions": {
            "np": "mean(sweat.metrics.core.rolling_mean(P, window=30)[29:] ** 4) ** 0.25 (full 30-s windows)",
            "tss": "sweat.metrics.power.stress_score(np, ftp, duration_s)",
            "wbal": "min(sweat.pdm.w_prime_balance.w_prime_balance(P, cp, w_prime, "
            "algorithm='froncioni-skiba-clarke'))",
        },
        "series": out,
    }


def main() -> None:
    hrv = load(HRV_FILE, rr_inputs())
    power = load(POWER_FILE, power_inputs())
    done = []
    for name, refs in (
        ("neurokit2", neurokit2_refs(hrv["inputs"])),
        ("hrv-analysis", hrvanalysis_refs(hrv["inputs"])),
    ):
        if refs is not None:
            hrv["references"][name] = refs
            done.append(name)
    refs = sweat_refs(power["inputs"])
    if refs is not None:
        power["references"]["sweat"] = refs
        done.append("sweat")
    HRV_FILE.write_text(json.dumps(hrv, indent=1) + "\n")
    POWER_FILE.write_text(json.dumps(power, indent=1) + "\n")
    print(f"{sys.executable}: wrote references of {done or 'no peer (none importable)'}")


if __name__ == "__main__":
    main()
