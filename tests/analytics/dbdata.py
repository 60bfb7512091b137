"""Putting analytics test data into a real database the way production does: through the ingester's
router and writer (so ``ingest_device_stats`` and the dirty ranges are maintained), plus participants and
check-ins."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg

from ingest.batch import Batch, Router
from ingest.source import Inbound
from ingest.writer import WriteResult, prepare, write_batch
from vitalab.wire import (
    DeviceMeta,
    DeviceState,
    Sample,
    TelemetryMessage,
    TopicKind,
    device_topic,
    encode,
)

SITE = "gym-a"
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # a Monday
_seq: dict[str, int] = {}


def meta(device: str, kind: str) -> DeviceMeta:
    return DeviceMeta(v=1, device=device, kind=kind, transport="sim")  # type: ignore[arg-type]


def telemetry(device: str, samples: Sequence[Sample]) -> TelemetryMessage:
    seq = _seq.get(device, 0)
    _seq[device] = seq + 1
    return TelemetryMessage(v=1, device=device, seq=seq, samples=list(samples))


def write(
    url: str,
    messages: Sequence[TelemetryMessage | DeviceMeta | DeviceState],
    *,
    site: str = SITE,
    received_at: datetime | None = None,
) -> WriteResult:
    """Route the messages as the ingester does and write them in one batch. Each telemetry message is
    received one second after its last sample unless ``received_at`` says otherwise."""
    router = Router()
    batch = Batch()
    for i, msg in enumerate(messages):
        if isinstance(msg, TelemetryMessage):
            kind = TopicKind.TELEMETRY
            rec = received_at or (max(s.t for s in msg.samples) + timedelta(seconds=1))
        elif isinstance(msg, DeviceMeta):
            kind, rec = TopicKind.META, received_at or T0
        else:
            kind, rec = TopicKind.STATE, received_at or msg.t
        router.add(
            batch,
            Inbound(device_topic(site, msg.device, kind), encode(msg), 1, False, i, 0, rec.timestamp()),
        )
    assert not batch.dead, [d.detail for d in batch.dead]

    async def go() -> WriteResult:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await prepare(conn)
            return await write_batch(conn, batch)

    return asyncio.run(go())


def chunks(samples: list[Sample], k: int = 10) -> list[list[Sample]]:
    return [samples[i : i + k] for i in range(0, len(samples), k)]


def bike(
    device: str,
    start: datetime,
    seconds: int,
    *,
    hr: float | None = 140.0,
    power: float = 150.0,
    elapsed0: float = 0.0,
) -> list[TelemetryMessage]:
    """A bike ridden at constant power for ``seconds`` (1 Hz), counters from ``elapsed0``."""
    samples = [
        Sample(
            t=start + timedelta(seconds=i),
            power_w=power,
            cadence_rpm=85.0,
            hr_bpm=hr,
            elapsed_s=elapsed0 + i,
            distance_m=(elapsed0 + i) * 8.0,
        )
        for i in range(seconds)
    ]
    return [telemetry(device, c) for c in chunks(samples)]


def strap(
    device: str, start: datetime, seconds: int, *, hr: float = 150.0, rr: bool = True
) -> list[TelemetryMessage]:
    """A chest strap at constant heart rate with RR intervals (a little respiratory variation)."""
    samples = []
    beat = 60000.0 / hr
    for i in range(seconds):
        rr_ms = [round(beat * (1 + 0.03 * math.sin(i / 2.0)), 1)] if rr else None
        samples.append(Sample(t=start + timedelta(seconds=i, milliseconds=400), hr_bpm=hr, rr_ms=rr_ms))
    return [telemetry(device, c) for c in chunks(samples)]


def setup_site(url: str, devices: Sequence[tuple[str, str]], site: str = SITE, timezone: str = "UTC") -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO sites (site_id, timezone) VALUES (%s, %s) ON CONFLICT DO NOTHING", (site, timezone)
        )
    write(url, [meta(d, k) for d, k in devices], site=site)


def participant(
    url: str,
    *,
    site: str = SITE,
    sex: str = "male",
    birth_year: int = 1986,
    hr_rest: float | None = 60.0,
    hr_max: float | None = 190.0,
    weight: float = 80.0,
) -> str:
    pid = str(uuid.uuid4())
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO participants (participant_id, site_id, birth_year, sex, weight_kg, hr_rest_bpm, "
            "hr_max_bpm) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (pid, site, birth_year, sex, weight, hr_rest, hr_max),
        )
    return pid


def check_in(url: str, device: str, pid: str, start: datetime, end: datetime | None) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO device_assignments (device_id, participant_id, started_at, ended_at) "
            "VALUES (%s, %s, %s, %s)",
            (device, pid, start, end),
        )


def rows(url: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params or None).fetchall()


def sessions(url: str) -> list[tuple[Any, ...]]:
    """(device_ids, started_at, ended_at, participant, source, hr_source, computed_at) in start order."""
    return rows(
        url,
        "SELECT device_ids, started_at, ended_at, participant_id::text, source, hr_source, computed_at "
        "FROM sessions ORDER BY started_at, device_ids",
    )


def noisy_hr(n: int, base: float, seed: int = 0) -> np.ndarray:
    return np.round(base + np.random.default_rng(seed).normal(0, 1.0, n), 1)
