"""Per-site analytics: coverage against a per-second count, occupancy, weekly profile, suppression rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.errors import SessionInputError
from analytics.site import (
    covered_seconds,
    occupancy,
    segment_median,
    suppress,
    union_intervals,
    vitality,
    weekly_profile,
)

H = 3600.0


def _busy_seconds(
    group: list[int], start: list[int], end: list[int], edges: list[int], n_groups: int
) -> np.ndarray:
    """The independent count: per group, the set of whole seconds some interval covers, then per bin how
    many of those seconds fall into it (plain Python sets, no interval arithmetic)."""
    out = np.zeros((n_groups, len(edges) - 1))
    for g in range(n_groups):
        busy: set[int] = set()
        for gg, s, e in zip(group, start, end, strict=True):
            if gg == g:
                busy.update(range(s, e))
        for j in range(len(edges) - 1):
            out[g, j] = sum(1 for x in busy if edges[j] <= x < edges[j + 1])
    return out


def test_covered_seconds_is_the_union_counted_second_by_second() -> None:
    """The data this test has always used: 40 intervals in 3 groups over 7 hours, many overlapping. Their
    sum exceeds the union by up to 1,275 s in one hour; the result must be the union."""
    rng = np.random.default_rng(1)
    n = 40
    group = rng.integers(0, 3, n).astype(np.int64)
    start = rng.integers(0, 5 * 3600, n).astype(float)
    end = start + rng.integers(0, 5000, n).astype(float)
    edges = np.arange(0.0, 7 * H + 1, H)
    got = covered_seconds(group, start, end, edges, 4)
    want = _busy_seconds(
        group.tolist(), start.astype(int).tolist(), end.astype(int).tolist(), edges.astype(int).tolist(), 4
    )
    np.testing.assert_array_equal(got, want)
    # the data does overlap: the sum of the overlaps clipped to the bin (what was computed before) exceeds
    # the union by up to 1,275 s in one hour
    summed = np.zeros((4, 7))
    for g, s, e in zip(group, start, end, strict=True):
        lo = np.clip(edges[:-1], s, e)
        hi = np.clip(edges[1:], s, e)
        summed[g] += hi - lo
    assert (np.minimum(summed, H) - want).max() == 1275.0


def test_covered_seconds_at_epoch_magnitudes_is_exact() -> None:
    t0 = 1_790_000_000.0  # 2026: coverage is computed relative to the first edge, no precision is lost
    group = np.array([0, 0, 0, 1])
    start = t0 + np.array([0.0, 100.5, 100.25, 3000.0])
    end = t0 + np.array([200.0, 3700.0, 150.0, 3000.125])
    got = covered_seconds(group, start, end, t0 + np.array([0.0, 3600.0, 7200.0]), 2)
    assert got.tolist() == [[3600.0, 100.0], [0.125, 0.0]]


@settings(max_examples=300, deadline=None)
@given(
    intervals=st.lists(
        st.tuples(st.integers(0, 3), st.integers(-20, 200), st.integers(0, 120)), min_size=0, max_size=25
    ),
    cuts=st.lists(st.integers(-30, 230), min_size=1, max_size=8, unique=True),
    scale=st.sampled_from([1.0, 0.5, 0.25]),
)
def test_covered_seconds_matches_a_per_second_count(
    intervals: list[tuple[int, int, int]], cuts: list[int], scale: float
) -> None:
    """Any set of intervals (nested, overlapping, touching, empty, reaching past the edges) against the
    brute-force per-second count; ``scale`` shrinks every time so that fractional seconds are checked on a
    finer grid (counted in grid steps, then scaled back)."""
    group = [g for g, _, _ in intervals]
    start = [s for _, s, _ in intervals]
    end = [s + length for _, s, length in intervals]
    edges = sorted(cuts)
    got = covered_seconds(
        np.array(group, dtype=np.int64),
        np.array(start, dtype=float) * scale,
        np.array(end, dtype=float) * scale,
        np.array(edges, dtype=float) * scale,
        4,
    )
    want = _busy_seconds(group, start, end, edges, 4) * scale
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    intervals=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 100), st.integers(-5, 40)), min_size=0, max_size=20
    )
)
def test_union_intervals_are_disjoint_and_cover_the_same_seconds(
    intervals: list[tuple[int, int, int]],
) -> None:
    group = np.array([g for g, _, _ in intervals], dtype=np.int64)
    start = np.array([s for _, s, _ in intervals], dtype=float)
    end = np.array([s + length for _, s, length in intervals], dtype=float)
    g, s, e = union_intervals(group, start, end)
    assert np.all(e > s)
    same = g[1:] == g[:-1]
    assert np.all(s[1:][same] > e[:-1][same])  # disjoint, not touching, sorted within each group
    assert np.all(np.diff(g) >= 0)
    for k in range(3):
        want = {
            x for gg, a, b in zip(group, start, end, strict=True) if gg == k for x in range(int(a), int(b))
        }
        have = {x for gg, a, b in zip(g, s, e, strict=True) if gg == k for x in range(int(a), int(b))}
        assert have == want


def test_covered_seconds_edge_cases() -> None:
    edges = np.array([0.0, 10.0, 20.0])
    z = np.zeros(0)
    assert covered_seconds(np.zeros(0, np.int64), z, z, edges, 2).tolist() == [[0, 0], [0, 0]]
    # an interval exactly on a bin edge, an empty interval, one reaching past the last edge
    got = covered_seconds(
        np.array([0, 0, 1]), np.array([10.0, 5.0, 15.0]), np.array([20.0, 5.0, 99.0]), edges, 2
    )
    assert got.tolist() == [[0.0, 10.0], [0.0, 5.0]]
    with pytest.raises(SessionInputError):
        covered_seconds(np.zeros(0, np.int64), z, z, np.array([1.0, 1.0]), 1)


def test_occupancy_counts_machines_and_distinct_people() -> None:
    edges = np.arange(0.0, 4 * 900 + 1, 900.0)
    # device 0: participant 1 for 30 min; device 1: participant 1 again (moved machines) in slot 1,
    # device 2: unknown participant for the whole hour
    occ = occupancy(
        device=np.array([0, 1, 2]),
        participant=np.array([1, 1, -1]),
        start_s=np.array([0.0, 1000.0, 0.0]),
        end_s=np.array([1800.0, 1700.0, 3600.0]),
        edges_s=edges,
        n_devices=3,
    )
    np.testing.assert_allclose(occ.machines_in_use, [2.0, 2 + 700 / 900, 1.0, 1.0])
    assert occ.participants.tolist() == [1, 1, 0, 0]


def test_weekly_profile_averages_over_days_with_zeros() -> None:
    values = np.array([2.0, 0.0, 4.0, 1.0])
    weekday = np.array([0, 0, 0, 1])
    slot = np.array([3, 3, 4, 3])
    prof = weekly_profile(values, weekday, slot, 96)
    assert prof[0, 3] == 1.0
    assert prof[0, 4] == 4.0
    assert prof[1, 3] == 1.0
    assert math.isnan(prof[2, 0])


def test_suppression_examples() -> None:
    parent = np.zeros(3, np.int64)
    # a cell below k, and the smallest other cell too (3 members alone could be derived from the total)
    assert suppress(np.array([10, 3, 8]), parent).tolist() == [False, True, True]
    # 2 + 6 >= 5 once the 6 is hidden too; the 10 stays
    assert suppress(np.array([10, 6, 2]), parent).tolist() == [False, True, True]
    assert suppress(np.array([10, 6, 5]), parent).tolist() == [False, False, False]
    assert suppress(np.array([4]), np.zeros(1, np.int64)).tolist() == [True]
    assert suppress(np.array([3, 1]), np.zeros(2, np.int64)).tolist() == [True, True]
    # k is configurable
    assert suppress(np.array([10, 6, 5]), parent, k=6).tolist() == [False, True, True]
    with pytest.raises(SessionInputError):
        suppress(np.array([1]), np.zeros(1, np.int64), k=0)


def brute_suppress(n: list[int], parent: list[int], k: int) -> list[bool]:
    out = [c < k for c in n]
    for p in set(parent):
        idx = sorted((i for i in range(len(n)) if parent[i] == p), key=lambda i: (n[i], i))
        while True:
            hidden = sum(n[i] for i in idx if out[i])
            open_ = [i for i in idx if not out[i]]
            if hidden == 0 or hidden >= k or not open_:
                break
            out[open_[0]] = True
    return out


@settings(max_examples=200, deadline=None)
@given(
    n=st.lists(st.integers(0, 12), min_size=0, max_size=12),
    parents=st.integers(1, 3),
    k=st.integers(1, 6),
    seed=st.integers(0, 1000),
)
def test_suppression_matches_the_rule_applied_cell_by_cell(
    n: list[int], parents: int, k: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    parent = rng.integers(0, parents, len(n)).tolist()
    got = suppress(np.array(n, dtype=np.int64), np.array(parent, dtype=np.int64), k).tolist()
    assert got == brute_suppress(n, parent, k)
    # nothing published describes fewer than k members, and no suppressed group is derivable below k
    for p in set(parent):
        hidden = sum(c for c, q, h in zip(n, parent, got, strict=True) if q == p and h)
        shown = [c for c, q, h in zip(n, parent, got, strict=True) if q == p and not h]
        assert all(c >= k for c in shown)
        assert hidden == 0 or hidden >= k or not shown


def test_vitality_aggregates_and_hides_small_cells() -> None:
    # cells: 0 = total of site-week, 1 = women, 2 = men (parent of 1 and 2 is group 0; the total is alone)
    members_women, members_men = 6, 3
    cell = np.array([1] * members_women + [2] * members_men + [0] * (members_women + members_men))
    parent = np.array([100, 0, 0])  # the total is its own group; the breakdown cells share group 0
    load = np.array([10, 20, 30, 40, 50, 60, 5, 5, 5] * 2, dtype=float)
    mvpa = np.array([100, 200, 150, 160, 170, 180, 10, 10, 10] * 2, dtype=float)
    who = mvpa * 1.0
    sessions = np.ones(cell.size) * 2
    v = vitality(cell, parent, sessions, load, mvpa, who, 3)
    assert v.suppressed.tolist() == [False, True, True]  # men < 5; women hidden too (total - women = men)
    assert v.members[0] == 9
    assert v.median_load[0] == 20.0
    assert v.who_share[0] == pytest.approx(5 / 9)
    assert v.sessions_per_member[0] == 2.0
    assert np.isnan(v.members[1:]).all()
    assert np.isnan(v.median_load[1:]).all()
    # an empty cell has no figures and is suppressed
    z = np.zeros(0)
    v2 = vitality(np.zeros(0, np.int64), np.array([0]), z, z, z, z, n_cells=1)
    assert v2.suppressed.tolist() == [True]
    assert math.isnan(v2.median_load[0])


def test_segment_median() -> None:
    got = segment_median(np.array([0, 0, 0, 1, 1, 2]), np.array([3.0, 1.0, 2.0, 4.0, math.nan, math.nan]), 4)
    assert got[:2].tolist() == [2.0, 4.0]
    assert np.isnan(got[2:]).all()
