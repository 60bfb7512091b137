"""Each format read back with a reader that is not ours (csv module, pyarrow, fhir.resources, JSON Schema) and
compared row for row with the model of the database; manifests and checksums; byte-identical re-runs."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from analytics.version import ALGORITHM_VERSION
from tests.exports.conftest import Run
from tests.exports.world import KEY_A, SNAPSHOT, T0, Model, P, pseudonym

OMH = Path(__file__).resolve().parent.parent / "data" / "omh"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_manifest(out: Path, export_id: str | None = None) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    listed = {f["name"] for f in manifest["files"]}
    assert listed | {"manifest.json"} == {p.name for p in out.iterdir()}
    for f in manifest["files"]:
        path = out / f["name"]
        assert f["bytes"] == path.stat().st_size
        assert f["sha256"] == sha256(path)
    assert manifest["study_id"] == "s-a"
    assert manifest["requested_by"] == "tester"
    assert manifest["algorithm_version"] == ALGORITHM_VERSION
    assert manifest["consent_snapshot"] == SNAPSHOT.isoformat().replace("+00:00", "Z")
    assert manifest["schema"] == "vitalab-export/1"
    if export_id is not None:
        assert manifest["export_id"] == export_id
    return manifest


def test_csv_and_gzip_read_back_with_the_csv_module(world: str, run_export: Run) -> None:
    want = Model(world, "s-a").sample_rows()
    for compress in (False, True):
        out, result = run_export("s-a", ["samples"], "csv", gzip=compress)
        manifest = check_manifest(out)
        name = "samples.csv.gz" if compress else "samples.csv"
        opener = gzip.open if compress else open
        with opener(out / name, "rt", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = list(reader)
        assert header[:3] == ["pseudonym", "t", "device_kind"]
        assert "hr_bpm" in header
        assert "power_w" in header
        assert "speed_kmh" in header
        i_hr, i_pw = header.index("hr_bpm"), header.index("power_w")
        got = [
            (
                r[0],
                datetime.strptime(r[1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
                r[2],
                float(r[i_hr]) if r[i_hr] else None,
                float(r[i_pw]) if r[i_pw] else None,
            )
            for r in rows
        ]
        assert got == want
        entry = next(f for f in manifest["files"] if f["name"] == name)
        assert entry["rows"] == len(want) == result.files[0].rows


def test_parquet_is_typed_and_matches_the_database(world: str, run_export: Run) -> None:
    out, _ = run_export("s-a", ["samples", "sessions", "rr", "daily", "participants"], "parquet")
    check_manifest(out)
    table = pq.read_table(out / "samples.parquet")
    assert table.schema.field("t").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("hr_bpm").type == pa.float32()
    assert table.schema.field("distance_m").type == pa.float64()
    meta = pq.ParquetFile(out / "samples.parquet").metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    got = list(
        zip(
            table.column("pseudonym").to_pylist(),
            table.column("t").to_pylist(),
            table.column("device_kind").to_pylist(),
            table.column("hr_bpm").to_pylist(),
            table.column("power_w").to_pylist(),
            strict=True,
        )
    )
    assert [(p, ts.astimezone(UTC) if ts else ts, k, hr, pw) for p, ts, k, hr, pw in got] == Model(
        world, "s-a"
    ).sample_rows()
    rr = pq.read_table(out / "rr.parquet")
    assert rr.schema.field("idx").type == pa.int16()
    assert list(zip(rr.column("pseudonym").to_pylist(), rr.column("idx").to_pylist(), strict=True)) == [
        (r[0], r[2]) for r in Model(world, "s-a").rr_rows()
    ]
    daily = pq.read_table(out / "daily.parquet")
    assert daily.schema.field("day").type == pa.date32()
    # P1 consented to derived metrics from T0 - 1 day (08:00): only 2026-11-02 is a whole consented day
    # ... and it ends after the snapshot, so no day is whole: nothing
    assert daily.num_rows == 0


def test_many_row_groups_stream_into_one_parquet_file(
    world: str, run_export: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.exports import writers

    monkeypatch.setattr(writers, "CSV_BLOCK_BYTES", 64 * 1024)
    out, _ = run_export("s-a", ["samples"], "parquet")
    meta = pq.ParquetFile(out / "samples.parquet").metadata
    assert meta.num_row_groups > 5
    assert meta.num_rows == len(Model(world, "s-a").sample_rows())


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.text(alphabet="abc,0123456789", max_size=30), max_size=60),
    cuts=st.lists(st.integers(1, 40), min_size=1, max_size=20),
    size=st.integers(1, 200),
)
def test_the_parquet_blocks_are_whole_lines_of_the_stream_after_its_header(
    rows: list[str], cuts: list[int], size: int
) -> None:
    """However COPY cuts its stream, the blocks parsed into row groups hold whole lines, each at least the
    block size but the last, and together exactly the stream after the header."""
    from api.exports.writers import _line_blocks

    body = "".join(f"{r}\n" for r in rows).encode()
    stream = b"a,b\n" + body
    chunks, at, i = [], 0, 0
    while at < len(stream):  # the stream cut at arbitrary places (cycling through the cut lengths)
        chunks.append(memoryview(stream[at : at + cuts[i % len(cuts)]]))
        at += cuts[i % len(cuts)]
        i += 1
    blocks = [bytes(b) for b in _line_blocks(iter(chunks), size, ["a", "b"])]
    assert b"".join(blocks) == body
    assert all(b.endswith(b"\n") for b in blocks)
    assert all(len(b) >= size for b in blocks[:-1])
    with pytest.raises(ValueError, match="header"):
        list(_line_blocks(iter([b"a,c\n", body]), size, ["a", "b"]))


def test_same_parameters_on_unchanged_data_give_identical_files(world: str, run_export: Run) -> None:
    for fmt, datasets in (
        ("csv", ["samples", "sessions", "rr", "participants"]),
        ("parquet", ["samples", "sessions"]),
        ("fhir-r4", ["sessions", "samples"]),
        ("omh", ["sessions", "samples", "rr"]),
    ):
        first, r1 = run_export("s-a", datasets, fmt, gzip=fmt == "csv")
        second, r2 = run_export("s-a", datasets, fmt, gzip=fmt == "csv")
        data1 = {f.name: f.sha256 for f in r1.files}
        data2 = {f.name: f.sha256 for f in r2.files}
        assert data1 == data2, fmt
        assert (
            json.loads((first / "manifest.json").read_text())["export_id"]
            != json.loads((second / "manifest.json").read_text())["export_id"]
        )


def _registry() -> Registry:
    resources = []
    for path in OMH.glob("*.json"):
        text = path.read_text().strip()
        contents = {"$ref": text} if not text.startswith("{") else json.loads(text)
        contents.pop("$id", None)
        contents.pop("$schema", None)
        resources.append((path.name, Resource.from_contents(contents, default_specification=DRAFT7)))
    return Registry().with_resources(resources)


def _validator(name: str, registry: Registry) -> Draft7Validator:
    return Draft7Validator({"$ref": name}, registry=registry, format_checker=Draft7Validator.FORMAT_CHECKER)


def test_open_mhealth_data_points_validate_against_the_schemas(world: str, run_export: Run) -> None:
    out, _ = run_export("s-a", ["sessions", "samples", "rr"], "omh")
    check_manifest(out)
    registry = _registry()
    point = _validator("data-point-1.0.json", registry)
    bodies = {
        "heart-rate": _validator("heart-rate-2.0.json", registry),
        "rr-interval": _validator("rr-interval-1.0.json", registry),
    }
    time_frame = _validator("time-frame-1.0.json", registry)
    unit_values = {
        "duration": _validator("duration-unit-value-1.0.json", registry),
        "distance": _validator("length-unit-value-1.0.json", registry),
        "kcal_burned": _validator("kcal-unit-value-1.0.json", registry),
        "duration_moderate_activity": _validator("duration-unit-value-1.0.json", registry),
        "duration_vigorous_activity": _validator("duration-unit-value-1.0.json", registry),
    }
    model = Model(world, "s-a")
    hr_points = []
    for line in (out / "samples.omh.ndjson").read_text().splitlines():
        doc = json.loads(line)
        point.validate(doc)
        assert doc["header"]["schema_id"] == {"namespace": "omh", "name": "heart-rate", "version": "2.0"}
        bodies["heart-rate"].validate(doc["body"])
        hr_points.append(
            (
                doc["header"]["user_id"],
                doc["body"]["effective_time_frame"]["date_time"],
                doc["body"]["heart_rate"]["value"],
            )
        )
    want = [
        (p, ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), hr)
        for p, ts, _, hr, _ in model.sample_rows()
        if hr is not None
    ]
    assert hr_points == want
    rr_lines = (out / "rr.omh.ndjson").read_text().splitlines()
    for line in rr_lines:
        doc = json.loads(line)
        point.validate(doc)
        bodies["rr-interval"].validate(doc["body"])
    assert [json.loads(x)["body"]["rr_interval"]["value"] for x in rr_lines] == [
        r[3] for r in model.rr_rows()
    ]
    sessions = [json.loads(x) for x in (out / "sessions.omh.ndjson").read_text().splitlines()]
    assert len(sessions) == len(model.session_rows())
    for doc in sessions:
        point.validate(doc)
        body = doc["body"]
        assert isinstance(body["activity_name"], str)
        time_frame.validate(body["effective_time_frame"])
        assert set(body["effective_time_frame"]) == {"time_interval"}  # IEEE 1752.1: an interval
        for key, validator in unit_values.items():
            if key in body:
                validator.validate(body[key])
    ids = [json.loads(x)["header"]["id"] for x in rr_lines]
    assert len(set(ids)) == len(ids)


def test_fhir_bundles_parse_with_fhir_resources_and_carry_the_series(world: str, run_export: Run) -> None:
    out, _ = run_export("s-a", ["sessions", "samples"], "fhir-r4")
    check_manifest(out)
    model = Model(world, "s-a")
    sessions = model.session_rows()
    summaries = [
        Bundle.model_validate_json(x) for x in (out / "sessions.fhir.ndjson").read_text().splitlines()
    ]
    assert len(summaries) == len(sessions)
    for bundle, (p, a, b, _) in zip(summaries, sessions, strict=True):
        assert bundle.type == "collection"
        codes = {}
        for entry in bundle.entry or []:
            obs = entry.resource
            assert isinstance(obs, Observation)
            assert obs.subject is not None
            assert obs.subject.identifier is not None
            assert obs.subject.identifier.value == p
            assert obs.effectivePeriod is not None
            assert obs.effectivePeriod.start == a
            assert obs.effectivePeriod.end == b
            coding = obs.code.coding[0]  # type: ignore[index]
            codes[(coding.system, coding.code)] = obs.valueQuantity
        duration = codes[("http://loinc.org", "55411-3")]
        assert duration is not None
        assert duration.unit == "min"
        assert float(duration.value) == pytest.approx((b - a).total_seconds() / 60, abs=1e-3)  # type: ignore[arg-type]
        assert float(codes[("http://loinc.org", "55425-3")].value) == pytest.approx(130.5)  # type: ignore[union-attr, arg-type]
        assert ("tag:vitalab.dev,2026:fhir/metric", "rmssd") in codes

    # per-second heart rate: the mean of each second's strap samples from the session start ('E': none)
    strap: dict[tuple[str, datetime], list[float]] = defaultdict(list)
    for p, ts, kind, hr, _ in model.sample_rows():
        if kind == "hr_strap" and hr is not None:
            strap[(p, ts)].append(hr)
    series = [Bundle.model_validate_json(x) for x in (out / "samples.fhir.ndjson").read_text().splitlines()]
    raw_sessions = [s for s in sessions if s[0] in {pseudonym(KEY_A, P[q]) for q in ("P1", "P3")}]
    assert len(series) == len(raw_sessions)
    for bundle, (p, a, b, _) in zip(series, raw_sessions, strict=True):
        hr_obs = next(
            e.resource
            for e in bundle.entry or []
            if e.resource.code.coding[0].code == "8867-4"  # type: ignore[union-attr]
        )
        assert isinstance(hr_obs, Observation)
        sampled = hr_obs.valueSampledData
        assert sampled is not None
        assert sampled.period is not None
        assert float(sampled.period) == 1000.0
        assert sampled.dimensions == 1
        values = sampled.data.split(" ")  # type: ignore[union-attr]
        assert len(values) == int((b - a).total_seconds()) + 1
        for k, v in enumerate(values):
            seen = strap.get((p, a + timedelta(seconds=k)))
            if seen:
                assert float(v) == pytest.approx(sum(seen) / len(seen), abs=0.01)
            else:
                assert v in ("E",) or float(v) == pytest.approx(
                    110.0
                )  # machine heart rate without a strap sample


def test_data_dictionary_lists_every_column_with_units(world: str, run_export: Run) -> None:
    out, _ = run_export("s-a", ["samples", "sessions"], "csv")
    with (out / "data_dictionary.csv").open(newline="") as f:
        entries = list(csv.DictReader(f))
    for name in ("samples.csv", "sessions.csv"):
        with (out / name).open(newline="") as f:
            header = next(csv.reader(f))
        assert [e["field"] for e in entries if e["file"] == name] == header
    hr = next(e for e in entries if e["file"] == "samples.csv" and e["field"] == "hr_bpm")
    assert hr["unit"] == "1/min"
    assert hr["meaning"]
    assert T0.year == 2026
