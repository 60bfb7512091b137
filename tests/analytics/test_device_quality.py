"""Per-device-day quality figures on constructed days with a known truth, and against NumPy per segment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analytics.device_quality import device_day_quality, segment_quantile
from analytics.errors import SessionInputError


def test_segment_quantile_matches_numpy_per_segment() -> None:
    rng = np.random.default_rng(4)
    lengths = [0, 1, 2, 7, 50]
    values = rng.normal(0, 5, sum(lengths))
    values[3] = math.nan
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    for q in (0.0, 0.05, 0.5, 0.95, 1.0):
        got = segment_quantile(values, offsets, q)
        for i in range(len(lengths)):
            part = values[offsets[i] : offsets[i + 1]]
            part = part[np.isfinite(part)]
            if part.size == 0:
                assert math.isnan(got[i])
            else:
                assert got[i] == pytest.approx(float(np.quantile(part, q)))
    with pytest.raises(SessionInputError):
        segment_quantile(values, offsets, 1.5)


def test_a_day_with_dropouts_a_gap_skew_and_late_rows() -> None:
    # 1 Hz for 1000 s with 20 single rows lost, then off for an hour, then 600 s more
    t1 = np.arange(0.0, 1000.0)
    keep = np.ones(t1.size, dtype=bool)
    keep[np.arange(50, 1000, 50)] = False
    t2 = 4600.0 + np.arange(0.0, 600.0)
    t = np.concatenate((t1[keep], t2))
    received = t + 2.0 + np.linspace(0, 0.3, t.size)  # clock 2 s behind, plus a little transit delay
    received[-30:] += 500.0  # the last 30 rows delivered late (gateway store-and-forward)
    hr_ok = np.ones(t.size, dtype=bool)
    hr_ok[:100] = False
    q = device_day_quality(t, received, hr_ok, np.array([0, t.size]))
    assert q.samples[0] == 1581
    assert q.period_s[0] == 1.0
    assert q.dropouts[0] == 19
    assert q.gaps[0] == 1
    assert q.gap_s[0] == pytest.approx(4600.0 - 999.0)
    assert q.on_s[0] == pytest.approx(1000.0 + 600.0)
    assert q.expected_samples[0] == pytest.approx(1600.0)
    assert q.received_ratio[0] == pytest.approx(1581 / 1600)
    assert 2.0 <= q.clock_skew_s[0] < 2.1
    assert q.late_samples[0] == 30
    assert q.hr_valid_share[0] == pytest.approx(1 - 100 / 1581)


def test_edge_cases_empty_one_row_constant() -> None:
    offsets = np.array([0, 0, 1, 4])
    t = np.array([10.0, 0.0, 1.0, 2.0])
    q = device_day_quality(t, t + 1, np.ones(4, bool), offsets)
    assert q.samples.tolist() == [0, 1, 3]
    assert math.isnan(q.period_s[0])
    assert math.isnan(q.period_s[1])
    assert q.on_s[1] == 0.0
    assert math.isnan(q.received_ratio[1])
    assert q.received_ratio[2] == 1.0
    assert q.clock_skew_s[2] == 1.0
    assert q.late_samples.tolist() == [0, 0, 0]
    with pytest.raises(SessionInputError):
        device_day_quality(t, t[:2], np.ones(4, bool), offsets)
