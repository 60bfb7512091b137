"""Session assembly: boundaries, certainty at window edges, check-ins, strap joins, the batch it builds.

The vectorised assembly is compared with a plain per-sample loop written from the rules in the docstring.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.batch import KIND_CODE
from analytics.errors import SessionInputError
from analytics.sessions import (
    SOURCE_ACTIVITY_GAP,
    SOURCE_CHECK_IN,
    SOURCE_MACHINE_STATUS,
    AssemblyParams,
    CheckIns,
    DeviceSamples,
    Joined,
    RrIntervals,
    Segments,
    SessionContext,
    active_mask,
    assemble,
    build_batch,
    count_le,
    device_ids_of,
    hr_disagreement,
    join_scores,
    join_straps,
    last_le,
    status_breaks,
)

T0 = 1_795_000_000.0  # 2026-11-18


def samples(
    parts: list[tuple[int, np.ndarray]],
    *,
    hr: dict[int, float] | None = None,
    **fields: dict[int, np.ndarray],
) -> DeviceSamples:
    """Device samples from (device code, times) parts; bikes pedal (power 150 W) unless told otherwise."""
    parts = sorted(parts, key=lambda p: p[0])
    dev = np.concatenate([np.full(len(t), d, dtype=np.int64) for d, t in parts])
    t = np.concatenate([np.asarray(tt, dtype=np.float64) for _, tt in parts])
    n = t.size

    def col(name: str, default: float) -> np.ndarray:
        given_ = fields.get(name, {})
        return np.concatenate(
            [
                np.asarray(given_[d], dtype=np.float64) if d in given_ else np.full(len(tt), default)
                for d, tt in parts
            ]
        )

    hr_col = np.concatenate([np.full(len(tt), (hr or {}).get(d, 120.0)) for d, tt in parts])
    return DeviceSamples(
        device=dev,
        t_s=t,
        hr_bpm=hr_col,
        power_w=col("power_w", 150.0),
        speed_kmh=col("speed_kmh", math.nan),
        incline_pct=np.full(n, math.nan),
        cadence_rpm=col("cadence_rpm", math.nan),
        stroke_rate_spm=np.full(n, math.nan),
        distance_m=col("distance_m", math.nan),
        energy_kcal=np.full(n, math.nan),
        elapsed_s=col("elapsed_s", math.nan),
    )


def window(n_devices: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n_devices, lo), np.full(n_devices, hi)


def run(
    s: DeviceSamples,
    n_devices: int = 1,
    *,
    lo: float = T0 - 3600,
    hi: float = T0 + 86_400,
    now: float = math.inf,
    strap: tuple[int, ...] = (),
    **kw: object,
) -> Segments:
    is_strap = np.zeros(n_devices, dtype=bool)
    is_strap[list(strap)] = True
    wlo, whi = window(n_devices, lo, hi)
    return assemble(s, active_mask(s, is_strap), window_lo_s=wlo, window_hi_s=whi, now_s=now, **kw)  # type: ignore[arg-type]


def secs(a: float, b: float, step: float = 1.0) -> np.ndarray:
    return T0 + np.arange(a, b, step)


def test_one_continuous_session_is_final_and_starts_at_first_activity() -> None:
    s = samples([(0, secs(0, 600))])
    seg = run(s)
    assert seg.n == 1
    assert seg.start_s[0] == T0
    assert seg.end_s[0] == T0 + 599
    assert seg.final.tolist() == [True]
    assert seg.source.tolist() == [SOURCE_ACTIVITY_GAP]
    assert seg.n_active.tolist() == [600]


def test_gap_threshold_is_exclusive() -> None:
    # a pause of exactly gap_s keeps one session; a longer one splits
    t = np.concatenate((secs(0, 300), secs(299 + 300, 900)))
    assert run(samples([(0, t)])).n == 1
    t2 = np.concatenate((secs(0, 300), secs(299 + 300.5, 900)))
    seg = run(samples([(0, t2)]))
    assert seg.n == 2
    assert seg.final.all()


def test_inactive_samples_do_not_extend_and_short_activity_is_not_a_session() -> None:
    t = secs(0, 1200)
    power = np.full(t.size, 150.0)
    power[600:] = 0.0  # machine still sends, nobody pedals
    power[1000:1060] = 200.0  # a 60 s burst after a 400 s pause
    seg = run(samples([(0, t)], power_w={0: power}))
    assert seg.n == 2
    assert seg.end_s[0] == T0 + 599
    assert seg.long_enough.tolist() == [True, False]
    assert seg.final.tolist() == [True, False]


def test_uninterrupted_activity_is_cut_into_longest_sessions_from_its_start() -> None:
    params = AssemblyParams(max_session_s=3600.0)
    seg = run(samples([(0, secs(100, 100 + 9000))]), params=params)
    assert [(a - T0, b - T0) for a, b in zip(seg.start_s, seg.end_s, strict=True)] == [
        (100, 3699),
        (3700, 7299),
        (7300, 9099),
    ]
    assert seg.final.all()
    # the pieces are measured from the activity's start: a window that starts inside the activity cannot
    # know where the pieces fall, so its first piece is uncertain and the caller widens the window
    inside = samples([(0, secs(5000, 100 + 9000))])
    later = run(inside, lo=T0 + 4999.5, params=params)
    assert not later.left_certain[0]
    assert later.needs_wider(1)[0].tolist() == [True]
    with pytest.raises(SessionInputError):
        AssemblyParams(max_session_s=60.0)


def test_counter_reset_splits_back_to_back_workouts() -> None:
    t = np.concatenate((secs(0, 600), secs(720, 1500)))  # 2 min wipe-down: less than the gap
    elapsed = np.concatenate((np.arange(600.0), np.arange(780.0)))
    seg = run(samples([(0, t)], elapsed_s={0: elapsed}))
    assert seg.n == 2
    assert seg.source.tolist() == [SOURCE_MACHINE_STATUS, SOURCE_MACHINE_STATUS]
    # distance counters reset the same way
    dist = np.concatenate((np.arange(600.0) * 3, np.arange(780.0) * 3))
    assert run(samples([(0, t)], distance_m={0: dist})).n == 2
    # a counter that keeps counting does not split
    assert run(samples([(0, t)], elapsed_s={0: np.arange(t.size, dtype=float)})).n == 1


def test_training_status_changes_split_and_repeats_do_not() -> None:
    dev = np.zeros(4, dtype=np.int64)
    et = np.array([T0 - 10, T0 + 300.5, T0 + 310, T0 + 400])
    bd, bt = status_breaks(
        dev, et, ["state"] * 4, ["manual", "post_workout", "idle", "manual"], np.zeros(4, np.int64)
    )
    # first known status is a start, post_workout stops, idle (still inactive) is no change, manual restarts
    assert bt.tolist() == [T0 - 10, T0 + 300.5, T0 + 400]
    seg = run(samples([(0, secs(0, 900))]), breaks_device=bd, breaks_t_s=bt)
    assert [(a - T0, b - T0) for a, b in zip(seg.start_s, seg.end_s, strict=True)] == [
        (0, 300),
        (301, 399),
        (400, 899),
    ]
    assert seg.final.tolist() == [True, False, True]  # 99 s between the two events is too short
    # errors and offline always break; statusless events never do
    _bd2, bt2 = status_breaks(
        np.zeros(3, np.int64),
        np.array([T0 + 100, T0 + 200, T0 + 250]),
        ["state", "offline", "state"],
        [None, None, None],
        np.array([0, 0, 1]),
    )
    assert bt2.tolist() == [T0 + 200, T0 + 250]


def test_check_in_names_the_participant_and_bounds_the_session() -> None:
    t = secs(0, 1800)
    ci = CheckIns(
        device=np.array([0, 0]),
        participant=np.array([7, 8]),
        start_s=np.array([T0 - 60, T0 + 900.5]),
        end_s=np.array([T0 + 900.5, math.inf]),
    )
    seg = run(samples([(0, t)]), check_ins=ci)
    assert seg.n == 2
    assert seg.participant.tolist() == [7, 8]
    assert seg.source.tolist() == [SOURCE_CHECK_IN, SOURCE_CHECK_IN]
    assert seg.end_s[0] == T0 + 900
    assert seg.start_s[1] == T0 + 901
    # activity outside every check-in has no participant
    seg2 = run(
        samples([(0, t)]),
        check_ins=replace(
            ci,
            device=np.array([0]),
            participant=np.array([7]),
            start_s=np.array([T0 + 1000.0]),
            end_s=np.array([T0 + 1200.0]),
        ),
    )
    assert seg2.participant.tolist() == [-1, 7, -1]


def test_window_edges_open_and_uncertain_segments() -> None:
    s = samples([(0, secs(0, 600)), (1, secs(0, 600))])
    # the window starts right at the first sample: it could continue earlier data -> widen to the left
    seg = run(s, 2, lo=T0, hi=T0 + 3600)
    assert not seg.left_certain.any()
    left, right = seg.needs_wider(2)
    assert left.tolist() == [True, True]
    assert right.tolist() == [False, False]
    # the window ends within gap_s of the last sample but before now: widen to the right
    seg = run(s, 2, hi=T0 + 700, now=T0 + 10_000)
    assert seg.right_certain.tolist() == [False, False]
    assert not seg.open.any()
    assert seg.needs_wider(2)[1].tolist() == [True, True]
    # the window reaches now: the session is open, not to be widened, not final
    seg = run(s, 2, hi=T0 + 700, now=T0 + 700)
    assert seg.open.all()
    assert not seg.final.any()
    assert not seg.needs_wider(2)[1].any()
    # once gap_s has passed, it is final
    seg = run(s, 2, hi=T0 + 1000, now=T0 + 1000)
    assert seg.final.all()


def test_empty_all_nan_and_one_sample() -> None:
    wlo, whi = window(1, T0, T0 + 10)
    empty = DeviceSamples.empty()
    assert assemble(empty, np.zeros(0, bool), window_lo_s=wlo, window_hi_s=whi, now_s=T0).n == 0
    s = samples([(0, secs(0, 100))], power_w={0: np.full(100, math.nan)})
    assert run(s).n == 0  # no effort signal anywhere
    one = run(samples([(0, secs(0, 1))]))
    assert one.n == 1
    assert one.final.tolist() == [False]
    bad = samples([(0, np.array([T0 + 1, T0]))])
    with pytest.raises(SessionInputError) as err:
        run(bad)
    assert err.value.field == "t_s"
    with pytest.raises(SessionInputError):
        AssemblyParams(gap_s=0)


def test_strap_joins_the_machine_of_its_participant_and_gives_the_heart_rate() -> None:
    # device 0: bike (P7 checked in), 1: strap of P7, 2: another bike (nobody checked in), 3: strap of P9
    t_bike = secs(0, 1200)
    t_strap = secs(-120.4, 1300.6)  # strap clock offset by 0.4 s, worn a bit longer
    s = samples(
        [(0, t_bike), (1, t_strap), (2, secs(2000, 3000)), (3, secs(1990, 2900))],
        hr={0: 90.0, 1: 140.0, 2: 95.0, 3: 150.0},
    )
    ci = CheckIns(
        device=np.array([0, 1, 3]),
        participant=np.array([7, 7, 9]),
        start_s=np.array([T0 - 300, T0 - 300, T0 + 1900]),
        end_s=np.array([T0 + 1500, T0 + 1500, T0 + 3000]),
    )
    seg = run(s, 4, strap=(1, 3), check_ins=ci)
    is_strap = np.array([False, True, False, True])
    site = np.zeros(4, dtype=np.int64)
    joined = join_straps(seg, is_strap=is_strap, site=site)
    assert joined.n == 2
    names = ["bike-1", "strap-7", "bike-2", "strap-9"]
    assert device_ids_of(joined, seg, names) == [["bike-1", "strap-7"], ["bike-2", "strap-9"]]
    assert joined.participant.tolist() == [7, 9]  # the unassigned bike takes the strap's participant
    assert joined.final.all()

    rr = RrIntervals(
        device=np.array([1, 1, 1, 1]),
        t_s=np.array([T0 - 200, T0 + 10, T0 + 10, T0 + 1250]),
        rr_ms=np.array([900.0, 430.0, 428.0, 500.0]),
    )
    n = joined.n
    ctx = SessionContext(
        np.full(n, 60.0),
        np.full(n, 190.0),
        np.full(n, 40.0),
        np.ones(n, np.int8),
        np.full(n, 80.0),
        np.full(n, np.nan),
    )
    kind = np.array(
        [KIND_CODE["bike"], KIND_CODE["hr_strap"], KIND_CODE["bike"], KIND_CODE["hr_strap"]], np.int8
    )
    batch, strap_hr = build_batch(s, rr, seg, joined, kind=kind, context=ctx)
    assert batch.n == 2
    assert strap_hr.tolist() == [True, True]
    first = batch.session(0)
    assert np.asarray(first.t_s)[0] == T0
    assert len(np.asarray(first.t_s)) == 1200
    assert np.all(np.asarray(first.hr_bpm) == 140.0)  # the strap's heart rate, not the bike's 90
    assert np.asarray(first.rr_ms).tolist() == [430.0, 428.0]  # RR within the session, in beat order
    assert batch.kind.tolist() == [KIND_CODE["bike"], KIND_CODE["bike"]]


def test_strap_without_overlap_enough_stays_alone_and_two_machines_compete_for_one_strap() -> None:
    # an unassigned strap overlapping two unassigned bikes: the better overlap wins, once
    s = samples([(0, secs(0, 1000)), (1, secs(100, 900)), (2, secs(600, 1600))])
    ci = CheckIns(
        device=np.array([1]),
        participant=np.array([5]),
        start_s=np.array([T0 - 10]),
        end_s=np.array([math.inf]),
    )
    seg = run(s, 3, strap=(1,), check_ins=ci)
    joined = join_straps(seg, is_strap=np.array([False, True, False]), site=np.zeros(3, np.int64))
    ids = device_ids_of(joined, seg, ["bike-a", "strap", "bike-b"])
    assert ids == [["bike-a", "strap"], ["bike-b"]]
    # different sites never join
    joined2 = join_straps(seg, is_strap=np.array([False, True, False]), site=np.array([0, 1, 0]))
    assert sorted(map(tuple, device_ids_of(joined2, seg, ["bike-a", "strap", "bike-b"]))) == [
        ("bike-a",),
        ("bike-b",),
        ("strap",),
    ]
    # a strap checked in for another participant than the machine's never joins it
    ci3 = CheckIns(
        device=np.array([0, 1]),
        participant=np.array([4, 5]),
        start_s=np.array([T0 - 10, T0 - 10]),
        end_s=np.array([math.inf, math.inf]),
    )
    seg3 = run(s, 3, strap=(1,), check_ins=ci3)
    j3 = join_straps(seg3, is_strap=np.array([False, True, False]), site=np.zeros(3, np.int64))
    assert ["bike-a"] in device_ids_of(j3, seg3, ["bike-a", "strap", "bike-b"])


def _named(joined: Joined, seg: Segments, names: list[str]) -> dict[tuple[str, ...], int]:
    """Joined sessions as {sorted device names: participant code}."""
    ids = [tuple(d) for d in device_ids_of(joined, seg, names)]
    return dict(zip(ids, joined.participant.tolist(), strict=True))


def _paired(straps: dict[int, int], since: float = T0 - 3600) -> CheckIns:
    """Straps (device -> participant) paired with their owners for good."""
    devs = sorted(straps)
    return CheckIns(
        device=np.array(devs, dtype=np.int64),
        participant=np.array([straps[d] for d in devs], dtype=np.int64),
        start_s=np.full(len(devs), since),
        end_s=np.full(len(devs), math.inf),
    )


@pytest.mark.parametrize("rower_first", [True, False])
def test_a_strap_worn_for_a_short_visit_joins_it_not_a_long_session_around_it(rower_first: bool) -> None:
    # issue 10: m0004's strap, worn only during a 5-minute treadmill visit (09:07-09:11:59), was joined to an
    # anonymous 30-minute rower session (09:00-09:29:59) covering the same minutes. Device codes in both
    # orders: the join must not depend on which machine comes first.
    rower, treadmill, strap = (0, 1, 2) if rower_first else (1, 0, 2)
    s = samples(
        [(rower, secs(0, 1800)), (treadmill, secs(420, 720)), (strap, secs(420, 720))],
        speed_kmh={treadmill: np.full(300, 10.0)},
        power_w={treadmill: np.full(300, np.nan)},
    )
    seg = run(s, 3, strap=(strap,), check_ins=_paired({strap: 4}))
    is_strap = np.array([False, False, True])
    names = ["", "", "strap-m0004"]
    names[rower], names[treadmill] = "rower-003", "treadmill-002"
    for with_samples in (None, s):  # timing alone decides this one
        joined = join_straps(seg, is_strap=is_strap, site=np.zeros(3, np.int64), samples=with_samples)
        got = _named(joined, seg, names)
        assert got == {("rower-003",): -1, ("strap-m0004", "treadmill-002"): 4}


def test_join_scores_rank_coinciding_intervals_first() -> None:
    # machine segments 0..3 against strap segment 4 (T0+100 .. T0+700)
    s = samples(
        [
            (0, secs(100, 701)),  # identical
            (1, secs(110, 711)),  # shifted by 10 s
            (2, secs(0, 1800)),  # a long session around it
            (3, secs(400, 1000)),  # half of it
            (4, secs(100, 701)),
        ]
    )
    seg = run(s, 5, strap=(4,))
    pm = np.arange(4, dtype=np.int64)
    score = join_scores(seg, pm, np.full(4, 4, dtype=np.int64))
    assert score[0] == pytest.approx(1.0)
    assert score[0] > score[1] > score[3]
    assert score[1] > score[2]
    assert score[2] == pytest.approx((600 / 1799) / (1 + (100 + 1099) / 60))
    assert join_scores(seg, np.array([4]), np.array([0]))[0] == pytest.approx(1.0)  # symmetric


def test_a_class_that_starts_together_is_told_apart_by_heart_rate() -> None:
    # two anonymous rowers and two members' straps, all from the same second to the same second; each machine
    # reports its rower's heart rate (hand grips or the strap itself), 118-122 bpm vs 150-156 bpm
    t = secs(0, 1800)
    wave = 2.0 * np.sin(np.arange(t.size) / 60.0)
    hr = {0: 120.0 + wave, 1: 153.0 + 1.5 * wave, 2: 152.0 + 1.5 * wave + 0.4, 3: 121.0 + wave}
    s = samples([(d, t) for d in range(4)])
    s = replace(s, hr_bpm=np.concatenate([hr[d] for d in range(4)]))
    seg = run(s, 4, strap=(2, 3), check_ins=_paired({2: 8, 3: 13}))
    is_strap = np.array([False, False, True, True])
    joined = join_straps(seg, is_strap=is_strap, site=np.zeros(4, np.int64), samples=s)
    names = ["rower-a", "rower-b", "strap-m0008", "strap-m0013"]
    assert sorted(map(tuple, device_ids_of(joined, seg, names))) == [
        ("rower-a", "strap-m0013"),
        ("rower-b", "strap-m0008"),
    ]
    # a machine that reports no heart rate loses a tie to one whose heart rate agrees, and wins it against one
    # whose heart rate disagrees
    no_hr = replace(s, hr_bpm=np.where(s.device == 1, np.nan, s.hr_bpm))
    joined = join_straps(seg, is_strap=is_strap, site=np.zeros(4, np.int64), samples=no_hr)
    assert sorted(map(tuple, device_ids_of(joined, seg, names))) == [
        ("rower-a", "strap-m0013"),
        ("rower-b", "strap-m0008"),
    ]


def test_a_strap_serves_machines_one_after_the_other_never_two_at_once() -> None:
    # a member wears one strap from the bike (0..1150) to the treadmill (1200..2400), both machines showing
    # the strap's heart rate; meanwhile an anonymous rower (0..1200) runs beside the bike, as well placed in
    # time but at another member's heart rate: the strap goes to the bike and the treadmill, not the rower
    s = samples(
        [(0, secs(0, 1150)), (1, secs(1200, 2400)), (2, secs(0, 1200)), (3, secs(0, 2400))],
        hr={0: 140.0, 1: 140.0, 2: 104.0, 3: 140.0},
    )
    seg = run(s, 4, strap=(3,), check_ins=_paired({3: 2}))
    is_strap = np.array([False, False, False, True])
    joined = join_straps(seg, is_strap=is_strap, site=np.zeros(4, np.int64), samples=s)
    names = ["bike", "treadmill", "rower", "strap"]
    got = _named(joined, seg, names)
    assert got == {("bike", "strap"): 2, ("strap", "treadmill"): 2, ("rower",): -1}
    # by timing alone the rower (0..1200) coincides a little better than the bike: it takes the strap, and
    # then the bike beside it cannot have it too
    joined = join_straps(seg, is_strap=is_strap, site=np.zeros(4, np.int64))
    got = _named(joined, seg, names)
    assert got == {("rower", "strap"): 2, ("strap", "treadmill"): 2, ("bike",): -1}


def test_a_check_in_outranks_timing_and_names_the_session_without_a_strap() -> None:
    # P2 is checked in on the bike (0..1000); their strap (100..1200) coincides better with an anonymous rower
    # (100..1200) that overlaps the bike: the check-in wins, the rower stays anonymous; P5, checked in on the
    # treadmill without a strap, names that session
    s = samples([(0, secs(0, 1000)), (1, secs(100, 1200)), (2, secs(100, 1200)), (3, secs(0, 900))])
    ci = CheckIns(
        device=np.array([0, 2, 3], dtype=np.int64),
        participant=np.array([2, 2, 5], dtype=np.int64),
        start_s=np.array([T0 - 30, T0 - 3600, T0 - 30]),
        end_s=np.array([T0 + 1015, math.inf, T0 + 915]),
    )
    seg = run(s, 4, strap=(2,), check_ins=ci)
    joined = join_straps(seg, is_strap=np.array([False, False, True, False]), site=np.zeros(4, np.int64))
    names = ["bike", "rower", "strap", "treadmill"]
    got = _named(joined, seg, names)
    assert got == {("bike", "strap"): 2, ("rower",): -1, ("treadmill",): 5}


def test_a_check_in_needs_the_same_overlap_as_an_anonymous_join() -> None:
    # P2 checked in on the bike (0..600) wearing their strap (0..600), then on the treadmill (590..1800)
    # without it: the strap's last 10 s on the treadmill do not make it the treadmill's strap; both sessions
    # are P2's through their check-ins
    s = samples([(0, secs(0, 600)), (1, secs(0, 600)), (2, secs(590, 1800))])
    ci = CheckIns(
        device=np.array([0, 1, 2], dtype=np.int64),
        participant=np.array([2, 2, 2], dtype=np.int64),
        start_s=np.array([T0 - 30, T0 - 3600, T0 + 560]),
        end_s=np.array([T0 + 615, math.inf, T0 + 1815]),
    )
    seg = run(s, 3, strap=(1,), check_ins=ci)
    joined = join_straps(seg, is_strap=np.array([False, True, False]), site=np.zeros(3, np.int64))
    assert _named(joined, seg, ["bike", "strap", "treadmill"]) == {("bike", "strap"): 2, ("treadmill",): 2}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_hr_disagreement_matches_a_plain_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = []
    for d in range(4):
        start = float(rng.integers(0, 300))
        t = secs(start, start + float(rng.integers(130, 600)), float(rng.choice([1.0, 2.0])))
        t = t + (0.5 if d >= 2 and rng.random() < 0.5 else 0.0)  # a strap clock half a second off
        parts.append((d, t))
    s = samples(parts)
    hr = np.round(rng.uniform(60, 180, s.n))
    hr[rng.random(s.n) < 0.2] = np.nan
    s = replace(s, hr_bpm=hr)
    seg = run(s, 4, strap=(2, 3), params=AssemblyParams(min_active_s=0))
    pm = np.array([k for k in range(seg.n) if seg.device[k] < 2 for _ in range(2)], dtype=np.int64)
    ps = np.array(
        [j for k in range(seg.n) if seg.device[k] < 2 for j in range(seg.n) if seg.device[j] >= 2][: pm.size],
        dtype=np.int64,
    )
    got = hr_disagreement(s, seg, pm, ps, 1.0)
    for i, (m, k) in enumerate(zip(pm.tolist(), ps.tolist(), strict=True)):
        diffs = []
        strap_rows = [r for r in range(s.n) if s.device[r] == seg.device[k]]
        for r in range(int(seg.first_row[m]), int(seg.last_row[m]) + 1):
            t = s.t_s[r]
            if not seg.start_s[k] <= t <= seg.end_s[k] or not 20 <= s.hr_bpm[r] <= 250:
                continue
            near = min(strap_rows, key=lambda q: (abs(s.t_s[q] - t), s.t_s[q]))  # a tie: the earlier
            if abs(s.t_s[near] - t) <= 1.0 and 20 <= s.hr_bpm[near] <= 250:
                diffs.append(abs(s.hr_bpm[r] - s.hr_bpm[near]))
        if diffs:
            assert got[i] == pytest.approx(float(np.median(diffs)))
        else:
            assert math.isnan(got[i])


def test_open_strap_keeps_the_joined_session_open() -> None:
    s = samples([(0, secs(0, 600)), (1, secs(0, 1000))])
    ci = CheckIns(
        device=np.array([0, 1]),
        participant=np.array([3, 3]),
        start_s=np.array([T0 - 1, T0 - 1]),
        end_s=np.array([math.inf, math.inf]),
    )
    seg = run(s, 2, strap=(1,), check_ins=ci, hi=T0 + 1000, now=T0 + 1000)
    joined = join_straps(seg, is_strap=np.array([False, True]), site=np.zeros(2, np.int64))
    assert joined.n == 1
    assert joined.final.tolist() == [False]


# ---------------------------------------------------------------------------------------------- reference


def reference_segments(
    dev: np.ndarray, t: np.ndarray, active: np.ndarray, breaks: list[tuple[int, float]], gap: float
) -> list[tuple[int, float, float]]:
    """Plain loop over samples, written from the rules, for comparison."""
    out: list[tuple[int, float, float]] = []
    cur: list[float] | None = None
    cur_dev = -1
    for d, tt, a in zip(dev.tolist(), t.tolist(), active.tolist(), strict=True):
        if not a:
            continue
        if cur is not None and d == cur_dev:
            prev = cur[1]
            split = tt - prev > gap or any(bd == d and prev < bt <= tt for bd, bt in breaks)
            if not split:
                cur[1] = tt
                continue
        if cur is not None:
            out.append((cur_dev, cur[0], cur[1]))
        cur, cur_dev = [tt, tt], d
    if cur is not None:
        out.append((cur_dev, cur[0], cur[1]))
    return out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_dev=st.integers(1, 4),
    n=st.integers(0, 300),
    gap=st.sampled_from([5.0, 30.0, 300.0]),
)
def test_assembly_matches_a_plain_loop(seed: int, n_dev: int, n: int, gap: float) -> None:
    rng = np.random.default_rng(seed)
    dev = np.sort(rng.integers(0, n_dev, n)).astype(np.int64)
    t = np.zeros(n)
    for d in range(n_dev):
        m = dev == d
        t[m] = T0 + np.cumsum(rng.choice([1.0, 2.0, 7.0, 40.0, 400.0], int(m.sum())))
    power = np.where(rng.random(n) < 0.8, 100.0, 0.0)
    s = DeviceSamples(dev, t, np.full(n, np.nan), power, *(np.full(n, np.nan) for _ in range(7)))
    nb = int(rng.integers(0, 6))
    bd = np.sort(rng.integers(0, n_dev, nb)).astype(np.int64)
    bt = T0 + rng.uniform(0, 2000, nb)
    order = np.lexsort((bt, bd))
    bd, bt = bd[order], bt[order]
    active = active_mask(s, np.zeros(n_dev, bool))
    wlo, whi = window(n_dev, T0 - 1e6, T0 + 1e7)
    seg = assemble(
        s,
        active,
        window_lo_s=wlo,
        window_hi_s=whi,
        now_s=math.inf,
        breaks_device=bd,
        breaks_t_s=bt,
        params=AssemblyParams(gap_s=gap, min_active_s=0),
    )
    got = list(zip(seg.device.tolist(), seg.start_s.tolist(), seg.end_s.tolist(), strict=True))
    assert got == reference_segments(dev, t, active, list(zip(bd.tolist(), bt.tolist(), strict=True)), gap)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), strict=st.booleans())
def test_count_le_and_last_le_match_brute_force(seed: int, strict: bool) -> None:
    rng = np.random.default_rng(seed)
    ig = rng.integers(0, 4, rng.integers(0, 30)).astype(np.int64)
    iv = rng.integers(0, 10, ig.size).astype(np.float64)
    qg = rng.integers(0, 5, 20).astype(np.int64)
    qv = rng.integers(-1, 11, 20).astype(np.float64)
    want = [
        sum(1 for g, v in zip(ig, iv, strict=True) if g == a and (v < b if strict else v <= b))
        for a, b in zip(qg, qv, strict=True)
    ]
    assert count_le(ig, iv, qg, qv, strict=strict).tolist() == want
    got = last_le(ig, iv, qg, qv)
    for k, (a, b) in enumerate(zip(qg, qv, strict=True)):
        cands = [i for i in range(ig.size) if ig[i] == a and iv[i] <= b]
        if not cands:
            assert got[k] == -1
        else:
            best = max(iv[i] for i in cands)
            assert iv[got[k]] == best
            assert ig[got[k]] == a
