"""The single entry point (sources, their spellings, JSON view) and the mapping onto the wire Sample."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from gateway import ant, ftms, hrm
from gateway.decode import canonical_source, decode_frame, encode_frame, record_to_json, sources
from gateway.errors import EncodeError, UnknownSource
from gateway.normalize import bounds, to_sample, to_sample_with_notes
from vitalab.wire.payload import MAX_RR_PER_SAMPLE

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def test_sources_cover_every_decoder_and_are_canonical() -> None:
    listed = sources()
    assert len(listed) == len(set(listed)) == 12 + 5 + 6 + 8  # FTMS/HRM/CPS/CSC, DIS, ANT+ FE, ANT+ HRM
    assert all(canonical_source(s) == s for s in listed)
    assert canonical_source("0x2AD2") == "ble:2ad2"
    assert canonical_source(" ANT:FE:016 ") == "ant:fe:16"


@pytest.mark.parametrize("source", ["2a19", "ble:", "ant:fe", "ant:power:16", "ant:fe:x", "ant:fe:1234", ""])
def test_unknown_sources_are_a_decode_error(source: str) -> None:
    with pytest.raises(UnknownSource) as info:
        decode_frame(source, b"\x00\x00")
    assert info.value.detail


def test_record_to_json_is_plain_json() -> None:
    bike = record_to_json(decode_frame("2ad2", bytes.fromhex("fe15000000000000000000000001000000000000")))
    assert bike["record"] == "IndoorBikeData"
    assert bike["source"] == "ble:2ad2"
    assert bike["truncated"] is True
    assert bike["trailing"] == "00"
    assert bike["missing"][0] == "energy_total_kcal"
    status = record_to_json(decode_frame("2ada", bytes([18, 184, 11, 42, 3, 40, 49])))
    assert status["params"] == {"wind_speed_mps": 3.0, "grade_pct": 8.1, "crr": 0.004, "cw_kg_per_m": 0.49}
    fe = record_to_json(decode_frame("ant:fe:16", bytes([16, 25, 0, 0, 141, 32, 255, 32])))
    assert (fe["equipment"], fe["fe_state_name"], fe["hr_bpm"]) == ("trainer", "ready", None)
    json.dumps([bike, status, fe])


def test_encode_frame_refuses_what_is_not_a_record() -> None:
    with pytest.raises(EncodeError):
        encode_frame("not a record")  # type: ignore[arg-type]


def test_values_outside_the_wire_bounds_are_dropped_with_a_note() -> None:
    record = ftms.IndoorBikeData(flags=0x0240, speed_kmh=30.0, power_w=-5, hr_bpm=255)
    normalized = to_sample_with_notes(record, NOW)
    assert normalized.sample is not None
    assert normalized.sample.speed_kmh == 30.0
    assert (normalized.sample.power_w, normalized.sample.hr_bpm) == (None, None)
    assert set(normalized.notes) == {"out_of_bounds:power_w=-5", "out_of_bounds:hr_bpm=255"}
    assert bounds()["hr_bpm"] == (20.0, 250.0)


def test_rr_intervals_are_bounded_and_capped() -> None:
    many = hrm.HeartRateMeasurement(
        flags=0x10, hr_bpm=60, rr_ms=(100.0,) + (1000.0,) * (MAX_RR_PER_SAMPLE + 3)
    )
    normalized = to_sample_with_notes(many, NOW)
    assert normalized.sample is not None
    assert normalized.sample.rr_ms == [1000.0] * MAX_RR_PER_SAMPLE
    assert "out_of_bounds:rr_ms=100" in normalized.notes
    assert f"rr_ms_over_{MAX_RR_PER_SAMPLE}" in normalized.notes


def test_records_without_telemetry_map_to_no_sample() -> None:
    assert to_sample(decode_frame("2ada", b"\x04"), NOW) is None
    assert to_sample(decode_frame("2a38", b"\x01"), NOW) is None
    assert to_sample(ftms.RowerData(flags=1), NOW) is None


def test_fe_totals_supply_elapsed_time_and_distance() -> None:
    acc = ant.FeAccumulator()
    for quarters, metres in ((250, 250), (10, 20)):
        page = ant.decode_fe(16, bytes([16, 22, quarters, metres, 0x10, 0x27, 120, 0x31]))
        totals = acc.update(page)
    sample = to_sample(page, NOW, totals=totals)
    assert sample is not None
    assert (sample.elapsed_s, sample.distance_m) == ((250 + 16) / 4, 250 + 26)
    assert sample.speed_kmh == pytest.approx(36.0)
    assert sample.hr_bpm == 120.0
