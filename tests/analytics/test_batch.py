"""SessionBatch layout, validation and the segment reductions (vectorised == per-session loop)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.batch import (
    KINDS,
    SessionBatch,
    SessionInput,
    segment_count,
    segment_ids,
    segment_max,
    segment_mean,
    segment_min,
    segment_nansum,
    segment_sum,
)
from analytics.errors import BatchShapeError


def _batch() -> SessionBatch:
    return SessionBatch.from_sessions(
        [
            SessionInput(t_s=[0, 1, 2], hr_bpm=[100, 110, math.nan], rr_ms=[600, 610], kind="bike", sex=1),
            SessionInput(t_s=[]),
            SessionInput(t_s=[10, 12], power_w=[100, 200], kind="treadmill", age_y=40, ftp_w=250),
        ]
    )


def test_from_sessions_layout() -> None:
    batch = _batch()
    assert batch.n == 3
    assert batch.offsets.tolist() == [0, 3, 3, 5]
    assert batch.rr_offsets.tolist() == [0, 2, 2, 2]
    assert batch.kind.tolist() == [KINDS.index("bike"), -1, KINDS.index("treadmill")]
    assert np.isnan(batch.power_w[:3]).all()
    assert batch.power_w[3:].tolist() == [100, 200]
    back = batch.session(2)
    assert back.kind == "treadmill"
    assert back.ftp_w == 250
    assert np.asarray(back.t_s).tolist() == [10, 12]
    assert batch.subset([2, 0]).offsets.tolist() == [0, 2, 5]


def test_empty_batch_is_valid() -> None:
    batch = SessionBatch.from_sessions([])
    assert batch.n == 0
    batch.validate()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"offsets": np.array([0, 3, 2, 5], dtype=np.int64)}, "offsets"),
        ({"offsets": np.array([1, 3, 3, 5], dtype=np.int64)}, "offsets"),
        ({"hr_bpm": np.zeros(4)}, "hr_bpm"),
        ({"power_w": np.zeros(5, dtype=np.float32)}, "power_w"),
        ({"t_s": np.array([0.0, 1, 1, 10, 12])}, "t_s"),
        ({"t_s": np.array([0.0, 1, np.nan, 10, 12])}, "t_s"),
        ({"rr_offsets": np.array([0, 2, 2], dtype=np.int64)}, "rr_offsets"),
        ({"kind": np.array([0, 9, 1], dtype=np.int8)}, "kind"),
        ({"sex": np.array([0, 2, 1], dtype=np.int8)}, "sex"),
        ({"age_y": np.zeros(2)}, "age_y"),
    ],
)
def test_validate_names_the_field(change: dict[str, object], field: str) -> None:
    import dataclasses

    bad = dataclasses.replace(_batch(), **change)  # type: ignore[arg-type]
    with pytest.raises(BatchShapeError) as info:
        bad.validate()
    assert info.value.field == field


def test_time_may_decrease_across_sessions_only() -> None:
    batch = SessionBatch.from_sessions([SessionInput(t_s=[100, 101]), SessionInput(t_s=[0, 1])])
    batch.validate()
    with pytest.raises(BatchShapeError) as info:
        SessionBatch.from_sessions([SessionInput(t_s=[0, 1]), SessionInput(t_s=[5, 4])])
    assert info.value.session == 1


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(BatchShapeError) as info:
        SessionBatch.from_sessions([SessionInput(t_s=[0], kind="trampoline")])
    assert info.value.field == "kind"


@st.composite
def _csr(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    lengths = draw(st.lists(st.integers(0, 6), min_size=0, max_size=8))
    total = sum(lengths)
    values = draw(
        st.lists(
            st.one_of(st.floats(-1e3, 1e3), st.just(math.nan), st.just(math.inf)),
            min_size=total,
            max_size=total,
        )
    )
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    return offsets, np.asarray(values, dtype=np.float64)


@settings(max_examples=200, deadline=None)
@given(_csr())
def test_segment_reductions_match_a_loop(data: tuple[np.ndarray, np.ndarray]) -> None:
    offsets, values = data
    finite = np.isfinite(values)
    exp_sum, exp_nansum, exp_count, exp_mean, exp_max, exp_min = [], [], [], [], [], []
    for i in range(offsets.shape[0] - 1):
        seg = values[offsets[i] : offsets[i + 1]]
        good = seg[np.isfinite(seg)]
        exp_sum.append(float(np.sum(seg)) if seg.size else 0.0)
        exp_nansum.append(float(np.sum(good)))
        exp_count.append(int(good.size))
        exp_mean.append(float(np.mean(good)) if good.size else math.nan)
        exp_max.append(float(np.max(good)) if good.size else math.nan)
        exp_min.append(float(np.min(good)) if good.size else math.nan)
    np.testing.assert_allclose(segment_sum(values, offsets), exp_sum, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(segment_nansum(values, offsets), exp_nansum, rtol=1e-12, atol=1e-9)
    assert segment_count(finite, offsets).tolist() == exp_count
    np.testing.assert_allclose(segment_mean(values, offsets), exp_mean, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(segment_max(values, offsets), exp_max)
    np.testing.assert_array_equal(segment_min(values, offsets), exp_min)
    ids = segment_ids(offsets)
    assert ids.shape == values.shape
    assert np.array_equal(np.bincount(ids, minlength=offsets.shape[0] - 1), np.diff(offsets))


def test_segment_sum_two_dimensional() -> None:
    offsets = np.array([0, 2, 2, 3], dtype=np.int64)
    values = np.arange(6, dtype=np.float64).reshape(3, 2)
    assert segment_sum(values, offsets).tolist() == [[2, 4], [0, 0], [4, 5]]
