"""The decoders against frames and values published by other open-source projects (tests/data/captures).

Each entry holds the bytes, the values *as the cited project states them* (in our field names and units) and
a citation; see tests/data/README.md. Where the project and we disagree, the entry documents both values and
why, and the test pins our value so a change in our reading cannot pass unnoticed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import gateway.errors
from gateway import ant, ftms
from gateway.cycling import CadenceTracker
from gateway.decode import Record, decode_frame, encode_frame
from gateway.normalize import to_sample
from vitalab.wire import TelemetryMessage, decode_telemetry, encode

CAPTURES = Path(__file__).resolve().parent.parent / "data" / "captures"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def _load() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(CAPTURES.glob("*.json")):
        doc = json.loads(path.read_text())
        out += [(path.stem, e) for e in doc["entries"]]
    return out


def _load_sequences() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(CAPTURES.glob("*.json")):
        out += json.loads(path.read_text()).get("sequences", [])
    return out


ENTRIES = _load()
SEQUENCES = _load_sequences()


def _sequences(tracker: str) -> list[dict[str, Any]]:
    return [s for s in SEQUENCES if s["tracker"] == tracker]


def same(ours: Any, theirs: Any, rule: str | None = None) -> bool:
    """``ours`` equals the value the project states, under the project's own rounding ``rule``."""
    if isinstance(theirs, list):
        ours_list = list(ours) if isinstance(ours, tuple | list) else None
        return (
            ours_list is not None
            and len(ours_list) == len(theirs)
            and all(same(o, t, rule) for o, t in zip(ours_list, theirs, strict=True))
        )
    if isinstance(theirs, dict):
        return (
            isinstance(ours, dict)
            and ours.keys() == theirs.keys()
            and all(same(ours[k], theirs[k], rule) for k in theirs)
        )
    if theirs is None or ours is None or isinstance(theirs, bool | str) or isinstance(ours, bool | str):
        return bool(ours == theirs)
    if rule == "trunc":
        return bool(math.trunc(ours) == theirs)
    if rule == "round":
        return bool(round(ours) == theirs)
    return math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-9)


def value(record: Record, name: str) -> Any:
    if name == "params" and isinstance(record, ftms.MachineStatus):
        return dict(record.params)
    return getattr(record, name)


def _ids(entries: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [e["id"] for _, e in entries]


def test_the_set_is_broad_and_every_entry_is_cited() -> None:
    ids = _ids(ENTRIES) + [s["id"] for s in SEQUENCES]
    assert len(ids) == len(set(ids))
    sources = {e["source"] for _, e in ENTRIES}
    wanted = {"ble:2ad2", "ble:2acd", "ble:2ace", "ble:2ad1", "ble:2ad3", "ble:2ada", "ble:2acc", "ble:2ad9"}
    wanted |= {"ble:2a37", "ble:2a38", "ble:2a63", "ble:2a5b"}
    wanted |= {f"ant:fe:{p}" for p in (16, 17, 19, 20, 22, 25)} | {f"ant:hrm:{p}" for p in range(5)}
    assert wanted <= sources
    assert sum(e["kind"] == "capture" for _, e in ENTRIES) >= 80
    for _, e in [*ENTRIES, *((s["id"], s) for s in SEQUENCES)]:
        cite = e["cite"]
        assert cite["repo"].count("/") == 1
        assert cite.get("commit") or cite.get("issue"), e["id"]
        assert e["stated"], e["id"]
        assert e["kind"] in ("capture", "log", "vector"), e["id"]


@pytest.mark.parametrize(("project", "entry"), ENTRIES, ids=_ids(ENTRIES))
def test_capture_decodes_to_the_stated_values(project: str, entry: dict[str, Any]) -> None:
    data = bytes.fromhex(entry["hex"])
    if "expected_error" in entry:
        error = getattr(gateway.errors, entry["expected_error"])
        with pytest.raises(error):
            decode_frame(entry["source"], data, model=entry["model"])
        return
    record = decode_frame(entry["source"], data, model=entry["model"])
    rounding = entry.get("rounding", {})
    for name, theirs in entry["expected"].items():
        ours = value(record, name)
        assert same(ours, theirs, rounding.get(name)), f"{project}:{entry['id']} {name}: ours {ours!r}"
    for name, d in entry.get("disagree", {}).items():
        ours = value(record, name)
        assert same(ours, d["ours"]), f"{entry['id']} {name}: documented ours {d['ours']!r}, now {ours!r}"
        assert not same(ours, d["theirs"], rounding.get(name))
    if "expected_present" in entry:
        assert isinstance(record, ftms.FtmsData)
        present = {n for n in ftms.value_fields(type(record)) if getattr(record, n) is not None}
        assert present == set(entry["expected_present"])
        assert not record.truncated
        assert record.trailing == b""
    if "unparsed" in entry:
        assert getattr(record, "reserved_flags") == entry["unparsed"]["reserved_flags"]  # noqa: B009
        assert getattr(record, "trailing") == bytes.fromhex(entry["unparsed"]["trailing"])  # noqa: B009
    if "expected_present_rr" in entry:
        assert len(value(record, "rr_ms")) == entry["expected_present_rr"]


@pytest.mark.parametrize(
    ("project", "entry"),
    [(p, e) for p, e in ENTRIES if "expected_error" not in e],
    ids=[e["id"] for _, e in ENTRIES if "expected_error" not in e],
)
def test_capture_reencodes_to_its_bytes_and_normalises_to_a_valid_sample(
    project: str, entry: dict[str, Any]
) -> None:
    """Symmetry on real bytes (our encoder gives back what our decoder read), not conformance: the values
    are checked against the projects' statements in the test above."""
    data = bytes.fromhex(entry["hex"])
    record = decode_frame(entry["source"], data, model=entry["model"])
    assert encode_frame(record, model=entry["model"]) == data
    sample = to_sample(record, NOW)
    if sample is not None:
        message = encode(TelemetryMessage(v=1, device="dev-1", seq=0, samples=[sample]))
        decoded = decode_telemetry(message, topic_device="dev-1", now=NOW)
        assert decoded.samples == [sample]
        assert not decoded.rejected


def _cadence_rows(seq: dict[str, Any]) -> Iterator[tuple[int, int, float, float | None]]:
    """(row index, their cadence, our cadence) for every row where the crank moved."""
    tracker = CadenceTracker()
    if "rows" in seq:
        pairs = [(r, t / 1024, c) for r, t, c in seq["rows"]]
    else:
        pairs = []
        for frame, theirs in zip(seq["frames"], seq["their_cadence_rpm"], strict=True):
            record = decode_frame(seq["source"], bytes.fromhex(frame))
            revs, event = getattr(record, "crank_revs"), getattr(record, "crank_event_s")  # noqa: B009
            pairs.append((revs, event, theirs))
    last_revs: int | None = None
    for i, (revs, event_s, theirs) in enumerate(pairs):
        ours = tracker.update(revs, event_s)
        if last_revs is None or revs != last_revs:
            yield i, revs, theirs, ours
        last_revs = revs


@pytest.mark.parametrize("seq", _sequences("cadence"), ids=lambda s: s["id"])
def test_cadence_from_logged_crank_events_matches_the_project(seq: dict[str, Any]) -> None:
    disagree = seq.get("disagree", {})
    compared = 0
    for i, _revs, theirs, ours in _cadence_rows(seq):
        if i == 0:
            assert ours is None  # no previous pair yet; the projects print 0 here
            continue
        assert ours is not None
        if str(i) in disagree:
            d = disagree[str(i)]
            assert round(ours, 1) == d["ours"]
            assert round(ours) != d["theirs"]
            continue
        assert same(ours, theirs, seq["rounding"]), f"row {i}: ours {ours}, theirs {theirs}"
        compared += 1
    assert compared >= 1


@pytest.mark.parametrize("seq", _sequences("fe_accumulator"), ids=lambda s: s["id"])
def test_fe_accumulator_over_wrapping_counters_matches_the_project(seq: dict[str, Any]) -> None:
    acc = ant.FeAccumulator()
    totals = []
    for frame in seq["frames"]:
        data = bytes.fromhex(frame)
        record = decode_frame(f"ant:fe:{data[0]}", data)
        assert isinstance(record, ant.FePage)
        totals.append(acc.update(record))
    for name, delta in seq.get("their_delta", {}).items():
        assert getattr(totals[-1], name) - getattr(totals[0], name) == delta
    for name, last in seq.get("their_last", {}).items():
        assert getattr(totals[-1], name) == last


@pytest.mark.parametrize("seq", _sequences("reassembly"), ids=lambda s: s["id"])
def test_logged_split_record_reassembles_with_the_stated_values(seq: dict[str, Any]) -> None:
    reassembler = ftms.Reassembler()
    out: list[ftms.FtmsData] = []
    for t, frame in enumerate(seq["frames"]):
        record = decode_frame(seq["source"], bytes.fromhex(frame))
        assert isinstance(record, ftms.FtmsData)
        out += reassembler.push("dev", record, now=float(t))
    assert len(out) == 1
    assert reassembler.pending() == 0
    merged = out[0]
    assert "merged" in merged.quirks
    assert not merged.more_data
    for name, theirs in seq["their_merged"].items():
        ours = getattr(merged, name)
        assert same(ours, theirs, "trunc" if isinstance(theirs, int) else None), name
