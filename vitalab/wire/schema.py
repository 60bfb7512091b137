"""Machine-readable documents generated from the code: JSON Schema of every payload and an AsyncAPI 3.0
description of the topic tree. ``vitalab schema`` writes them to ``docs/``; a test keeps them in step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

import vitalab
from vitalab.wire.acks import CommitAck
from vitalab.wire.payload import DeviceMeta, DeviceState, GatewayStatus, RawFrame, TelemetryMessage
from vitalab.wire.topics import PREFIX

PAYLOADS: dict[str, type[msgspec.Struct]] = {
    "TelemetryMessage": TelemetryMessage,
    "DeviceMeta": DeviceMeta,
    "DeviceState": DeviceState,
    "GatewayStatus": GatewayStatus,
    "RawFrame": RawFrame,
    "CommitAck": CommitAck,
}


def json_schemas() -> dict[str, Any]:
    """One JSON Schema (2020-12) document with every payload under ``$defs``."""
    (schemas, components) = msgspec.json.schema_components(
        list(PAYLOADS.values()), ref_template="#/$defs/{name}"
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://vitalab.invalid/schema/v1/payloads.json",
        "title": "vitalab wire payloads, schema v1",
        "oneOf": list(schemas),
        "$defs": components,
    }


def _channel(kind: str, middle: str, source: str, payload: str, desc: str) -> dict[str, Any]:
    return {
        "address": f"{PREFIX}/{{site}}/{middle}/{{{source}}}/{kind}",
        "description": desc,
        "parameters": {"site": {"description": "site id"}, source: {"description": f"{source} id"}},
        "messages": {payload: {"$ref": f"#/components/messages/{payload}"}},
    }


def asyncapi() -> dict[str, Any]:
    (_, components) = msgspec.json.schema_components(
        list(PAYLOADS.values()), ref_template="#/components/schemas/{name}"
    )
    channels = {
        "telemetry": _channel(
            "telemetry",
            "dev",
            "device",
            "TelemetryMessage",
            "Normalised samples, several per message. QoS 1, not retained.",
        ),
        "meta": _channel("meta", "dev", "device", "DeviceMeta", "What the device is. QoS 1, retained."),
        "state": _channel(
            "state", "dev", "device", "DeviceState", "Online, training status, error codes. QoS 1, retained."
        ),
        "raw": _channel("raw", "dev", "device", "RawFrame", "Undecoded BLE/ANT+ frames. QoS 0."),
        "gatewayStatus": _channel(
            "status",
            "gw",
            "gateway",
            "GatewayStatus",
            "Birth (online) and LWT (offline) of a gateway. QoS 1, retained.",
        ),
        "gatewayAck": _channel(
            "ack",
            "gw",
            "gateway",
            "CommitAck",
            "Sent by ingesters after each commit: the telemetry messages (device, seq) of this gateway "
            "(TelemetryMessage.gw) they stored or dead-lettered. A gateway keeps each message until an ack "
            "covers it and resends it when none came within its ack timeout. QoS 1, not retained.",
        ),
        "deviceAck": _channel(
            "ack",
            "dev",
            "device",
            "CommitAck",
            "The same for telemetry a device sent itself (no gw): read by that device only. QoS 1, "
            "not retained.",
        ),
    }
    qos = {
        "telemetry": 1,
        "meta": 1,
        "state": 1,
        "raw": 0,
        "gatewayStatus": 1,
        "gatewayAck": 1,
        "deviceAck": 1,
    }
    retain = {
        "telemetry": False,
        "meta": True,
        "state": True,
        "raw": False,
        "gatewayStatus": True,
        "gatewayAck": False,
        "deviceAck": False,
    }
    operations: dict[str, Any] = {}
    for name in channels:
        binding = {"mqtt": {"qos": qos[name], "retain": retain[name], "bindingVersion": "0.2.0"}}
        operations[f"publish_{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "bindings": binding,
        }
        operations[f"receive_{name}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{name}"},
            "bindings": binding,
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "vitalab MQTT wire contract",
            "version": f"1 (vitalab {vitalab.__version__})",
            "description": (
                "Gym equipment and wearables publish under vitalab/v1. Units are in field names; timestamps "
                "are device time in UTC; the row identity of a sample is (device, t). Ingesters subscribe "
                "through $share/ingest/vitalab/v1/+/dev/+/telemetry and, after each commit, acknowledge "
                "what they stored per sender on its ack topic (device, seq ranges): a sender deletes a "
                "message only once acknowledged and resends what stays unacknowledged after a timeout."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {"host": "localhost:1883", "protocol": "mqtt", "description": "vitalab up / Mosquitto"}
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": components,
            "messages": {
                name: {"name": name, "payload": {"$ref": f"#/components/schemas/{name}"}} for name in PAYLOADS
            },
        },
    }


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def write_documents(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in (("payloads.schema.json", json_schemas()), ("asyncapi.json", asyncapi())):
        path = out_dir / name
        path.write_text(render(doc), encoding="utf-8")
        written.append(path)
    return written
