"""Data quality and time weights: gaps, expected vs received samples, HR dropouts, wear fraction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analytics import quality
from analytics.batch import KIND_CODE, SessionBatch, SessionInput


def _quality(batch: SessionBatch) -> quality.SessionQuality:
    return quality.session_quality(batch.t_s, batch.hr_bpm, batch.offsets, batch.kind)


def test_time_weights_cap_gaps() -> None:
    t = np.array([0.0, 1.0, 2.0, 602.0, 603.0, 10.0, 10.5])
    w = quality.time_weights(t, np.array([0, 5, 7], dtype=np.int64))
    assert w.tolist() == [1.0, 1.0, 5.0, 1.0, 1.0, 0.5, 1.0]


def test_quality_figures() -> None:
    t = np.concatenate([np.arange(0.0, 100.0), np.arange(160.0, 200.0)])  # one 61-s step
    hr = np.full(t.size, 120.0)
    hr[[10, 11, 50]] = math.nan  # two dropouts (runs 10–11 and 50)
    hr[70] = 10.0  # implausible: a third dropout
    batch = SessionBatch.from_sessions(
        [
            SessionInput(t_s=t, hr_bpm=hr, kind="hr_strap"),
            SessionInput(t_s=[], kind="hr_strap"),
            SessionInput(t_s=[5.0], hr_bpm=[math.nan], kind="bike"),
            SessionInput(t_s=[0.0, 1.0, 2.0, 4.0], hr_bpm=[100.0] * 4, kind="bike"),
        ]
    )
    q = _quality(batch)
    assert q.duration_s[0] == 200.0
    assert q.samples_received[0] == 140.0
    assert q.samples_expected[0] == 200.0
    assert q.received_pct[0] == pytest.approx(70.0)
    assert q.gap_count[0] == 1.0
    assert q.gap_s[0] == 60.0
    assert q.max_gap_s[0] == 61.0
    assert q.recorded_s[0] == 139.0 + 5.0  # the gap weighs the 5-s cap
    assert q.hr_dropouts[0] == 3.0
    assert q.hr_coverage[0] == pytest.approx((144.0 - 4.0) / 144.0)
    assert q.wear_fraction[0] == q.hr_coverage[0]
    # empty session
    assert (q.duration_s[1], q.samples_received[1], q.samples_expected[1], q.gap_count[1]) == (
        0.0,
        0.0,
        0.0,
        0.0,
    )
    assert np.isnan([q.received_pct[1], q.hr_coverage[1]]).all()
    # one sample without heart rate, not a strap
    assert (q.duration_s[2], q.samples_expected[2], q.received_pct[2], q.hr_coverage[2]) == (
        1.0,
        1.0,
        100.0,
        0.0,
    )
    assert q.hr_dropouts[2] == 0.0  # never valid, so no dropout
    assert math.isnan(q.wear_fraction[2])
    # a 2-s step is a gap (> 1.5 s) of 1 missing second
    assert (q.gap_count[3], q.gap_s[3], q.max_gap_s[3], q.samples_expected[3]) == (1.0, 1.0, 2.0, 5.0)
    assert KIND_CODE["hr_strap"] == 4


def test_valid_hr_bounds() -> None:
    assert quality.valid_hr(np.array([29.9, 30.0, 240.0, 240.1, math.nan])).tolist() == [
        False,
        True,
        True,
        False,
        False,
    ]
