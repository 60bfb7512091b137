from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalab.wire import (
    DeviceMismatch,
    ImplausibleValue,
    MalformedPayload,
    NulCharacter,
    PayloadTooDeep,
    PayloadTooLarge,
    Sample,
    SchemaViolation,
    TelemetryMessage,
    TimestampOutOfRange,
    TopicError,
    TopicKind,
    UnsupportedVersion,
    WireError,
    WireLimits,
    decode_gateway_status,
    decode_meta,
    decode_state,
    decode_telemetry,
    device_topic,
    encode,
    nesting_depth,
    parse_topic,
    storable_text,
    subscription,
    telemetry_topic,
)
from vitalab.wire.schema import asyncapi, json_schemas, render

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
TS = "2026-11-25T09:59:59.500Z"


def msg(samples: list[dict[str, object]], **env: object) -> bytes:
    body: dict[str, object] = {"v": 1, "device": "bike-07", "seq": 1234, "samples": samples}
    body.update(env)
    # json.dumps writes an overflowing float as the non-JSON token Infinity; send what a device would
    return json.dumps(body).replace("Infinity", "1e999").encode()


def decode(payload: bytes, limits: WireLimits = WireLimits()):  # type: ignore[no-untyped-def]
    return decode_telemetry(payload, topic_device="bike-07", now=NOW, limits=limits)


def test_the_documented_example_decodes_to_typed_samples() -> None:
    payload = msg([{"t": TS, "power_w": 182, "cadence_rpm": 88.5, "hr_bpm": 141, "rr_ms": [421, 425]}])
    out = decode(payload)
    assert out.device == "bike-07"
    assert out.seq == 1234
    assert out.rejected == []
    (s,) = out.samples
    assert s.t == datetime(2026, 11, 25, 9, 59, 59, 500000, tzinfo=UTC)
    assert (s.power_w, s.cadence_rpm, s.hr_bpm, s.rr_ms) == (182.0, 88.5, 141.0, [421.0, 425.0])
    assert s.speed_kmh is None


def test_what_the_encoder_writes_the_decoder_reads_back() -> None:
    """Symmetry of our own encoder and decoder only; conformance to the contract is checked against the
    documented example above and the committed JSON Schema below."""
    original = TelemetryMessage(
        v=1,
        device="bike-07",
        seq=5,
        samples=[Sample(t=NOW - timedelta(seconds=i), hr_bpm=120 + i, rr_ms=[500.0]) for i in range(3)],
    )
    out = decode(encode(original))
    assert out.samples == original.samples
    assert out.seq == 5


@pytest.mark.parametrize(
    ("sample", "error", "path"),
    [
        ({"t": TS, "hr_bpm": 400}, ImplausibleValue, "$.samples[1].hr_bpm"),
        ({"t": TS, "power_w": -5}, ImplausibleValue, "$.samples[1].power_w"),
        ({"t": TS, "speed_kmh": 1e999}, ImplausibleValue, "$.samples[1].speed_kmh"),  # overflows to inf
        ({"t": TS, "rr_ms": [800, 50]}, ImplausibleValue, "$.samples[1].rr_ms[1]"),
        ({"t": TS, "hr_bpm": "fast"}, SchemaViolation, "$.samples[1].hr_bpm"),
        ({"t": TS, "heart": 120}, SchemaViolation, "$.samples[1]"),
        ({"hr_bpm": 120}, SchemaViolation, "$.samples[1]"),
        ({"t": "2026-11-25T09:59:59", "hr_bpm": 120}, SchemaViolation, "$.samples[1].t"),  # no zone
        ({"t": "2026-11-25T10:30:00Z"}, TimestampOutOfRange, "$.samples[1].t"),  # 30 min ahead
        ({"t": "2020-01-01T00:00:00Z"}, TimestampOutOfRange, "$.samples[1].t"),
    ],
)
def test_a_bad_sample_is_rejected_with_its_path_and_its_neighbours_are_kept(
    sample: dict[str, object], error: type[WireError], path: str
) -> None:
    good = [{"t": "2026-11-25T09:59:58Z", "hr_bpm": 120}, {"t": "2026-11-25T09:59:59Z", "hr_bpm": 121}]
    out = decode(msg([good[0], sample, good[1]]))
    assert [s.hr_bpm for s in out.samples] == [120.0, 121.0]
    (rej,) = out.rejected
    assert rej.index == 1
    assert type(rej.error) is error
    assert rej.error.path is not None
    assert rej.error.path.startswith(path)
    if error is not TimestampOutOfRange and "speed_kmh" not in sample:
        assert json.loads(rej.raw) == sample  # the dead letter keeps the sample as it came


def test_nan_literal_is_malformed() -> None:
    with pytest.raises(MalformedPayload):
        decode(b'{"v":1,"device":"bike-07","seq":1,"samples":[{"t":"' + TS.encode() + b'","hr_bpm":NaN}]}')


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", MalformedPayload),
        (b"\xff\xfe garbage", MalformedPayload),
        (b'{"v":1,"device":"bike-07"', MalformedPayload),
        (b"[1, 2]", SchemaViolation),
        (msg([{"t": TS}], v=2), UnsupportedVersion),
        (msg([{"t": TS}], v="1"), UnsupportedVersion),
        (msg([{"t": TS}], device="bike-08"), DeviceMismatch),
        (msg([{"t": TS}], device="bike/07"), SchemaViolation),
        (msg([{"t": TS}], seq=-1), ImplausibleValue),
        (msg([]), SchemaViolation),
        (msg([{"t": TS}], extra=1), SchemaViolation),
    ],
)
def test_unusable_messages_raise_typed_errors(payload: bytes, error: type[WireError]) -> None:
    with pytest.raises(error) as info:
        decode(payload)
    assert info.value.reason
    assert str(info.value).startswith(info.value.reason)


def test_payload_size_is_capped_before_decoding() -> None:
    payload = msg([{"t": TS, "hr_bpm": 100}] * 200)
    with pytest.raises(PayloadTooLarge) as info:
        decode(payload, WireLimits(max_payload_bytes=1000))
    assert info.value.size == len(payload)
    assert info.value.limit == 1000


def test_unsupported_version_names_the_version() -> None:
    with pytest.raises(UnsupportedVersion) as info:
        decode(msg([{"t": TS}], v=7))
    assert info.value.version == 7
    assert info.value.path == "$.v"


def test_meta_is_strict() -> None:
    meta = decode_meta(b'{"v":1,"device":"bike-07","kind":"bike","vendor":"Acme","transport":"ble"}')
    assert (meta.kind, meta.vendor, meta.transport, meta.features) == ("bike", "Acme", "ble", [])
    with pytest.raises(SchemaViolation):
        decode_meta(b'{"v":1,"device":"bike-07","kind":"spaceship"}')


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_wire_errors(payload: bytes) -> None:
    with contextlib.suppress(WireError):  # anything else propagates and fails the test
        decode(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["t", "hr_bpm", "power_w", "rr_ms", "speed_kmh", "x"]), json_values, max_size=4
        ),
        min_size=1,
        max_size=5,
    )
)
def test_arbitrary_samples_are_kept_or_rejected_one_by_one(samples: list[dict[str, object]]) -> None:
    out = decode(msg(samples))
    assert len(out.samples) + len(out.rejected) == len(samples)


# --- what no payload may do: nest without bound, carry NUL -------------------------------------------------

DECODERS: dict[str, Callable[[bytes], object]] = {
    "telemetry": lambda p: decode(p),
    "meta": decode_meta,
    "state": decode_state,
    "status": decode_gateway_status,
}


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize(
    "payload",
    [
        _deep(1000),  # the reported one: 2 KB, 1,000 levels
        b'{"v":' + _deep(5000) + b"}",  # the version probe keeps any value
        b'{"v":1,"device":"bike-07","seq":1,"samples":[' + _deep(1000) + b"]}",  # a sample left raw
        b'{"v":1,"device":"bike-07","seq":1,"samples":[{"t":"'
        + TS.encode()
        + b'","x":'
        + _deep(999)
        + b"}]}",
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
        b"[" * 100_000,  # never closed
    ],
    ids=["array-1000", "version", "raw-sample", "unknown-field", "objects-3000", "unclosed"],
)
def test_deep_nesting_is_refused_with_a_typed_error(kind: str, payload: bytes) -> None:
    with pytest.raises(PayloadTooDeep) as info:
        DECODERS[kind](payload)
    assert info.value.reason == "too_deep"
    assert info.value.limit == WireLimits().max_depth
    assert info.value.depth > info.value.limit


def test_nesting_up_to_the_limit_is_judged_on_its_content() -> None:
    limits = WireLimits(max_depth=6)
    payload = msg([{"t": TS, "hr_bpm": [[[[1]]]]}])
    assert nesting_depth(payload) == 7  # message, samples, sample, 4 arrays
    with pytest.raises(PayloadTooDeep):
        decode(payload, limits)
    # 6 levels: judged like any other sample (a wrong type), and its neighbour is kept
    out = decode(msg([{"t": TS, "hr_bpm": [[[1]]]}, {"t": TS, "hr_bpm": 100}]), limits)
    assert [type(r.error) for r in out.rejected] == [SchemaViolation]
    assert [s.hr_bpm for s in out.samples] == [100.0]


def _depth_by_parsing(value: object) -> int:
    """An independent count of nesting: the parsed value's depth (json.loads, Python objects)."""
    if isinstance(value, list):
        return 1 + max((_depth_by_parsing(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth_by_parsing(v) for v in value.values()), default=0)
    return 0


json_text = st.text(st.sampled_from('ab[]{}"\\:, \x00é'), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.integers() | json_text,
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(json_text, kids, max_size=3),
        max_leaves=30,
    ),
    st.booleans(),
)
def test_nesting_depth_agrees_with_a_parser(value: object, ascii_only: bool) -> None:
    payload = json.dumps(value, ensure_ascii=ascii_only).encode()
    depth = _depth_by_parsing(value)
    assert nesting_depth(payload) == depth
    assert (nesting_depth(payload, limit=2) > 2) == (depth > 2)  # stopping early decides the same


@pytest.mark.parametrize(
    ("payload", "depth"),
    [
        (b"[1," * 700 + b"1" + b"]" * 700, 700),  # deeper than one counting chunk
        (b"[]," * 1000 + b'[[["]]]]]"]]]', 3),  # the deepest part after many chunks; brackets in a string
        (b'"a\\"b[[" [[[', 3),  # an escaped quote does not end a string
        (b'[[ "[[[[', 2),  # a string never closed runs to the end
    ],
)
def test_nesting_depth_across_counting_chunks(payload: bytes, depth: int) -> None:
    assert nesting_depth(payload) == depth


@pytest.mark.parametrize(
    ("decoder", "payload", "path"),
    [
        (decode_meta, b'{"v":1,"device":"bike-07","kind":"bike","vendor":"Ac\\u0000me"}', "$.vendor"),
        (decode_meta, b'{"v":1,"device":"bike-07","kind":"bike","model":"\\u0000"}', "$.model"),
        (
            decode_meta,
            b'{"v":1,"device":"bike-07","kind":"bike","features":["a","b\\u0000"]}',
            "$.features[1]",
        ),
        (
            decode_state,
            b'{"v":1,"device":"bike-07","t":"' + TS.encode() + b'","online":true,"errors":["E\\u00001"]}',
            "$.errors[0]",
        ),
        (decode_meta, b'{"v":1,"device":"bike-07","kind":"bike","ven\\u0000dor":"x"}', "$.ven\\u0000dor"),
        (
            lambda p: decode(p),
            b'{"v":1,"device":"bike-07","\\u0000":1,"seq":1,"samples":[{"t":"' + TS.encode() + b'"}]}',
            "$.\\u0000",
        ),
    ],
    ids=["meta-vendor", "meta-model", "meta-feature", "state-error", "key", "telemetry-key"],
)
def test_a_nul_character_is_refused_naming_the_field(
    decoder: Callable[[bytes], object], payload: bytes, path: str
) -> None:
    with pytest.raises(NulCharacter) as info:
        decoder(payload)
    assert info.value.reason == "nul_character"
    assert info.value.path == path
    assert "\x00" not in str(info.value)  # the error itself can be stored as text


def test_a_nul_in_a_sample_key_rejects_that_sample_only() -> None:
    out = decode(
        b'{"v":1,"device":"bike-07","seq":1,"samples":[{"t":"2026-11-25T09:59:58Z","hr_bpm":99},'
        b'{"t":"2026-11-25T09:59:59Z","\\u0000":1}]}'
    )
    assert [s.hr_bpm for s in out.samples] == [99.0]
    (rej,) = out.rejected
    assert type(rej.error) is NulCharacter
    assert rej.error.path == "$.samples[1].\\u0000"


def test_free_text_keeps_every_other_character() -> None:
    vendor = 'Ünïcödé \u2028\ufeff😀\\"'
    meta = decode_meta(msgspec.json.encode({"v": 1, "device": "bike-07", "kind": "bike", "vendor": vendor}))
    assert meta.vendor == vendor


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("plain", "plain"),
        ("a\x00b", "a\\u0000b"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("\x00\udfff", "\\u0000\\udfff"),
        ("😀 é \\u0000", "😀 é \\u0000"),
    ],
)
def test_storable_text_escapes_what_postgresql_refuses(raw: str, stored: str) -> None:
    assert storable_text(raw) == stored
    storable_text(raw).encode("utf-8")  # encodable: no lone surrogate left


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(list(DECODERS)))
def test_every_decoder_raises_only_storable_wire_errors(payload: bytes, kind: str) -> None:
    try:
        DECODERS[kind](payload)
    except WireError as exc:  # anything else propagates and fails the test
        for text in (exc.detail, exc.path or "", str(exc)):
            assert "\x00" not in text
            text.encode("utf-8")


def test_state_and_status_times_are_checked_when_now_is_given() -> None:
    state = b'{"v":1,"device":"bike-07","t":"0001-01-01T00:00:00+14:00","online":true}'
    assert decode_state(state).online  # the schema alone allows it
    with pytest.raises(TimestampOutOfRange) as info:
        decode_state(state, now=NOW)
    assert info.value.path == "$.t"
    status = b'{"v":1,"gateway":"gw-1","online":true,"t":"2031-01-01T00:00:00Z"}'
    with pytest.raises(TimestampOutOfRange):
        decode_gateway_status(status, now=NOW)
    assert decode_gateway_status(b'{"v":1,"gateway":"gw-1","online":false}', now=NOW).t is None  # an LWT


# --- topics --------------------------------------------------------------------------------------------


def test_topic_tree_round_trips() -> None:
    topic = telemetry_topic("gym-a", "bike-07")
    assert topic == "vitalab/v1/gym-a/dev/bike-07/telemetry"
    parsed = parse_topic(topic)
    assert (parsed.kind, parsed.site, parsed.source) == (TopicKind.TELEMETRY, "gym-a", "bike-07")
    assert str(parsed) == topic
    gw = parse_topic("vitalab/v1/gym-a/gw/gw-1/status")
    assert (gw.kind, gw.source) == (TopicKind.GATEWAY_STATUS, "gw-1")


@pytest.mark.parametrize(
    "topic",
    [
        "vitalab/v1/gym-a/dev/bike-07",
        "vitalab/v2/gym-a/dev/bike-07/telemetry",
        "vitalab/v1/gym-a/dev/bike-07/firmware",
        "vitalab/v1/gym-a/gw/bike-07/telemetry",
        "vitalab/v1/gym-a/dev/gw-1/status",
        "vitalab/v1/gym a/dev/bike-07/telemetry",
        "vitalab/v1/gym-a/dev//telemetry",
    ],
)
def test_topics_outside_the_tree_are_rejected(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


def test_ids_with_wildcards_cannot_make_topics() -> None:
    with pytest.raises(TopicError):
        device_topic("gym-a", "bike/#", TopicKind.STATE)


def test_shared_subscription_filter() -> None:
    assert (
        subscription(TopicKind.TELEMETRY, share_group="ingest")
        == "$share/ingest/vitalab/v1/+/dev/+/telemetry"
    )
    assert subscription(TopicKind.GATEWAY_STATUS, site="gym-a") == "vitalab/v1/gym-a/gw/+/status"


# --- generated documents -------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_committed_schema_documents_match_the_code() -> None:
    """`vitalab schema` regenerates docs/; a stale committed copy fails here."""
    assert (DOCS / "payloads.schema.json").read_text() == render(json_schemas())
    assert (DOCS / "asyncapi.json").read_text() == render(asyncapi())


def test_json_schema_carries_units_and_bounds() -> None:
    sample = json_schemas()["$defs"]["Sample"]
    hr = sample["properties"]["hr_bpm"]["anyOf"][0]
    assert (hr["minimum"], hr["maximum"]) == (20, 250)
    assert sample["additionalProperties"] is False
    assert sample["required"] == ["t"]


def test_asyncapi_describes_every_topic_kind() -> None:
    doc = asyncapi()
    addresses = {c["address"] for c in doc["channels"].values()}
    assert "vitalab/v1/{site}/dev/{device}/telemetry" in addresses
    assert "vitalab/v1/{site}/gw/{gateway}/status" in addresses
    for message in doc["components"]["messages"].values():
        ref = message["payload"]["$ref"].rsplit("/", 1)[1]
        assert ref in doc["components"]["schemas"]
    assert msgspec.json.decode(render(doc))["asyncapi"] == "3.0.0"
