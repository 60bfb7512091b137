"""Heart-rate variability per session from RR intervals: cleaning, time domain, frequency domain.

Units: RR/NN intervals and their differences in ms, powers in ms², frequencies in Hz.

RR cleaning (the pipeline of hrv-analysis 1.0.6 ``get_nn_intervals``, vectorised across sessions)
    1. range: an RR outside ``[300, 2000]`` ms (or NaN) is an artifact;
    2. artifacts are replaced by linear interpolation over the beat index between the nearest accepted
       beats of the same session (leading/trailing artifacts take the nearest accepted value);
    3. ectopic beats, Malik et al. 1989 (20 % rule): beat ``j`` is ectopic when
       ``|RR_{j-1} − RR_j| > 0.2·RR_{j-1}``; the beat after an ectopic one is not tested (within a run of
       consecutive failing comparisons every second beat is flagged, as in hrv-analysis);
    4. ectopic beats are replaced by linear interpolation as in step 2.
    ``rr_corrected_pct`` = 100 · (range artifacts + ectopic beats) / beats. HRV values are NaN when more than
    ``MAX_CORRECTED_PCT`` (20 %) of the beats were corrected.

Time domain (Task Force 1996), on the corrected NN series of N beats, ``ΔNN_j = NN_j − NN_{j−1}``:
    MeanNN = mean(NN); SDNN = std(NN, ddof=1); RMSSD = √(Σ ΔNN² / (N−1)); SDSD = std(ΔNN, ddof=1);
    pNN50 = 100 · #{|ΔNN| > 50 ms} / (N−1). SDNN needs N ≥ 2, RMSSD/pNN50 N ≥ 2, SDSD N ≥ 3.
    Peers differ: neurokit2 0.2.13 divides pNN50 by N; hrv-analysis 1.0.6 uses ddof=0 for SDSD.

Frequency domain (Task Force 1996; the resampling and Welch settings of Kubios / hrv-analysis):
    beat times ``t_k = Σ_{j≤k} NN_j / 1000 − NN_0 / 1000`` (first beat at 0 s); the NN series is resampled at
    ``fs = 4`` Hz on ``t = 0, 1/fs, …`` (< the last beat time) with a cubic spline with not-a-knot ends
    (identical to ``scipy.interpolate.CubicSpline``); Welch PSD with a periodic Hann window of
    ``nperseg = 1024`` samples (256 s), 50 % overlap, constant detrend per segment, ``nfft = nperseg``,
    one-sided density scaling (``scipy.signal.welch`` conventions), segments averaged by mean. Band powers
    are trapezoids over the PSD bins with ``lo ≤ f < hi``: VLF [0.0033, 0.04), LF [0.04, 0.15),
    HF [0.15, 0.40) Hz; LF/HF = LF / HF (NaN when HF < 1e-9 ms²); total = VLF + LF + HF. A session needs
    ``nperseg`` resampled points (256 s of beats) for a spectrum; shorter ones get NaN.

Vectorisation: cleaning and time domain are segment reductions over all beats of all sessions. The
frequency domain takes chunks of sessions (``CHUNK_BEATS`` beats, so that a chunk's arrays stay in the CPU's
last-level cache; larger chunks are slower, not only bigger): the splines of all sessions of a chunk are one
symmetric positive-definite tridiagonal solve (:func:`spline_not_a_knot`); the spline pieces are evaluated
one grid slot at a time over all pieces (no per-grid-point copies of the coefficients); every session's grid
starts on a multiple of the Welch hop, so that every segment of every session is a row of one strided view
of the resampled series, transformed by one ``rfft`` without a windowed copy (detrend and Hann window are
applied to the spectrum); band powers are a product with the trapezoid weights. The results equal
``CubicSpline`` + ``scipy.signal.welch`` per session to rounding (relative differences ~1e-12).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy.fft import rfft
from scipy.linalg import solveh_banded

from analytics.batch import segment_count, segment_sum
from analytics.errors import MetricParameterError

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
Bands = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]

RR_MIN_MS: Final[float] = 300.0
RR_MAX_MS: Final[float] = 2000.0
MALIK_FRACTION: Final[float] = 0.2
MAX_CORRECTED_PCT: Final[float] = 20.0
NN50_MS: Final[float] = 50.0
RESAMPLE_HZ: Final[float] = 4.0
NPERSEG: Final[int] = 1024
BANDS_HZ: Final[Bands] = ((0.0033, 0.04), (0.04, 0.15), (0.15, 0.40))
CHUNK_BEATS: Final[int] = 100_000
POWER_FLOOR_MS2: Final[float] = 1e-9
"""Below this HF power (ms²) the spectrum is numerical noise (a constant series): LF/HF is NaN."""


# ------------------------------------------------------------------------------------------------ cleaning


def _session_starts(offsets: I64, total: int) -> NDArray[np.bool_]:
    starts = np.zeros(total, dtype=bool)
    first = offsets[:-1][np.diff(offsets) > 0]
    starts[first] = True
    return starts


def interpolate_gaps(values: F64, good: NDArray[np.bool_], offsets: I64) -> F64:
    """Replace ``~good`` entries by linear interpolation over the index between the nearest good entries of
    the same segment; before the first / after the last good entry the nearest good value is held; a
    segment without good entries becomes NaN (pandas ``Series.interpolate('linear')`` semantics).

    Only the bad entries are touched: their neighbours come from a binary search in the good positions.
    """
    out = values.copy()
    bad = np.flatnonzero(~good)
    if bad.size == 0:
        return out
    good_idx = np.flatnonzero(good)
    seg = np.searchsorted(offsets, bad, side="right") - 1
    seg_start = offsets[seg]
    seg_end = offsets[seg + 1]
    pos = np.searchsorted(good_idx, bad)
    prev = np.where(pos > 0, good_idx[np.maximum(pos - 1, 0)] if good_idx.size else -1, -1)
    nxt = np.where(
        pos < good_idx.size, good_idx[np.minimum(pos, good_idx.size - 1)] if good_idx.size else -1, -1
    )
    has_prev = (prev >= seg_start) & (prev >= 0)
    has_next = (nxt < seg_end) & (nxt >= 0) & (nxt >= seg_start)
    p = np.where(has_prev, prev, 0)
    q = np.where(has_next, nxt, 0)
    vp = values[p]
    vq = values[q]
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (vq - vp) / (q - p)
        inner = slope * (bad - p) + vp
    out[bad] = np.where(has_prev & has_next, inner, np.where(has_prev, vp, np.where(has_next, vq, np.nan)))
    return out


def malik_flags(values: F64, offsets: I64, fraction: float = MALIK_FRACTION) -> NDArray[np.bool_]:
    """Ectopic beats by the Malik rule with hrv-analysis's skip-after-outlier (see the module docstring)."""
    total = values.shape[0]
    flags = np.zeros(total, dtype=bool)
    if total < 2:
        return flags
    prev = values[:-1]
    ok = np.abs(prev - values[1:]) <= fraction * prev
    fails = np.flatnonzero(~ok) + 1  # beat j fails its comparison with beat j − 1 (rare: handled sparsely)
    fails = fails[~_session_starts(offsets, total)[fails]]
    if fails.size == 0:
        return flags
    # within a run of consecutive failing beats, flags alternate starting with the run's first beat
    new_run = np.ones(fails.size, dtype=bool)
    new_run[1:] = fails[1:] != fails[:-1] + 1
    run_first = np.maximum.accumulate(np.where(new_run, np.arange(fails.size), 0))
    keep = (np.arange(fails.size) - run_first) % 2 == 0
    flags[fails[keep]] = True
    return flags


@dataclass(frozen=True)
class CleanRR:
    """Corrected NN series (same layout as the input) and what was corrected."""

    nn_ms: F64
    corrected: NDArray[np.bool_]
    corrected_pct: F64  # (n,) NaN for sessions without beats


def clean_rr(rr_ms: F64, rr_offsets: I64) -> CleanRR:
    """Range check, interpolation, Malik rule, interpolation (see the module docstring)."""
    in_range = (rr_ms >= RR_MIN_MS) & (rr_ms <= RR_MAX_MS)
    step1 = interpolate_gaps(rr_ms, in_range, rr_offsets)
    ectopic = malik_flags(step1, rr_offsets)
    nn = interpolate_gaps(step1, ~ectopic, rr_offsets)
    corrected = ~in_range | ectopic
    beats = np.diff(rr_offsets)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(beats > 0, 100.0 * segment_count(corrected, rr_offsets) / np.maximum(beats, 1), np.nan)
    return CleanRR(nn_ms=nn, corrected=corrected, corrected_pct=pct)


# ------------------------------------------------------------------------------------------------ time domain


@dataclass(frozen=True)
class TimeDomain:
    mean_nn_ms: F64
    sdnn_ms: F64
    rmssd_ms: F64
    sdsd_ms: F64
    pnn50_pct: F64


def time_domain(nn_ms: F64, rr_offsets: I64) -> TimeDomain:
    """Time-domain HRV of every session.

    Sums of squares are taken about each session's first NN (a shift that keeps them small, so the one-pass
    variance ``(Σd² − (Σd)²/N)/(N − 1)`` is as accurate as two passes and a constant series gives exactly 0).
    """
    n = rr_offsets.shape[0] - 1
    beats = np.diff(rr_offsets).astype(np.float64)
    lengths = np.diff(rr_offsets)
    has = lengths > 0
    ref = np.zeros(n)
    if nn_ms.shape[0]:
        ref[has] = nn_ms[rr_offsets[:-1][has]]
    d = nn_ms - np.repeat(ref, lengths)
    sum_d = segment_sum(d, rr_offsets)
    sum_d2 = segment_sum(d * d, rr_offsets)

    diff = np.zeros_like(nn_ms)
    if nn_ms.shape[0] > 1:
        np.subtract(nn_ms[1:], nn_ms[:-1], out=diff[1:])
    first = rr_offsets[:-1][has]
    diff[first] = 0.0  # the first beat has no predecessor
    sum_x = segment_sum(diff, rr_offsets)
    sum_x2 = segment_sum(diff * diff, rr_offsets)
    nn50 = segment_count(np.abs(diff) > NN50_MS, rr_offsets)
    n_diff = beats - 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = ref + sum_d / beats
        sdnn = np.sqrt(np.maximum(sum_d2 - sum_d * sum_d / beats, 0.0) / (beats - 1.0))
        rmssd = np.sqrt(sum_x2 / n_diff)
        sdsd = np.sqrt(np.maximum(sum_x2 - sum_x * sum_x / n_diff, 0.0) / (n_diff - 1.0))
        pnn50 = 100.0 * nn50 / n_diff
    return TimeDomain(
        mean_nn_ms=np.where(beats > 0, mean, np.nan),
        sdnn_ms=np.where(beats >= 2, sdnn, np.nan),
        rmssd_ms=np.where(beats >= 2, rmssd, np.nan),
        sdsd_ms=np.where(beats >= 3, sdsd, np.nan),
        pnn50_pct=np.where(beats >= 2, pnn50, np.nan),
    )


# ------------------------------------------------------------------------------------------------ frequency


def hann_periodic(n: int) -> F64:
    """``scipy.signal.get_window('hann', n)`` (periodic, for spectral analysis)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def band_weights(freq: F64, band: tuple[float, float]) -> F64:
    """Weights ``v`` with ``psd @ v == np.trapezoid(psd[m], freq[m])`` for ``m = lo <= freq < hi``."""
    lo, hi = band
    sel = np.flatnonzero((freq >= lo) & (freq < hi))
    v = np.zeros(freq.shape[0])
    if sel.size >= 2:
        dfs = np.diff(freq[sel])
        v[sel[:-1]] += dfs / 2.0
        v[sel[1:]] += dfs / 2.0
    return v


def spline_not_a_knot(x: F64, y: F64, offsets: I64) -> tuple[F64, F64, F64, F64]:
    """Cubic-spline coefficients of many series at once (each segment needs ≥ 4 knots, x increasing).

    Returns ``(c0, c1, c2, c3)`` per knot interval (length ``len(x)``; the entry at each segment's last knot
    is unused) so that on ``[x_j, x_{j+1})``: ``y(z) = ((c0·z + c1)·z + c2)·z + c3`` with ``z = x − x_j``.

    The knot slopes ``s`` solve the not-a-knot system of ``scipy.interpolate.CubicSpline``. With
    ``w_j = 1/Δx_j`` and ``q_j = m_j/Δx_j`` (``m_j`` the secant slope), interior row ``i`` divided by
    ``Δx_{i−1}·Δx_i`` reads ``w_{i−1}·s_{i−1} + 2(w_{i−1} + w_i)·s_i + w_i·s_{i+1} = 3(q_{i−1} + q_i)``:
    symmetric. The two not-a-knot rows of a segment (first ``f``, last ``l``) are not; they are solved for
    ``s_f`` and ``s_l`` and substituted into rows ``f + 1`` and ``l − 1``, whose diagonals become
    ``w_f + w_{f+1}`` and ``w_{l−2} + w_{l−1}``, which keeps the system symmetric and strictly diagonally
    dominant, i.e. positive definite. All segments (decoupled by zero off-diagonals, their end rows by
    identity rows) are then one ``LDLᵀ`` solve (LAPACK ``ptsv`` via ``scipy.linalg.solveh_banded``).
    """
    m = x.shape[0]
    first = offsets[:-1]
    last = offsets[1:] - 1
    # entries across a segment boundary (at dx[last]) are finite filler that ends up unused or decoupled
    dx = np.diff(x)
    dx[last[:-1]] = 1.0
    slope = np.diff(y)
    slope /= dx
    w = 1.0 / dx
    q = slope * w

    ab = np.empty((2, m))  # lower form: diagonal in ab[0], ab[1, i] couples s_i and s_{i+1}
    diag, off = ab[0], ab[1]
    rhs = np.empty(m)
    np.add(w[:-1], w[1:], out=diag[1:-1])
    diag[1:-1] *= 2.0
    off[:-1] = w
    np.add(q[:-1], q[1:], out=rhs[1:-1])
    rhs[1:-1] *= 3.0

    # not-a-knot start row: Δx_{f+1}·s_f + d0·s_{f+1} = r0; end row: d1·s_{l−1} + Δx_{l−2}·s_l = r1
    dxa, dxb = dx[first], dx[first + 1]
    d0 = x[first + 2] - x[first]
    r0 = ((dxa + 2.0 * d0) * dxb * slope[first] + dxa * dxa * slope[first + 1]) / d0
    dxk, dxl = dx[last - 2], dx[last - 1]
    d1 = x[last] - x[last - 2]
    r1 = (dxl * dxl * slope[last - 2] + (2.0 * d1 + dxl) * dxk * slope[last - 1]) / d1
    diag[first + 1] = w[first] + w[first + 1]
    rhs[first + 1] -= r0 / (dxa * dxb)
    diag[last - 1] = w[last - 2] + w[last - 1]
    rhs[last - 1] -= r1 / (dxk * dxl)
    diag[first] = diag[last] = 1.0
    rhs[first] = rhs[last] = 0.0
    off[first] = off[last - 1] = off[last] = 0.0  # off[last] of the final segment is outside the matrix

    s = solveh_banded(ab, rhs, overwrite_ab=True, overwrite_b=True, lower=True, check_finite=False)
    s[first] = (r0 - d0 * s[first + 1]) / dxb
    s[last] = (r1 - d1 * s[last - 1]) / dxk

    c0 = np.empty(m)
    c1 = np.empty(m)
    c0[-1] = c1[-1] = 0.0
    t = s[:-1] + s[1:]
    t -= 2.0 * slope
    t *= w  # t = (s_j + s_{j+1} − 2·m_j) / Δx_j
    np.multiply(t, w, out=c0[:-1])
    np.subtract(slope, s[:-1], out=c1[:-1])
    c1[:-1] *= w
    c1[:-1] -= t
    return c0, c1, s, y


@dataclass(frozen=True)
class FrequencyDomain:
    vlf_ms2: F64
    lf_ms2: F64
    hf_ms2: F64
    lf_hf: F64
    total_ms2: F64


def frequency_domain(
    nn_ms: F64,
    rr_offsets: I64,
    fs_hz: float = RESAMPLE_HZ,
    nperseg: int = NPERSEG,
    nfft: int | None = None,
    bands: Bands = BANDS_HZ,
    chunk_beats: int = CHUNK_BEATS,
) -> FrequencyDomain:
    """Band powers of every session (see the module docstring for the method)."""
    if nperseg < 8 or fs_hz <= 0:
        raise MetricParameterError("nperseg", nperseg, "need nperseg >= 8 and fs_hz > 0")
    n_fft = nperseg if nfft is None else nfft
    if n_fft < nperseg:
        raise MetricParameterError("nfft", nfft, "must be >= nperseg")
    n = rr_offsets.shape[0] - 1
    out = np.full((n, 3), np.nan)
    beats = np.diff(rr_offsets)
    if nn_ms.shape[0] == 0:
        empty = np.full(n, np.nan)
        return FrequencyDomain(vlf_ms2=empty, lf_ms2=empty, hf_ms2=empty, lf_hf=empty, total_ms2=empty)
    # the last beat time in s (first beat at 0): sum of NN without the first one; a NaN or infinite NN
    # makes it non-finite, and such a session has no spectrum
    first_nn = np.where(beats > 0, nn_ms[np.minimum(rr_offsets[:-1], nn_ms.shape[0] - 1)], 0.0)
    with np.errstate(invalid="ignore"):
        t_last = (segment_sum(nn_ms, rr_offsets) - first_nn) / 1000.0
    finite = np.isfinite(t_last)
    grid_len = np.ceil(np.where(finite, t_last, 0.0) * fs_hz).astype(np.int64)
    eligible = np.flatnonzero((beats >= 4) & finite & (grid_len >= nperseg))

    window = hann_periodic(nperseg)
    scale = 1.0 / (fs_hz * float(window @ window))
    freq = np.fft.rfftfreq(n_fft, d=1.0 / fs_hz).astype(np.float64)
    weights = np.stack([band_weights(freq, band) for band in bands], axis=1)  # (n_freq, 3)
    onesided = np.full(freq.shape[0], 2.0)
    onesided[0] = 1.0
    if n_fft % 2 == 0:
        onesided[-1] = 1.0
    weights *= (onesided * scale)[:, None]

    start = 0
    while start < eligible.shape[0]:
        stop = start
        total = 0
        while stop < eligible.shape[0] and (total == 0 or total + beats[eligible[stop]] <= chunk_beats):
            total += int(beats[eligible[stop]])
            stop += 1
        chunk = eligible[start:stop]
        out[chunk] = _chunk_band_powers(nn_ms, rr_offsets, chunk, fs_hz, nperseg, n_fft, window, weights)
        start = stop

    vlf, lf, hf = out[:, 0], out[:, 1], out[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        lf_hf = np.where(hf > POWER_FLOOR_MS2, lf / hf, np.nan)
    return FrequencyDomain(vlf_ms2=vlf, lf_ms2=lf, hf_ms2=hf, lf_hf=lf_hf, total_ms2=vlf + lf + hf)


def _chunk_band_powers(
    nn_ms: F64,
    rr_offsets: I64,
    sessions: NDArray[np.intp],
    fs_hz: float,
    nperseg: int,
    n_fft: int,
    window: F64,
    weights: F64,
) -> F64:
    """Band powers ``(len(sessions), 3)`` of a chunk of sessions (each with >= 4 finite beats)."""
    lengths = rr_offsets[sessions + 1] - rr_offsets[sessions]
    contiguous = sessions.shape[0] > 0 and bool(np.all(np.diff(sessions) == 1))
    if contiguous:  # the usual case: a run of sessions, no copy needed
        y = nn_ms[rr_offsets[sessions[0]] : rr_offsets[sessions[-1] + 1]]
    else:
        y = nn_ms[_gather_rows(rr_offsets[sessions], lengths)]
    local = np.zeros(sessions.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=local[1:])
    hop = nperseg - nperseg // 2
    series, row0, grid_len = _resample(y, local, fs_hz, hop)

    # Welch segments: segment k of a session starts k hops after its first grid point, i.e. at row
    # row0 + k of series.reshape(-1, hop); a session too short for one segment has none (0/0 = NaN below)
    n_seg = np.maximum((grid_len - nperseg) // hop + 1, 0)
    seg_first = np.zeros(sessions.shape[0] + 1, dtype=np.int64)
    np.cumsum(n_seg, out=seg_first[1:])
    seg_row = np.arange(seg_first[-1], dtype=np.int64) + np.repeat(row0 - seg_first[:-1], n_seg)
    n_bins = int(np.flatnonzero(weights.any(axis=1)).max()) + 1  # bins up to the last band edge
    if n_fft == nperseg:
        power = _hann_power_every_row(series, hop, seg_row, nperseg, n_bins)
    else:
        power = _hann_power_from_segments(series, seg_row * hop, window, n_fft, n_bins)
    band = power @ weights[:n_bins]  # (segments, 3)
    with np.errstate(invalid="ignore", divide="ignore"):
        result: F64 = segment_sum(band, seg_first) / n_seg[:, None]
    return result


def _resample(y: F64, local: I64, fs_hz: float, hop: int) -> tuple[F64, I64, I64]:
    """Not-a-knot spline of every session's NN over its beat times, sampled at ``t = k/fs``.

    Returns ``(series, row0, grid_len)``: session ``s`` has ``grid_len[s]`` grid points (``t <`` its last
    beat time) stored from ``series[row0[s]·hop]`` on; every session starts on a multiple of ``hop`` so that
    its Welch segments are rows of ``series.reshape(-1, hop)``. The up to ``hop − 1`` slots after a
    session's grid are 0 (never part of a segment).
    """
    lengths = np.diff(local)
    first, last = local[:-1], local[1:] - 1
    # beat times: cumulative sum within each session, first beat at 0 s
    x = np.cumsum(y)
    x /= 1000.0
    x -= np.repeat(x[first], lengths)
    c0, c1, c2, c3 = spline_not_a_knot(x, y, local)

    # piece j (x_j <= t < x_{j+1}) holds the grid points k = kx_j … kx_{j+1} − 1 with kx = ceil(fs·x); its
    # first one is at z = kx_j/fs − x_j past the knot, and a session has kx_last grid points
    kx = np.ceil(x * fs_hz).astype(np.int64)
    grid_len = kx[last]
    rows = -(-grid_len // hop)
    row0 = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(rows, out=row0[1:])
    count = np.empty(x.shape[0], dtype=np.int64)
    np.subtract(kx[1:], kx[:-1], out=count[:-1])
    count[last] = 0
    z0 = kx / fs_hz
    z0 -= x
    kx += np.repeat(row0[:-1] * hop, lengths)  # slot of each piece's first grid point in series
    series = np.zeros(row0[-1] * hop + 1)  # + one scratch slot for the pieces without a grid point
    _sample_pieces((c0, c1, c2, c3), z0, kx, count, 1.0 / fs_hz, series)
    return series[:-1], row0[:-1], grid_len


def _sample_pieces(
    coef: tuple[F64, F64, F64, F64], z0: F64, slot: I64, count: I64, step: float, out: F64
) -> None:
    """``out[slot_j + u] = ((c0·z + c1)·z + c2)·z + c3`` at ``z = z0_j + u·step`` for ``u < count_j``
    (the last slot of ``out`` is scratch; ``slot`` and ``count`` are modified).

    One round per ``u`` over all pieces at once (a piece holds 1–8 grid points at 4 Hz, 1–3 during
    exercise), written with one scatter: no per-grid-point copies of the coefficients. A piece whose points
    are all written evaluates its last point again (``u`` clamped to ``count − 1``: the same value to the
    same slot) while such pieces are the minority; then the arrays are cut down to the pieces left.
    """
    c0, c1, c2, c3 = coef
    empty = np.flatnonzero(count == 0)  # each session's last knot, and pieces shorter than a grid step
    slot[empty] = out.shape[0] - 1
    count[empty] = 1
    left = np.bincount(count)[::-1].cumsum()[::-1][1:]  # left[u] = pieces with count > u (u = 0 …)
    last_u = count - 1
    z, dest = z0, slot
    for u in range(left.shape[0]):
        if u > 0 and 2 * left[u] < count.shape[0]:  # cut down to the pieces with a point u
            keep = np.flatnonzero(count > u)
            c0, c1, c2, c3, z0 = c0[keep], c1[keep], c2[keep], c3[keep], z0[keep]
            slot, count = slot[keep], count[keep]
            last_u = count - 1
            z = z0 + u * step
            dest = slot + u
        elif u > 0:
            clamped = np.minimum(last_u, u)
            z = clamped * step
            z += z0
            dest = clamped
            dest += slot
        value = c0 * z
        value += c1
        value *= z
        value += c2
        value *= z
        value += c3
        out[dest] = value


def _hann_power_every_row(series: F64, hop: int, seg_row: I64, nperseg: int, n_bins: int) -> F64:
    """``|FFT((s − mean s)·hann)|²`` at bins ``0 … n_bins − 1`` of the segments ``s`` of ``nperseg`` samples
    that start at rows ``seg_row`` of ``series.reshape(-1, hop)`` (``nfft = nperseg``, periodic Hann).

    A segment may start at every row, so all of them are one strided view of ``series``, transformed at
    once; the one or two per session that straddle into the next are computed and dropped, unless they
    are more than a fifth of all (short sessions): then the segments are copied out first. Detrend and
    window are applied to the spectrum ``X`` of the raw segment: removing the mean only sets ``X[0]`` to 0,
    and the periodic Hann window ``½ − ½·cos(2πn/N)`` turns ``X`` into ``X[m]/2 − (X[m−1] + X[m+1])/4``
    (``X[−m] = conj X[m]``, ``X[N−m] = conj X[m]``: real input). No windowed copy of the segments is made.
    """
    k = min(n_bins + 1, nperseg // 2 + 1)  # raw bins needed: one beyond the last for the window
    frames = np.lib.stride_tricks.sliding_window_view(series, nperseg)[::hop]
    if 4 * frames.shape[0] <= 5 * seg_row.shape[0]:
        raw = rfft(frames, axis=1)[:, :k][seg_row]
    else:  # short sessions: copying the segments out costs less than transforming the straddling rows
        raw = rfft(frames[seg_row], axis=1, overwrite_x=True)[:, :k]
    ext = np.empty((seg_row.shape[0], n_bins + 2), dtype=np.complex128)  # ext[:, i] = X[i − 1]
    ext[:, 1 : k + 1] = raw
    ext[:, 1] = 0.0  # constant detrend
    np.conjugate(raw[:, 1], out=ext[:, 0])
    if k == n_bins:  # the last band reaches the Nyquist bin: X[n_bins] = conj X[N − n_bins]
        np.conjugate(raw[:, nperseg - n_bins], out=ext[:, n_bins + 1])
    hann = ext[:, 1:-1] * 0.5
    hann -= (ext[:, :-2] + ext[:, 2:]) * 0.25
    power: F64 = hann.real**2
    power += hann.imag**2
    return power


def _hann_power_from_segments(series: F64, seg_start: I64, window: F64, n_fft: int, n_bins: int) -> F64:
    """``|FFT((s − mean s)·window, n_fft)|²`` at bins ``0 … n_bins − 1`` of the segments starting at
    ``seg_start`` (``scipy.signal.welch`` steps; the general case of :func:`_hann_power_every_row`)."""
    frames = np.lib.stride_tricks.sliding_window_view(series, window.shape[0])[seg_start]
    frames -= frames.mean(axis=1, keepdims=True)
    frames *= window
    spec = rfft(frames, n=n_fft, axis=1, overwrite_x=True)[:, :n_bins]
    power: F64 = spec.real**2
    power += spec.imag**2
    return power


def _gather_rows(starts: I64, lengths: I64) -> NDArray[np.int64]:
    """Concatenated ``arange(start, start + length)`` for every pair."""
    total = int(lengths.sum())
    first = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=first[1:])
    return np.arange(total, dtype=np.int64) - np.repeat(first[:-1] - starts, lengths)
