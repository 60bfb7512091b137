"""Raw-frame devices: deterministic frames that decode back to the simulated values, status frames,
corrupted frames that no decoder accepts, quirky machines identified by their Device Information Service,
storms, and classes that start together.

The frames are made by the gateway's own encoders, so "decode back" is encoder/decoder symmetry at fleet
scale (the expected samples are worked out from the protocol rules in simulators/rawdev.py, not by
decoding), not protocol conformance: that is tests/gateway/test_conformance.py (frames written from the
specification's tables) and tests/gateway/test_captures.py (frames real devices sent)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from gateway import DecodeError, decode_frame, dis, ftms, hrm, quirks
from gateway.service import Pipeline
from gateway.transport import DeviceInfo, Frame, Link
from simulators.faults import FaultInjector, FaultRates
from simulators.fleet import MIX_ALL, VENDORS, Fleet
from simulators.rawdev import corrupt
from simulators.rawfleet import RawFleet
from vitalab.wire import Sample

START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
DIS_SOURCES = {f"ble:{c}" for c in dis.FIELDS}


def run(fleet: RawFleet, seconds: int) -> list[list[object]]:
    return [list(fleet.tick(START + timedelta(seconds=i))) for i in range(seconds)]


def through_pipeline(
    fleet: RawFleet, seconds: int, *, read_dis: bool = True
) -> tuple[dict[tuple[str, datetime], Sample], Pipeline, dict[str, DeviceInfo]]:
    """The fleet's events through a gateway pipeline: the samples, the pipeline and the last meta of each
    device. ``read_dis=False``: as a gateway that does not read the Device Information Service (every DIS
    frame left out)."""
    pipeline = Pipeline()
    got: dict[tuple[str, datetime], Sample] = {}
    events = fleet.connect(START)
    if not read_dis:
        events = [e for e in events if not (isinstance(e, Frame) and e.source in DIS_SOURCES)]
    outs = [pipeline.handle(events, "sim", 0.0)]
    for i in range(seconds):
        tick = fleet.tick(START + timedelta(seconds=i))
        if not read_dis:
            tick = [e for e in tick if not (isinstance(e, Frame) and e.source in DIS_SOURCES)]
        outs.append(pipeline.handle(tick, "sim", float(i), live=False))
    outs.append(pipeline.handle(fleet.finish(START + timedelta(seconds=seconds)), "sim", 0.0, live=False))
    outs.append(pipeline.drain())
    metas: dict[str, DeviceInfo] = {}
    for out in outs:
        metas.update((m.device_id, m) for m in out.metas)
        for device, sample in out.samples:
            assert (device, sample.t) not in got  # one sample per device and period
            got[(device, sample.t)] = sample
    return got, pipeline, metas


def test_same_seed_same_frames() -> None:
    def frames(seed: int) -> list[tuple[str, str, bytes]]:
        fleet = RawFleet(
            Fleet.build("gym", 12, seed=seed, mix=MIX_ALL), 0.5, FaultInjector(FaultRates(0.1), 3)
        )
        return [
            (f.device_id, f.source, f.data) for tick in run(fleet, 60) for f in tick if isinstance(f, Frame)
        ]

    a, b, c = frames(1), frames(1), frames(2)
    assert a == b
    assert a != c
    assert len(a) > 12 * 60


def test_frames_decode_back_to_the_simulated_values() -> None:
    fleet = RawFleet(Fleet.build("gym", 12, seed=3, mix=MIX_ALL, class_share=0.5), ant_share=0.5)
    radios = Counter((d.sim.kind, d.radio) for d in fleet.devices)
    assert radios == Counter(
        {(k, "ble"): 1 for k in MIX_ALL} | {(k, "ant"): 1 for k in MIX_ALL[:5]}
    ) + Counter({("power_meter", "ble"): 1})
    got, pipeline, metas = through_pipeline(fleet, 400)
    expected = {(d, t): s for d, samples in fleet.expected.items() for t, s in samples.items()}
    assert len(expected) == 12 * 400
    assert got == expected  # every field of every sample, exactly (values are quantised at the source)
    assert pipeline.stats.dead_total == 0
    assert pipeline.stats.reserved_flags == {}  # none of these devices sets a reserved bit
    assert not fleet.partial
    # BLE devices were configured with id, kind and radio only: vendor and model come from their DIS
    assert {(m.transport, m.vendor, m.model) for m in metas.values()} == {
        (d.radio, "vitalab-sim", VENDORS[d.sim.kind][1]) for d in fleet.devices
    }
    strap = next(d for d in fleet.devices if d.sim.kind == "hr_strap" and d.radio == "ant")
    rr = [x for s in fleet.expected[strap.device_id].values() for x in s.rr_ms or []]
    assert len(rr) > 400  # ANT+: one RR per beat, repeats of a page not counted twice
    cadence = [
        s.cadence_rpm
        for d in fleet.devices
        if d.sim.kind == "power_meter"
        for s in fleet.expected[d.device_id].values()
    ]
    assert sum(c is not None for c in cadence) > 390  # from crank revolutions, after the first frame
    assert all(60 < c < 120 for c in cadence if c is not None)


def test_ble_frames_fit_the_mtu_and_long_records_are_split() -> None:
    fleet = RawFleet(Fleet.build("gym", 6, seed=1, mix=MIX_ALL), ant_share=0.0)
    by_source: dict[str, list[Frame]] = {}
    for tick in run(fleet, 30):
        for ev in tick:
            assert isinstance(ev, Frame)
            assert len(ev.data) <= 20
            by_source.setdefault(ev.source, []).append(ev)
    for source in ("ble:2ad2", "ble:2ace"):  # bike (21 bytes) and cross-trainer (24 bytes): two parts each
        records = [decode_frame(source, f.data) for f in by_source[source]]
        assert isinstance(records[0], ftms.FtmsData)
        assert [r.more_data for r in records[:4]] == [True, False, True, False]  # type: ignore[union-attr]
    for source in ("ble:2acd", "ble:2ad1", "ble:2a37", "ble:2a63"):  # one notification per second
        assert len(by_source[source]) == 30
        assert not any(getattr(decode_frame(source, f.data), "more_data", False) for f in by_source[source])
    status = [decode_frame("ble:2ada", f.data) for f in by_source["ble:2ada"]]
    assert {s.event for s in status if isinstance(s, ftms.MachineStatus)} == {"started_or_resumed_by_user"}
    assert len(status) == 4  # each machine, at its first tick
    training = [decode_frame("ble:2ad3", f.data) for f in by_source["ble:2ad3"]]
    assert {t.training for t in training if isinstance(t, ftms.TrainingStatus)} == {"warm_up"}
    stops = fleet.finish(START + timedelta(seconds=30))
    events = [decode_frame(f.source, f.data) for f in stops if isinstance(f, Frame)]
    assert sum(isinstance(e, ftms.MachineStatus) and e.op_code == 0x02 for e in events) == 4
    assert sum(isinstance(e, ftms.TrainingStatus) and e.training == "post_workout" for e in events) == 4


def test_heart_rate_lags_the_workload_in_the_frames() -> None:
    fleet = RawFleet(Fleet.build("gym", 1, seed=5, mix=("bike",), class_share=1.0), ant_share=0.0)
    hr: list[float] = []
    changes: list[tuple[int, str]] = []
    for i, tick in enumerate(run(fleet, 900)):
        for ev in tick:
            assert isinstance(ev, Frame)
            record = decode_frame(ev.source, ev.data)
            if isinstance(record, ftms.TrainingStatus):
                changes.append((i, record.training))
            if isinstance(record, ftms.IndoorBikeData) and record.hr_bpm is not None:
                hr.append(float(record.hr_bpm))
    assert changes[:3] == [(0, "warm_up"), (300, "high_interval"), (480, "recovery")]  # spin45
    assert hr[305] < hr[300] + 10  # five seconds into the hard block the heart has barely moved
    assert hr[470] > hr[300] + 20  # three minutes in, it has
    assert hr[485] > hr[560]  # and it comes down, slowly, in the recovery


def test_a_class_starts_and_changes_segments_together() -> None:
    fleet = RawFleet(Fleet.build("gym", 8, seed=2, mix=("bike", "rower"), class_share=0.5), 0.0)
    status: dict[str, list[tuple[int, str]]] = {}
    for i, tick in enumerate(run(fleet, 700)):
        for ev in tick:
            assert isinstance(ev, Frame)
            if ev.source == "ble:2ad3":
                record = decode_frame(ev.source, ev.data)
                assert isinstance(record, ftms.TrainingStatus)
                status.setdefault(ev.device_id, []).append((i, record.training))
    in_class = [d.device_id for d in fleet.devices if d.sim.plan == "spin45"]
    assert len(in_class) == 4
    first = status[in_class[0]]
    assert len(first) >= 4
    assert all(status[d] == first for d in in_class)  # the same segments at the same ticks
    others = [status[d.device_id] for d in fleet.devices if d.device_id not in in_class]
    assert all(s != first for s in others)


@pytest.mark.parametrize("seed", range(3))
def test_corrupted_frames_never_decode(seed: int) -> None:
    """Not with the quirks of the device that sent them either (quirky machines included)."""
    fleet = RawFleet(Fleet.build("gym", 12, seed=seed, mix=MIX_ALL), ant_share=0.5, quirky_share=0.5)
    assert any(d.quirk for d in fleet.devices)
    rng = np.random.default_rng(seed)
    by_id = {d.device_id: d for d in fleet.devices}
    n = 0
    for tick in run(fleet, 20):
        for ev in tick:
            assert isinstance(ev, Frame)
            chosen = quirks.select(by_id[ev.device_id].identity())
            decode_frame(ev.source, ev.data, quirks=chosen)  # the frame itself is fine
            for _ in range(5):
                bad = corrupt(ev.source, ev.data, rng)
                with pytest.raises(DecodeError):
                    decode_frame(ev.source, bad, quirks=chosen)
                n += 1
    assert n > 1000


def test_quirky_machines_decode_by_what_their_dis_says_without_anyone_naming_them() -> None:
    fleet = RawFleet(Fleet.build("gym", 12, seed=4, mix=MIX_ALL), ant_share=0.0, quirky_share=1.0)
    by_behaviour: dict[str | None, set[str]] = {}
    for d in fleet.devices:
        by_behaviour.setdefault(d.behaviour, set()).add(d.device_id)
    assert set(by_behaviour) == {None, "trailing_byte", "cadence_without_flag", "reserved_bits"}
    assert all(d.info().model is None for d in fleet.devices)  # nobody configured a model
    got, pipeline, metas = through_pipeline(fleet, 120)
    assert got == {(d, t): s for d, samples in fleet.expected.items() for t, s in samples.items()}
    assert pipeline.stats.dead_total == 0
    assert set(pipeline.stats.reserved_flags) == by_behaviour["reserved_bits"]
    assert all(n >= 120 for n in pipeline.stats.reserved_flags.values())  # every record, counted
    for d in fleet.devices:  # the meta says what the device said
        said = d.identity()
        assert (metas[d.device_id].vendor, metas[d.device_id].model, metas[d.device_id].firmware) == (
            said.manufacturer,
            said.model,
            said.firmware,
        )
    assert metas[next(iter(by_behaviour["trailing_byte"]))].vendor == "Concept2"
    # the same frames to a gateway that does not read the DIS: the spec-breaking ones are dead-lettered
    blind = RawFleet(Fleet.build("gym", 12, seed=4, mix=MIX_ALL), ant_share=0.0, quirky_share=1.0)
    _, without, _ = through_pipeline(blind, 120, read_dis=False)
    assert (
        set(without.stats.dead_frames) == by_behaviour["trailing_byte"] | by_behaviour["cadence_without_flag"]
    )
    assert set(without.stats.reserved_flags) == by_behaviour["reserved_bits"]  # these need no quirk


def test_faults_are_logged_and_bad_frames_dead_lettered_beside_good_ones() -> None:
    rates = FaultRates(drop=0.05, malformed=0.05, dropout=0.1, storm=0.05, storm_ticks=3)
    injector = FaultInjector(rates, seed=4)
    fleet = RawFleet(Fleet.build("gym", 12, seed=7, mix=MIX_ALL), 0.5, injector)
    got, pipeline, _ = through_pipeline(fleet, 300)
    counts = injector.log.counts
    assert counts["malformed_frame"] == sum(fleet.malformed_sent.values()) == pipeline.stats.dead_total > 0
    assert Counter(fleet.malformed_sent) == pipeline.stats.dead_frames
    assert counts["storm"] > 0
    assert set(got) == fleet.expected_rows()  # every tick with something valid left, nothing else
    assert not set(got) & injector.log.lost
    assert len(got) + len(injector.log.lost) == 12 * 300
    exact = {
        k: s for d, m in fleet.expected.items() for t, s in m.items() if (k := (d, t)) not in fleet.partial
    }
    assert all(got[k] == s for k, s in exact.items())
    assert len(fleet.partial) > 0  # some ticks lost a part: their rows exist with fewer fields


def test_storm_takes_devices_down_and_brings_them_back() -> None:
    injector = FaultInjector(FaultRates(storm=0.2, storm_share=0.5, storm_ticks=2), seed=1)
    fleet = RawFleet(Fleet.build("gym", 10, seed=1), faults=injector)
    links = [ev for tick in run(fleet, 50) for ev in tick if isinstance(ev, Link)]
    downs = [e for e in links if not e.connected]
    ups = [e for e in links if e.connected]
    assert len(downs) == injector.log.counts["storm_disconnect"] > 0
    assert len(ups) >= len(downs) - 5  # the last storm's devices may still be down
    assert all(isinstance(d, DeviceInfo) for d in fleet.infos())


def test_hrm_dropout_sends_no_contact() -> None:
    injector = FaultInjector(FaultRates(dropout=1.0), seed=1)
    fleet = RawFleet(Fleet.build("gym", 4, seed=1, mix=("hr_strap",)), ant_share=0.0, faults=injector)
    frames = [ev for ev in fleet.tick(START) if isinstance(ev, Frame)]
    records = [decode_frame(f.source, f.data) for f in frames]
    assert all(isinstance(r, hrm.HeartRateMeasurement) and r.sensor_contact == "no_contact" for r in records)
    assert fleet.expected == {}  # no heart rate, no sample
