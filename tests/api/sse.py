"""A small Server-Sent Events reader for the live-floor tests (over an httpx streaming response), and a
publisher of wire-contract messages for the devices the tests drive."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiomqtt
import httpx

from vitalab.settings import MqttTarget
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
from vitalab.wire.payload import DeviceKind, TrainingStatus


@dataclass(frozen=True)
class Event:
    id: str | None
    event: str
    data: Any


class SseReader:
    """Events of one stream, comments skipped."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.comments: list[str] = []
        self.floor: dict[str, dict[str, Any]] = {}
        """Every device's tile as the events read so far say."""

    async def next(self, timeout_s: float = 10.0) -> Event:
        return await asyncio.wait_for(self._next(), timeout_s)

    async def _next(self) -> Event:
        fields: dict[str, list[str]] = {}
        async for line in self._lines:
            if line == "":
                if "data" in fields:
                    data = json.loads("\n".join(fields["data"]))
                    event = Event(fields.get("id", [None])[-1], fields.get("event", ["message"])[-1], data)
                    if event.event == "snapshot":
                        self.floor = {d["device_id"]: d for d in data["devices"]}
                    elif event.event == "device":
                        self.floor[data["device_id"]] = data
                    return event
                fields = {}
                continue
            name, _, value = line.partition(":")
            if name == "":
                self.comments.append(value.strip())
                continue
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
        raise EOFError("the stream ended")

    async def until(self, check: Callable[[Event], bool], timeout_s: float = 10.0) -> Event:
        """The first event that passes ``check`` (earlier ones are skipped)."""

        async def find() -> Event:
            while True:
                event = await self._next()
                if check(event):
                    return event

        return await asyncio.wait_for(find(), timeout_s)

    async def until_floor(
        self, check: Callable[[dict[str, dict[str, Any]]], bool], timeout_s: float = 10.0
    ) -> dict[str, dict[str, Any]]:
        """Read on until the floor (every device's newest tile) passes ``check``."""

        async def find() -> dict[str, dict[str, Any]]:
            while not check(self.floor):
                await self._next()
            return self.floor

        return await asyncio.wait_for(find(), timeout_s)


@contextlib.asynccontextmanager
async def watch(
    http: httpx.AsyncClient, site: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SseReader]:
    async with http.stream("GET", f"/v1/sites/{site}/live", headers=headers, timeout=30.0) as r:
        assert r.status_code == 200, (r.status_code, await r.aread())
        assert r.headers["content-type"].startswith("text/event-stream")
        yield SseReader(r)


def device_of(event: Event, device_id: str) -> dict[str, Any] | None:
    """The tile of ``device_id`` in a snapshot or device event (None: not in it)."""
    if event.event == "device":
        return event.data if event.data["device_id"] == device_id else None
    if event.event == "snapshot":
        return next((d for d in event.data["devices"] if d["device_id"] == device_id), None)
    return None


class Devices:
    """Publishes for devices of one site as they (or their gateway) would."""

    def __init__(self, client: aiomqtt.Client, site: str) -> None:
        self.client = client
        self.site = site
        self.seq = 0

    async def meta(self, device: str, kind: DeviceKind) -> None:
        meta = DeviceMeta(v=1, device=device, kind=kind, transport="sim")
        await self.client.publish(
            device_topic(self.site, device, TopicKind.META), encode(meta), qos=1, retain=True
        )

    async def state(
        self, device: str, t: datetime, *, online: bool = True, training: TrainingStatus | None = None
    ) -> None:
        state = DeviceState(v=1, device=device, t=t, online=online, training=training)
        await self.client.publish(
            device_topic(self.site, device, TopicKind.STATE), encode(state), qos=1, retain=True
        )

    async def telemetry(self, device: str, *samples: Sample) -> None:
        self.seq += 1
        msg = TelemetryMessage(v=1, device=device, seq=self.seq, samples=list(samples))
        await self.client.publish(device_topic(self.site, device, TopicKind.TELEMETRY), encode(msg), qos=1)

    async def gateway(self, gateway: str, devices: list[str], *, online: bool = True) -> None:
        status = GatewayStatus(v=1, gateway=gateway, online=online, devices=devices)
        await self.client.publish(
            gateway_status_topic(self.site, gateway), encode(status), qos=1, retain=True
        )


@contextlib.asynccontextmanager
async def publisher(target: MqttTarget, site: str, name: str = "test-devices") -> AsyncIterator[Devices]:
    async with aiomqtt.Client(target.host, target.port, identifier=name) as client:
        yield Devices(client, site)
