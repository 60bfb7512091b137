"""The ingester against a real Mosquitto and a real PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import aiomqtt
import psycopg
import pytest

from ingest.service import Ingester
from tests.conftest import Mosquitto
from tests.support.helpers import count, make_settings, metric, running_ingester, scalar, wait_until
from vitalab.wire import DeviceMeta, DeviceState, Sample, TelemetryMessage, TopicKind, device_topic, encode

pytestmark = pytest.mark.asyncio

SITE = "gym-test"


def telemetry(device: str, seq: int, start: datetime, n: int, **fields: float) -> bytes:
    samples = [Sample(t=start + timedelta(seconds=i), **fields) for i in range(n)]  # type: ignore[arg-type]
    return encode(TelemetryMessage(v=1, device=device, seq=seq, samples=samples))


def now_s() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


async def test_samples_are_stored_once_even_when_messages_repeat(
    mosquitto: Mosquitto, database_url: str
) -> None:
    settings = make_settings(ingest_client_id="ingest-dup")
    start = now_s()
    async with running_ingester(settings, mosquitto.target, database_url) as ingester:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            topic = device_topic(SITE, "bike-01", TopicKind.TELEMETRY)
            for seq in range(10):
                payload = telemetry(
                    "bike-01", seq, start + timedelta(seconds=10 * seq), 10, power_w=150, hr_bpm=130
                )
                await pub.publish(topic, payload, qos=1)
                await pub.publish(topic, payload, qos=1)  # a device that resends
            # an overlapping message: 5 old samples, 5 new ones
            await pub.publish(
                topic, telemetry("bike-01", 10, start + timedelta(seconds=95), 10, hr_bpm=131), qos=1
            )
        # the repeats arrived and were skipped: 10 resent messages of 10 samples, 5 overlapping samples
        await wait_until(lambda: _duplicates(ingester, 105), what="105 duplicate samples skipped")
        assert metric(ingester, "vitalab_ingest_samples_inserted_total") == 105
    assert await count(database_url, "samples", "device_id = 'bike-01'") == 105
    # the first write wins: a duplicate does not overwrite
    assert (
        await scalar(database_url, "SELECT hr_bpm FROM samples WHERE t = %s", start + timedelta(seconds=95))
        == 130.0
    )
    assert await scalar(database_url, "SELECT site_id FROM devices WHERE device_id = 'bike-01'") == SITE
    assert await count(database_url, "dead_letters") == 0


async def _duplicates(ingester: Ingester, n: int) -> bool:
    return metric(ingester, "vitalab_ingest_samples_duplicate_total") >= n


async def _equals(value: object, expected: int) -> bool:
    return await value == expected  # type: ignore[misc, no-any-return]


async def test_rr_intervals_are_stored_in_order(mosquitto: Mosquitto, database_url: str) -> None:
    start = now_s()
    msg = TelemetryMessage(
        v=1,
        device="strap-01",
        seq=0,
        samples=[
            Sample(t=start, hr_bpm=70, rr_ms=[850.0, 861.5]),
            Sample(t=start + timedelta(seconds=1), hr_bpm=71),
        ],
    )
    async with running_ingester(make_settings(ingest_client_id="ingest-rr"), mosquitto.target, database_url):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            await pub.publish(device_topic(SITE, "strap-01", TopicKind.TELEMETRY), encode(msg), qos=1)
            await pub.publish(device_topic(SITE, "strap-01", TopicKind.TELEMETRY), encode(msg), qos=1)
        await wait_until(lambda: _equals(count(database_url, "samples"), 2), what="2 samples")
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT idx, rr_ms FROM rr_intervals WHERE device_id = 'strap-01' ORDER BY idx"
        )
        assert await cur.fetchall() == [(0, 850.0), (1, 861.5)]


BAD = [
    # (topic device, payload, expected reason)
    ("bike-02", b"\x00\x01 not json", "malformed"),
    (
        "bike-02",
        b'{"v":2,"device":"bike-02","seq":1,"samples":[{"t":"2026-11-25T00:00:00Z"}]}',
        "unsupported_version",
    ),
    (
        "bike-02",
        b'{"v":1,"device":"bike-99","seq":1,"samples":[{"t":"2026-11-25T00:00:00Z"}]}',
        "device_mismatch",
    ),
    ("bike-02", b'{"v":1,"device":"bike-02","seq":"x","samples":[]}', "schema"),
    ("bike-02", b"{" + b" " * 300_000 + b"}", "too_large"),
]


async def test_bad_input_goes_to_dead_letters_and_good_data_keeps_flowing(
    mosquitto: Mosquitto, database_url: str
) -> None:
    start = now_s()
    settings = make_settings(ingest_client_id="ingest-bad", dead_letter_max_bytes=1024)
    mixed = json.dumps(
        {
            "v": 1,
            "device": "bike-02",
            "seq": 7,
            "samples": [
                {"t": start.isoformat(), "hr_bpm": 120},
                {"t": (start + timedelta(seconds=1)).isoformat(), "hr_bpm": 999},  # impossible
                {"t": (start + timedelta(seconds=2)).isoformat(), "hr_bpm": 122},
                {"t": "2031-01-01T00:00:00Z", "hr_bpm": 123},  # from the future
            ],
        }
    ).encode()
    async with running_ingester(settings, mosquitto.target, database_url):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            topic = device_topic(SITE, "bike-02", TopicKind.TELEMETRY)
            for device, payload, _ in BAD:
                await pub.publish(device_topic(SITE, device, TopicKind.TELEMETRY), payload, qos=1)
            await pub.publish(topic, mixed, qos=1)
            await pub.publish("vitalab/v1/gym-test/dev/bike 02/telemetry", b"{}", qos=1)  # not a valid id
            await pub.publish(
                topic, telemetry("bike-02", 8, start + timedelta(seconds=10), 5, hr_bpm=125), qos=1
            )
        await wait_until(lambda: _equals(count(database_url, "samples"), 7), what="7 good samples")
        await wait_until(
            lambda: _equals(count(database_url, "dead_letters"), len(BAD) + 3), what="dead letters"
        )
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT reason, path, payload, payload_size FROM dead_letters ORDER BY id")
        rows = await cur.fetchall()
    reasons = sorted(r[0] for r in rows)
    assert reasons == sorted(
        [r for _, _, r in BAD] + ["implausible_value", "timestamp_out_of_range", "bad_topic"]
    )
    by_reason = {r[0]: r for r in rows}
    assert by_reason["implausible_value"][1] == "$.samples[1].hr_bpm"
    assert json.loads(by_reason["implausible_value"][2])["hr_bpm"] == 999  # the sample itself is kept
    too_large = by_reason["too_large"]
    assert len(too_large[2]) == 1024  # capped
    assert too_large[3] == 300_002  # original size recorded
    hrs = await scalar(database_url, "SELECT array_agg(hr_bpm ORDER BY t) FROM samples")
    assert hrs == [120.0, 122.0, 125.0, 125.0, 125.0, 125.0, 125.0]


async def test_meta_and_state_update_the_registry(mosquitto: Mosquitto, database_url: str) -> None:
    t = now_s()
    meta = DeviceMeta(
        v=1, device="row-01", kind="rower", vendor="Acme", model="R1", firmware="2.1", transport="ble"
    )
    state = DeviceState(v=1, device="row-01", t=t, online=True, training="warm_up")
    older = DeviceState(v=1, device="row-01", t=t - timedelta(seconds=30), online=False)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        # retained before the ingester exists: it must still see them
        await pub.publish(device_topic(SITE, "row-01", TopicKind.META), encode(meta), qos=1, retain=True)
        await pub.publish(device_topic(SITE, "row-01", TopicKind.STATE), encode(state), qos=1, retain=True)
    async with running_ingester(
        make_settings(ingest_client_id="ingest-meta"), mosquitto.target, database_url
    ):
        await wait_until(lambda: count(database_url, "devices", "training IS NOT NULL"), what="state applied")
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            await pub.publish(device_topic(SITE, "row-01", TopicKind.STATE), encode(older), qos=1)
        await wait_until(
            lambda: _equals(count(database_url, "device_events", "kind = 'offline'"), 1), what="event"
        )
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT kind, vendor, model, firmware, transport, online, training FROM devices "
            "WHERE device_id = 'row-01'"
        )
        # the older state is recorded as an event but does not overwrite the newer one
        assert await cur.fetchone() == ("rower", "Acme", "R1", "2.1", "ble", True, "warm_up")
        cur = await conn.execute("SELECT kind, t FROM device_events WHERE device_id = 'row-01' ORDER BY t")
        events = await cur.fetchall()
    assert sorted(kind for kind, _ in events) == ["meta", "offline", "state"]
    assert {kind: t for kind, t in events}["offline"] == older.t


async def test_late_and_out_of_order_samples_are_stored_in_place(
    mosquitto: Mosquitto, database_url: str
) -> None:
    start = now_s() - timedelta(days=3)
    async with running_ingester(
        make_settings(ingest_client_id="ingest-late"), mosquitto.target, database_url
    ):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            topic = device_topic(SITE, "bike-05", TopicKind.TELEMETRY)
            await pub.publish(
                topic, telemetry("bike-05", 2, start + timedelta(seconds=20), 10, hr_bpm=140), qos=1
            )
            await pub.publish(topic, telemetry("bike-05", 0, start, 10, hr_bpm=100), qos=1)  # late, older
            await pub.publish(
                topic, telemetry("bike-05", 1, start + timedelta(seconds=10), 10, hr_bpm=120), qos=1
            )
        await wait_until(lambda: _equals(count(database_url, "samples"), 30), what="30 samples")
    hrs = await scalar(database_url, "SELECT array_agg(hr_bpm ORDER BY t) FROM samples")
    assert hrs == [100.0] * 10 + [120.0] * 10 + [140.0] * 10
    last_seen = await scalar(database_url, "SELECT last_seen FROM devices WHERE device_id = 'bike-05'")
    assert last_seen == start + timedelta(seconds=29)  # the newest sample, not the last message


async def test_quarantine_policy_dead_letters_unknown_devices(
    mosquitto: Mosquitto, database_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute("INSERT INTO sites (site_id) VALUES (%s)", (SITE,))
        await conn.execute(
            "INSERT INTO devices (device_id, site_id, kind) VALUES ('bike-known', %s, 'bike')", (SITE,)
        )
        await conn.commit()
    settings = make_settings(ingest_client_id="ingest-q", ingest_unknown_devices="quarantine")
    start = now_s()
    async with running_ingester(settings, mosquitto.target, database_url):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            for dev in ("bike-known", "bike-stranger"):
                await pub.publish(
                    device_topic(SITE, dev, TopicKind.TELEMETRY), telemetry(dev, 0, start, 3), qos=1
                )
        await wait_until(lambda: count(database_url, "dead_letters"), what="dead letter")
        await wait_until(lambda: _equals(count(database_url, "samples"), 3), what="known device's samples")
    assert await scalar(database_url, "SELECT reason FROM dead_letters") == "unknown_device"
    assert await scalar(database_url, "SELECT device_id FROM dead_letters") == "bike-stranger"
    assert await count(database_url, "devices", "device_id = 'bike-stranger'") == 0


async def test_health_and_metrics_endpoint(mosquitto: Mosquitto, database_url: str) -> None:
    import httpx

    from tests.conftest import free_port

    port = free_port()
    settings = make_settings(ingest_client_id="ingest-h", ingest_metrics_port=port)
    async with running_ingester(settings, mosquitto.target, database_url):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            topic = device_topic(SITE, "bike-06", TopicKind.TELEMETRY)
            await pub.publish(topic, telemetry("bike-06", 0, now_s(), 4, hr_bpm=100), qos=1)
            await pub.publish(topic, b"not json", qos=1)
        await wait_until(lambda: count(database_url, "dead_letters"), what="dead letter")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            health = await http.get("/health")
            metrics = (await http.get("/metrics")).text
            missing = await http.get("/nope")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["mqtt_connected"] is True
    assert body["batches"] >= 1
    assert 'vitalab_ingest_dead_letters_total{reason="malformed"} 1.0' in metrics
    assert "vitalab_ingest_samples_inserted_total 4.0" in metrics
    assert "vitalab_ingest_commit_seconds_bucket" in metrics
    assert missing.status_code == 404
