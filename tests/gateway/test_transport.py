"""Transports without radios: the device list file, source naming, missing extras, the BLE/ANT+ callbacks,
and the MQTT raw-topic transport against a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway import encode_frame, ftms, hrm
from gateway.errors import DeviceListError, TransportUnavailable
from gateway.service import Pipeline
from gateway.transport import (
    DeviceInfo,
    Frame,
    Rejected,
    ant_source,
    kind_of_source,
    load_device_list,
    raw_char_source,
)
from gateway.transport_ant import broadcast, load_openant
from gateway.transport_ble import CHARACTERISTICS, load_bleak, notification, read_device_information, uuid16
from gateway.transport_mqtt import MqttRawTransport, raw_event
from tests.conftest import Mosquitto
from tests.gateway.test_publisher import Subscriber
from vitalab.wire import RawFrame, TelemetryMessage, encode

GOOD = """
[[device]]
id = "bike-01"
kind = "bike"
transport = "ble"
address = "C4:12:34:56:78:9A"
model = "Skillrow"
quirks = "FTMS-trailing-byte"

[[device]]
id = "hr-01"
kind = "hr_strap"
transport = "ant"
address = "0x1234"
"""


def test_device_list(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    path.write_text(GOOD)
    bike, strap = load_device_list(path)
    assert (bike.device_id, bike.kind, bike.transport, bike.address) == (
        "bike-01",
        "bike",
        "ble",
        "C4:12:34:56:78:9A",
    )
    assert (bike.model, bike.quirks) == ("Skillrow", "FTMS-trailing-byte")
    assert bike.meta().transport == "ble"
    assert (strap.kind, strap.transport, strap.address) == ("hr_strap", "ant", "0x1234")


@pytest.mark.parametrize(
    ("text", "index", "words"),
    [
        ('[[device]]\nid = "x y"\nkind = "bike"\ntransport = "ble"\naddress = "a"', 0, "valid device id"),
        ('[[device]]\nid = "a"\nkind = "sofa"\ntransport = "ble"\naddress = "a"', 0, "kind"),
        ('[[device]]\nid = "a"\nkind = "bike"\ntransport = "wifi"\naddress = "a"', 0, "transport"),
        ('[[device]]\nid = "a"\nkind = "bike"\ntransport = "ble"', 0, "address"),
        ('[[device]]\nid = "a"\nkind = "bike"\ntransport = "ant"\naddress = "70000"', 0, "device number"),
        (
            '[[device]]\nid = "a"\nkind = "bike"\ntransport = "ble"\naddress = "a"\ncolour = "red"',
            0,
            "unknown",
        ),
        (
            '[[device]]\nid = "a"\nkind = "bike"\ntransport = "sim"\n' * 2,
            1,
            "twice",
        ),
        (
            '[[device]]\nid = "a"\nkind = "bike"\ntransport = "sim"\nquirks = "acme 3000"',
            0,
            "quirks",
        ),
        ("device = 3", None, "array of tables"),
        ("[[device]\n", None, ""),
    ],
)
def test_device_list_errors_name_the_entry(tmp_path: Path, text: str, index: int | None, words: str) -> None:
    path = tmp_path / "devices.toml"
    path.write_text(text)
    with pytest.raises(DeviceListError) as info:
        load_device_list(path)
    assert info.value.index == index
    assert words in info.value.detail
    assert info.value.path == str(path)


def test_missing_file_is_a_device_list_error(tmp_path: Path) -> None:
    with pytest.raises(DeviceListError):
        load_device_list(tmp_path / "nope.toml")


def test_sources() -> None:
    assert ant_source(17, 16) == "ant:fe:16"
    assert ant_source(120, 0x84) == "ant:hrm:4"  # the toggle bit is not part of the page
    assert raw_char_source("ant", "1119") == "ant:fe:25"
    assert raw_char_source("ant", "7804") == "ant:hrm:4"
    assert raw_char_source("ble", "2ad2") == "ble:2ad2"
    assert kind_of_source("ble:2ace") == "cross_trainer"
    assert kind_of_source("ant:hrm:4") == "hr_strap"
    assert kind_of_source("ant:fe:16") is None  # FE says which machine only in page 16


def test_missing_radio_libraries_give_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bleak", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "openant.devices", None)
    with pytest.raises(TransportUnavailable) as ble:
        load_bleak()
    assert (ble.value.transport, ble.value.extra) == ("BLE", "ble")
    assert "vitalab[ble]" in str(ble.value)
    with pytest.raises(TransportUnavailable) as ant:
        load_openant()
    assert ant.value.extra == "ant"


def test_radio_callbacks_make_frames() -> None:
    assert uuid16("2ad2") == "00002ad2-0000-1000-8000-00805f9b34fb"
    assert CHARACTERISTICS["bike"][0] == "2ad2"
    f = notification("bike-1", "2ad2", bytearray(b"\x44\x00\x10\x27"))
    assert (f.source, f.data) == ("ble:2ad2", b"\x44\x00\x10\x27")
    assert abs((datetime.now(UTC) - f.t).total_seconds()) < 1
    g = broadcast("hr-1", 120, [0x84, 0xFF, 0, 4, 0, 8, 7, 60])
    assert (g.source, g.data) == ("ant:hrm:4", bytes([0x84, 0xFF, 0, 4, 0, 8, 7, 60]))


class _Unreadable(Exception):
    pass


class _StandInClient:
    """What ``read_device_information`` uses of a connected ``bleak.BleakClient``: ``services
    .get_characteristic(uuid)`` (``None`` when absent) and ``await read_gatt_char(uuid)``."""

    def __init__(self, values: dict[str, bytes], unreadable: set[str]) -> None:
        self.values = values
        self.unreadable = unreadable
        self.services = self
        self.reads: list[str] = []

    def get_characteristic(self, uuid: str) -> object | None:
        return uuid if uuid in self.values else None

    async def read_gatt_char(self, uuid: str) -> bytearray:
        self.reads.append(uuid)
        if uuid in self.unreadable:
            raise _Unreadable(uuid)
        return bytearray(self.values[uuid])


def test_ble_reads_the_device_information_service_it_finds_and_skips_what_fails() -> None:
    client = _StandInClient(
        {uuid16("2a29"): b"Concept2\x00", uuid16("2a24"): b"PM5", uuid16("2a27"): b"rev C"},
        unreadable={uuid16("2a27")},
    )
    frames = asyncio.run(read_device_information(client, "row-1", (_Unreadable,)))
    assert [(f.device_id, f.source, f.data) for f in frames] == [
        ("row-1", "ble:2a29", b"Concept2\x00"),
        ("row-1", "ble:2a24", b"PM5"),
    ]
    assert client.reads == [uuid16("2a29"), uuid16("2a24"), uuid16("2a27")]  # firmware absent: not read
    pipeline = Pipeline(devices=[DeviceInfo("row-1", "rower", "ble", address="C4:00:00:00:00:01")])
    out = pipeline.handle(frames, "ble", 0.0)
    assert [(m.vendor, m.model, m.firmware) for m in out.metas] == [("Concept2", "PM5", None)]


def test_raw_events() -> None:
    t = datetime.now(UTC).replace(microsecond=0)
    data = encode_frame(ftms.TrainingStatus(flags=0, status_code=2, status="", training="warm_up"))
    ok = raw_event(
        "vitalab/v1/gym/dev/bike-1/raw", encode(RawFrame(t=t, src="ble", char="2ad3", hex=data.hex()))
    )
    assert ok == Frame("bike-1", "ble:2ad3", data, t)
    bad = raw_event("vitalab/v1/gym/dev/bike-1/raw", b'{"t": 1}')
    assert isinstance(bad, Rejected)
    assert bad.device_id == "bike-1"
    outside = raw_event("elsewhere/raw", b"{}")
    assert isinstance(outside, Rejected)
    assert outside.device_id is None


@pytest.mark.asyncio
async def test_mqtt_raw_transport_against_mosquitto(mosquitto: Mosquitto) -> None:
    """Frames of the site in order, a payload that breaks the contract rejected, another site's frame not
    taken. That absence is shown by order, not by waiting: one client publishes the other site's frame and
    then a last frame of this site, QoS 1 each after the previous PUBACK; Mosquitto routes a client's
    messages in the order it received them, so once the last one has arrived the other one was routed."""
    transport = MqttRawTransport(mosquitto.target, "gym", client_id="raw-in")
    got: list[object] = []
    last_arrived = asyncio.Event()
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    last = Frame("bike-1", "ble:2ad3", b"\x00\x01", t + timedelta(seconds=9))

    async def consume() -> None:
        async for batch in transport.events():
            got.extend(batch)
            if last in batch:
                last_arrived.set()

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(transport.subscribed.wait(), 10)
        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="raw-out", protocol=paho.MQTTv5)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        frames = [
            encode_frame(ftms.TrainingStatus(flags=0, status_code=c, status="", training="")) for c in (2, 4)
        ]
        for i, data in enumerate(frames):
            payload = encode(RawFrame(t=t + timedelta(seconds=i), src="ble", char="2ad3", hex=data.hex()))
            pub.publish("vitalab/v1/gym/dev/bike-1/raw", payload, qos=1).wait_for_publish(5)
        pub.publish("vitalab/v1/gym/dev/bike-1/raw", b"not json", qos=1).wait_for_publish(5)
        pub.publish("vitalab/v1/other/dev/bike-1/raw", payload, qos=1).wait_for_publish(5)  # another site
        closing = encode(RawFrame(t=last.t, src="ble", char="2ad3", hex=last.data.hex()))
        pub.publish("vitalab/v1/gym/dev/bike-1/raw", closing, qos=1).wait_for_publish(5)
        await asyncio.wait_for(last_arrived.wait(), 10)
        pub.loop_stop()
        pub.disconnect()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert got[:2] == [Frame("bike-1", "ble:2ad3", d, t + timedelta(seconds=i)) for i, d in enumerate(frames)]
    assert isinstance(got[2], Rejected)
    assert got[3:] == [last]  # nothing from the other site came between


def _env(tmp_path: Path, mqtt_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALAB_")}
    env.update(VITALAB_MQTT_URL=mqtt_url, VITALAB_SITE="gym", VITALAB_DATA_DIR=str(tmp_path))
    return env


def test_vitalab_gateway_without_the_radio_extra_says_what_to_install(tmp_path: Path) -> None:
    code = "import sys; sys.modules['bleak'] = None; from vitalab.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code, "gateway", "--transport", "ble"],
        env=_env(tmp_path, "mqtt://127.0.0.1:1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "vitalab[ble]" in done.stderr


def test_vitalab_gateway_decodes_raw_topics_into_telemetry(mosquitto: Mosquitto, tmp_path: Path) -> None:
    sub = Subscriber(
        mosquitto.target, "gw-cli-sub", ["vitalab/v1/gym/dev/+/telemetry"], persistent=False
    ).start()
    env = _env(tmp_path, mosquitto.url) | {
        "VITALAB_GATEWAY_BATCH_SAMPLES": "1",
        "VITALAB_GATEWAY_ID": "gw-cli",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitalab", "gateway", "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="gw-cli-raw", protocol=paho.MQTTv5)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    try:
        t = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60)
        data = encode_frame(hrm.HeartRateMeasurement(flags=0b10110, hr_bpm=77, rr_ms=(750.0,)))
        for i in range(60):  # until the gateway has subscribed: one new second each time
            raw = RawFrame(t=t + timedelta(seconds=i), src="ble", char="2a37", hex=data.hex())
            pub.publish("vitalab/v1/gym/dev/strap-1/raw", encode(raw), qos=1).wait_for_publish(5)
            pub.publish("vitalab/v1/gym/dev/strap-1/raw", b"garbage", qos=1).wait_for_publish(5)
            if any(m.topic.endswith("/telemetry") for m in sub.messages):
                break
            time.sleep(0.25)
        sub.wait_for(lambda ms: bool(ms), "telemetry from the gateway", 10)
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.stop()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    msg = msgspec.json.decode(sub.messages[0].payload, type=TelemetryMessage)
    assert msg.device == "strap-1"
    assert (msg.samples[0].hr_bpm, msg.samples[0].rr_ms) == (77, [750.0])
    assert "undecodable" in out  # the garbage was dead-lettered, and the gateway went on
