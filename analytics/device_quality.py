"""Data quality per device and day: pure NumPy over the stored samples of many device-days at once.

Inputs are the stored rows of each device-day (CSR ``offsets`` over rows sorted by time within a device-day):
device time ``t`` and the ingester's receive time ``received_at`` (seconds since the epoch), the message
sequence number ``seq`` the row came in (-1 unknown), and whether the row has a valid heart rate. Rows with
the same ``(received_at, seq)`` came in one message. Duplicates and message counts are known only at ingest;
they come from ``ingest_device_stats`` (the ingester's per-batch receipt counts, folded in by the job) and are
joined in by the store, not computed here.

Definitions (``Δt`` = step between consecutive rows of the same device-day):

``lag`` = ``received_at - t`` per row (s). ``lag_p05_s``, ``lag_p50_s``, ``lag_p95_s``: its 5th/50th/95th
    percentiles over all rows (linear interpolation between order statistics, NumPy's default).

Delivery: live data, catch-up streams (backfill) and late data. Messages are taken in arrival order within
a device-day; a message's *newest lag* is its ``received_at`` minus its newest row's ``t``. Between two
messages, device time *runs ahead* when it advanced more than :data:`CATCHUP_PACE` times as far as arrival
time (and by more than :data:`CATCHUP_MIN_S` s more): stored data emptied faster than real time, e.g. a
gateway publishing history at a first start or its buffer after an outage. Live data, however skewed the
device clock, arrives as fast as device time passes.

``clock_skew_s`` = 5th percentile of the newest lags of the *in-step* messages: those outside *bursts*. A
    burst is a run of two or more messages, each arriving less than 1/:data:`CATCHUP_PACE` of its device
    time advance after the previous one, over which device time runs ahead (jitter between live messages
    cannot: their lag varies only by the jitter). The device clock's offset behind the ingester's clock.
    Network and batching delays only ever add to the lag, so this is biased upward by the smallest such
    delay (tens to hundreds of ms on a LAN); a negative value means the device clock is ahead. Taken from
    the newest sample of each message (a message's older samples lag by the batching, not by the clock) and
    never from a burst (history would read as hours of skew). NaN when the day has no in-step message (a
    day known only from history): the skew is then unknown, and 0 is assumed for the two figures below.
A row is *behind* when its lag exceeds the skew by more than ``late_after_s`` (default 60 s); a message is
    behind when one of its rows is. A *catch-up stream* is a run of two or more behind messages over which
    device time runs ahead (from the oldest row of the run to its newest, against the arrival of its first
    and last message); behind messages are of one run when consecutive, or when device time ran ahead from
    one to the next (history published beside the live stream, whose messages arrive in between).
``backfill_samples``: behind rows of catch-up streams (stored history sent in bulk).
``late_samples``: behind rows of other messages: delivered late on their own (a message held up in transit,
    a device that uploads a stored workout as one message), neither skew nor backfill.
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
CATCHUP_PACE: Final[float] = 2.0
"""Device time advancing more than this many times as fast as arrival time is a catch-up stream."""
CATCHUP_MIN_S: Final[float] = 1.0
"""... and by at least this many seconds more than arrival time (jitter of sub-second messages)."""


@dataclass(frozen=True, slots=True)
class DeviceDayQuality:
    """One ``(n,)`` array per figure (see the module docstring)."""

    samples: I64
    late_samples: I64
    backfill_samples: I64
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


@dataclass(frozen=True, slots=True)
class Delivery:
    """Per device-day: the clock skew, and per row whether it came late or in a catch-up stream."""

    clock_skew_s: F64  # (n,)
    late: NDArray[np.bool_]  # (rows,)
    backfill: NDArray[np.bool_]  # (rows,)


@dataclass(frozen=True, slots=True)
class _Messages:
    """The messages of all device-days in arrival order (by device-day, then receive time, then seq)."""

    of_row: I64  # message index of every row
    day: I64  # device-day of each message (ascending)
    received_s: F64
    newest_s: F64  # device time of the message's newest / oldest row
    oldest_s: F64
    day_first: I64  # index of the first / last message of the same device-day
    day_last: I64


def _messages(seg: I64, t_s: F64, received_s: F64, seq: I64) -> _Messages:
    order = np.lexsort((seq, received_s, seg))
    sg, sr, sq = seg[order], received_s[order], seq[order]
    starts = np.ones(sg.shape[0], dtype=bool)
    starts[1:] = (sg[1:] != sg[:-1]) | (sr[1:] != sr[:-1]) | (sq[1:] != sq[:-1])
    first_row = np.flatnonzero(starts)
    of_row = np.empty(sg.shape[0], dtype=np.int64)
    of_row[order] = np.cumsum(starts) - 1
    day = sg[first_row]
    return _Messages(
        of_row=of_row,
        day=day,
        received_s=sr[first_row],
        newest_s=np.maximum.reduceat(t_s[order], first_row),
        oldest_s=np.minimum.reduceat(t_s[order], first_row),
        day_first=np.searchsorted(day, day, side="left").astype(np.int64),
        day_last=(np.searchsorted(day, day, side="right") - 1).astype(np.int64),
    )


def _in_step(m: _Messages) -> NDArray[np.bool_]:
    """Messages not in a burst: a burst is a run of messages, each arriving sooner after the previous one
    than :data:`CATCHUP_PACE` times less than its newest row advanced in device time, over which device time
    runs ahead in all (so that network jitter between single live messages never makes one)."""
    n_msg = m.day.shape[0]
    k = np.arange(n_msg)
    linked = np.zeros(n_msg, dtype=bool)  # message k arrived in pace with k - 1's burst
    linked[1:] = (k[1:] != m.day_first[1:]) & (np.diff(m.newest_s) > CATCHUP_PACE * np.diff(m.received_s))
    first = np.flatnonzero(~linked)
    last = np.concatenate((first[1:], [n_msg])) - 1
    burst = (last > first) & _catching_up(
        m.newest_s[first], m.received_s[first], m.newest_s[last], m.received_s[last]
    )
    return ~np.repeat(burst, last - first + 1)


def _catch_up_runs(m: _Messages, behind: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Messages in a catch-up stream: runs of two or more behind messages of a device-day whose arrival took
    less than the device time they cover (by :data:`CATCHUP_PACE`). Two behind messages are of one run when
    nothing came between them, or when device time ran ahead from one to the next (history published
    beside the live stream: live messages arrive between its messages)."""
    n_msg = m.day.shape[0]
    out = np.zeros(n_msg, dtype=bool)
    idx = np.flatnonzero(behind)
    if idx.size == 0:
        return out
    same_day = m.day[idx][1:] == m.day[idx][:-1]
    adjacent = np.diff(idx) == 1
    ahead = np.diff(m.newest_s[idx]) > CATCHUP_PACE * np.diff(m.received_s[idx])
    first = np.flatnonzero(np.concatenate(([True], ~(same_day & (adjacent | ahead)))))
    run = np.cumsum(np.isin(np.arange(idx.size), first)) - 1
    covered = np.maximum.reduceat(m.newest_s[idx], first) - np.minimum.reduceat(m.oldest_s[idx], first)
    took = np.maximum.reduceat(m.received_s[idx], first) - np.minimum.reduceat(m.received_s[idx], first)
    size = np.diff(np.concatenate((first, [idx.size])))
    zero = np.zeros(first.shape[0])
    fast = (size >= 2) & _catching_up(zero, zero, covered, took)
    out[idx] = fast[run]
    return out


def delivery(
    t_s: F64, received_s: F64, seq: I64, offsets: I64, *, late_after_s: float = LATE_AFTER_S
) -> Delivery:
    """Clock skew, late rows and backfilled rows of every device-day (definitions in the module docstring)."""
    n = offsets.shape[0] - 1
    seg = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
    if t_s.shape[0] == 0:
        return Delivery(np.full(n, np.nan), np.zeros(0, dtype=bool), np.zeros(0, dtype=bool))
    m = _messages(seg, t_s, received_s, seq)
    live = _in_step(m)
    counts = np.bincount(m.day[live], minlength=n)
    live_offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    skew = segment_quantile((m.received_s - m.newest_s)[live], live_offsets, 0.05)  # m.day is sorted
    skew0 = np.where(np.isfinite(skew), skew, 0.0)
    catch_up = _catch_up_runs(m, m.received_s - m.oldest_s - skew0[m.day] > late_after_s)
    behind = received_s - t_s - skew0[seg] > late_after_s
    in_catch_up = catch_up[m.of_row]
    return Delivery(skew, behind & ~in_catch_up, behind & in_catch_up)


def _catching_up(t0: F64, r0: F64, t1: F64, r1: F64) -> NDArray[np.bool_]:
    """From (device time, arrival) ``0`` to ``1``: device time advanced more than :data:`CATCHUP_PACE` times
    as fast as arrival time, and by more than :data:`CATCHUP_MIN_S` seconds more."""
    d_dev, d_arr = t1 - t0, r1 - r0
    return np.asarray((d_dev > CATCHUP_PACE * d_arr) & (d_dev - d_arr > CATCHUP_MIN_S), dtype=bool)


def device_day_quality(
    t_s: F64,
    received_s: F64,
    hr_valid: NDArray[np.bool_],
    offsets: I64,
    *,
    seq: I64 | None = None,
    late_after_s: float = LATE_AFTER_S,
    gap_s: float = GAP_S,
) -> DeviceDayQuality:
    """Quality figures of every device-day (rows ``offsets[i]:offsets[i+1]``, ascending ``t``); ``seq``
    (default: unknown, -1) tells rows received at the same instant in different messages apart."""
    n_rows = int(offsets[-1]) if offsets.shape[0] else 0
    seq = np.full(n_rows, -1, dtype=np.int64) if seq is None else seq
    for name, arr in (("t_s", t_s), ("received_s", received_s), ("hr_valid", hr_valid), ("seq", seq)):
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
    how = delivery(t_s, received_s, seq, offsets, late_after_s=late_after_s)
    late = segment_count(how.late, offsets)
    backfill = segment_count(how.backfill, offsets)

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
        backfill_samples=backfill,
        lag_p05_s=p05,
        lag_p50_s=p50,
        lag_p95_s=p95,
        clock_skew_s=how.clock_skew_s,
        period_s=period,
        on_s=on_s,
        expected_samples=expected,
        received_ratio=ratio,
        dropouts=dropouts,
        gaps=gaps,
        gap_s=gap_total,
        hr_valid_share=hr_share,
    )
