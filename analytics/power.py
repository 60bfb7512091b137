"""Power metrics per session: average/max power, NP, IF, TSS, W′ balance (Coggan; Skiba).

Units: W, J, s. Input is the per-sample ``power_w`` (1 Hz nominal); NaN power (dropout) counts as 0 W in the
rolling and W′ computations (GoldenCheetah treats missing power as zero), and a session without any finite
power has NaN for every power metric.

avg_power_w  time-weighted mean of the finite power samples (capped weights of :mod:`analytics.quality`).
NP (Coggan)  ``NP = (mean_k (rolling30_k)^4)^(1/4)`` where ``rolling30_k`` is the mean of samples
             ``k−29 … k`` of the same session, over full windows only (the first 29 samples start no window,
             so a session needs ≥ 30 samples). The window is 30 *samples*, i.e. 30 s at the nominal 1 Hz;
             a time gap is not filled (GoldenCheetah fills gaps with zeros first, which lowers NP).
IF           ``NP / FTP``.
TSS          ``t_s · NP · IF / (FTP · 3600) · 100 = hours · IF² · 100`` with ``t_s`` the capped time weight of
             the samples with finite power.
W′ balance   Skiba et al. 2015 differential form with ``CP := FTP`` and ``W′ := W_PRIME_J`` (20 kJ), per
             sample of duration ``Δt`` (capped weight): above CP ``W′bal −= (P − CP)·Δt``; below CP
             ``W′bal = W′ − (W′ − W′bal)·exp(−(CP − P)·Δt / W′)``; start at ``W′``. ``wbal_min_j`` is the
             lowest balance reached (it may go negative when FTP underestimates CP). Fitting CP and W′ from
             power–duration data (2-parameter model) is out of scope: a session without FTP has NaN
             IF/TSS/W′bal.

Vectorisation: rolling sums come from one cumulative sum over all sessions; the W′ recursion is affine in
the expended energy ``E = W′ − W′bal`` (``E_{k+1} = a_k·E_k + c_k`` with ``a_k ≤ 1``, ``c_k ≥ 0``), evaluated
by a log-space prefix scan in blocks of ``WBAL_BLOCK`` samples (within a block, no overflow), then carried
across the blocks of all sessions at once (one vector step per block position).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from analytics.batch import segment_count, segment_max, segment_sum

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

NP_WINDOW_SAMPLES: Final[int] = 30
W_PRIME_J: Final[float] = 20_000.0
WBAL_BLOCK: Final[int] = 256
_MIN_LOG_A: Final[float] = -2.0  # per-sample recovery factor floor e^-2: never reached with plausible CP/W′


@dataclass(frozen=True)
class PowerMetrics:
    avg_power_w: F64
    max_power_w: F64
    np_w: F64
    if_: F64
    tss: F64
    wbal_min_j: F64


def normalized_power(power_w: F64, offsets: I64, window: int = NP_WINDOW_SAMPLES) -> F64:
    """Coggan NP of every session over full ``window``-sample rolling means (NaN power = 0 W)."""
    n = offsets.shape[0] - 1
    p = np.where(np.isfinite(power_w), power_w, 0.0)
    csum = np.zeros(p.shape[0] + 1)
    np.cumsum(p, out=csum[1:])
    total = p.shape[0]
    out = np.full(n, np.nan)
    if total < window:
        return out
    # window ending at row k (inclusive) covers rows k-window+1 … k
    ends = np.arange(window - 1, total, dtype=np.int64)
    rolling = (csum[ends + 1] - csum[ends + 1 - window]) / window
    # keep windows whose first row belongs to the same session as their last row
    starts_of_end = np.repeat(offsets[:-1], np.diff(offsets))[window - 1 :]
    full = (ends - window + 1) >= starts_of_end
    r4 = np.where(full, rolling, 0.0) ** 2
    r4 *= r4
    # sessions own windows ending at their rows: shift offsets by window-1 into the ``ends`` index space
    end_offsets = np.clip(offsets - (window - 1), 0, ends.shape[0]).astype(np.int64)
    sums = segment_sum(r4, end_offsets)
    counts = segment_count(full, end_offsets)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(counts > 0, (sums / np.maximum(counts, 1)) ** 0.25, np.nan)
    return out


def wbal_min(power_w: F64, weights: F64, offsets: I64, cp_w: F64, w_prime_j: F64) -> F64:
    """Lowest W′ balance of every session (Skiba differential model; NaN where CP or W′ is unknown)."""
    n = offsets.shape[0] - 1
    lengths = np.diff(offsets)
    total = power_w.shape[0]
    out = np.full(n, np.nan)
    usable = np.isfinite(cp_w) & (cp_w > 0) & np.isfinite(w_prime_j) & (w_prime_j > 0) & (lengths > 0)
    if total == 0 or not usable.any():
        return out
    p = np.where(np.isfinite(power_w), power_w, 0.0)
    cp = np.repeat(np.where(usable, cp_w, 1.0), lengths)
    wp = np.repeat(np.where(usable, w_prime_j, 1.0), lengths)
    above = p >= cp
    log_a = np.where(above, 0.0, np.maximum(-(cp - p) * weights / wp, _MIN_LOG_A))
    c = np.where(above, (p - cp) * weights, 0.0)

    # block layout: block b of session s covers local rows [b·B, (b+1)·B); blocks are the rows of a 2-D
    # array padded with identity steps (log a = 0, c = 0), so every scan stays inside its block
    local = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    n_blocks = (lengths + WBAL_BLOCK - 1) // WBAL_BLOCK
    block_first = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(n_blocks, out=block_first[1:])
    pos = (np.repeat(block_first[:-1], lengths) + local // WBAL_BLOCK) * WBAL_BLOCK + local % WBAL_BLOCK
    shape = (int(block_first[-1]), WBAL_BLOCK)
    la = np.zeros(shape[0] * shape[1])
    la[pos] = log_a
    cc = np.zeros(shape[0] * shape[1])
    cc[pos] = c
    # within a block: E_k = A_k·(E_in + Σ_{j≤k} c_j / A_j) with A_k = Π_{i≤k} a_i  (|log A| ≤ 2·B)
    log_big_a = np.cumsum(la.reshape(shape), axis=1)
    big_a = np.exp(log_big_a)
    e_zero_in = big_a * np.cumsum(cc.reshape(shape) * np.exp(-log_big_a), axis=1)

    # carry E across the blocks of each session: E_in(b+1) = A_end(b)·E_in(b) + E_end(b)
    a_end = big_a[:, -1]
    e_end = e_zero_in[:, -1]
    e_in = np.zeros(shape[0])
    live = lengths > 0
    first_blocks = block_first[:-1][live]
    for b in range(1, int(n_blocks.max())):
        cur = first_blocks[n_blocks[live] > b] + b
        e_in[cur] = a_end[cur - 1] * e_in[cur - 1] + e_end[cur - 1]
    block_peak = (big_a * e_in[:, None] + e_zero_in).max(axis=1)
    peak = segment_max(block_peak, block_first)
    return np.where(usable, w_prime_j - np.maximum(peak, 0.0), np.nan)


def power_metrics(
    power_w: F64, weights: F64, offsets: I64, ftp_w: F64, w_prime_j: float = W_PRIME_J
) -> PowerMetrics:
    """All power metrics of every session (see the module docstring)."""
    n = offsets.shape[0] - 1
    finite = np.isfinite(power_w)
    has_power = segment_count(finite, offsets) > 0
    w_p = np.where(finite, weights, 0.0)
    p_time = segment_sum(w_p, offsets)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = np.where(
            p_time > 0, segment_sum(w_p * np.where(finite, power_w, 0.0), offsets) / p_time, np.nan
        )
    mx = segment_max(power_w, offsets)
    np_w = np.where(has_power, normalized_power(power_w, offsets), np.nan)
    ftp = np.where(np.isfinite(ftp_w) & (ftp_w > 0), ftp_w, np.nan)
    if_ = np_w / ftp
    tss = p_time / 3600.0 * if_ * if_ * 100.0
    wbal = wbal_min(power_w, weights, offsets, ftp, np.full(n, w_prime_j))
    wbal = np.where(has_power, wbal, np.nan)
    return PowerMetrics(avg_power_w=avg, max_power_w=mx, np_w=np_w, if_=if_, tss=tss, wbal_min_j=wbal)
