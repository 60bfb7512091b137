"""The integrator kit of the API: ``POST /v1/contract/validate`` says what the real ingester does with a
message (driven through both, compared row by row), the contract documents are served, and a device's dead
letters are listed page by page."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest

from api.queries.contract import device_site
from tests.api.support import PinnedClock, app_at, assert_problem, serve
from tests.conftest import Mosquitto
from tests.support.helpers import make_settings, running_ingester, wait_until
from vitalab.wire import (
    DeviceMeta,
    DeviceState,
    GatewayStatus,
    Sample,
    TelemetryMessage,
    TopicKind,
    device_topic,
    encode,
    gateway_status_topic,
)
from vitalab.wire.schema import asyncapi, json_schemas

pytestmark = pytest.mark.asyncio

SITE = "gym-int"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
DOCS = Path(__file__).resolve().parents[2] / "docs"
# the same non-default limits for the ingester and the API
LIMITS: dict[str, Any] = {"max_payload_bytes": 4096, "dead_letter_max_bytes": 300, "max_future_s": 60.0}


def tele(device: str) -> str:
    return device_topic(SITE, device, TopicKind.TELEMETRY)


def js(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Case:
    """One message and what the ingester must make of it (written by hand, not by the endpoint)."""

    topic: str
    payload: bytes
    dead: tuple[str, ...] = ()
    """Reasons of its dead letters, in order."""
    rows: int = 0
    device: str | None = None
    """Its samples' device (telemetry), when it has stored samples."""


def cases(now: datetime) -> list[Case]:
    """Every way the ingester dead-letters a message or a sample, and good messages of each kind. Each case
    on a topic of its own, so its dead letters are told apart by topic. ``now``: about when it is received."""
    t = now.replace(microsecond=0) - timedelta(minutes=1)

    def at(i: int) -> str:
        return (t + timedelta(seconds=i)).isoformat()

    def msg(device: str, samples: list[dict[str, Any]], **extra: Any) -> bytes:
        return js({"v": 1, "device": device, "seq": 5, "samples": samples, **extra})

    good = TelemetryMessage(
        v=1,
        device="t-good",
        seq=41,
        samples=[
            Sample(t=t, power_w=182, cadence_rpm=88.5, hr_bpm=141, rr_ms=[421, 425]),
            Sample(t=t + timedelta(seconds=1), power_w=185),
        ],
    )
    return [
        Case(tele("t-good"), encode(good), rows=2, device="t-good"),
        Case(
            tele("t-mixed"),
            msg(
                "t-mixed",
                [
                    {"t": at(0), "hr_bpm": 120},
                    {"t": at(1), "hr_bpm": 999},
                    {"t": at(2), "hr_bpm": 122, "foo": 1},
                    {"t": (now + timedelta(hours=2)).isoformat(), "hr_bpm": 123},
                    {"hr_bpm": 124},
                    {"t": at(5), "power_w": -3},
                    {"t": at(6), "speed_kmh": 12.5},
                ],
            ),
            dead=("implausible_value", "schema", "timestamp_out_of_range", "schema", "implausible_value"),
            rows=2,
            device="t-mixed",
        ),
        # all decode in the typed pass; only the clock window rejects (future and too old)
        Case(
            tele("t-window"),
            msg(
                "t-window",
                [
                    {"t": at(0), "hr_bpm": 100},
                    {"t": (now + timedelta(minutes=10)).isoformat(), "hr_bpm": 101},
                    {"t": (now - timedelta(days=500)).isoformat(), "hr_bpm": 102},
                ],
            ),
            dead=("timestamp_out_of_range", "timestamp_out_of_range"),
            rows=1,
            device="t-window",
        ),
        Case(tele("t-allbad"), msg("t-allbad", [{"t": at(0), "hr_bpm": 300}]), dead=("implausible_value",)),
        Case(tele("t-garbage"), b"\x00\xff garbage", dead=("malformed",)),
        Case(tele("t-trunc"), b'{"v":1,"device":"t-trunc","seq"', dead=("malformed",)),
        Case(tele("t-array"), b"[]", dead=("schema",)),
        Case(
            tele("t-v2"),
            js({"v": 2, "device": "t-v2", "seq": 1, "samples": []}),
            dead=("unsupported_version",),
        ),
        Case(tele("t-mismatch"), msg("someone-else", [{"t": at(0)}]), dead=("device_mismatch",)),
        Case(tele("t-seq"), js({"v": 1, "device": "t-seq", "seq": "x", "samples": []}), dead=("schema",)),
        Case(tele("t-empty"), msg("t-empty", []), dead=("schema",)),
        Case(tele("t-extra"), msg("t-extra", [{"t": at(0)}], note="hi"), dead=("schema",)),
        Case(tele("t-naive"), msg("t-naive", [{"t": "2026-11-25T10:00:00"}]), dead=("schema",)),
        Case(
            tele("t-big"),
            msg("t-big", [{"t": at(i), "hr_bpm": 100} for i in range(200)]),
            dead=("too_large",),
        ),
        Case(f"vitalab/v1/{SITE}/dev/bad id/telemetry", msg("bad id", [{"t": at(0)}]), dead=("bad_topic",)),
        Case(f"vitalab/v1/{SITE}!/dev/t-site/telemetry", msg("t-site", [{"t": at(0)}]), dead=("bad_topic",)),
        Case(
            device_topic(SITE, "m-good", TopicKind.META),
            encode(DeviceMeta(v=1, device="m-good", kind="bike", vendor="Acme", model="X1")),
        ),
        Case(
            device_topic(SITE, "m-mismatch", TopicKind.META),
            encode(DeviceMeta(v=1, device="m-other", kind="bike")),
            dead=("device_mismatch",),
        ),
        Case(
            device_topic(SITE, "m-kind", TopicKind.META),
            js({"v": 1, "device": "m-kind", "kind": "spaceship"}),
            dead=("schema",),
        ),
        Case(device_topic(SITE, "m-garbage", TopicKind.META), b"not json", dead=("malformed",)),
        Case(
            device_topic(SITE, "s-good", TopicKind.STATE),
            encode(DeviceState(v=1, device="s-good", t=t, online=True, training="manual")),
        ),
        Case(
            device_topic(SITE, "s-training", TopicKind.STATE),
            js({"v": 1, "device": "s-training", "t": at(0), "online": True, "training": "napping"}),
            dead=("schema",),
        ),
        Case(
            gateway_status_topic(SITE, "gw-good"),
            encode(GatewayStatus(v=1, gateway="gw-good", online=True, t=t, devices=["t-good"])),
        ),
        Case(
            gateway_status_topic(SITE, "gw-mismatch"),
            encode(GatewayStatus(v=1, gateway="gw-other", online=True)),
            dead=("device_mismatch",),
        ),
    ]


def _rows(url: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params or None).fetchall()


async def _settled(url: str, all_cases: list[Case]) -> bool:
    """Every case's dead letters and samples are written, and its meta, state or status applied."""
    for c in all_cases:
        if len(_rows(url, "SELECT 1 FROM dead_letters WHERE topic = %s", c.topic)) != len(c.dead):
            return False
        if c.device and len(_rows(url, "SELECT 1 FROM samples WHERE device_id = %s", c.device)) != c.rows:
            return False
    applied = _rows(
        url,
        "SELECT (SELECT count(*) FROM devices WHERE device_id = 'm-good' AND kind IS NOT NULL) "
        "+ (SELECT count(*) FROM devices WHERE device_id = 's-good' AND state_at IS NOT NULL) "
        "+ (SELECT count(*) FROM gateways WHERE gateway_id = 'gw-good')",
    )
    return bool(applied[0][0] == 3)


SAMPLE_COLS = (
    "device_id, t, site_id, seq, received_at, speed_kmh, incline_pct, distance_m, energy_kcal, power_w, "
    "cadence_rpm, stroke_rate_spm, pace_s_per_500m, hr_bpm, elapsed_s, resistance_level, met"
)


def _stored_samples(url: str, device: str) -> list[dict[str, Any]]:
    names = [c.strip() for c in SAMPLE_COLS.split(",")]
    out = []
    for row in _rows(url, f"SELECT {SAMPLE_COLS} FROM samples WHERE device_id = %s ORDER BY t", device):
        d = dict(zip(names, row, strict=True))
        rr = _rows(
            url, "SELECT rr_ms FROM rr_intervals WHERE device_id = %s AND t = %s ORDER BY idx", device, d["t"]
        )
        d["rr_ms"] = [r[0] for r in rr] or None
        d["t"] = d["t"].astimezone(UTC).isoformat().replace("+00:00", "Z")
        d["received_at"] = d["received_at"].astimezone(UTC).isoformat().replace("+00:00", "Z")
        out.append(d)
    return out


def _served_samples(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for s in sorted(body["samples"], key=lambda s: s["t"]):
        s = dict(s)
        for key in ("t", "received_at"):
            s[key] = datetime.fromisoformat(s[key]).astimezone(UTC).isoformat().replace("+00:00", "Z")
        out.append(s)
    return out


async def test_the_endpoint_says_what_the_ingester_did_with_every_message(
    mosquitto: Mosquitto, database_url: str
) -> None:
    settings = make_settings(ingest_client_id="ingest-contract", **LIMITS)
    made = datetime.now(UTC)
    all_cases = cases(made)  # the ingester stamps receipt with its clock; payloads follow it
    async with running_ingester(settings, mosquitto.target, database_url):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            for c in all_cases:
                await pub.publish(c.topic, c.payload, qos=1)
        await wait_until(lambda: _settled(database_url, all_cases), what="every case written")

    clock = PinnedClock(NOW)
    async with serve(app_at(database_url, clock, **LIMITS)) as http:
        for c in all_cases:
            stored = _rows(
                database_url,
                "SELECT received_at, reason, detail, path, device_id, payload, payload_size "
                "FROM dead_letters WHERE topic = %s ORDER BY id",
                c.topic,
            )
            assert tuple(r[1] for r in stored) == c.dead, c.topic
            received = {r[0] for r in stored}
            if c.device:
                received |= {
                    r[0]
                    for r in _rows(
                        database_url, "SELECT received_at FROM samples WHERE device_id = %s", c.device
                    )
                }
            assert len(received) <= 1, c.topic  # one message: one receive time
            # the endpoint judges as of the moment the ingester received the message (a stored meta, state
            # or status keeps no receive time: within seconds of when the cases were made)
            clock.now = received.pop() if received else made
            r = await http.post(
                "/v1/contract/validate",
                json={"topic": c.topic, "payload_base64": base64.b64encode(c.payload).decode()},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            want_errors = [
                {
                    "reason": reason,
                    "detail": detail,
                    "path": path,
                    "device_id": device,
                    "payload_size": size,
                    "payload_preview": bytes(payload).decode("utf-8", errors="replace"),
                }
                for _, reason, detail, path, device, payload, size in stored
            ]
            assert body["errors"] == want_errors, c.topic
            if c.device:
                assert _served_samples(body) == _stored_samples(database_url, c.device), c.topic
            else:
                assert body["samples"] == [], c.topic
            if c.dead:
                assert body["outcome"] == ("partly_stored" if c.rows else "dead_letter"), c.topic
            else:
                assert body["outcome"] == "stored", c.topic
        # a meta the ingester applied comes back decoded, as stored
        m_good = next(c for c in all_cases if "/m-good/" in c.topic)
        r = await http.post(
            "/v1/contract/validate", json={"topic": m_good.topic, "payload_text": m_good.payload.decode()}
        )
        meta = r.json()
        ((kind, vendor, model),) = _rows(
            database_url, "SELECT kind, vendor, model FROM devices WHERE device_id = 'm-good'"
        )
        assert meta["record"] == {"v": 1, "device": "m-good", "kind": kind, "vendor": vendor, "model": model}
        assert (meta["kind"], meta["site_id"], meta["source_id"]) == ("meta", SITE, "m-good")


async def test_unknown_devices_are_judged_with_the_ingesters_registry(
    mosquitto: Mosquitto, database_url: str
) -> None:
    """Under the quarantine policy the endpoint consults the registry as the ingester does."""
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO sites (site_id) VALUES (%s)", (SITE,))
        conn.execute(
            "INSERT INTO devices (device_id, site_id, quarantined) VALUES "
            "('q-known', %s, false), ('q-held', %s, true)",
            (SITE, SITE),
        )
    settings = make_settings(ingest_client_id="ingest-quarantine", ingest_unknown_devices="quarantine")
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    payloads = {
        d: encode(TelemetryMessage(v=1, device=d, seq=1, samples=[Sample(t=t, hr_bpm=90)]))
        for d in ("q-known", "q-held", "q-new")
    }
    async with running_ingester(settings, mosquitto.target, database_url):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            for d, p in payloads.items():
                await pub.publish(tele(d), p, qos=1)

        async def written() -> bool:
            dead = _rows(database_url, "SELECT count(*) FROM dead_letters")[0][0]
            rows = _rows(database_url, "SELECT count(*) FROM samples")[0][0]
            return bool(dead == 2 and rows == 1)

        await wait_until(written, what="one sample, two dead letters")
    clock = PinnedClock(NOW)
    async with serve(app_at(database_url, clock, ingest_unknown_devices="quarantine")) as http:
        for d, p in payloads.items():
            stored = _rows(
                database_url, "SELECT received_at, reason, detail FROM dead_letters WHERE device_id = %s", d
            )
            received = [r[0] for r in stored] or [
                r[0] for r in _rows(database_url, "SELECT received_at FROM samples WHERE device_id = %s", d)
            ]
            assert len(received) == 1, d
            clock.now = received[0]
            body = (
                await http.post("/v1/contract/validate", json={"topic": tele(d), "payload_text": p.decode()})
            ).json()
            assert [(e["reason"], e["detail"]) for e in body["errors"]] == [(r[1], r[2]) for r in stored], d
            assert body["outcome"] == ("stored" if d == "q-known" else "dead_letter"), d
            assert [e["reason"] for e in body["errors"]] == ([] if d == "q-known" else ["unknown_device"])


def good_message(t: datetime, device: str = "bike-07") -> dict[str, Any]:
    return {
        "v": 1,
        "device": device,
        "seq": 3,
        "samples": [{"t": t.isoformat(), "power_w": 180, "hr_bpm": 140}],
    }


async def test_the_timestamp_window_is_the_servers_clock(database_url: str) -> None:
    clock = PinnedClock(NOW)
    topic = tele("bike-07")
    async with serve(app_at(database_url, clock)) as http:  # default window: 5 min ahead, 400 days back
        for t, outcome in (
            (NOW + timedelta(minutes=4), "stored"),
            (NOW + timedelta(minutes=6), "dead_letter"),
            (NOW - timedelta(days=399), "stored"),
            (NOW - timedelta(days=401), "dead_letter"),
        ):
            body = (
                await http.post("/v1/contract/validate", json={"topic": topic, "payload": good_message(t)})
            ).json()
            assert body["outcome"] == outcome, (t, body)
        late = good_message(NOW + timedelta(minutes=6))
        (error,) = (await http.post("/v1/contract/validate", json={"topic": topic, "payload": late})).json()[
            "errors"
        ]
        assert (error["reason"], error["path"]) == ("timestamp_out_of_range", "$.samples[0].t")
        clock.advance(timedelta(minutes=2))  # the same message, judged two minutes later, is in time
        body = (await http.post("/v1/contract/validate", json={"topic": topic, "payload": late})).json()
        assert body["outcome"] == "stored"
        (sample,) = body["samples"]
        assert (sample["power_w"], sample["hr_bpm"], sample["seq"], sample["site_id"]) == (180, 140, 3, SITE)
        assert datetime.fromisoformat(sample["received_at"]) == clock.now


async def test_the_payload_may_be_given_three_ways_and_only_once(database_url: str) -> None:
    topic = tele("bike-07")
    message = good_message(NOW - timedelta(seconds=5))
    text = json.dumps(message)
    async with serve(app_at(database_url, NOW)) as http:
        answers = [
            (await http.post("/v1/contract/validate", json={"topic": topic, **form})).json()
            for form in (
                {"payload": message},
                {"payload_text": text},
                {"payload_base64": base64.b64encode(text.encode()).decode()},
            )
        ]
        assert answers[0]["outcome"] == "stored"
        assert answers[0] == answers[1] == answers[2]
        # the exact bytes: a payload that is not UTF-8 is judged as such
        r = await http.post(
            "/v1/contract/validate",
            json={"topic": topic, "payload_base64": base64.b64encode(b"\xff\xfe{").decode()},
        )
        assert [e["reason"] for e in r.json()["errors"]] == ["malformed"]
        # a JSON null is a payload too (and not a telemetry message)
        r = await http.post("/v1/contract/validate", json={"topic": topic, "payload": None})
        assert [e["reason"] for e in r.json()["errors"]] == ["schema"]

        assert_problem(await http.post("/v1/contract/validate", json={"topic": topic}), 422, "body.payload")
        two = {"topic": topic, "payload": message, "payload_text": text}
        assert_problem(await http.post("/v1/contract/validate", json=two), 422, "body.payload_text")
        bad64 = {"topic": topic, "payload_base64": "not base64!"}
        assert_problem(await http.post("/v1/contract/validate", json=bad64), 422, "body.payload_base64")
        null_text = {"topic": topic, "payload_text": None}
        assert_problem(await http.post("/v1/contract/validate", json=null_text), 422, "body.payload_text")
        nan = b'{"topic": "%s", "payload": {"v": NaN}}' % topic.encode()
        r = await http.post(
            "/v1/contract/validate", content=nan, headers={"content-type": "application/json"}
        )
        assert_problem(r, 422, "body.payload")
        assert_problem(await http.post("/v1/contract/validate", json={"payload": message}), 422, "body.topic")
        surrogate = b'{"topic": "vitalab/v1/a/dev/\\ud800/telemetry", "payload_text": "{}"}'
        r = await http.post(
            "/v1/contract/validate", content=surrogate, headers={"content-type": "application/json"}
        )
        assert_problem(r, 422, "body.topic")
        extra = {"topic": topic, "payload": message, "qos": 1}
        assert_problem(await http.post("/v1/contract/validate", json=extra), 422, "body.qos")


async def test_topics_the_ingester_does_not_take(database_url: str) -> None:
    raw = device_topic(SITE, "bike-07", TopicKind.RAW)
    frame = {"t": NOW.isoformat(), "src": "ble", "char": "2ad2", "hex": "44020a0b"}
    async with serve(app_at(database_url, NOW)) as http:

        async def judge(topic: str, payload: object) -> dict[str, Any]:
            r = await http.post("/v1/contract/validate", json={"topic": topic, "payload": payload})
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body

        body = await judge(raw, frame)
        assert (body["outcome"], body["kind"], body["errors"]) == ("not_received", "raw", [])
        assert body["record"] == frame | {"t": "2026-11-25T10:00:00Z"}
        assert "gateway" in body["note"]
        body = await judge(raw, frame | {"hex": "XYZ"})
        assert [(e["reason"], e["path"]) for e in body["errors"]] == [("schema", "$.hex")]
        assert body["outcome"] == "not_received"

        body = await judge("gym/bike-07/data", good_message(NOW))
        assert (body["outcome"], body["kind"]) == ("not_received", None)
        assert [e["reason"] for e in body["errors"]] == ["bad_topic"]

        # an empty retained status clears the broker's copy: received, nothing written, nothing refused
        r = await http.post(
            "/v1/contract/validate", json={"topic": gateway_status_topic(SITE, "gw-1"), "payload_text": ""}
        )
        body = r.json()
        assert (body["outcome"], body["errors"], body["record"]) == ("ignored", [], None)


async def test_the_contract_documents_are_served(database_url: str) -> None:
    async with serve(app_at(database_url, NOW)) as http:
        schema = await http.get("/v1/contract/schema")
        document = await http.get("/v1/contract/asyncapi")
    assert schema.status_code == document.status_code == 200
    # the same code as `vitalab schema`, and so the same as the checked-in documents
    assert schema.json() == json_schemas() == json.loads((DOCS / "payloads.schema.json").read_text())
    assert document.json() == asyncapi() == json.loads((DOCS / "asyncapi.json").read_text())
    assert set(schema.json()["$defs"]) >= {"TelemetryMessage", "DeviceMeta", "DeviceState", "GatewayStatus"}


async def test_a_devices_dead_letters_page_by_page(database_url: str) -> None:
    t0 = NOW - timedelta(hours=1)
    letters = [  # (received_at, device, reason); three of bike-9's share one receive time
        (t0, "bike-9", "schema"),
        (t0 + timedelta(minutes=1), "bike-9", "implausible_value"),
        (t0 + timedelta(minutes=2), "bike-9", "implausible_value"),
        (t0 + timedelta(minutes=2), "bike-9", "timestamp_out_of_range"),
        (t0 + timedelta(minutes=2), "bike-9", "schema"),
        (t0 + timedelta(minutes=3), "bike-8", "schema"),
        (t0 + timedelta(minutes=4), "bike-9", "malformed"),
        (t0 + timedelta(minutes=5), None, "bad_topic"),
        (t0 + timedelta(minutes=6), "ghost-1", "unknown_device"),
        (t0 + timedelta(minutes=7), "bike-9", "schema"),
    ]
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO sites (site_id) VALUES (%s)", (SITE,))
        conn.execute(
            "INSERT INTO devices (device_id, site_id) VALUES ('bike-9', %s), ('bike-8', %s)", (SITE, SITE)
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO dead_letters (received_at, topic, reason, detail, path, device_id, payload, "
                "payload_size) VALUES (%s, %s, %s, 'why', '$.x', %s, %s, 7)",
                [
                    (
                        at,
                        f"vitalab/v1/{SITE}/dev/{device or 'x y'}/telemetry",
                        reason,
                        device,
                        f"msg {i}".encode(),
                    )
                    for i, (at, device, reason) in enumerate(letters)
                ],
            )
    want = _rows(
        database_url,
        "SELECT id, reason, payload FROM dead_letters WHERE device_id = 'bike-9' "
        "ORDER BY received_at DESC, id DESC",
    )
    assert len(want) == 7
    async with serve(app_at(database_url, NOW)) as http:
        path = "/v1/devices/bike-9/dead-letters"
        got: list[dict[str, Any]] = []
        r = await http.get(path, params={"limit": 3})
        pages = 1
        while True:
            assert r.status_code == 200, r.text
            got += r.json()
            if "next" not in r.links:
                break
            r = await http.get(r.links["next"]["url"])
            pages += 1
        assert [(d["id"], d["reason"], d["payload_preview"].encode()) for d in got] == [
            tuple(w) for w in want
        ]
        assert pages == 3
        assert {d["device_id"] for d in got} == {"bike-9"}
        assert got[0]["topic"] == tele("bike-9")
        assert (got[0]["detail"], got[0]["path"], got[0]["payload_size"]) == ("why", "$.x", 7)

        r = await http.get(path, params={"reason": "implausible_value"})
        assert [d["reason"] for d in r.json()] == ["implausible_value"] * 2
        r = await http.get(path, params={"since": (t0 + timedelta(minutes=2)).isoformat()})
        assert [d["id"] for d in r.json()] == [w[0] for w in want[:5]]
        # a device that only dead letters name (refused before it was registered) has them too
        r = await http.get("/v1/devices/ghost-1/dead-letters")
        assert [d["reason"] for d in r.json()] == ["unknown_device"]
        assert (await http.get("/v1/devices/bike-8/dead-letters")).json()[0]["reason"] == "schema"
        assert_problem(await http.get("/v1/devices/nobody/dead-letters"), 404, "path.device_id")
        assert_problem(await http.get(path, params={"cursor": "bm9wZQ"}), 422, "query.cursor")
        assert_problem(await http.get("/v1/devices/bad id/dead-letters"), 422)
    # the site a device's dead letters belong to (what a per-site scope check asks)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        assert await device_site(conn, "bike-9") == SITE
        assert await device_site(conn, "ghost-1") == SITE  # unregistered: the site of its topic
        assert await device_site(conn, "nobody") is None
