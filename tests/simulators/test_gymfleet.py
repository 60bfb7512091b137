"""Gym days over several days: one member population, deterministic per seed and day, local opening
hours, machines and members' straps sending only during visits, raw frames of the same, the kiosk's stays."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from gateway.service import Pipeline
from gateway.transport import Link
from simulators.gymfleet import CHECK_IN_LEAD, CHECK_OUT_LAG, GymConfig, GymPlan, parse_range
from simulators.kiosk import stays
from simulators.rawfleet import RawFleet
from vitalab.wire import Sample

TUESDAY = date(2026, 11, 24)
SATURDAY = date(2026, 11, 28)
WEEK = [TUESDAY + timedelta(days=i) for i in range(7)]


def plan(seed: int = 3, machines: int = 6, **config: object) -> GymPlan:
    values: dict[str, object] = {"members": 40}
    values.update(config)
    return GymPlan("gym", machines, seed=seed, config=GymConfig(**values))  # type: ignore[arg-type]


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def test_the_same_members_come_back_and_days_are_deterministic() -> None:
    a, b, c = plan(), plan(), plan(seed=4)
    assert a.members == b.members
    assert all(a.day(d).visits == b.day(d).visits for d in WEEK)
    assert a.day(TUESDAY).visits != c.day(TUESDAY).visits
    assert plan().day(WEEK[5]).visits == a.day(WEEK[5]).visits  # seeded per day, not by what came before
    visits = [v for d in WEEK for v in a.day(d).visits]
    assert {v.member_id for v in visits} <= set(a.member_by_id)
    days_of = defaultdict(set)
    for v in visits:
        days_of[v.member_id].add(v.start.date())
    assert sum(len(days) >= 3 for days in days_of.values()) >= 30  # trends per member over the week
    # a share of the members own a strap; a share of the visits are checked in
    assert len(a.strap_of) == 24
    assert all(s == f"strap-{m}" for m, s in a.strap_of.items())
    assert [d.device_id for d in a.straps] == sorted(a.strap_of.values())
    checked = sum(a.checked_in(v) for v in visits) / len(visits)
    assert 0.62 < checked < 0.78
    assert [a.checked_in(v) for v in visits] == [b.checked_in(v) for v in visits]


def test_weekday_peaks_and_a_later_weekend_over_consecutive_days() -> None:
    p = plan(machines=12, members=200)
    weekday = Counter(v.start.hour for v in p.day(TUESDAY).visits)
    weekend = Counter(v.start.hour for v in p.day(SATURDAY).visits)
    assert weekday[7] + weekday[18] > 2 * (weekday[14] + weekday[15])
    assert weekend[7] < weekend[10]
    assert min(weekday) == 6
    assert min(weekend) >= 7
    # every machine idles at times: never busy from opening to closing
    for device in p.machines:
        spans = sorted((v.start, v.end) for v in p.day(TUESDAY).visits if v.device_id == device.device_id)
        idle = sum((b[0] - a[1]).total_seconds() for a, b in itertools.pairwise(spans))
        assert idle > 1800


def test_opening_hours_are_local_to_the_site_timezone() -> None:
    tz = ZoneInfo("Europe/Brussels")
    p = plan(timezone="Europe/Brussels")
    # a winter day, the spring-forward day (23 h) and the fall-back day (25 h)
    for day in (TUESDAY, date(2026, 3, 29), date(2026, 10, 25)):
        visits = p.day(day).visits
        assert len(visits) > 30
        for v in visits:
            start, end = v.start.astimezone(tz), v.end.astimezone(tz)
            assert start.date() == day
            assert start.hour >= 6
            assert end <= datetime.combine(day, time(22), tz)
            assert v.start.utcoffset() == timedelta(0)
    assert min(v.start for v in p.day(TUESDAY).visits).hour == 5  # 06:xx in Brussels is 05:xx UTC in winter
    assert p.local_date(datetime(2026, 11, 24, 23, 30, tzinfo=UTC)) == date(2026, 11, 25)
    with pytest.raises(ValueError, match="unknown timezone"):
        GymConfig(timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="visit minutes"):
        GymConfig(visit_minutes=(30, 20))
    with pytest.raises(ValueError, match="opening hours"):
        GymConfig(open_h=20, close_h=8)
    assert parse_range("6-22", "hours") == (6, 22)
    with pytest.raises(ValueError, match="6-22"):
        parse_range("six", "hours")


def test_machines_and_straps_send_only_during_visits() -> None:
    p = plan(machines=3)
    fleet = p.fleet()
    start, seconds = midnight(TUESDAY) + timedelta(hours=17), 17 * 3600  # an evening, a night, a morning
    got: dict[str, list[datetime]] = defaultdict(list)
    samples: dict[tuple[str, datetime], Sample] = {}
    changes: list[tuple[str, datetime, bool]] = []
    ticks = 0
    for tick in fleet.iter_history(start, seconds):
        ticks += 1
        changes += [(c.device.device_id, c.t, c.in_use) for c in fleet.use_changes()]
        for dev, sample in tick:
            got[dev.device_id].append(sample.t)
            samples[(dev.device_id, sample.t)] = sample
    end = start + timedelta(seconds=seconds)
    visits = p.visits(start, end)
    want: dict[str, list[datetime]] = defaultdict(list)
    for v in visits:
        for device in p.devices_of(v):
            n = int((min(v.end, end) - v.start).total_seconds())
            want[device] += [v.start + timedelta(seconds=i) for i in range(n)]
    assert {d: sorted(ts) for d, ts in got.items()} == {d: sorted(ts) for d, ts in want.items()}
    assert all(len(ts) == len(set(ts)) for ts in got.values())
    assert ticks < seconds * 0.7  # idle stretches (nights) are skipped, not ticked
    assert {v.start.date() for v in visits} == {TUESDAY, TUESDAY + timedelta(days=1)}
    assert sorted(changes) == sorted(
        [(d, v.start, True) for v in visits for d in p.devices_of(v)]
        + [(d, v.end, False) for v in visits for d in p.devices_of(v) if v.end < end]
    )
    assert any(v.end > end for v in visits)  # one still going on at the end
    strap_visits = [v for v in visits if v.member_id in p.strap_of]
    assert len(strap_visits) > 10
    for v in strap_visits[:20]:
        strap = p.strap_of[v.member_id]
        first = samples[(v.device_id, v.start)]
        assert first.elapsed_s == 1.0  # every visit is a new workout on the machine
        machine_hr = [samples[(v.device_id, t)].hr_bpm for t in want[v.device_id] if v.start <= t < v.end]
        strap_s = [samples[(strap, t)] for t in want[strap] if v.start <= t < v.end]
        assert all(s.rr_ms for s in strap_s[5:])  # heart rate and RR intervals while worn
        # the strap reads the same member's heart as the machine (same workout, independent noise)
        diff = np.abs(np.array([s.hr_bpm for s in strap_s], dtype=float) - np.array(machine_hr, dtype=float))
        assert float(diff.mean()) < 4


def test_a_visit_is_the_same_whichever_run_makes_it() -> None:
    p = plan()
    day = p.day(TUESDAY).visits
    v = next(v for v in day if v.member_id in p.strap_of and v.end - v.start >= timedelta(minutes=30))
    whole = {(d.device_id, s.t): s for tick in p.fleet().iter_history(v.start, 3600) for d, s in tick}
    # a live run that starts in the middle of the visit (members catch up silently)
    late = v.start + timedelta(minutes=17, seconds=3)
    fresh = plan().fleet()
    part = {(d.device_id, s.t): s for tick in fresh.iter_history(late, 600) for d, s in tick}
    assert part
    for key, sample in part.items():
        assert whole[key] == sample
    assert part[(v.device_id, late)].elapsed_s == (late - v.start).total_seconds() + 1


def test_the_kiosk_stays() -> None:
    p = plan()
    start = midnight(TUESDAY)
    end = start + timedelta(days=1, hours=12)
    got = list(stays(p, start, end))
    visits = [v for v in p.visits(start, end) if p.checked_in(v)]
    assert [(s.member_id, s.device_id, s.checked_in) for s in got] == [
        (v.member_id, v.device_id, v.start - CHECK_IN_LEAD) for v in visits
    ]
    assert [s.checked_out for s in got] == [min(v.end + CHECK_OUT_LAG, end) for v in visits]
    assert any(s.checked_out == end for s in got)  # in the gym when the run ends: checked out then
    left_open = list(stays(p, start, end, close_at_end=False))
    assert [s.checked_out is None for s in left_open] == [v.end + CHECK_OUT_LAG > end for v in visits]
    forever = list(itertools.islice(stays(p, start, None), 500))  # open-ended: day after day
    assert len(forever) == 500
    assert [s.checked_in for s in forever[: len(got)]] == [s.checked_in for s in got]
    assert [s.checked_out for s in forever[: len(got)]] == [v.end + CHECK_OUT_LAG for v in visits]


def test_raw_frames_of_a_gym_morning_through_the_gateway_pipeline() -> None:
    config = GymConfig(members=16, visit_minutes=(5, 15), rest_min=30)
    p = GymPlan("gym", 4, seed=3, config=config, kinds=("bike", "rower"))
    fleet = RawFleet(p.fleet(), ant_share=0.5)
    radios = Counter((d.sim.kind, d.radio) for d in fleet.devices)
    assert radios == Counter(
        {("bike", "ble"): 1, ("bike", "ant"): 1, ("rower", "ble"): 1, ("rower", "ant"): 1}
        | {("hr_strap", "ble"): 5, ("hr_strap", "ant"): 5}
    )
    start, end = midnight(TUESDAY) + timedelta(hours=6), midnight(TUESDAY) + timedelta(hours=7, minutes=30)
    pipeline = Pipeline()
    outs = [pipeline.handle(fleet.infos(), "sim", 0.0)]
    links: list[Link] = []
    for i in range(int((end - start).total_seconds())):
        events = fleet.tick(start + timedelta(seconds=i))
        links += [e for e in events if isinstance(e, Link)]
        outs.append(pipeline.handle(events, "sim", float(i), live=False))
    outs.append(pipeline.handle(fleet.finish(end), "sim", 0.0, live=False))
    outs.append(pipeline.drain())
    got = {(d, s.t): s for out in outs for d, s in out.samples}
    expected = {(d, t): s for d, samples in fleet.expected.items() for t, s in samples.items()}
    assert got == expected  # every sample, field by field, also across visits (ANT+ totals keep counting)
    assert pipeline.stats.dead_total == 0
    visits = p.visits(start, end)
    per_machine = Counter(v.device_id for v in visits)
    assert len(per_machine) == 4
    assert min(per_machine.values()) >= 2  # workouts one after the other on every machine
    # machines stop at the end of every visit (FTMS stopped / ANT+ FE finished: post-workout)
    states = [s for out in outs for s in out.states.values()]
    ended = {(s.device, s.t) for s in states if s.training == "post_workout"}
    assert ended == {(v.device_id, min(v.end, end)) for v in visits}
    # straps connect when put on and disconnect when taken off
    assert sorted((e.device_id, e.t, e.connected) for e in links) == sorted(
        [(p.strap_of[v.member_id], v.start, True) for v in visits if v.member_id in p.strap_of]
        + [
            (p.strap_of[v.member_id], v.end, False)
            for v in visits
            if v.member_id in p.strap_of and v.end < end
        ]
    )
    offline = {(s.device, s.t) for s in states if not s.online}
    assert offline == {
        (p.strap_of[v.member_id], min(v.end, end)) for v in visits if v.member_id in p.strap_of
    }
