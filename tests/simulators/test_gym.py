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
