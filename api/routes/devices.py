from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from psycopg.rows import class_row

from api.deps import ConnDep
from api.models import Device, DeviceQualityDay, RrOut, SampleOut

router = APIRouter(prefix="/v1/devices", tags=["devices"])

_DEVICE_COLS = (
    "device_id, site_id, kind, vendor, model, firmware, transport, online, training, first_seen, last_seen"
)
_SAMPLE_COLS = (
    "device_id, t, site_id, seq, received_at, speed_kmh, incline_pct, distance_m, energy_kcal, power_w, "
    "cadence_rpm, stroke_rate_spm, pace_s_per_500m, hr_bpm, elapsed_s, resistance_level, met"
)
Limit = Annotated[int, Query(ge=1, le=10_000)]


@router.get("", response_model=list[Device])
async def list_devices(conn: ConnDep, site: str | None = None) -> list[Device]:
    async with conn.cursor(row_factory=class_row(Device)) as cur:
        await cur.execute(
            f"SELECT {_DEVICE_COLS} FROM devices WHERE %(site)s::text IS NULL OR site_id = %(site)s "
            "ORDER BY device_id",
            {"site": site},
        )
        return await cur.fetchall()


@router.get("/{device_id}", response_model=Device)
async def get_device(conn: ConnDep, device_id: str) -> Device:
    async with conn.cursor(row_factory=class_row(Device)) as cur:
        await cur.execute(f"SELECT {_DEVICE_COLS} FROM devices WHERE device_id = %s", (device_id,))
        device = await cur.fetchone()
    if device is None:
        raise HTTPException(status_code=404, detail=f"no device {device_id!r}")
    return device


@router.get("/{device_id}/samples", response_model=list[SampleOut])
async def device_samples(
    conn: ConnDep,
    device_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 1000,
) -> list[SampleOut]:
    """Samples of one device in time order; with neither bound, the newest ``limit`` samples."""
    async with conn.cursor(row_factory=class_row(SampleOut)) as cur:
        if since is None and until is None:
            await cur.execute(
                f"SELECT * FROM (SELECT {_SAMPLE_COLS} FROM samples WHERE device_id = %s "
                "ORDER BY t DESC LIMIT %s) s ORDER BY t",
                (device_id, limit),
            )
        else:
            await cur.execute(
                f"SELECT {_SAMPLE_COLS} FROM samples WHERE device_id = %(d)s "
                "AND (%(since)s::timestamptz IS NULL OR t >= %(since)s) "
                "AND (%(until)s::timestamptz IS NULL OR t < %(until)s) ORDER BY t LIMIT %(limit)s",
                {"d": device_id, "since": since, "until": until, "limit": limit},
            )
        return await cur.fetchall()


@router.get("/{device_id}/rr", response_model=list[RrOut])
async def device_rr(
    conn: ConnDep, device_id: str, since: datetime, until: datetime | None = None, limit: Limit = 10_000
) -> list[RrOut]:
    """RR intervals (ms) of one device from ``since``, oldest first."""
    async with conn.cursor(row_factory=class_row(RrOut)) as cur:
        await cur.execute(
            "SELECT t, idx, rr_ms FROM rr_intervals WHERE device_id = %(d)s AND t >= %(since)s "
            "AND (%(until)s::timestamptz IS NULL OR t < %(until)s) ORDER BY t, idx LIMIT %(limit)s",
            {"d": device_id, "since": since, "until": until, "limit": limit},
        )
        return await cur.fetchall()


@router.get("/{device_id}/quality", response_model=list[DeviceQualityDay])
async def device_quality(
    conn: ConnDep, device_id: str, since: date | None = None, until: date | None = None
) -> list[DeviceQualityDay]:
    """Data quality per completed UTC day in ``[since, until]`` (analytics/device_quality.py): duplicates and
    late and backfilled samples, clock skew, sampling period, dropouts, gaps, received vs expected samples."""
    await get_device(conn, device_id)  # 404 for an unknown device
    async with conn.cursor(row_factory=class_row(DeviceQualityDay)) as cur:
        await cur.execute(
            "SELECT day, samples, samples_received, duplicates, late_samples, backfill_samples, lag_p05_s, "
            "lag_p50_s, lag_p95_s, clock_skew_s, period_s, on_s, expected_samples, received_ratio, dropouts, "
            "gaps, gap_s, hr_valid_share "
            "FROM device_quality_daily WHERE device_id = %(d)s "
            "AND (%(since)s::date IS NULL OR day >= %(since)s) "
            "AND (%(until)s::date IS NULL OR day <= %(until)s) ORDER BY day",
            {"d": device_id, "since": since, "until": until},
        )
        return await cur.fetchall()
