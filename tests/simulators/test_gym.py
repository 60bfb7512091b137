from __future__ import annotations

import itertools
from collections import Counter
from datetime import date, datetime, timedelta

import numpy as np
import pytest

from simulators.fleet import Fleet
from simulators.gym import GymDay
from simulators.people import Member

TUESDAY = date(2026, 11, 24)
SATURDAY = date(2026, 11, 28)


def gym(day: date, seed: int = 1) -> GymDay:
    fleet = Fleet.build("gym", 12, seed=seed, mix=("bike", "treadmill", "rower", "cross_trainer"))
    rng = np.random.default_rng(seed)
    members = [Member.random(f"m{i}", rng) for i in range(200)]
    return GymDay(day, fleet.devices, members, seed=seed, peak_arrivals_per_h=10)


def test_visits_respect_opening_hours_and_never_share_a_machine() -> None:
    g = gym(TUESDAY)
    assert len(g.visits) > 50
    for v in g.visits:
        assert v.start.hour >= 6
        assert v.end <= v.start.replace(hour=22, minute=0)
        assert timedelta(minutes=0) < v.end - v.start <= timedelta(minutes=60)
    by_machine: dict[str, list[tuple[datetime, datetime]]] = {}
    for v in g.visits:
        by_machine.setdefault(v.device_id, []).append((v.start, v.end))
    for spans in by_machine.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end  # one member per machine at a time


def test_weekday_peaks_and_a_flatter_weekend() -> None:
    weekday = Counter(v.start.hour for v in gym(TUESDAY).visits)
    weekend = Counter(v.start.hour for v in gym(SATURDAY).visits)
    assert weekday[7] + weekday[18] > 2 * (weekday[14] + weekday[15])  # morning and evening peaks
    assert weekend[7] < weekend[10]  # weekends start late
    assert gym(TUESDAY).visits == gym(TUESDAY).visits  # deterministic


def test_machines_send_only_while_in_use() -> None:
    g = gym(TUESDAY)
    ticks = g.ticks()
    in_use = {(v.device_id, v.start, v.end) for v in g.visits}
    for t, samples in ticks[::97]:
        for device, sample in samples:
            assert sample.t == t
            assert any(d == device.device_id and s <= t < e for d, s, e in in_use)
    first_visit = min(v.start for v in g.visits)
    assert ticks[0][0] == first_visit
    total = sum(len(s) for _, s in ticks)
    expected = sum(int((v.end - v.start).total_seconds()) for v in g.visits)
    assert total == expected  # one sample per second of every visit, none outside


def test_bad_opening_hours() -> None:
    fleet = Fleet.build("gym", 2)
    with pytest.raises(ValueError, match="opening hours"):
        GymDay(TUESDAY, fleet.devices, [], open_h=23, close_h=6)


def test_classes_start_and_end_together_on_their_machines() -> None:
    g = gym(TUESDAY)
    by_start: dict[datetime, list[str]] = {}
    for v in g.visits:
        if v.plan in ("spin45", "hiit30"):
            by_start.setdefault(v.start, []).append(v.device_id)
    assert sorted((t.hour, t.minute) for t in by_start) == [(7, 0), (12, 15), (18, 0)]
    kinds = {d.device_id: d.kind for d in g.devices}
    for start, devices in by_start.items():
        group = [v for v in g.visits if v.start == start and v.plan in ("spin45", "hiit30")]
        assert 2 <= len(group) <= g.class_size
        assert len({v.end for v in group}) == 1  # they finish together
        expected = {"bike"} if start.hour != 12 else {"rower", "cross_trainer"}
        assert {kinds[d] for d in devices} <= expected
    spin = next(v for v in g.visits if v.plan == "spin45")
    assert spin.end - spin.start == timedelta(minutes=45)


def test_workouts() -> None:
    from simulators.workouts import WORKOUTS, workout

    steady = workout("steady")
    assert steady.duration_s is None
    assert steady.at(0)[0].training == "warm_up"
    assert steady.at(3600)[1] == 0.6
    intervals = workout("intervals")
    assert [intervals.at(300 + 120 * k + 1)[0].training for k in range(4)] == [
        "high_interval",
        "low_interval",
        "high_interval",
        "low_interval",
    ]
    numbers = [intervals.position(300 + 120 * k + 1)[0] for k in range(4)]
    assert len(set(numbers)) == 4  # a new segment number for every repeat
    assert WORKOUTS["spin45"].duration_s == 45 * 60
    assert workout("hiit30").group
    with pytest.raises(ValueError, match="unknown workout"):
        workout("yoga")
