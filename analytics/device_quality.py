"""Data quality per device and day: pure NumPy over the stored samples of many device-days at once.

Inputs are the stored rows of each device-day (CSR ``offsets`` over rows sorted by time within a device-day):
device time ``t`` and the ingester's receive time ``received_at`` (seconds since the epoch), and whether the
row has a valid heart rate. Duplicates and message counts are known only at ingest; they come from
``ingest_device_stats`` (the ingester's per-batch receipt counts, folded in by the job) and are joined in by
the store, not computed here.

Definitions (``Δt`` = step between consecutive rows of the same device-day):

``lag`` = ``received_at - t`` per row (s). ``lag_p05_s``, ``lag_p50_s``, ``lag_p95_s``: its 5th/50th/95th
    percentiles (linear interpolation between order statistics, NumPy's default).
``clock_skew_s`` = ``lag_p05_s``: the device clock's offset behind the ingester's clock, estimated from the
    least-delayed rows. Network, gateway buffering and batching delays only ever add to the lag, so this is
    biased upward by the smallest such delay (tens to hundreds of ms on a LAN); a negative value means the
    device clock is ahead. A low percentile, not the minimum, so that one mis-stamped row does not set it.
``late_samples``: rows whose lag exceeds the skew estimate by more than ``late_after_s`` (default 60 s):
    delivered late (gateway store-and-forward, a broker or ingester outage), not merely skewed.
``period_s``: median ``Δt`` (the device's actual sampling period, 1 s nominal).
``on_s``: time the device was sending: ``Σ Δt`` over steps ``Δt <= gap_s`` plus one period per run of rows.
``expected_samples`` = ``on_s / period_s``; ``received_ratio`` = ``samples / expected_samples``.
``dropouts``: rows missing inside sending time: ``Σ (round(Δt/period) - 1)`` over steps with
    ``1.5·period < Δt <= gap_s``.
``gaps`` / ``gap_s``: steps longer than ``gap_s`` (default 300 s, the session gap) and their total length.
    Gym machines send only while in use, so most of these are idle time, not faults.
``hr_valid_share``: share of rows with a valid heart rate (straps: wear fraction of the sending time).

Edge cases: a device-day with one row has ``period_s`` NaN, ``on_s`` 0 and ``expected_samples`` 0
(``received_ratio`` NaN); with none, every figure is 0 or NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from analytics.batch import segment_count, segment_sum
from analytics.errors import SessionInputError

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

LATE_AFTER_S: Final[float] = 60.0
GAP_S: Final[float] = 300.0
DROPOUT_FACTOR: Final[float] = 1.5


@dataclass(frozen=True, slots=True)
class DeviceDayQuality:
    """One ``(n,)`` array per figure (see the module docstring)."""

    samples: I64
    late_samples: I64
    lag_p05_s: F64
    lag_p50_s: F64
    lag_p95_s: F64
    clock_skew_s: F64
    period_s: F64
    on_s: F64
    expected_samples: F64
    received_ratio: F64
    dropouts: I64
    gaps: I64
    gap_s: F64
    hr_valid_share: F64


def segment_quantile(values: F64, offsets: I64, q: float) -> F64:
    """Per-segment ``q`` quantile of the finite values (linear interpolation); NaN for none."""
    if not 0 <= q <= 1:
        raise SessionInputError("q", f"must be in [0, 1], got {q}")
    n = offsets.shape[0] - 1
    seg = np.repeat(np.arange(n), np.diff(offsets))
    ok = np.isfinite(values)
    s, v = seg[ok], values[ok]
    order = np.lexsort((v, s))
    s, v = s[order], v[order]
    count = np.bincount(s, minlength=n)
    first = np.concatenate(([0], np.cumsum(count)[:-1]))
    out = np.full(n, np.nan)
    has = count > 0
    pos = q * (count - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.ceil(pos).astype(np.int64)
    frac = pos - lo
    a = v[(first + lo)[has]]
    b = v[(first + hi)[has]]
    out[has] = a + (b - a) * frac[has]
    return out


def device_day_quality(
    t_s: F64,
    received_s: F64,
    hr_valid: NDArray[np.bool_],
    offsets: I64,
    *,
    late_after_s: float = LATE_AFTER_S,
    gap_s: float = GAP_S,
) -> DeviceDayQuality:
    """Quality figures of every device-day (rows ``offsets[i]:offsets[i+1]``, ascending ``t``)."""
    n_rows = int(offsets[-1]) if offsets.shape[0] else 0
    for name, arr in (("t_s", t_s), ("received_s", received_s), ("hr_valid", hr_valid)):
        if arr.shape != (n_rows,):
            raise SessionInputError(name, f"shape {arr.shape}, expected ({n_rows},)")
    if gap_s <= 0 or late_after_s < 0:
        raise SessionInputError("gap_s/late_after_s", "gap_s must be > 0 and late_after_s >= 0")
    n = offsets.shape[0] - 1
    lengths = np.diff(offsets)
    seg = np.repeat(np.arange(n), lengths)
    samples = lengths.astype(np.int64)

    lag = received_s - t_s
    p05 = segment_quantile(lag, offsets, 0.05)
    p50 = segment_quantile(lag, offsets, 0.50)
    p95 = segment_quantile(lag, offsets, 0.95)
    late = segment_count(lag - p05[seg] > late_after_s, offsets)

    # steps within a device-day: the step after the last row of a segment is not one
    step = np.full(n_rows, np.nan)
    if n_rows > 1:
        step[:-1] = np.diff(t_s)
    ends = offsets[1:][lengths > 0] - 1
    step[ends] = np.nan
    period = segment_quantile(step, offsets, 0.5)
    per_row = period[seg]
    is_gap = step > gap_s
    on_step = step <= gap_s
    runs = segment_count(is_gap, offsets) + (lengths > 0)
    on_s = (
        segment_sum(np.where(on_step, step, 0.0), offsets) + np.where(np.isfinite(period), period, 0.0) * runs
    )
    on_s = np.where(np.isfinite(period), on_s, 0.0)
    expected = np.where(np.isfinite(period) & (period > 0), on_s / np.where(period > 0, period, 1.0), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(expected > 0, samples / expected, np.nan)
        missing = np.where(on_step & (step > DROPOUT_FACTOR * per_row), np.round(step / per_row) - 1.0, 0.0)
    dropouts = segment_sum(np.nan_to_num(missing), offsets).astype(np.int64)
    gaps = segment_count(is_gap, offsets)
    gap_total = segment_sum(np.where(is_gap, step, 0.0), offsets)
    with np.errstate(invalid="ignore", divide="ignore"):
        hr_share = np.where(samples > 0, segment_count(hr_valid, offsets) / np.maximum(samples, 1), np.nan)
    return DeviceDayQuality(
        samples=samples,
        late_samples=late,
        lag_p05_s=p05,
        lag_p50_s=p50,
        lag_p95_s=p95,
        clock_skew_s=p05,
        period_s=period,
        on_s=on_s,
        expected_samples=expected,
        received_ratio=ratio,
        dropouts=dropouts,
        gaps=gaps,
        gap_s=gap_total,
        hr_valid_share=hr_share,
    )
