from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from simulators.fleet import Fleet
from simulators.people import Heart, Member
from vitalab.wire import Sample, TelemetryMessage, decode_telemetry, encode

START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def samples(fleet: Fleet, seconds: int) -> list[tuple[str, Sample]]:
    return [(d.device_id, s) for tick in fleet.history(START, seconds) for d, s in tick]


def test_same_seed_same_gym() -> None:
    a = samples(Fleet.build("gym", 6, seed=3), 120)
    b = samples(Fleet.build("gym", 6, seed=3), 120)
    c = samples(Fleet.build("gym", 6, seed=4), 120)
    assert len(a) == 6 * 120
    assert a == b
    assert a != c


def test_every_simulated_sample_honours_the_wire_contract() -> None:
    fleet = Fleet.build("gym", 8, seed=1)
    ticks = fleet.history(START, 900)
    for dev in fleet.devices:
        samples = [s for tick in ticks for d, s in tick if d is dev]
        payload = encode(TelemetryMessage(v=1, device=dev.device_id, seq=0, samples=samples[:600]))
        out = decode_telemetry(payload, topic_device=dev.device_id, now=START.replace(hour=10))
        assert out.rejected == []
        assert len(out.samples) == 600


def test_heart_rate_follows_workload_with_lag_and_rr_matches_hr() -> None:
    rng = np.random.default_rng(5)
    member = Member.random("m", rng)
    heart = Heart(member, rng)
    hr: list[float] = []
    rr: list[float] = []
    for i in range(900):
        h, beats = heart.step(0.2 if i < 300 else 0.8, 1.0)
        hr.append(h)
        if i >= 600:
            rr.extend(beats)
    hr_arr = np.array(hr)
    hrr = member.hr_max_bpm - member.hr_rest_bpm
    easy = member.hr_rest_bpm + 0.2 * hrr
    hard = member.hr_rest_bpm + 0.8 * hrr
    assert abs(hr_arr[250:300].mean() - easy) < 5  # settled at the easy target
    assert hr_arr[305] < hard - 15  # not there yet a few seconds after the step: lag
    assert abs(hr_arr[700:900].mean() - hard) < 10  # settled (plus some cardiac drift)
    assert abs(60_000 / np.mean(rr) - hr_arr[600:].mean()) < 3  # RR and displayed HR agree
    assert np.std(np.diff(rr)) > 1.0  # beat-to-beat variability exists


def test_members_are_plausible() -> None:
    rng = np.random.default_rng(0)
    members = [Member.random(f"m{i}", rng) for i in range(500)]
    for m in members:
        assert 18 <= m.age_y < 70
        assert 42 <= m.hr_rest_bpm <= 90
        assert m.hr_rest_bpm + 60 < m.hr_max_bpm <= 215
        assert 50 <= m.ftp_w <= 450
    assert {m.sex for m in members} == {"female", "male"}
