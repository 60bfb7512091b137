"""Benchmark: per-session metrics of many one-hour 1 Hz sessions with RR intervals, in one run.

    python bench/bench_analytics.py [--sessions 10000] [--seconds 3600] [--naive 20] [--peer 20]
                                    [--peer-python /tmp/peers/bin/python ...]

Prints, in the same run:
- the machine's limit: one pass over the 36 M per-sample floats (``arr.sum()`` and ``np.add.reduceat`` by
  session), i.e. the memory-bandwidth floor of any metric that reads a column once;
- ``analytics.session_metrics.compute`` on the whole batch: seconds per stage, samples/s, RR beats/s, ms per
  session and peak RSS;
- the naive per-session loop (``tests/analytics/naive.py``) on a subset, extrapolated per session;
- a peer HRV library on a subset (time + frequency domain from the same RR), run in its own interpreter
  because peers are not project dependencies: pass ``--peer-python`` (or ``VITALAB_PEER_PYTHON``) pointing at
  a throwaway venv, e.g. ``python3 -m venv /tmp/peers && /tmp/peers/bin/pip install neurokit2`` and/or
  ``python3 -m venv /tmp/peers2 && /tmp/peers2/bin/pip install hrv-analysis "nolds<0.6"`` (hrv-analysis
  1.0.6 does not import with nolds 0.6.3: "'nolds.datasets' is not a package"; it uses nolds only for
  non-linear indices, not measured here). Without one the peer comparison is skipped (and the command to set
  it up is printed).

Targets (issue 5): whole batch < 60 s on this 2-core machine; ≥ 20× faster per session than the peer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytics.batch import KIND_CODE, SessionBatch
from analytics.session_metrics import BLOCK_SAMPLES, compute
from tests.analytics import naive  # the naive baseline is test code, not part of the package

F64 = NDArray[np.float64]

PEER_SCRIPT = r"""
import json, sys, time, warnings
import numpy as np
warnings.filterwarnings("ignore")
data = np.load(sys.argv[1])
rr_ms, off = data["rr_ms"], data["rr_offsets"]
results = {}
try:
    import neurokit2 as nk
    t0 = time.perf_counter()
    for i in range(off.shape[0] - 1):
        rr = rr_ms[off[i]:off[i + 1]]
        peaks = np.concatenate(([0], np.cumsum(np.round(rr)).astype(np.int64)))
        nk.hrv_time(peaks, sampling_rate=1000)
        nk.hrv_frequency(peaks, sampling_rate=1000, interpolation_rate=4)
    results["neurokit2 %s hrv_time+hrv_frequency(interpolation_rate=4)" % nk.__version__] = (
        (time.perf_counter() - t0) / (off.shape[0] - 1))
except ImportError:
    pass
try:
    import hrvanalysis as ha
    from importlib.metadata import version
    t0 = time.perf_counter()
    for i in range(off.shape[0] - 1):
        rr = list(rr_ms[off[i]:off[i + 1]])
        nn = ha.get_nn_intervals(rr, verbose=False)
        ha.get_time_domain_features(nn)
        ha.get_frequency_domain_features(nn, interpolation_method="cubic")
    results["hrv-analysis %s get_nn_intervals+time+frequency(cubic)" % version("hrv-analysis")] = (
        (time.perf_counter() - t0) / (off.shape[0] - 1))
except ImportError:
    pass
print(json.dumps(results))
"""


def generate(n: int, seconds: int, seed: int) -> SessionBatch:
    """Seeded, vectorised synthetic sessions: warm-up, intervals, a 3-minute cool-down without work, HR
    dropouts, RR intervals (~1 per beat) with respiratory modulation, noise and 0.3 % artifacts."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(
        np.array([KIND_CODE["treadmill"], KIND_CODE["bike"], KIND_CODE["rower"], KIND_CODE["hr_strap"]]), n
    ).astype(np.int8)
    rest = rng.uniform(50, 70, n)
    hrmax = rng.uniform(175, 198, n)
    ftp = rng.uniform(150, 320, n)
    sec = np.arange(seconds, dtype=np.float64)
    t = (1.7e9 + np.arange(n, dtype=np.float64)[:, None] * (seconds + 600.0)) + sec[None, :]
    period = rng.uniform(120, 600, n)[:, None]
    level = rng.uniform(0.45, 0.75, n)[:, None]
    warm = np.minimum(sec / 600.0, 1.0)[None, :]
    intensity = warm * (level + 0.15 * np.sin(2 * np.pi * sec[None, :] / period))
    cool = sec >= seconds - 180
    intensity[:, cool] *= np.exp(-(sec[cool] - (seconds - 180)) / 60.0)[None, :]
    hr = rest[:, None] + (hrmax - rest)[:, None] * intensity + rng.normal(0, 2.0, (n, seconds))
    hr[rng.random((n, seconds)) < 0.002] = np.nan
    del warm
    work = np.where(cool[None, :], 0.0, 0.5 + 0.5 * intensity)
    is_bike = (kinds == KIND_CODE["bike"]) | (kinds == KIND_CODE["rower"])
    is_tread = kinds == KIND_CODE["treadmill"]
    power = np.where(is_bike[:, None], ftp[:, None] * work + rng.normal(0, 10, (n, seconds)), np.nan)
    np.maximum(power, 0.0, out=power)
    speed = np.where(is_tread[:, None], 12.0 * work, np.nan)
    incline = np.where(is_tread[:, None], 2.0, np.nan) * np.ones((1, seconds))
    cadence = np.where(is_bike[:, None], np.where(work > 0, 85.0, 0.0), np.nan)
    distance = np.where(is_tread[:, None], np.cumsum(np.nan_to_num(speed) / 3.6, axis=1), np.nan)
    energy = np.where(is_bike[:, None], np.cumsum(np.nan_to_num(power) / 4184.0 * 4.0, axis=1), np.nan)

    # RR: per second, floor(hr/60 + u) beats of 60000/hr ms, modulated and noisy
    hr_flat = hr.reshape(-1)
    beats = np.floor(np.nan_to_num(hr_flat) / 60.0 + rng.random(hr_flat.shape[0])).astype(np.int64)
    rr = np.repeat(60000.0 / np.where(np.isfinite(hr_flat), hr_flat, 100.0), beats)
    idx = np.arange(rr.shape[0], dtype=np.float64)
    rr *= 1.0 + 0.03 * np.sin(2 * np.pi * idx / 4.5) + 0.01 * rng.standard_normal(rr.shape[0])
    bad = rng.random(rr.shape[0]) < 0.003
    rr[bad] *= rng.choice(np.array([0.6, 1.6]), int(bad.sum()))
    del idx
    per_session = beats.reshape(n, seconds).sum(axis=1)
    rr_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_session, out=rr_offsets[1:])
    offsets = np.arange(n + 1, dtype=np.int64) * seconds
    return SessionBatch(
        offsets=offsets,
        t_s=t.reshape(-1),
        hr_bpm=hr_flat,
        power_w=power.reshape(-1),
        speed_kmh=speed.reshape(-1),
        incline_pct=incline.reshape(-1),
        cadence_rpm=cadence.reshape(-1),
        distance_m=distance.reshape(-1),
        energy_kcal=energy.reshape(-1),
        rr_offsets=rr_offsets,
        rr_ms=rr,
        kind=kinds,
        hr_rest_bpm=rest,
        hr_max_bpm=np.where(rng.random(n) < 0.5, hrmax, np.nan),
        age_y=rng.uniform(18, 70, n),
        sex=rng.choice(np.array([0, 1], dtype=np.int8), n),
        weight_kg=rng.uniform(50, 110, n),
        ftp_w=ftp,
    )


def best_of(fn: object, repeat: int = 3) -> float:
    assert callable(fn)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def peer_times(batch: SessionBatch, count: int, pythons: list[str]) -> dict[str, float]:
    sub = batch.subset(range(min(count, batch.n)))
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rr.npz"
        np.savez(path, rr_ms=sub.rr_ms, rr_offsets=sub.rr_offsets)
        for python in pythons:
            proc = subprocess.run(
                [python, "-c", PEER_SCRIPT, str(path)],
                capture_output=True,
                text=True,
                timeout=3600,
                check=False,
            )
            if proc.returncode != 0:
                print(f"  peer interpreter {python} failed: {proc.stderr.strip()[-400:]}")
                continue
            results.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=3600)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--naive", type=int, default=20, help="sessions for the naive per-session loop")
    parser.add_argument("--peer", type=int, default=20, help="sessions for the peer library")
    parser.add_argument("--block", type=int, default=BLOCK_SAMPLES, help="compute() block size (samples)")
    parser.add_argument("--workers", type=int, default=1, help="compute() threads")
    parser.add_argument(
        "--peer-python", action="append", default=[], help="interpreter with a peer installed"
    )
    args = parser.parse_args()
    pythons = args.peer_python or [p for p in os.environ.get("VITALAB_PEER_PYTHON", "").split(":") if p]

    t0 = time.perf_counter()
    batch = generate(args.sessions, args.seconds, args.seed)
    n, samples, beats = batch.n, batch.n_samples, batch.n_rr
    print(
        f"generated {n:,} sessions, {samples:,} samples, {beats:,} RR intervals "
        f"in {time.perf_counter() - t0:.1f} s"
    )

    column = batch.hr_bpm
    t_sum = best_of(lambda: column.sum())
    t_reduceat = best_of(lambda: np.add.reduceat(column, batch.offsets[:-1]))
    gbs = column.nbytes / t_sum / 1e9
    print("\nmachine limit (one pass over one per-sample column of float64)")
    print(
        f"  arr.sum()            {t_sum * 1e3:8.1f} ms  ({gbs:.1f} GB/s, "
        f"{samples / t_sum / 1e6:,.0f} M samples/s)"
    )
    print(f"  np.add.reduceat      {t_reduceat * 1e3:8.1f} ms  (per-session sums of the same column)")
    print(f"  RR column sum        {best_of(lambda: batch.rr_ms.sum()) * 1e3:8.1f} ms  ({beats:,} beats)")

    timings: dict[str, float] = {}
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    metrics = compute(batch, timings, block_samples=args.block, workers=args.workers)
    total = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_gib = usage.ru_maxrss / 1024**2
    print(
        f"\ncompute() on the whole batch (blocks of {args.block:,} samples+beats, {args.workers} thread(s))"
    )
    for stage, seconds in timings.items():
        print(f"  {stage:<14} {seconds:8.2f} s  {seconds / n * 1e3:7.3f} ms per session")
    print(f"  {'total':<14} {total:8.2f} s   target < 60 s: {'met' if total < 60 else 'NOT met'}")
    print(
        f"  {samples / total / 1e6:,.2f} M samples/s, {beats / total / 1e6:,.2f} M RR beats/s, "
        f"{total / n * 1e3:.3f} ms per session, peak RSS {rss_gib:.1f} GiB"
    )
    # block temporaries are reused (analytics.session_metrics.keep_block_memory): about one fault per
    # session; hundreds mean that every block's memory is mapped and zeroed anew (288 before that fix)
    print(f"  minor page faults in compute(): {(usage.ru_minflt - faults0) / n:,.1f} per session")
    hrv_s = timings.get("hrv_time", 0.0) + timings.get("hrv_frequency", 0.0)
    print(f"  HRV part only: {hrv_s / n * 1e3:.3f} ms per session")
    finite = {
        name: float(np.isfinite(getattr(metrics, name)).mean())
        for name in ("hrv_lf_ms2", "np_w", "hrr60_bpm")
    }
    print(f"  share of sessions with a value: {finite}")

    k = min(args.naive, n)
    sub = [batch.session(i) for i in range(k)]
    t0 = time.perf_counter()
    for s in sub:
        naive.session_metrics(s)
    naive_per = (time.perf_counter() - t0) / k
    print(
        f"\nnaive per-session loop (tests/analytics/naive.py) on {k} sessions: "
        f"{naive_per * 1e3:.1f} ms per session, "
        f"extrapolated {naive_per * n:.0f} s for the batch ({naive_per * n / total:.0f}× slower than compute)"
    )

    print(f"\npeer HRV libraries on {min(args.peer, n)} sessions (time + frequency domain of the same RR)")
    if not pythons:
        print(
            "  skipped: no peer interpreter. Set one up with\n"
            "    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install neurokit2\n"
            "    python3 -m venv /tmp/peers2 && /tmp/peers2/bin/pip install hrv-analysis 'nolds<0.6'\n"
            "  and pass --peer-python /tmp/peers/bin/python --peer-python /tmp/peers2/bin/python"
        )
        return
    for name, per in peer_times(batch, args.peer, pythons).items():
        like = per / (hrv_s / n)
        whole = per / (total / n)
        print(f"  {name}: {per * 1e3:.1f} ms per session")
        print(
            f"    speed-up per session: {like:.0f}× vs our HRV part (same work: cleaning, time, frequency), "
            f"{whole:.0f}× vs our whole compute()   "
            f"target ≥ 20× (HRV part): {'met' if like >= 20 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
