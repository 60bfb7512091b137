"""Whatever its bytes, a message is stored or dead-lettered, and the ingester keeps running.

Generated payloads (hypothesis: arbitrary bytes, arbitrary JSON with NULs, lone surrogates, huge numbers and
deep nesting, and schema-shaped messages with fuzzed fields) go through the whole path: the real Mosquitto,
the decoder, the batch writer and the real PostgreSQL, on the telemetry, meta, state and gateway status
topics, the retained ones included. Every message has a topic of its own (its own device or gateway id), so
each one can be looked up afterwards: in ``dead_letters`` by its topic, or in the table its kind writes to.

The corpus is drawn once per run with a fixed seed (``derandomize``): the property is checked over the whole
run against the real services, which is what makes it worth having, and a failure names the messages that
were neither stored nor dead-lettered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ingest.service import Ingester
from simulators.loadgen import LoadPublisher
from tests.conftest import Mosquitto
from tests.support.helpers import count, ingester_task, make_settings, metric, wait_until
from tests.support.workload import Workload, stored
from vitalab.wire import METRIC_FIELDS, Sample

pytestmark = pytest.mark.asyncio

SITE = "fuzz"
DEVICE = "@DEVICE@"  # replaced by the message's own id
KINDS = ("telemetry", "meta", "state", "status")
RETAINED_KINDS = ("meta", "state", "status")

# text with what breaks databases and decoders: NUL, lone surrogates, separators, BOM, astral planes, quotes
TEXT = st.text(
    st.characters(codec="utf-8")
    | st.sampled_from(["\x00", "\ud800", "\udfff", "\u2028", "\ufeff", "\U0001f600", "\\", '"', "é"]),
    max_size=70,
)
CLEAN_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=64)
HUGE_INT = st.integers(min_value=-(10**400), max_value=10**400)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | HUGE_INT | st.floats() | TEXT,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4),
    max_leaves=25,
)


def dumps(value: object, ascii_only: bool) -> bytes:
    """JSON as a device might send it: ``\\uXXXX`` escapes, or raw UTF-8 (then a lone surrogate becomes
    bytes that are not UTF-8 at all). Non-finite floats come out as the non-JSON tokens NaN/Infinity."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def deep(depth: int, opener: str, inner: str) -> str:
    if opener == "[":
        return "[" * depth + inner + "]" * depth
    return '{"a":' * depth + inner + "}" * depth


def wrap_deep(value: str, where: str) -> bytes:
    shells = {
        "bare": "{}",
        "version": '{{"v":{}}}',
        "sample_field": '{{"v":1,"device":"' + DEVICE + '","seq":1,"samples":[{{"t":"2026-01-01T00:00:00Z",'
        '"x":{}}}]}}',
        "sample": '{{"v":1,"device":"' + DEVICE + '","seq":1,"samples":[{}]}}',
        "meta_vendor": '{{"v":1,"device":"' + DEVICE + '","kind":"bike","vendor":{}}}',
        "state_errors": '{{"v":1,"device":"' + DEVICE + '","t":"2026-01-01T00:00:00Z","online":true,'
        '"errors":{}}}',
    }
    return shells[where].format(value).encode()


DEEP = st.builds(
    wrap_deep,
    st.builds(
        deep,
        st.integers(min_value=17, max_value=3000),
        st.sampled_from(["[", "{"]),
        st.sampled_from(["", "1", '"x"']),
    ),
    st.sampled_from(["bare", "version", "sample_field", "sample", "meta_vendor", "state_errors"]),
)


def _bounds(field: str) -> tuple[float, float]:
    """A metric's valid range, read from the wire types (not restated here)."""
    info = msgspec.inspect.type_info(Sample)
    assert isinstance(info, msgspec.inspect.StructType)
    (f,) = (f for f in info.fields if f.name == field)
    union = f.type
    assert isinstance(union, msgspec.inspect.UnionType)
    meta = union.types[0]
    assert isinstance(meta, msgspec.inspect.Metadata)
    num = meta.type
    assert isinstance(num, msgspec.inspect.FloatType)
    assert num.ge is not None
    assert num.le is not None
    return float(num.ge), float(num.le)


def valid_shaped(kind: str, now: datetime) -> st.SearchStrategy[bytes]:
    """Valid messages with extreme but allowed content (any Unicode text but NUL, values at their bounds):
    these reach the database write."""
    t = st.integers(min_value=0, max_value=3600).map(
        lambda s: (now - timedelta(seconds=s)).isoformat().replace("+00:00", "Z")
    )
    text = CLEAN_TEXT
    if kind == "telemetry":

        def value(field: str) -> st.SearchStrategy[float]:
            lo, hi = _bounds(field)
            return st.floats(min_value=lo, max_value=hi) | st.sampled_from([lo, hi])

        sample = st.fixed_dictionaries(
            {"t": t},
            optional={
                **{f: value(f) for f in METRIC_FIELDS},
                "rr_ms": st.lists(st.floats(min_value=200, max_value=3000), max_size=64),
            },
        )
        body = st.fixed_dictionaries(
            {
                "v": st.just(1),
                "device": st.just(DEVICE),
                "seq": st.integers(min_value=0, max_value=2**63 - 1),
                "samples": st.lists(sample, min_size=1, max_size=6, unique_by=lambda x: x["t"]),
            }
        )
    elif kind == "meta":
        body = st.fixed_dictionaries(
            {"v": st.just(1), "device": st.just(DEVICE), "kind": st.sampled_from(["bike", "hr_strap"])},
            optional={
                "vendor": text,
                "model": text,
                "firmware": text,
                "transport": st.sampled_from(["mqtt", "ble", "ant", "sim"]),
                "features": st.lists(text, max_size=64),
            },
        )
    elif kind == "state":
        body = st.fixed_dictionaries(
            {"v": st.just(1), "device": st.just(DEVICE), "t": t, "online": st.booleans()},
            optional={
                "training": st.sampled_from(["idle", "warm_up", "post_workout"]),
                "errors": st.lists(text, max_size=32),
            },
        )
    else:
        body = st.fixed_dictionaries(
            {"v": st.just(1), "gateway": st.just(DEVICE), "online": st.booleans()},
            optional={"t": t, "devices": st.lists(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z"))},
        )
    return st.builds(dumps, body, st.booleans())


def shaped(kind: str, now: datetime) -> st.SearchStrategy[bytes]:
    """Messages of the schema's shape whose fields are fuzzed: some are valid and reach the database."""
    recent = st.integers(min_value=0, max_value=3600).map(
        lambda s: (now - timedelta(seconds=s)).isoformat().replace("+00:00", "Z")
    )
    t = recent | st.sampled_from(
        [
            "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
            "9999-12-31T23:59:59.999999-14:00",  # after year 9999 in UTC
            "2026-02-30T00:00:00Z",
            "2026-01-01T00:00:00",
        ]
    )
    number = (
        st.floats(min_value=-10, max_value=5000)
        | st.sampled_from([0, 20, 250, 16_777_215, 1e308, -0.0, 1e-320])
        | HUGE_INT
        | JSON_VALUES
    )
    any_text = CLEAN_TEXT | TEXT | JSON_VALUES
    if kind == "telemetry":
        sample = st.fixed_dictionaries(
            {"t": t},
            optional={
                **{f: number for f in METRIC_FIELDS},
                "rr_ms": st.lists(st.floats(min_value=150, max_value=3100), max_size=70) | JSON_VALUES,
            },
        )
        body = st.fixed_dictionaries(
            {
                "v": st.just(1) | JSON_VALUES,
                "device": st.just(DEVICE),
                "seq": st.integers(min_value=-1, max_value=2**64) | JSON_VALUES,
                "samples": st.lists(sample, min_size=1, max_size=6),
            }
        )
    elif kind == "meta":
        body = st.fixed_dictionaries(
            {"v": st.just(1), "device": st.just(DEVICE), "kind": st.sampled_from(["bike", "rower"]) | TEXT},
            optional={
                "vendor": any_text,
                "model": any_text,
                "firmware": any_text,
                "transport": st.sampled_from(["mqtt", "ble", "ant", "sim"]) | TEXT,
                "features": st.lists(CLEAN_TEXT | TEXT, max_size=70),
            },
        )
    elif kind == "state":
        body = st.fixed_dictionaries(
            {"v": st.just(1), "device": st.just(DEVICE), "t": t, "online": st.booleans() | JSON_VALUES},
            optional={
                "training": st.sampled_from(["idle", "warm_up", "other"]) | TEXT,
                "errors": st.lists(CLEAN_TEXT | TEXT, max_size=34),
            },
        )
    else:
        body = st.fixed_dictionaries(
            {"v": st.just(1), "gateway": st.just(DEVICE), "online": st.booleans()},
            optional={
                "t": t,
                "devices": st.lists(
                    st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,70}\Z") | TEXT, max_size=20
                ),
            },
        )
    return st.builds(dumps, body, st.booleans())


@dataclass(frozen=True)
class Case:
    kind: str
    payload: bytes
    retained: bool
    bad_id: bool
    """Published under an id outside the topic tree's pattern (a bad_topic dead letter)."""


def cases(now: datetime, n: int) -> list[Case]:
    """``n`` generated messages (hypothesis, fixed seed), after the ones the issue reported."""
    drawn: list[Case] = []
    payload = st.one_of(
        st.binary(max_size=300),
        st.builds(dumps, JSON_VALUES, st.booleans()),
        DEEP,
        st.sampled_from(KINDS).flatmap(lambda k: shaped(k, now).map(lambda p: (k, p))),
        st.sampled_from(KINDS).flatmap(lambda k: valid_shaped(k, now).map(lambda p: (k, p))),
        st.sampled_from(KINDS).flatmap(lambda k: valid_shaped(k, now).map(lambda p: (k, p))),
    )

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(
        kind=st.sampled_from(KINDS),
        payload=payload,
        retained=st.booleans(),
        bad_id=st.integers(min_value=0, max_value=19).map(lambda i: i == 7),
    )
    def draw(kind: str, payload: bytes | tuple[str, bytes], retained: bool, bad_id: bool) -> None:
        if isinstance(payload, tuple):
            kind, payload = payload
        # an empty retained publish deletes the topic's retained message: the broker forwards nothing
        drawn.append(Case(kind, payload, retained and kind in RETAINED_KINDS and payload != b"", bad_id))

    draw()
    reported = [
        # the issue's own examples: 2 KB nested 1,000 deep, NUL in a key, in a meta vendor, in state errors
        Case("telemetry", deep(1000, "[", "").encode(), False, False),
        Case("meta", deep(1000, "[", "").encode(), True, False),
        Case("telemetry", b'{"v":1,"device":"' + DEVICE.encode() + b'","seq":1,"samples":[{"t":"'
             + now.isoformat().encode() + b'","\\u0000":1}]}', False, False),
        Case("meta", b'{"v":1,"device":"' + DEVICE.encode() + b'","kind":"bike","vendor":"Ac\\u0000me"}',
             True, False),
        Case("state", b'{"v":1,"device":"' + DEVICE.encode() + b'","t":"' + now.isoformat().encode()
             + b'","online":true,"errors":["E\\u00001"]}', True, False),
    ]  # fmt: skip
    return reported + drawn


def topic(kind: str, ident: str) -> str:
    middle = "gw" if kind == "status" else "dev"
    return f"vitalab/v1/{SITE}/{middle}/{ident}/{kind}"


@dataclass(frozen=True)
class Sent:
    case: Case
    ident: str
    topic: str
    payload: bytes


def address(all_cases: list[Case]) -> list[Sent]:
    out = []
    for i, case in enumerate(all_cases):
        ident = f"fz{i:04d}"
        on_topic = f"{ident} x" if case.bad_id else ident  # a space: matches the filter, not the id pattern
        out.append(
            Sent(
                case, ident, topic(case.kind, on_topic), case.payload.replace(DEVICE.encode(), ident.encode())
            )
        )
    return out


async def outcome(url: str) -> tuple[set[str], dict[str, set[str]], dict[str, int]]:
    """Dead-lettered topics; ids stored per message kind; dead letters per reason."""
    async with await psycopg.AsyncConnection.connect(url) as conn:

        async def column(query: str) -> set[str]:
            cur = await conn.execute(query)
            return {r[0] for r in await cur.fetchall()}

        dead = await column("SELECT topic FROM dead_letters")
        stored_ids = {
            "telemetry": await column(f"SELECT DISTINCT device_id FROM samples WHERE site_id = '{SITE}'"),
            "meta": await column("SELECT device_id FROM device_events WHERE kind = 'meta'"),
            "state": await column("SELECT device_id FROM device_events WHERE kind IN ('state', 'offline')"),
            "status": await column(f"SELECT gateway_id FROM gateways WHERE site_id = '{SITE}'"),
        }
        cur = await conn.execute("SELECT reason, count(*) FROM dead_letters GROUP BY 1")
        reasons = {r: int(n) for r, n in await cur.fetchall()}
    return dead, stored_ids, reasons


def unaccounted(sent: list[Sent], dead: set[str], stored_ids: dict[str, set[str]]) -> list[Sent]:
    return [
        s
        for s in sent
        if s.topic not in dead
        and s.ident not in stored_ids[s.case.kind]
        # an empty retained status clears the retained birth: a protocol action, nothing to store
        and not (s.case.kind == "status" and s.payload == b"")
    ]


async def _until(check: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    await wait_until(check, timeout_s=timeout_s, what=what)


async def test_every_message_is_stored_or_dead_lettered_and_ingestion_never_stops(
    mosquitto: Mosquitto, database_url: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    sent = address(cases(now, 1000))
    retained = [s for s in sent if s.case.retained]
    queued = [s for s in sent if not s.case.retained]
    valid = Workload.build(SITE, devices=10, seconds=500, per_message=5, prefix="ok")  # 1,000 samples
    # a plain subscription: its session (and what queues in it) outlives the first ingester's stop
    settings_ = make_settings(
        ingest_client_id="ingest-fuzz", dead_letter_max_bytes=4096, ingest_share_group=None
    )

    async def accounted(group: list[Sent]) -> list[Sent]:
        dead, ids, _ = await outcome(database_url)
        return unaccounted(group, dead, ids)

    # no retries on "no matching subscribers": the retained messages are published before any subscriber
    with LoadPublisher(mosquitto.target, "pub-fuzz", retry_unrouted_s=None) as pub:
        # 1. poison retained before any ingester exists: every ingester meets it at every start
        for s in retained:
            pub.publish(s.topic, s.payload, retain=True)
        await asyncio.to_thread(pub.wait_acked)
        async with ingester_task(settings_, mosquitto.target, database_url) as (first, task):
            await _until(lambda: _none_left(accounted(retained)), "every retained message accounted for")
            assert not task.done()
            first_messages = metric(first, "vitalab_ingest_messages_total", kind="all")
        # 2. while no ingester runs, the bad messages queue up in its session, valid samples behind them
        for s in queued:
            pub.publish(s.topic, s.payload)
        for t, p in valid.messages:
            pub.publish(t, p)
        await asyncio.to_thread(pub.wait_acked)
        # 3. the next start meets the retained poison again, then the queue
        async with ingester_task(settings_, mosquitto.target, database_url) as (second, task):
            await _until(lambda: _has(database_url, len(valid.expected)), "every valid sample queued behind")
            await _until(lambda: _none_left(accounted(sent)), "every message accounted for")
            # the retained ones come again on subscription, possibly after the queue
            expected_second = len(retained) + len(queued) + len(valid.messages)
            await _until(lambda: _taken(second, expected_second), "the second ingester took every message")
            assert not task.done()  # still running
            second_messages = metric(second, "vitalab_ingest_messages_total", kind="all")

    assert stored(database_url) >= valid.expected
    assert await count(database_url, "samples", "device_id LIKE 'ok-%'") == len(valid.expected)
    dead, stored_ids, reasons = await outcome(database_url)
    assert unaccounted(sent, dead, stored_ids) == []
    # counted: the first ingester took every retained message, the second the retained ones again and the
    # whole queue; each is in dead_letters or stored (a message with good and bad samples is in both)
    assert first_messages >= len(retained)
    assert second_messages == expected_second
    in_dead = {s.topic for s in sent} & dead
    stored_any = [s for s in sent if s.ident in stored_ids[s.case.kind]]
    print(  # the counts, for the log of a run
        f"\nfuzz: {len(sent)} messages ({len(retained)} retained): {len(in_dead)} dead-lettered, "
        f"{len(stored_any)} stored; dead letters by reason: {dict(sorted(reasons.items()))}"
    )
    # the corpus reached the cases it is about, and the database stored what the contract accepts
    assert {"too_deep", "nul_character", "malformed", "schema", "bad_topic"} <= reasons.keys()
    # the retained 1,000-deep meta met both ingesters, and both dead-lettered it and ran on
    assert await count(database_url, "dead_letters", f"topic = '{sent[1].topic}'") == 2
    assert len(stored_any) >= len(sent) // 10
    assert "database_rejected" not in reasons
    assert "internal_error" not in reasons


async def _taken(ingester: Ingester, n: int) -> bool:
    return metric(ingester, "vitalab_ingest_messages_total", kind="all") >= n


async def _none_left(pending: object) -> bool:
    return await pending == []  # type: ignore[misc, no-any-return]


async def _has(url: str, n: int) -> bool:
    return await count(url, "samples", "device_id LIKE 'ok-%'") >= n
